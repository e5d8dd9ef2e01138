"""The DARTS supernet: layout equal to the original, forward/backward, PC-DARTS mode, precision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from darts_shared import read_layout, state_dict_layout
from nas_core.model_search import SearchNetwork, channel_shuffle
from nas_core.network_parts import pad_to_multiple


def tiny(in_channels: int, **kw) -> SearchNetwork:
    kw.setdefault("layers", 3)
    return SearchNetwork(in_channels, kw.pop("channels", 4), kw.pop("num_outputs", 3), **kw)


# -- layout -------------------------------------------------------------------------------------
def test_state_dict_equals_original_darts_search_network() -> None:
    expected = read_layout("darts_search_state_dict.tsv")
    # the fixture's last two rows are the alphas, which the original kept outside state_dict
    assert [k for k, _ in expected[-2:]] == ["alphas_normal", "alphas_reduce"]
    torch.manual_seed(0)
    model = SearchNetwork(3, 16, 10, 8)
    ours = state_dict_layout(model)
    # a root module lists its own parameters first: the alphas lead our state dict
    assert ours[:2] == expected[-2:]
    assert ours[2:] == expected[:-2]


def test_state_dict_equals_fork_graphene_search_network() -> None:
    expected = read_layout("fork_graphene_search_state_dict.tsv")
    model = SearchNetwork(1, 16, 1, 8)
    ours = state_dict_layout(model)
    assert ours[:2] == [("alphas_normal", (14, 8)), ("alphas_reduce", (14, 8))]
    assert ours[2:] == expected


def test_parameter_count_matches_fixtures_readme() -> None:
    # README: 1,930,618 for the original search Network(C=16, 10 classes, 8 layers, 3 channels).
    # That is the weights alone: the fixture's rows minus BN buffers sum to 1,930,618 without
    # the two 14x8 alpha rows (1,930,842 with them), and the original kept the alphas outside
    # model.parameters(); so the figure excludes the alphas.
    model = SearchNetwork(3, 16, 10, 8)
    assert sum(p.numel() for p in model.weight_parameters()) == 1_930_618
    assert sum(p.numel() for p in model.arch_parameters()) == 2 * 14 * 8
    assert sum(p.numel() for p in model.parameters()) == 1_930_618 + 224
    # the fork's graphene search net (1 input channel, one output)
    graphene = SearchNetwork(1, 16, 1, 8)
    assert sum(p.numel() for p in graphene.weight_parameters()) == 1_927_441


def test_load_reference_state_dict_strict_without_num_batches_tracked() -> None:
    model = SearchNetwork(1, 4, 3, 3)
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    SearchNetwork(1, 4, 3, 3).load_state_dict(state, strict=True)


# -- parameters ---------------------------------------------------------------------------------
@pytest.mark.parametrize("partial_channels", [1, 2])
def test_weight_and_arch_parameters_partition_parameters(partial_channels: int) -> None:
    model = tiny(3, partial_channels=partial_channels)
    weights = {id(p) for p in model.weight_parameters()}
    arch = {id(p) for p in model.arch_parameters()}
    assert not weights & arch
    assert weights | arch == {id(p) for p in model.parameters()}
    assert len(weights) == len(model.weight_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    expected = ["alphas_normal", "alphas_reduce"]
    if partial_channels > 1:
        expected += ["betas_normal", "betas_reduce"]
    assert [names[id(p)] for p in model.arch_parameters()] == expected
    assert model.alphas_normal.shape == (14, 8)
    assert model.alphas_normal.abs().max() < 1e-2  # 1e-3 * randn


def test_arch_weights_are_softmaxed_and_detached() -> None:
    model = tiny(1)
    wn, wr = model.arch_weights()
    assert wn.shape == wr.shape == (14, 8)
    assert not wn.requires_grad
    torch.testing.assert_close(wn.sum(-1), torch.ones(14))
    torch.testing.assert_close(wn, F.softmax(model.alphas_normal.detach(), -1))


# -- forward / backward -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 30, 80)])
def test_forward_backward_reaches_alphas(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = tiny(shape[0])
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 3)
    F.cross_entropy(out, torch.tensor([0, 2])).backward()
    for a in model.arch_parameters():
        assert a.grad is not None and torch.isfinite(a.grad).all()
        assert torch.count_nonzero(a.grad) > 0.9 * a.numel()
    assert all(p.grad is not None for p in model.weight_parameters())


def test_regression_output() -> None:
    model = tiny(1, num_outputs=1)
    out = model(torch.randn(2, 1, 30, 80))
    assert out.shape == (2, 1)


def test_pad_to_multiple() -> None:
    x = torch.arange(30 * 80, dtype=torch.float32).reshape(1, 1, 30, 80) + 1
    y = pad_to_multiple(x, 4)
    assert y.shape == (1, 1, 32, 80)
    assert torch.equal(y[..., 1:31, :], x)
    assert y[..., 0, :].abs().sum() == 0 and y[..., 31, :].abs().sum() == 0
    assert pad_to_multiple(x, 2) is x
    z = pad_to_multiple(torch.ones(1, 1, 7, 5), 4)
    assert z.shape == (1, 1, 8, 8) and z.sum() == 35
    with pytest.raises(ValueError, match="got 0"):
        pad_to_multiple(x, 0)


def test_forward_pads_like_explicit_padding() -> None:
    torch.manual_seed(0)
    model = tiny(1).eval()
    x = torch.randn(2, 1, 30, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(pad_to_multiple(x, 4)), rtol=0, atol=0)


def test_none_skipped_matches_explicit_sum() -> None:
    """The mixed op equals sum_k w_k op_k(x), `none` included, as in the original."""
    torch.manual_seed(0)
    model = tiny(1)
    mixed = model.cells[0]._ops[3]
    x = torch.randn(2, 4, 8, 8)
    w = F.softmax(torch.randn(8), -1)
    expected = sum(wk * op(x) for wk, op in zip(w, mixed._ops))
    torch.testing.assert_close(mixed(x, w.unbind(0)), expected)


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = tiny(3)
    x = torch.randn(2, 3, 16, 16)
    y_ref = model(x)
    model_cl = tiny(3).to(memory_format=torch.channels_last)
    model_cl.load_state_dict(model.state_dict())
    y_cl = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y_cl, y_ref, rtol=1e-4, atol=1e-5)
    y_cl.sum().backward()
    assert model_cl.alphas_reduce.grad is not None


@pytest.mark.parametrize("partial_channels", [1, 2])
def test_bf16_autocast_cpu(partial_channels: int) -> None:
    torch.manual_seed(0)
    model = tiny(1, partial_channels=partial_channels)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        y32 = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
        loss = F.cross_entropy(y, torch.tensor([1, 2]))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    loss.backward()
    assert model.alphas_normal.grad.dtype == torch.float32
    assert torch.isfinite(model.alphas_normal.grad).all()
    assert (y.float() - y32).abs().max() < 0.1 * y32.abs().max() + 0.05


# -- PC-DARTS -----------------------------------------------------------------------------------
def test_channel_shuffle_is_pc_darts_permutation() -> None:
    x = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert channel_shuffle(x, 1).flatten().tolist() == list(range(8))


def test_partial_channels_forward_backward() -> None:
    torch.manual_seed(0)
    model = tiny(3, channels=8, partial_channels=4)
    # ops work on C/K channels: first normal cell edge sep_conv pointwise is 2x2
    assert model.cells[0]._ops[0]._ops[4].op[2].weight.shape == (2, 2, 1, 1)
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 3)
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    for p in model.arch_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0
    en, er = model.edge_weights()
    assert en.shape == (14,)
    torch.testing.assert_close(en[:2].sum(), torch.tensor(1.0))
    torch.testing.assert_close(en[2:5].sum(), torch.tensor(1.0))


def test_partial_channels_bypass_is_exact_on_reduction_edge() -> None:
    """The bypassed 3/4 of the channels reach the output max-pooled and shuffled, unchanged."""
    torch.manual_seed(0)
    model = tiny(1, channels=8, partial_channels=4)
    mixed = model.cells[1]._ops[0]  # reduction cell, stride-2 edge on 16 channels
    assert mixed.stride == 2
    x = torch.randn(2, 16, 8, 8)
    out = mixed(x, F.softmax(torch.randn(8), -1).unbind(0))
    assert out.shape == (2, 16, 4, 4)
    unshuffled = channel_shuffle(out, 16 // 4)  # inverse of a shuffle with K=4 groups of 4
    torch.testing.assert_close(unshuffled[:, 4:], F.max_pool2d(x[:, 4:], 2, 2))


def test_partial_channels_genotype_uses_edge_weights() -> None:
    pytest.importorskip("nas_core.genotypes", reason="nas_core.genotypes not written yet")
    torch.manual_seed(0)
    model = tiny(1, channels=8, partial_channels=4, steps=2, multiplier=2)
    with torch.no_grad():
        # every edge prefers sep_conv_3x3 equally; the betas alone decide the edges kept
        model.alphas_normal.zero_()
        model.alphas_normal[:, 4] = 1.0
        model.alphas_reduce.copy_(model.alphas_normal)
        # node 0 has edges 0,1; node 1 has edges 2,3,4: make inputs 1 and then 2 win
        model.betas_normal.copy_(torch.tensor([0.0, 1.0, -1.0, 0.0, 2.0]))
        model.betas_reduce.copy_(torch.tensor([1.0, 0.0, 2.0, 0.0, -1.0]))
    g = model.genotype()
    assert list(g.normal) == [("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
                              ("sep_conv_3x3", 2), ("sep_conv_3x3", 1)]
    assert list(g.reduce) == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                              ("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]
    assert tuple(g.normal_concat) == (2, 3)
    # without PC-DARTS the same alphas tie, and ties go to the lower input
    plain = tiny(1, channels=8, steps=2, multiplier=2)
    with torch.no_grad():
        plain.alphas_normal.copy_(model.alphas_normal)
        plain.alphas_reduce.copy_(model.alphas_reduce)
    assert list(plain.genotype().normal) == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                                             ("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]


def test_genotype_follows_alphas() -> None:
    pytest.importorskip("nas_core.genotypes", reason="nas_core.genotypes not written yet")
    model = tiny(1)
    with torch.no_grad():
        model.alphas_normal.zero_()
        model.alphas_normal[:, 7] = 2.0  # dil_conv_5x5 everywhere
        model.alphas_normal[:, 0] = 5.0  # `none` is never chosen
    g = model.genotype()
    assert all(op == "dil_conv_5x5" for op, _ in g.normal)
    assert [j for _, j in g.normal] == [0, 1, 0, 1, 0, 1, 0, 1]


# -- argument errors ----------------------------------------------------------------------------
def test_invalid_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="partial_channels=3 must divide channels=8"):
        SearchNetwork(1, 8, 2, 3, partial_channels=3)
    with pytest.raises(ValueError, match="layers must be a positive integer, got 0"):
        SearchNetwork(1, 8, 2, 0)
    with pytest.raises(ValueError, match="multiplier must be in 1..2"):
        SearchNetwork(1, 8, 2, 3, steps=2, multiplier=4)
    with pytest.raises(KeyError, match="bogus_op"):
        SearchNetwork(1, 8, 2, 3, primitives=("none", "bogus_op"))
    with pytest.raises(ValueError, match="expected input N x 1 x H x W, got \\(2, 3, 8, 8\\)"):
        tiny(1)(torch.randn(2, 3, 8, 8))


def test_custom_primitives_and_layout() -> None:
    model = SearchNetwork(1, 4, 2, 3, steps=2, multiplier=2,
                          primitives=("none", "max_pool_3x3", "sep_conv_7x7"))
    assert model.alphas_normal.shape == (5, 3)
    keys = model.state_dict().keys()
    assert "cells.0._ops.4._ops.1.1.running_mean" in keys  # pool + BN(affine=False)
    assert "cells.0._ops.4._ops.2.op.1.weight" in keys
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 2)
    assert math.isclose(float(model.arch_weights()[0].sum()), 5.0, rel_tol=1e-6)


# -- speed switches and op plans ----------------------------------------------------------------
def test_speed_switches_are_constructor_arguments() -> None:
    """``lean_batchnorm`` / ``fuse_node_sums`` reach every cell and mixed op, are read-only
    afterwards, and change nothing in the math."""
    torch.manual_seed(0)
    fast = tiny(1).double()
    plain = tiny(1, lean_batchnorm=False, fuse_node_sums=False).double()
    plain.load_state_dict(fast.state_dict())
    assert fast.lean_batchnorm and fast.fuse_node_sums
    assert not plain.lean_batchnorm and not plain.fuse_node_sums
    assert all(not cell.fuse_node_sums for cell in plain.cells)
    assert all(not mixed.lean_batchnorm for cell in plain.cells for mixed in cell._ops)
    with pytest.raises(AttributeError):
        plain.lean_batchnorm = True
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    y_fast, y_plain = fast(x), plain(x)
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-12, atol=1e-12)
    g_fast = torch.autograd.grad(y_fast.square().sum(), list(fast.parameters()))
    g_plain = torch.autograd.grad(y_plain.square().sum(), list(plain.parameters()))
    for a, b in zip(g_fast, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_submodule_replaced_after_construction_is_used() -> None:
    """The op plans follow a submodule assigned after construction (and after a forward) once
    ``replan()`` is called."""
    torch.manual_seed(0)
    model = tiny(1)
    mixed = model.cells[0]._ops[3]
    x = torch.randn(2, 4, 8, 8)
    w = F.softmax(torch.randn(8), -1)
    mixed(x, w.unbind(0))
    mixed._ops[4].op[0] = torch.nn.Softplus()  # sep_conv_3x3's leading ReLU
    mixed._ops[1][0] = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)  # max_pool_3x3
    mixed.replan()
    expected = sum(wk * op(x) for wk, op in zip(w, mixed._ops))
    torch.testing.assert_close(mixed(x, w.unbind(0)), expected)
