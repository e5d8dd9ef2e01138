"""Evaluation network: original state-dict layout, parameter counts, loading, forward passes."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from darts_shared import Layout, read_layout, state_dict_layout
from nas_core.genotypes import get_genotype, list_genotypes
from nas_core.model_eval import AuxiliaryHead, EvalNetwork, count_parameters, drop_path

TINY = dict(channels=4, layers=3)  # reductions at cells 1 and 2, auxiliary head after cell 2


@pytest.fixture(scope="module")
def darts_v2_cifar() -> EvalNetwork:
    return EvalNetwork(get_genotype("DARTS_V2"), 3, 36, 10, 20, auxiliary=True)


# -- layout and parameter counts -------------------------------------------------------------
def test_darts_v2_cifar_layout_and_counts(darts_v2_cifar):
    assert state_dict_layout(darts_v2_cifar) == read_layout("darts_v2_cifar_state_dict.tsv")
    assert count_parameters(darts_v2_cifar) == 3_349_342
    assert count_parameters(darts_v2_cifar, exclude_auxiliary=False) == 3_825_768


@pytest.mark.parametrize("fixture, genotype, outputs, layers, count", [
    ("fork_mnist_eval_state_dict.tsv", "MNIST", 10, 20, 3_279_358),
    ("fork_graphene_eval_L8_state_dict.tsv", "GRAPHENE", 1, 8, 780_949),
])
def test_fork_layouts_and_counts(fixture, genotype, outputs, layers, count):
    model = EvalNetwork(get_genotype(genotype), 1, 36, outputs, layers, auxiliary=False)
    assert state_dict_layout(model) == read_layout(fixture)
    assert count_parameters(model) == count_parameters(model, exclude_auxiliary=False) == count


# -- loading checkpoints ---------------------------------------------------------------------
def _random_state_dict(layout: Layout) -> "OrderedDict[str, torch.Tensor]":
    gen = torch.Generator().manual_seed(0)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, dims in layout:
        if dims == ():  # num_batches_tracked
            sd[key] = torch.tensor(7, dtype=torch.long)
        else:
            sd[key] = torch.rand(*dims, generator=gen) + 0.5
    return sd


def test_fixture_shaped_state_dict_loads_strict(darts_v2_cifar,
                                                tmp_path: Path):
    sd = _random_state_dict(read_layout("darts_v2_cifar_state_dict.tsv"))
    torch.save(sd, tmp_path / "full.pt")
    old = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in darts_v2_cifar.modules())
    assert len(sd) - len(old) == n_bn == 241  # one entry per BatchNorm
    torch.save(old, tmp_path / "old.pt")

    model = darts_v2_cifar
    result = model.load_state_dict(torch.load(tmp_path / "full.pt", weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.classifier.weight, sd["classifier.weight"])
    assert int(model.stem[1].num_batches_tracked) == 7

    model.load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True), strict=True)
    assert torch.equal(model.cells[19]._ops[7].op[2].weight, sd["cells.19._ops.7.op.2.weight"])
    assert int(model.stem[1].num_batches_tracked) == 0  # filled in
    # a plain dict without metadata: torch's BatchNorm fills the entries in by itself
    nn.Module.load_state_dict(model, dict(old), strict=True)


def test_missing_num_batches_tracked_with_modern_metadata():
    model = EvalNetwork(get_genotype("DARTS_V2"), 1, 4, 3, 3, auxiliary=True)
    sd = model.state_dict()
    stripped = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    stripped._metadata = sd._metadata  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        nn.Module.load_state_dict(model, stripped, strict=True)  # torch alone refuses
    model.load_state_dict(stripped, strict=True)  # EvalNetwork fills them in
    # a genuinely missing layer is still an error
    del stripped["classifier.bias"]
    with pytest.raises(RuntimeError, match="classifier.bias"):
        model.load_state_dict(stripped, strict=True)


# -- forward passes -----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 30, 80)])
def test_forward_shapes_with_auxiliary(shape):
    torch.manual_seed(0)
    model = EvalNetwork(get_genotype("DARTS_V2"), shape[0], num_outputs=3, auxiliary=True,
                        drop_path_prob=0.2, **TINY)
    x = torch.randn(2, *shape, requires_grad=True)
    logits, aux = model(x)
    assert logits.shape == aux.shape == (2, 3)
    (logits.sum() + 0.4 * aux.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert model.auxiliary_head.features[2].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits = model(x)  # inference: the logits tensor, no auxiliary head
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)


def test_padding_of_30x80_equals_explicit_padding():
    torch.manual_seed(0)
    model = EvalNetwork(get_genotype("GRAPHENE"), 1, num_outputs=1, **TINY).eval()
    x = torch.randn(2, 1, 30, 80)
    padded = torch.zeros(2, 1, 32, 80)
    padded[:, :, 1:31] = x  # one zero row on top, one at the bottom
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded))



def test_inference_returns_a_tensor_that_traces_and_exports():
    """Eval mode gives the logits tensor (training keeps ``(logits, aux)`` for the loss), so
    torch.jit.trace and torch.export take the network as it is; ``logits`` works in both."""
    torch.manual_seed(0)
    model = EvalNetwork(get_genotype("DARTS_V2"), 1, num_outputs=3, auxiliary=True,
                        drop_path_prob=0.2, **TINY)
    x = torch.randn(2, 1, 8, 8)
    logits, aux = model(x)
    assert aux is not None and logits.shape == aux.shape == (2, 3)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(model.logits(x), ref, rtol=0, atol=0)
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), ref, rtol=0, atol=0)
        torch.testing.assert_close(traced(x[:1]), ref[:1])  # another batch size
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), ref)
    model.train()
    assert isinstance(model(x), tuple) and not isinstance(model.logits(x), tuple)

def test_auxiliary_head_matches_original_on_8x8():
    torch.manual_seed(0)
    head = AuxiliaryHead(16, 5).eval()
    original = nn.Sequential(
        nn.ReLU(), nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
        nn.Conv2d(16, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU()).eval()
    original.load_state_dict(head.features.state_dict())
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = head.classifier(original(x).flatten(1))
        torch.testing.assert_close(head(x), expected, rtol=0, atol=0)
        assert head(torch.randn(2, 16, 7, 7)).shape == (2, 5)  # the original crashes here
        assert head(torch.randn(2, 16, 8, 20)).shape == (2, 5)


def test_drop_path_is_out_of_place_and_per_sample():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 2, 2)
    before = x.clone()
    y = drop_path(x, 0.5)
    assert torch.equal(x, before)
    kept = (y.flatten(1) != 0).any(dim=1)
    assert 10 < int(kept.sum()) < 54
    torch.testing.assert_close(y[kept], x[kept] * 2.0)
    assert torch.equal(y[~kept], torch.zeros_like(y[~kept]))
    assert drop_path(x, 0.0) is x


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = EvalNetwork(get_genotype("DARTS_V2"), 1, num_outputs=3, **TINY)
    x = torch.randn(4, 1, 8, 8)
    model.drop_path_prob = 0.0
    torch.manual_seed(1)
    ref = model(x)[0]
    torch.manual_seed(2)
    assert torch.equal(model(x)[0], ref)  # no randomness without drop-path
    model.drop_path_prob = 0.5
    torch.manual_seed(1)
    assert not torch.allclose(model(x)[0], ref)
    model.eval()
    with torch.no_grad():
        model.drop_path_prob = 0.0
        ref_eval = model(x)
        model.drop_path_prob = 0.5
        assert torch.equal(model(x), ref_eval)


@pytest.mark.parametrize("name", list_genotypes())
def test_every_published_genotype_builds_and_runs(name):
    torch.manual_seed(0)
    model = EvalNetwork(get_genotype(name), 1, num_outputs=2, auxiliary=True, drop_path_prob=0.1,
                        **TINY)
    logits, aux = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == aux.shape == (2, 2)
    assert torch.isfinite(logits).all()


def test_bf16_autocast_cpu():
    model = EvalNetwork(get_genotype("DARTS_V2"), 1, num_outputs=3, auxiliary=True, **TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, aux = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == aux.shape == (2, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"expected input N x 1 x H x W, got \(2, 3, 8, 8\)"):
        EvalNetwork(get_genotype("DARTS_V2"), 1, num_outputs=3, **TINY)(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"layers must be >= 1, got 0"):
        EvalNetwork(get_genotype("DARTS_V2"), 1, 4, 3, 0)
    with pytest.raises(TypeError, match="genotype must be a Genotype"):
        EvalNetwork("DARTS_V2", 1, 4, 3, 3)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_backward_with_drop_path():
    model = EvalNetwork(get_genotype("DARTS_V2"), 3, num_outputs=3, auxiliary=True,
                        drop_path_prob=0.3, **TINY).cuda()
    logits, aux = model(torch.randn(2, 3, 32, 32, device="cuda"))
    (logits.sum() + aux.sum()).backward()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, _ = model(torch.randn(2, 3, 30, 80, device="cuda"))
    assert logits.shape == (2, 3)
