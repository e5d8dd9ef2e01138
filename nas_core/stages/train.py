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

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from nas_core.checkpoint import atomic_torch_save
from nas_core.data import DataBundle, split_indices
from nas_core.distributed import SINGLE, data_parallel
from nas_core.genotypes import Genotype
from nas_core.memory import Probe
from nas_core.model_eval import EvalNetwork, count_parameters
from nas_core.stages.common import SeededDataset, epoch_batches, state_dict_cpu
from nas_core.stages.driver import Recipe, drive
from nas_core.stages.genotype import load_genotype_file
from nas_core.stages.loop import EpochStage
from nas_core.stages.runtime import Batch, Runtime, evaluate
from nas_core.tasks import get_task

__all__ = ["run_train", "train_probe", "train_split", "OUTPUTS"]

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
        self.stateful = {"optimizer": optimizer}
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


class _TrainRecipe(Recipe):
    stage = "train"
    outputs = OUTPUTS

    def __init__(self, genotype: str | Path):
        self.source = genotype
        self.genotype: Genotype | None = None

    def load(self) -> None:
        self.genotype = load_genotype_file(self.source)

    def identity(self) -> dict[str, Any]:
        return {"genotype": self.genotype.to_dict()}

    split = staticmethod(train_split)

    def probe(self, cfg: dict, bundle: DataBundle, runtime: Runtime) -> Probe:
        return train_probe(cfg, self.genotype, bundle, runtime)

    def network(self, cfg: dict, bundle: DataBundle, runtime: Runtime) -> EvalNetwork:
        return _network(cfg, self.genotype, bundle, runtime)

    def epoch_stage(self, cfg, bundle, runtime, model, split) -> _Train:
        return _Train(cfg, bundle, runtime, model, _optimizer(cfg, model), split)

    def dataset(self, cfg: dict, bundle: DataBundle) -> SeededDataset:
        return SeededDataset(bundle.train, cfg["seed"], cutout=cfg["cutout"])

    def started(self, bundle, stage: _Train, runtime, model) -> str:
        return (f"train on {bundle.name} ({bundle.task}, {len(bundle.train)} samples: "
                f"{len(stage.tr_idx)} train, {len(stage.va_idx)} held out) on "
                f"{runtime.describe()}; {count_parameters(model)} parameters (without "
                f"auxiliary head)")

    def finish(self, stage: _Train, model: EvalNetwork) -> dict[str, Any]:
        return {"best_epoch": stage.best["epoch"]}

    def history(self, stage: _Train, outcome) -> dict[str, Any]:
        best = stage.best
        return {"selection": {"on": "valid" if stage.va_idx else "last epoch",
                              "metric": stage.task.metric, "best_epoch": best["epoch"],
                              "best_value": best["value"]}}

    def write(self, paths, stage: _Train, model: EvalNetwork, outcome) -> None:
        state = stage.best["state"]
        atomic_torch_save(state if state is not None else state_dict_cpu(model),
                          paths["model.pt"])

    def done(self, paths, outcome) -> str:
        return f"train done: model {paths['model.pt']} (epoch {outcome['best_epoch']})"


@data_parallel
def run_train(data: dict, cfg: dict, genotype: str | Path, out_dir: str | Path, *,
              data_root: str | Path = "resources",
              device: str | torch.device | None = None) -> dict:
    """Train (or resume training) the network of ``genotype`` (a genotype.json path).

    Returns ``{"model", "history", "timings"}`` (paths as str), ``"best_epoch"``,
    ``"train"`` / ``"valid"`` (metrics of the last epoch) and ``"resumed_from"``.
    ``nproc=N`` (keyword) trains data-parallel in N processes (:mod:`nas_core.distributed`).
    """
    return drive(_TrainRecipe(genotype), data, cfg, out_dir,
                 data_root=data_root, device=device)
