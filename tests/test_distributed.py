"""Data-parallel runs on the CPU (torch.distributed, gloo): N processes with batch b each equal
one process with batch N*b; only rank 0 writes; a killed 2-process run resumes to the same
bytes; a failing rank stops the job with its one-line error."""

from __future__ import annotations

import json

import pytest
import torch

from nas_core.config import ConfigError
from nas_core.distributed import DistributedError, World, current_world, launch
from nas_core.genotypes import get_genotype
from nas_core.model_eval import EvalNetwork
from nas_core.model_search import SearchNetwork
from nas_core.stages import run_genotype, run_train
from nas_core.tasks import get_task
from test_stages import DIGITS, SEARCH_KILL, TRAIN_KILL, _cli, _sets

TASK = get_task("classification")


def _batch(n: int, channels: int = 1, size: int = 8, classes: int = 10):
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, channels, size, size, generator=g), torch.randint(0, classes, (n,),
                                                                           generator=g)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def _rel(a: list, b: list) -> float:
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


def _eval_net_step(n: int) -> dict:
    """One SGD step of the evaluation network on this rank's part of a global batch of ``n``
    (BatchNorm on running statistics, so the math is the same however the batch is cut)."""
    world = current_world()
    torch.manual_seed(0)
    model = EvalNetwork(get_genotype("DARTS_V2"), 1, 8, 10, 3).double()
    model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    x, y = _batch(n)
    part = world.shard(range(n))
    logits = model(x[part].double())
    TASK.loss(logits, y[part]).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    world.average([p.grad for p in params], world.share(n))
    grads = _flat(p.grad for p in params)
    opt.step()
    return {"grads": grads.tolist(), "weights": _flat(model.parameters()).tolist()}


def _search_step(n: int, guarded: bool = False) -> dict:
    """One first-order DARTS search step (alphas on the validation batch, weights on the
    training batch) on this rank's parts of global batches of ``n``; ``guarded``: second order
    under every training-time guard at once (beta-DARTS, DARTS-, SDARTS-RS, mid-search)."""
    from nas_core.architect import Architect
    from nas_core.graphs import EagerSearchStep
    from nas_core.guards import Guards

    world = current_world()
    torch.manual_seed(0)
    model = SearchNetwork(1, 4, 10, 3, steps=2, multiplier=2, aux_skip=guarded).double()
    model.eval()
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.05, momentum=0.9,
                            weight_decay=3e-4)
    architect = Architect(model, TASK.loss, w_opt, order=2 if guarded else 1)
    share = world.share(n)
    architect.grad_reduce = lambda grads, _which: world.average(grads, share)
    keys = {"beta_decay": 25.0, "aux_skip": True, "sdarts_epsilon": 0.3} if guarded else {}
    guards = Guards({"epochs": 6, **keys}, model, architect, noise_seed=7)
    guards.begin_epoch(3)
    step = EagerSearchStep(model, architect, w_opt, grad_clip=5.0,
                           perturbation=guards.perturbation)
    xt, yt = _batch(n)
    xv, yv = _batch(n, size=8)
    xv = xv.flip(0)
    part = world.shard(range(n))
    step((xt[part].double(), yt[part]), (xv[part].double(), yv[part]), 0.05)
    return {"alpha_grads": _flat(a.grad for a in model.arch_parameters()).tolist(),
            "alphas": _flat(model.arch_parameters()).tolist(),
            "weights": _flat(model.weight_parameters()).tolist()}


def test_world_shards_cover_each_batch_once():
    for n in (1, 5, 8, 31):
        parts = [World(rank=r, size=3).shard(list(range(n))) for r in range(3)]
        assert sum(parts, []) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert sum(World(rank=r, size=3).share(n) for r in range(3)) == pytest.approx(1.0)


@pytest.mark.parametrize("step, args", [(_eval_net_step, ()), (_search_step, ()),
                                        (_search_step, (True,))],
                         ids=["eval-net", "search", "guarded-search"])
def test_two_processes_equal_one_with_the_whole_batch(step, args):
    one = step(16, *args)
    two = launch(step, 2, 16, *args)
    for key in one:
        assert _rel(two[key], one[key]) < 1e-5, key


def _failing(n: int) -> None:
    if current_world().rank == 1:
        raise ConfigError(f"bad value {n} on the second rank")
    torch.distributed.barrier()  # rank 0 waits for rank 1, which never comes


def _crashing(n: int) -> None:
    if current_world().rank == 0:
        raise KeyError(n)
    torch.distributed.barrier()


def test_a_failing_rank_stops_the_job_with_its_error():
    with pytest.raises(DistributedError, match=r"^rank 1 of 2: bad value 7 on the second rank$"):
        launch(_failing, 2, 7)
    # an unexpected error keeps its traceback
    with pytest.raises(RuntimeError, match=r"(?s)^rank 0 of 2 failed:.*KeyError: 7"):
        launch(_crashing, 2, 7)


@pytest.mark.slow
def test_two_process_train_is_within_noise_of_one(tmp_path):
    run_genotype("DARTS_V2", tmp_path / "genotype.json")
    cfg = dict(epochs=6, batch_size=32, layers=3, init_channels=8, valid_fraction=0.2,
               drop_path_prob=0.0, num_workers=0)
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"train{nproc}"
        results[nproc] = run_train(DIGITS, cfg, tmp_path / "genotype.json", out, device="cpu",
                                   nproc=nproc)
        assert (out / "model.pt").is_file() and (out / "metrics.csv").is_file()
    one, two = results[1]["valid"]["top1"], results[2]["valid"]["top1"]
    assert one > 60 and two > 60 and abs(one - two) < 10, (one, two)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "search"])
def test_two_process_run_killed_and_rerun_is_byte_identical(tmp_path, stage):
    cfg = TRAIN_KILL if stage == "train" else SEARCH_KILL
    outputs = (("model.pt", "history.json") if stage == "train"
               else ("alphas.json", "supernet.pt", "history.json"))
    run_genotype("DARTS_V2", tmp_path / "genotype.json")
    extra = ["--genotype", str(tmp_path / "genotype.json")] if stage == "train" else []
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    args = [stage, "--dataset", "digits", *_sets(stage, cfg), "--device", "cpu",
            "--nproc", "2", *extra]
    proc = _cli(args + ["--out", str(ref)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # killed mid-epoch 1 (3 steps per epoch)
    proc = _cli(args + ["--out", str(killed)], kill_at=4, timeout=600)
    assert proc.returncode != 0 and "died" in proc.stderr, proc.stderr[-3000:]
    proc = _cli(args + ["--out", str(killed)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr
    for name in outputs:
        assert (killed / name).read_bytes() == (ref / name).read_bytes(), name
    assert json.loads(proc.stdout)["resumed_from"] == [1, 0]
