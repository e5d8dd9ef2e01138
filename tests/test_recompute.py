"""Activation recomputation (``recompute=True``) of both networks: the same gradients, BatchNorm
statistics, parameters and RNG state as without it, and less memory."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nas_core.model_eval as model_eval
import nas_core.model_search as model_search
from nas_core.architect import Architect, search_step
from nas_core.genotypes import DARTS_V2
from nas_core.memory import peak_bytes
from nas_core.model_eval import EvalNetwork
from nas_core.model_search import SearchNetwork
from nas_core.recompute import RestoredBuffers, cell_indices, checkpointed, recompute_plan

TOL_GRAD = 1e-10
TOL_STATE = 1e-12


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.norm()
    return float((a - b).norm() / scale) if scale > 0 else float(a.norm())


def assert_close(a: list[torch.Tensor | None], b: list[torch.Tensor | None], tol: float,
                 what: str) -> None:
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b)):
        if x is None or y is None:
            assert x is None and y is None, f"{what} {i}: one gradient is None"
            continue
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what} {i}"
        if x.is_floating_point():
            err = rel_err(x, y)
            assert err <= tol, f"{what} {i}: relative error {err:.3g}"
        else:
            assert torch.equal(x, y), f"{what} {i}"


def assert_same_state(a: nn.Module, b: nn.Module, tol: float = TOL_STATE) -> None:
    """Every parameter and buffer of ``a`` equals ``b``'s (same names)."""
    sa, sb = a.state_dict(keep_vars=False), b.state_dict(keep_vars=False)
    assert list(sa) == list(sb)
    for key in sa:
        assert_close([sa[key]], [sb[key]], tol, key)


def batch(n: int, c: int, size: int, classes: int, seed: int,
          dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, size, size, generator=g).to(dtype),
            torch.randint(0, classes, (n,), generator=g))


# -- the search network -------------------------------------------------------------------------
def search_pair(seed: int = 0, dtype: torch.dtype = torch.float64, in_channels: int = 1,
                channels: int = 4, layers: int = 4, every_cell: bool = True,
                **kw) -> tuple[SearchNetwork, SearchNetwork]:
    """The same supernet twice: without and with recomputation (every cell by default: layers=4
    is normal, reduction, reduction, normal after a reduction)."""
    torch.manual_seed(seed)
    plain = SearchNetwork(in_channels, channels, 3, layers, **kw).to(dtype)
    torch.manual_seed(seed)
    rec = SearchNetwork(in_channels, channels, 3, layers, recompute=True, **kw).to(dtype)
    rec.load_state_dict(plain.state_dict())
    if every_cell:
        rec.recompute_cells = range(layers)
    assert rec.recompute and not plain.recompute
    return plain, rec


def run_search_steps(model: SearchNetwork, order: int, steps: int, dtype: torch.dtype,
                     in_channels: int, size: int, channels_last: bool = False,
                     amp: bool = False) -> dict:
    """``steps`` search steps from a fixed RNG state; the gradients of the last, the RNG state."""
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, F.cross_entropy, w_opt, order=order, arch_lr=3e-2)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    torch.manual_seed(123)
    for i in range(steps):
        xt, yt = batch(4, in_channels, size, 3, seed=10 + 2 * i, dtype=dtype)
        xv, yv = batch(4, in_channels, size, 3, seed=11 + 2 * i, dtype=dtype)
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
            xv = xv.contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if amp
               else torch.autocast("cpu", enabled=False))
        with ctx:
            loss, _ = search_step(model, architect, w_opt, (xt, yt), (xv, yv), 0.05, 5.0)
    return {"loss": loss,
            "alpha_grads": [a.grad for a in model.arch_parameters()],
            "weight_grads": [p.grad for p in model.weight_parameters()],
            "rng": torch.get_rng_state()}


@pytest.mark.parametrize("order,partial", [(1, 1), (2, 1), (1, 4)],
                         ids=["first-order", "second-order", "pc-darts"])
