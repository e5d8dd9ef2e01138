"""The operation registry: every op x stride, registration rules, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nas_core import ops
from nas_core.ops import PRIMITIVES, create_op, has_op, list_ops, register_op

C, H, W = 4, 8, 8


def test_primitives_are_the_original_eight_in_order() -> None:
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                          "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert all(has_op(p) for p in PRIMITIVES)
    assert list_ops() == sorted(list_ops())
    # the extra ops of the published NASNet / AmoebaNet genotypes
    for name in ("sep_conv_7x7", "conv_7x1_1x7", "max_pool_2x2"):
        assert has_op(name)
    assert not has_op("sep_conv_9x9")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", list_ops())
def test_op_shape_and_gradients(name: str, stride: int) -> None:
    torch.manual_seed(0)
    op = create_op(name, C, stride, affine=True)
    x = torch.randn(2, C, H, W, requires_grad=True)
    out = op(x)
    assert out.shape == (2, C, H // stride, W // stride)
    # a random projection: BatchNorm makes out.sum() constant in x
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None
    if name == "none":
        assert torch.count_nonzero(x.grad) == 0
    else:
        assert torch.count_nonzero(x.grad) > 0
    params = list(op.parameters())
    if name in ("sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3",
                "dil_conv_5x5", "conv_7x1_1x7") or (name == "skip_connect" and stride == 2):
        assert params
    for p in params:
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0


def test_affine_false_has_no_batchnorm_parameters() -> None:
    op = create_op("sep_conv_3x3", C, 1, affine=False)
    bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 and all(bn.weight is None for bn in bns)
    # original layout: op.{1,2,3,5,6,7} carry state
    assert sorted({k.split(".")[1] for k in op.state_dict()}) == ["1", "2", "3", "5", "6", "7"]


def test_duplicate_registration_refused() -> None:
    before = dict(ops._OPS)
    with pytest.raises(ValueError, match="'sep_conv_3x3' is already registered"):
        register_op("sep_conv_3x3")(lambda c, stride, affine: nn.Identity())
    assert ops._OPS == before


def test_new_op_registration_round_trip() -> None:
    name = "test_only_identity_op"
    try:
        register_op(name)(lambda c, stride, affine: nn.AvgPool2d(1, stride))
        assert has_op(name) and name in list_ops()
        assert create_op(name, C, 2)(torch.randn(1, C, H, W)).shape == (1, C, H // 2, W // 2)
    finally:
        ops._OPS.pop(name, None)


def test_unknown_op_error_names_it() -> None:
    with pytest.raises(KeyError, match="sep_conv_9x9"):
        create_op("sep_conv_9x9", C, 1)


def test_bad_stride_error_names_it() -> None:
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        create_op("sep_conv_3x3", C, 3)


def test_factorized_reduce_needs_even_channels() -> None:
    with pytest.raises(ValueError, match="got 3"):
        create_op("skip_connect", 3, 2)


@pytest.mark.parametrize("size", [(32, 80), (6, 10)])
def test_factorized_reduce_channels_last_equals_strided_convolutions(size) -> None:
    """The CPU channels_last path (stride-1 convolutions of every second pixel) computes what
    the two offset 1x1 stride-2 convolutions compute: output and every gradient."""
    torch.manual_seed(0)
    op = ops.FactorizedReduce(6, 8).double()
    x = torch.randn(3, 6, *size, dtype=torch.float64)

    def reference(inp):  # the original definition, nothing rerouted
        r = op.relu(inp)
        return op.bn(torch.cat([op.conv_1(r), op.conv_2(r[:, :, 1:, 1:])], dim=1))

    xr = x.clone().requires_grad_()
    y_ref = reference(xr)
    probe = torch.linspace(-1, 1, y_ref.numel(), dtype=y_ref.dtype).view_as(y_ref)
    g_ref = torch.autograd.grad((y_ref * probe).sum(), [xr, *op.parameters()])
    op_cl = ops.FactorizedReduce(6, 8).double()
    op_cl.load_state_dict(op.state_dict())
    op_cl = op_cl.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = op_cl(xc)
    g = torch.autograd.grad((y * probe).sum(), [xc, *op_cl.parameters()])
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel,stride,padding,dilation,size", [
    (3, 2, 2, 2, (8, 8)),    # dil_conv_3x3 in a reduction cell
    (5, 2, 4, 2, (9, 7)),    # dil_conv_5x5, odd sizes
    (3, 3, 3, 3, (10, 11)),  # stride = dilation = 3
    (3, (2, 1), (2, 2), (2, 1), (8, 9)),  # per-dimension: rerouted only in height
    (3, 2, 1, 2, (8, 8)),    # padding not a multiple of the dilation: F.conv2d as is
    (3, 1, 2, 2, (8, 8)),    # stride 1: F.conv2d as is
])
def test_conv2d_strided_dilated_equals_f_conv2d(kernel, stride, padding, dilation, size,
                                                channels_last) -> None:
    """``ops.conv2d`` (the stride-1 undilated convolution of every stride-th pixel where the
    stride equals the dilation) computes what ``F.conv2d`` computes: output size, values, the
    input's and the weight's gradients; depthwise (DilConv's) and dense."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for groups in (6, 1):
        x = torch.randn(2, 6, *size, dtype=torch.float64).contiguous(memory_format=fmt)
        x.requires_grad_()
        w = torch.randn(6, 6 // groups, kernel, kernel, dtype=torch.float64, requires_grad=True)
        b = torch.randn(6, dtype=torch.float64, requires_grad=True)
        y_ref = torch.nn.functional.conv2d(x, w, b, stride, padding, dilation, groups)
        y = ops.conv2d(x, w, b, stride, padding, dilation, groups)
        assert y.shape == y_ref.shape
        probe = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        g_ref = torch.autograd.grad((y_ref * probe).sum(), [x, w, b])
        g = torch.autograd.grad((y * probe).sum(), [x, w, b])
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        for a, r in zip(g, g_ref):
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_dil_conv_runs_its_depthwise_convolution_through_conv2d() -> None:
    """DilConv's depthwise convolution is a DilatedConv2d (an nn.Conv2d: same parameters and
    state-dict keys as the original's ``op.1``), equal to the plain nn.Conv2d at stride 2."""
    op = create_op("dil_conv_5x5", 4, 2).double()
    assert isinstance(op.op[1], ops.DilatedConv2d) and isinstance(op.op[1], nn.Conv2d)
    plain = nn.Conv2d(4, 4, 5, stride=2, padding=4, dilation=2, groups=4, bias=False).double()
    plain.load_state_dict(op.op[1].state_dict())
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(op.op[1](x), plain(x), rtol=1e-12, atol=1e-12)
    assert [k for k in op.state_dict()] == ["op.1.weight", "op.2.weight", "op.3.weight",
                                            "op.3.bias", "op.3.running_mean",
                                            "op.3.running_var", "op.3.num_batches_tracked"]


def test_factorized_reduce_channels_last_backward_does_not_corrupt_the_heap() -> None:
    """torch 2.14.1's oneDNN weight gradient of a 1x1 stride-2 convolution in channels_last
    overran its buffer at 8 -> 4 channels, 32x80 (the supernet's first FactorizedReduce on
    graphene); in a child process with glibc's heap checks, so a regression fails this test
    instead of killing pytest."""
    import os
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from nas_core.ops import FactorizedReduce\n"
        "op = FactorizedReduce(8, 8, affine=False).to(memory_format=torch.channels_last)\n"
        "for _ in range(20):\n"
        "    x = torch.randn(8, 8, 32, 80).contiguous(memory_format=torch.channels_last)\n"
        "    x.requires_grad_()\n"
        "    torch.autograd.grad(op(x).sum(), [x, *op.parameters()])\n"
        "    junk = [torch.empty(1000 * (k + 1)) for k in range(20)]\n"
        "print('ok')\n")
    env = dict(os.environ, MALLOC_CHECK_="3", OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]
