"""The CUDA-graph search step: its checks (everywhere) and, on a GPU, that replaying the captured
step computes what the eager step computes (weights, alphas, optimizer state, BN statistics)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nas_core.architect import Architect, search_step
from nas_core.config import ConfigError, validate_stage_cfg
from nas_core.graphs import GraphedSearchStep
from nas_core.model_search import SearchNetwork
from nas_core.stages import run_search

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def setup(order: int = 1, device: str = "cpu", seed: int = 0, channels_last: bool = False):
    torch.manual_seed(seed)
    model = SearchNetwork(3, 8, 5, 3).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, F.cross_entropy, w_opt, order=order)
    return model, architect, w_opt


def test_refuses_what_cannot_be_captured() -> None:
    model, architect, w_opt = setup()
    model.cells[1]._ops[2]._ops[1][1].momentum = None
    with pytest.raises(ValueError, match=r"BatchNorm 'cells\.1\._ops\.2\._ops\.1\.1' has "
                                         r"momentum=None"):
        GraphedSearchStep(model, architect, w_opt, 5.0)
    model, architect, w_opt = setup()
    with pytest.raises(ValueError, match="warmup must be >= 1, got 0"):
        GraphedSearchStep(model, architect, w_opt, 5.0, warmup=0)
    with pytest.raises(ValueError, match=r"^cuda_graphs: needs the model on a CUDA device, "
                                         r"got cpu$"):
        GraphedSearchStep(model, architect, w_opt, 5.0)


def test_config_and_stage_refuse_cuda_graphs_where_impossible(tmp_path) -> None:
    assert validate_stage_cfg("search", {})["cuda_graphs"] is False
    assert validate_stage_cfg("search", {"cuda_graphs": True, "order": 2})["cuda_graphs"]
    with pytest.raises(ConfigError, match=r"^search\.cuda_graphs: needs a CUDA device, "
                                          r"running on cpu$"):
        run_search({"name": "digits"}, {"cuda_graphs": True, "epochs": 1}, tmp_path / "s",
                   device="cpu")
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob("*.json"))


def batches(device: str, sizes=(6, 6, 6, 6, 6, 4, 6, 6)):
    g = torch.Generator().manual_seed(1)
    out = []
    for n in sizes:
        out.append(tuple((torch.randn(n, 3, 16, 16, generator=g).to(device),
                          torch.randint(0, 5, (n,), generator=g).to(device)) for _ in range(2)))
    return out


@cuda
@pytest.mark.parametrize("order,channels_last", [(1, False), (1, True), (2, True)],
                         ids=["order1-contiguous", "order1-channels_last", "order2-channels_last"])
def test_graph_replay_equals_eager_steps(order: int, channels_last: bool) -> None:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    eager = setup(order, device="cuda", channels_last=channels_last)
    graphed = setup(order, device="cuda", channels_last=channels_last)
    step = GraphedSearchStep(*graphed, grad_clip=5.0, warmup=2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # a smaller batch (eager) and a new learning rate (captured again) on the way
    for i, (bt, bv) in enumerate(batches("cuda")):
        bt = (bt[0].contiguous(memory_format=fmt), bt[1])
        bv = (bv[0].contiguous(memory_format=fmt), bv[1])
        lr = 0.025 if i < 6 else 0.02  # the next epoch: captured again
        for opt in (eager[2], graphed[2]):
            for group in opt.param_groups:
                group["lr"] = lr
        loss_e, logits_e = search_step(eager[0], eager[1], eager[2], bt, bv, lr, 5.0)
        loss_g, logits_g = step(bt, bv, lr)
        torch.testing.assert_close(loss_g, loss_e, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits_g, logits_e, rtol=1e-4, atol=1e-5)
        if i == 5:  # after the eager step the gradients are the graph's tensors again
            assert step._grads and all(p.grad is g for p, g in step._grads)
    assert (step.eager_steps, step.graph_steps) == (3, 5)
    for (name, a), b in zip(graphed[0].state_dict().items(), eager[0].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    for opt_g, opt_e in ((graphed[2], eager[2]), (graphed[1].arch_optimizer,
                                                  eager[1].arch_optimizer)):
        for p_g, p_e in zip(opt_g.param_groups[0]["params"], opt_e.param_groups[0]["params"]):
            for key, value in opt_e.state[p_e].items():
                torch.testing.assert_close(opt_g.state[p_g][key].float().to(value.device),
                                           value.float(), rtol=1e-4, atol=1e-6)


@cuda
def test_graph_replay_in_bf16_autocast_stays_finite_and_learns() -> None:
    model, architect, w_opt = setup(device="cuda", channels_last=True)
    step = GraphedSearchStep(model, architect, w_opt, 5.0, amp_dtype=torch.bfloat16, warmup=1)
    before = [a.detach().clone() for a in model.arch_parameters()]
    bt, bv = batches("cuda", sizes=(6,))[0]
    bt = (bt[0].contiguous(memory_format=torch.channels_last), bt[1])
    bv = (bv[0].contiguous(memory_format=torch.channels_last), bv[1])
    losses = [float(step(bt, bv, 0.025)[0]) for _ in range(6)]
    assert step.graph_steps == 5
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # the same batch again and again: the loss falls
    assert all(not torch.equal(a, b) for a, b in zip(model.arch_parameters(), before))


@cuda
def test_search_stage_with_cuda_graphs_matches_eager(tmp_path) -> None:
    """The stage as users run it (DataLoader workers pinning memory during the captures)."""
    import json

    cfg = dict(epochs=2, batch_size=16, layers=3, init_channels=4, steps=2, multiplier=2,
               max_steps_per_epoch=8, num_workers=2, amp="off", channels_last=True)
    eager = run_search({"name": "digits"}, cfg, tmp_path / "eager", device="cuda")
    graphed = run_search({"name": "digits"}, dict(cfg, cuda_graphs=True), tmp_path / "graphed",
                         device="cuda")
    a = json.loads((tmp_path / "eager" / "alphas.json").read_text())
    b = json.loads((tmp_path / "graphed" / "alphas.json").read_text())
    for cell in ("normal", "reduce"):
        torch.testing.assert_close(torch.tensor(b["alphas"][cell]),
                                   torch.tensor(a["alphas"][cell]), rtol=1e-3, atol=1e-5)
    assert graphed["train"]["loss"] == pytest.approx(eager["train"]["loss"], rel=1e-3)


def test_graph_key_follows_what_the_capture_bakes_in() -> None:
    from nas_core.graphs import _graph_key, _make_capturable, _signature

    model, architect, w_opt = setup()
    opts = (w_opt, architect.arch_optimizer)
    x = torch.randn(4, 3, 8, 8)
    y = torch.zeros(4, dtype=torch.long)
    key = _graph_key(_signature(x, y), opts, 5.0, 0.025)
    assert _graph_key(_signature(x.clone(), y.clone()), opts, 5.0, 0.025) == key
    assert _graph_key(_signature(x.contiguous(memory_format=torch.channels_last), y), opts,
                      5.0, 0.025) != key
    assert _graph_key(_signature(x[:3], y[:3]), opts, 5.0, 0.025) != key
    assert _graph_key(_signature(x, y), opts, 1.0, 0.025) != key
    assert _graph_key(_signature(x, y), opts, 5.0, 0.02) != key  # the virtual step's lr
    assert _graph_key(_signature(x, y), opts, 5.0, 0.025, 0.5) != key  # beta-DARTS' weight
    w_opt.param_groups[0]["lr"] = 0.02  # the next epoch of the cosine schedule
    assert _graph_key(_signature(x, y), opts, 5.0, 0.025) != key
    _make_capturable(architect.arch_optimizer)
    assert all(g["capturable"] for g in architect.arch_optimizer.param_groups)
    with pytest.raises(ValueError, match="SGD has no capturable mode"):
        _make_capturable(w_opt)