def test_search_step_same_gradients_state_and_rng(order: int, partial: int) -> None:
    plain, rec = search_pair(channels=8 if partial > 1 else 4, partial_channels=partial)
    a = run_search_steps(plain, order, 2, torch.float64, 1, 8)
    b = run_search_steps(rec, order, 2, torch.float64, 1, 8)
    assert_close(b["alpha_grads"], a["alpha_grads"], TOL_GRAD, "alpha grad")
    assert_close(b["weight_grads"], a["weight_grads"], TOL_GRAD, "weight grad")
    assert any(g is not None and g.abs().sum() > 0 for g in a["alpha_grads"])
    assert_same_state(rec, plain)  # parameters and BatchNorm buffers after two steps
    assert torch.equal(a["rng"], b["rng"])
    assert rel_err(b["loss"], a["loss"]) <= TOL_STATE


def test_search_running_stats_updated_once() -> None:
    """One training forward + backward: every BatchNorm counted exactly once; the statistics
    as without recomputation; also for momentum=None (the counter enters the average)."""
    for momentum in (0.1, None):
        plain, rec = search_pair(layers=3)
        for m in (*plain.modules(), *rec.modules()):
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = momentum
        x, y = batch(4, 1, 8, 3, seed=3)
        for model in (plain, rec):
            F.cross_entropy(model(x), y).backward()
        counts = {int(m.num_batches_tracked) for m in rec.modules()
                  if isinstance(m, nn.BatchNorm2d)}
        assert counts == {1}
        assert_same_state(rec, plain)


@pytest.mark.parametrize("switches", [{}, {"lean_batchnorm": False, "fuse_node_sums": False}],
                         ids=["default", "plain-paths"])
def test_search_grad_and_backward_inputs_directly(switches: dict) -> None:
    """``torch.autograd.grad(loss, alphas)`` and ``loss.backward(inputs=weights)`` as the
    architect calls them, plus a second backward through a retained graph; also with the
    speed switches off."""
    plain, rec = search_pair(**switches)
    x, y = batch(4, 1, 8, 3, seed=5)
    grads, wgrads = [], []
    for model in (plain, rec):
        loss = F.cross_entropy(model(x), y)
        grads.append(torch.autograd.grad(loss, model.arch_parameters()))
        loss = F.cross_entropy(model(x), y)
        loss.backward(inputs=model.weight_parameters(), retain_graph=True)
        loss.backward(inputs=model.weight_parameters())  # recomputed again: accumulates
        wgrads.append([p.grad for p in model.weight_parameters()])
    assert_close(list(grads[1]), list(grads[0]), TOL_GRAD, "alpha grad")
    assert_close(wgrads[1], wgrads[0], TOL_GRAD, "weight grad")
    assert_same_state(rec, plain)


def test_search_default_plan_same_gradients() -> None:
    """The default choice of cells (not every cell) gives the same results too."""
    plain, rec = search_pair(layers=5, every_cell=False)
    assert rec.recompute_cells == (0, 1)
    a = run_search_steps(plain, 1, 1, torch.float64, 1, 8)
    b = run_search_steps(rec, 1, 1, torch.float64, 1, 8)
    assert_close(b["alpha_grads"], a["alpha_grads"], TOL_GRAD, "alpha grad")
    assert_close(b["weight_grads"], a["weight_grads"], TOL_GRAD, "weight grad")
    assert_same_state(rec, plain)


def test_search_replaced_submodule_and_replan() -> None:
    """A submodule assigned after construction and a setting changed in place, each followed
    by ``replan()``, keep working under recomputation."""
    plain, rec = search_pair(layers=3)
    for model in (plain, rec):
        model.cells[0]._ops[0]._ops[4].op[0] = nn.Softplus()  # sep_conv_3x3's first ReLU
        model.cells[1].preprocess1.op[0] = nn.Softplus()
        model.replan()
    a = run_search_steps(plain, 1, 1, torch.float64, 1, 8)
    b = run_search_steps(rec, 1, 1, torch.float64, 1, 8)
    assert_close(b["weight_grads"], a["weight_grads"], TOL_GRAD, "weight grad")
    assert_close(b["alpha_grads"], a["alpha_grads"], TOL_GRAD, "alpha grad")
    for model in (plain, rec):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-3
        model.replan()
    a = run_search_steps(plain, 1, 1, torch.float64, 1, 8)
    b = run_search_steps(rec, 1, 1, torch.float64, 1, 8)
    assert_close(b["weight_grads"], a["weight_grads"], TOL_GRAD, "weight grad")
    assert_same_state(rec, plain)


