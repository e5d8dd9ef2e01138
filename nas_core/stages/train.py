"""The train stage: full training of the evaluation network built from ``genotype.json``.

The training part of the data is split by ``split_indices(n, 1 - valid_fraction, seed)`` into
the samples that train the weights and a held-out part for model selection.  After every epoch
the network is evaluated on the held-out part; ``model.pt`` holds the weights of the epoch with
the best held-out metric (top-1, or R^2 for regression; the earliest epoch wins ties).  With
``valid_fraction: 0`` there is no held-out part and ``model.pt`` holds the last epoch's weights.

Outputs in ``out_dir``: ``model.pt`` (state dict only), ``history.json`` (compared bit for bit
between interrupted and uninterrupted runs), ``timings.json`` (wall-clock seconds; not
reproducible, so kept apart; with ``"memory"``: the estimate, the budget and, on CUDA, the run's
measured peak).  ``history.json`` holds ``"batch": {"batch_size", "auto"}``, the batch the run
used.  Checkpoints: ``out_dir/checkpoints/last.pt`` (also holds the best weights so far).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from nas_core import __version__
from nas_core.checkpoint import atomic_torch_save, atomic_write_json, fingerprint
from nas_core.config import NON_RESULT_KEYS, validate_stage_cfg
from nas_core.data import DataBundle, load_data, split_indices
from nas_core.distributed import SINGLE, data_parallel
from nas_core.genotypes import Genotype
from nas_core.memory import Probe
from nas_core.model_eval import EvalNetwork, count_parameters
from nas_core.stages.budget import effective_cfg, plan_batch
from nas_core.stages.common import (SeededDataset, derive_seed, epoch_batches, seed_everything,
                                    state_dict_cpu)
from nas_core.stages.genotype import load_genotype_file
from nas_core.stages.loop import Checkpointer, EpochLoop, EpochStage
from nas_core.stages.runtime import Batch, Runtime, evaluate
from nas_core.tasks import get_task

__all__ = ["run_train", "train_probe", "train_split", "OUTPUTS"]

log = logging.getLogger("nas_core.stages.train")

OUTPUTS = ("model.pt", "history.json", "timings.json")


def train_split(cfg: dict, bundle: DataBundle) -> tuple[list[int], list[int]]:
    """The training part's indices that train the weights, and the held-out ones."""
    return split_indices(len(bundle.train), 1.0 - cfg["valid_fraction"], cfg["seed"])


def _network(cfg: dict, geno: Genotype, bundle: DataBundle, runtime: Runtime) -> EvalNetwork:
    return runtime.model(EvalNetwork(geno, bundle.in_channels, cfg["init_channels"],
                                     bundle.num_outputs, cfg["layers"], auxiliary=cfg["auxiliary"],
                                     recompute=cfg["recompute"]))


def _optimizer(cfg: dict, model: EvalNetwork) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                           weight_decay=cfg["weight_decay"])


def train_probe(cfg: dict, geno: Genotype, bundle: DataBundle, runtime: Runtime) -> Probe:
    """The training step of ``cfg`` at a given batch on random data of ``bundle``'s shape (a
    fresh network and optimizer, the full drop-path probability, two steps;
    :mod:`nas_core.memory`)."""
    task = get_task(bundle.task)
    alone = replace(runtime, world=SINGLE)  # rank 0 probes alone: no collectives

    def run(batch: int) -> None:
        model = _network(cfg, geno, bundle, runtime)
        model.drop_path_prob = cfg["drop_path_prob"]
        stage = _Train(cfg, bundle, alone, model, _optimizer(cfg, model), ([], []))
        data = runtime.batch(torch.randn(batch, bundle.in_channels, *bundle.input_size),
                             task.random_targets(batch, bundle.num_outputs))
        for _ in range(2):
            stage.step((data,), cfg["lr"], (1.0,))

    return run