def test_search_eval_and_no_grad_do_not_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    plain, rec = search_pair(layers=3)
    calls = []

    def spy(module, *args, **kw):
        calls.append(module)
        return checkpointed(module, *args, **kw)

    monkeypatch.setattr(model_search, "checkpointed", spy)
    x, _ = batch(4, 1, 8, 3, seed=7)
    for model in (plain, rec):
        model.eval()
    assert torch.equal(rec(x), plain(x)) and not calls
    for model in (plain, rec):
        model.train()
    with torch.no_grad():
        out = rec(x), plain(x)
    assert torch.equal(*out) and not calls
    assert_same_state(rec, plain)
    rec(x)
    assert len(calls) == len(rec.cells)


def test_search_state_dict_and_plan() -> None:
    plain, rec = search_pair(layers=5, every_cell=False)
    assert list(rec.state_dict()) == list(plain.state_dict())
    assert plain.recompute_cells == () and rec.recompute_cells == (0, 1)
    rec.recompute_cells = [4, 2, 2]
    assert rec.recompute_cells == (2, 4)
    with pytest.raises(ValueError, match="out of range"):
        rec.recompute_cells = [5]
    rec.recompute_cells = ()
    assert not rec.recompute


def test_recompute_plan() -> None:
    assert recompute_plan([]) == ()
    assert recompute_plan([1.0]) == (0,)
    # DARTS layouts: channels x pixels per cell (5 cells: the last three equal the first)
    assert recompute_plan([8, 4, 4, 2, 2]) == (0, 1)
    assert recompute_plan([16, 16, 8, 8, 8, 4, 4, 4]) == (0, 1, 2, 3, 4)
    assert recompute_plan([1, 1, 1]) == (0, 1)
    assert cell_indices(range(3), 3) == (0, 1, 2)
    with pytest.raises(ValueError):
        cell_indices([-1], 3)


def test_restored_buffers_reusable() -> None:
    bn = nn.BatchNorm2d(3)
    before = copy.deepcopy(bn.state_dict())
    ctx = RestoredBuffers(bn)
    for _ in range(2):
        with ctx:
            bn(torch.randn(4, 3, 2, 2))
            assert int(bn.num_batches_tracked) == 1
        for k, v in bn.state_dict().items():
            assert torch.equal(v, before[k])


# -- the evaluation network ---------------------------------------------------------------------
def eval_pair(seed: int = 0, dtype: torch.dtype = torch.float64, layers: int = 5,
              drop_path_prob: float = 0.3, every_cell: bool = True
              ) -> tuple[EvalNetwork, EvalNetwork]:
    torch.manual_seed(seed)
    plain = EvalNetwork(DARTS_V2, 3, 4, 3, layers, auxiliary=True,
                        drop_path_prob=drop_path_prob).to(dtype)
    torch.manual_seed(seed)
    rec = EvalNetwork(DARTS_V2, 3, 4, 3, layers, auxiliary=True, drop_path_prob=drop_path_prob,
                      recompute=True).to(dtype)
    rec.load_state_dict(plain.state_dict())
    if every_cell:
        rec.recompute_cells = range(layers)
    return plain, rec


def run_train_steps(model: EvalNetwork, steps: int, dtype: torch.dtype, size: int = 16,
                    channels_last: bool = False, amp: bool = False) -> dict:
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    torch.manual_seed(321)
    for i in range(steps):
        x, y = batch(4, 3, size, 3, seed=20 + i, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if amp
               else torch.autocast("cpu", enabled=False))
        with ctx:
            logits, logits_aux = model(x)
            loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(logits_aux, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    return {"loss": loss.detach(), "grads": [p.grad for p in model.parameters()],
            "rng": torch.get_rng_state()}


def test_eval_train_step_same_gradients_state_and_rng() -> None:
    plain, rec = eval_pair()
    a = run_train_steps(plain, 2, torch.float64)
    b = run_train_steps(rec, 2, torch.float64)
    assert_close(b["grads"], a["grads"], TOL_GRAD, "grad")
    assert_same_state(rec, plain)
    assert torch.equal(a["rng"], b["rng"])
    assert rel_err(b["loss"], a["loss"]) <= TOL_STATE
    # the drop-path masks matter: other masks (another RNG state) give other gradients
    torch.manual_seed(0)
    other, _ = eval_pair()
    torch.manual_seed(999)
    x, y = batch(4, 3, 16, 3, seed=20)
    logits, aux = other(x)
    loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
    loss.backward()
    assert max(rel_err(p.grad, q) for p, q in zip(other.parameters(), a["grads"])
               if q is not None) > 1e-3


def test_eval_no_grad_and_eval_mode_do_not_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    plain, rec = eval_pair(layers=3)
    calls = []

    def spy(module, *args, **kw):
        calls.append(module)
        return checkpointed(module, *args, **kw)

    monkeypatch.setattr(model_eval, "checkpointed", spy)
    x, _ = batch(2, 3, 16, 3, seed=4)
    plain.eval(), rec.eval()
    assert torch.equal(rec(x), plain(x)) and not calls
    plain.train(), rec.train()
    with torch.no_grad():
        torch.manual_seed(1)
        out_p = plain(x)
        torch.manual_seed(1)
        out_r = rec(x)
    assert torch.equal(out_p[0], out_r[0]) and not calls
    rec(x)
    assert len(calls) == 3


def test_eval_default_plan() -> None:
    net = EvalNetwork(DARTS_V2, 3, 16, 10, 8, recompute=True)
    assert net.recompute_cells == (0, 1, 2, 3, 4)
    assert EvalNetwork(DARTS_V2, 3, 16, 10, 8).recompute_cells == ()
    assert list(net.state_dict()) == list(EvalNetwork(DARTS_V2, 3, 16, 10, 8).state_dict())


# -- memory --------------------------------------------------------------------------------------
def training_peak(build: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor) -> int:
    def fn() -> None:
        model = build()
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        F.cross_entropy(logits, y).backward()

    return peak_bytes(fn, torch.device("cpu"))


@pytest.mark.parametrize("net", ["search", "eval"])
def test_recompute_lowers_peak_memory(net: str) -> None:
    torch.manual_seed(0)
    x, y = batch(8, 3, 16, 3, seed=1, dtype=torch.float32)
    peaks = {}
    for rc in (False, True):
        if net == "search":
            def build(rc=rc):
                return SearchNetwork(3, 8, 3, 5, recompute=rc)
        else:
            def build(rc=rc):
                return EvalNetwork(DARTS_V2, 3, 8, 3, 8, drop_path_prob=0.2, recompute=rc)
        peaks[rc] = training_peak(build, x, y)
    assert peaks[True] < 0.8 * peaks[False], peaks


# -- bf16 autocast and channels_last -------------------------------------------------------------
@pytest.mark.parametrize("mode", ["channels_last", "bf16"])
def test_search_channels_last_and_bf16(mode: str) -> None:
    plain, rec = search_pair(dtype=torch.float32, in_channels=3, layers=3)
    kw = {"channels_last": True} if mode == "channels_last" else {"amp": True}
    a = run_search_steps(plain, 1, 1, torch.float32, 3, 8, **kw)
    b = run_search_steps(rec, 1, 1, torch.float32, 3, 8, **kw)
    assert torch.isfinite(b["loss"])
    for g in b["alpha_grads"] + b["weight_grads"]:
        assert g is None or torch.isfinite(g).all()
    assert_close(b["alpha_grads"], a["alpha_grads"], 1e-5, "alpha grad")
    assert_close(b["weight_grads"], a["weight_grads"], 1e-5, "weight grad")
    assert_same_state(rec, plain, 1e-6)
    assert torch.equal(a["rng"], b["rng"])


@pytest.mark.parametrize("mode", ["channels_last", "bf16"])
def test_eval_channels_last_and_bf16(mode: str) -> None:
    plain, rec = eval_pair(dtype=torch.float32, layers=3)
    kw = {"channels_last": True} if mode == "channels_last" else {"amp": True}
    a = run_train_steps(plain, 1, torch.float32, **kw)
    b = run_train_steps(rec, 1, torch.float32, **kw)
    assert torch.isfinite(b["loss"])
    assert_close(b["grads"], a["grads"], 1e-5, "grad")
    assert_same_state(rec, plain, 1e-6)
    assert torch.equal(a["rng"], b["rng"])