class _Train(EpochStage):
    """One epoch of training with drop-path; the best held-out epoch's weights are kept."""

    def __init__(self, cfg: dict, bundle: DataBundle, runtime: Runtime, model: EvalNetwork,
                 optimizer: torch.optim.Optimizer, split: tuple[list[int], list[int]]):
        self.cfg, self.bundle, self.runtime, self.model = cfg, bundle, runtime, model
        self.optimizer = optimizer
        self.task = get_task(bundle.task)
        self.tr_idx, self.va_idx = split
        self.best: dict[str, Any] = {"epoch": None, "value": None, "state": None}

    def schedule(self, epoch: int) -> Sequence[list]:
        return (epoch_batches(self.tr_idx, self.cfg["batch_size"], self.cfg["seed"], epoch,
                              "train"),)

    def begin_epoch(self, epoch: int) -> dict[str, Any]:
        drop_prob = self.cfg["drop_path_prob"] * epoch / self.cfg["epochs"]
        self.model.drop_path_prob = drop_prob
        return {"drop_path_prob": drop_prob}

    def step(self, batches: Sequence[Batch], lr: float, shares: Sequence[float]):
        (x, y), = batches
        self.optimizer.zero_grad(set_to_none=True)
        with self.runtime.autocast():
            logits, logits_aux = self.model(x)
            loss = self.task.loss(logits, y)
            if logits_aux is not None:
                loss = loss + self.cfg["auxiliary_weight"] * self.task.loss(logits_aux, y)
        loss.backward()
        self.runtime.world.average([p.grad for p in self.model.parameters()
                                    if p.grad is not None], shares[0])
        if self.cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["grad_clip"])
        self.optimizer.step()
        return loss.detach(), logits, y

    def end_epoch(self, record: dict) -> str:
        valid = None
        if self.va_idx:
            valid = evaluate(self.model, self.bundle.train_eval, self.va_idx, self.task,
                             self.runtime, batch_size=self.cfg["batch_size"],
                             max_batches=self.cfg["max_steps_per_epoch"])
        record["valid"] = valid
        value = valid.get(self.task.metric) if valid else None
        improved = valid is not None and self.task.better(value, self.best["value"])
        if valid is None or improved:
            self.best = {"epoch": record["epoch"], "value": value,
                         "state": state_dict_cpu(self.model) if valid is not None else None}
        return f" drop_path {record['drop_path_prob']:.3f}{' (best)' if improved else ''}"

    def state(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.best = dict(ckpt["best"])


@data_parallel
def run_train(data: dict, cfg: dict, genotype: str | Path, out_dir: str | Path, *,
              data_root: str | Path = "resources",
              device: str | torch.device | None = None) -> dict:
    """Train (or resume training) the network of ``genotype`` (a genotype.json path).

    Returns ``{"model", "history", "timings"}`` (paths as str), ``"best_epoch"``,
    ``"train"`` / ``"valid"`` (metrics of the last epoch) and ``"resumed_from"``.
    ``nproc=N`` (keyword) trains data-parallel in N processes (:mod:`nas_core.distributed`).
    """
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in OUTPUTS}
    cfg = validate_stage_cfg("train", cfg)
    geno = load_genotype_file(genotype)
    runtime = Runtime.resolve(cfg, device)
    bundle = load_data(data, data_root)
    world = runtime.world
    auto = cfg["batch_size"] == "auto"
    ckpt_path = out_dir / "checkpoints" / "last.pt"

    def fingerprint_of(batch: int) -> str:
        run_cfg = effective_cfg(cfg, batch, auto)
        return fingerprint({"stage": "train", "data": data, "data_source": bundle.source,
                            "genotype": geno.to_dict(), "world_size": world.size,
                            "cfg": {k: v for k, v in run_cfg.items() if k not in NON_RESULT_KEYS}})

    with runtime.determinism():
        split = train_split(cfg, bundle)
        plan = plan_batch("train", cfg, train_probe(cfg, geno, bundle, runtime), runtime,
                          samples=len(split[0]), checkpoint=ckpt_path,
                          fingerprint_of=fingerprint_of)
        fp = fingerprint_of(plan.batch_size)
        cfg = effective_cfg(cfg, plan.batch_size, auto)
        seed_everything(cfg["seed"])
        model = _network(cfg, geno, bundle, runtime)
        if world.size > 1:  # equal weights on every rank, then each rank its own drop-path
            seed_everything(derive_seed(cfg["seed"], "rank", world.rank))
        opt = _optimizer(cfg, model)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["epochs"],
                                                           eta_min=cfg["lr_min"])
        stage = _Train(cfg, bundle, runtime, model, opt, split)
        log.info("train on %s (%s, %d samples: %d train, %d held out) on %s; %d parameters "
                 "(without auxiliary head)", bundle.name, bundle.task, len(bundle.train),
                 len(stage.tr_idx), len(stage.va_idx), runtime.describe(),
                 count_parameters(model))
        checkpointer = Checkpointer(ckpt_path, fp, "train",
                                    {"model": model, "optimizer": opt, "scheduler": sched}, world)
        loop = EpochLoop("train", cfg, model=model,
                         dataset=SeededDataset(bundle.train, cfg["seed"], cutout=cfg["cutout"]),
                         optimizer=opt, scheduler=sched, checkpointer=checkpointer,
                         task=stage.task, runtime=runtime, label=bundle.name,
                         out_dir=out_dir)
        with plan.guard(cfg):
            result = loop.run(stage)

        best = stage.best
    if world.is_main:
        atomic_write_json(paths["history.json"], {
            "stage": "train",
            "metric": stage.task.metric,
            "data": bundle.source,
            "batch": plan.record(),
            "selection": {"on": "valid" if stage.va_idx else "last epoch",
                          "metric": stage.task.metric, "best_epoch": best["epoch"],
                          "best_value": best["value"]},
            "epochs": result.history,
        })
        atomic_write_json(paths["timings.json"], {
            "stage": "train", "device": str(runtime.device), "nas_core_version": __version__,
            "epochs": result.timings, "total_seconds": result.total_seconds(),
            "memory": plan.memory_record()})
        atomic_torch_save(best["state"] if best["state"] is not None else state_dict_cpu(model),
                          paths["model.pt"])
        plan.log_peak()
    log.info("train done: model %s (epoch %s)", paths["model.pt"], best["epoch"])
    last = result.history[-1] if result.history else {}
    return {
        **{name.split(".")[0]: str(p) for name, p in paths.items()},
        "best_epoch": best["epoch"],
        "train": last.get("train"),
        "valid": last.get("valid"),
        "resumed_from": result.resumed_from,
    }
