"""The stage driver: what surrounds the epoch loop of a training stage, written once.

``run_search`` and ``run_train`` (and the selection's short training, which is ``run_train``
with the ``select:`` block) are declarations: a :class:`Recipe` says what differs between
them (the network, the epoch's step, the data split, the memory probe, what identifies a run
besides its config, the files written at the end) and :func:`drive` does the rest, in the
same order for every stage:

1. validate the stage block, read the recipe's other inputs (:meth:`Recipe.load`), resolve
   the :class:`~nas_core.stages.runtime.Runtime` (device, amp, memory format, ranks), the
   recipe's own checks (:meth:`Recipe.check`), load the data;
2. the data split, the batch plan (:func:`~nas_core.stages.budget.plan_batch`: the memory
   estimate, ``batch_size: auto``), and from the plan's batch the effective config (batch
   resolved, lr scaled) and the checkpoint fingerprint, once;
3. seed, build the network (the same weights on every rank), re-seed per rank, build the
   step with its optimizers, the cosine schedule of the weight optimizer;
4. restore the checkpoint and run the :class:`~nas_core.stages.loop.EpochLoop` under the
   plan's out-of-memory guard;
5. on rank 0: ``history.json`` and ``timings.json`` (one shape for every stage) and the
   recipe's own files.

The fingerprint is sha256 of ``{"stage", "results_version", "data", "data_source",
"world_size", "cfg"}`` (:func:`nas_core.identity.run_identity`: the stage's results versions,
:mod:`nas_core.versions`, and the effective config without
:data:`~nas_core.config.NON_RESULT_KEYS` and keys at their neutral value) plus the recipe's
:meth:`Recipe.identity` (the genotype, for training): a checkpoint resumes exactly when these
are equal, so across an upgrade of nas_core that leaves the stage's versions alone.
``history.json`` records the versions as ``results_version``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from nas_core import __version__, versions
from nas_core.checkpoint import fingerprint
from nas_core.config import validate_stage_cfg
from nas_core.data import DataBundle, load_data
from nas_core.distributed import World
from nas_core.fileio import atomic_write_json
from nas_core.identity import run_identity
from nas_core.memory import Probe
from nas_core.stages.budget import effective_cfg, plan_batch
from nas_core.stages.common import derive_seed
from nas_core.stages.loop import Checkpointer, EpochLoop, EpochStage, LoopResult
from nas_core.stages.runtime import Runtime, seed_everything

__all__ = ["Recipe", "drive", "run_fingerprint"]

CHECKPOINT = Path("checkpoints") / "last.pt"


def run_fingerprint(stage: str, data: dict, source: dict, world: World, run_cfg: dict,
                    identity: dict | None = None) -> str:
    """The checkpoint fingerprint of one run (see the module docstring)."""
    return fingerprint(run_identity(stage, run_cfg, data=data, data_source=source,
                                    world_size=world.size, **(identity or {})))


class Recipe:
    """What a training stage declares; :func:`drive` runs it.  Subclasses set :attr:`stage`
    and :attr:`outputs` and implement the methods that raise here."""

    #: the stage's name: its config section, log prefix and checkpoint label
    stage: str = ""
    #: the files of ``out_dir`` the stage writes; ``history.json`` and ``timings.json`` are the
    #: driver's, the others :meth:`write`'s
    outputs: tuple[str, ...] = ()

    def load(self) -> None:
        """Read the stage's inputs besides the data (after the config is validated)."""

    def identity(self) -> dict[str, Any]:
        """What identifies a run besides its data and config (enters the fingerprint)."""
        return {}

    def check(self, cfg: dict, runtime: Runtime) -> None:
        """Refuse settings that cannot run on ``runtime`` (one-line ``ConfigError``)."""

    def split(self, cfg: dict, bundle: DataBundle) -> tuple[list[int], list[int]]:
        """The training part's indices: those the step trains on first, and the others."""
        raise NotImplementedError

    def probe(self, cfg: dict, bundle: DataBundle, runtime: Runtime) -> Probe:
        """The stage's step at a batch (:mod:`nas_core.memory`)."""
        raise NotImplementedError

    def network(self, cfg: dict, bundle: DataBundle, runtime: Runtime) -> torch.nn.Module:
        raise NotImplementedError

    def epoch_stage(self, cfg: dict, bundle: DataBundle, runtime: Runtime,
                    model: torch.nn.Module, split: tuple[list[int], list[int]]) -> EpochStage:
        """The step and its optimizers; the stage's ``optimizer`` is the one the cosine
        schedule drives, its ``stateful`` the objects checkpoints keep besides the model and
        the schedule."""
        raise NotImplementedError

    def dataset(self, cfg: dict, bundle: DataBundle) -> Dataset:
        """What the stage's batch keys index (seeded augmentation)."""
        raise NotImplementedError

    def started(self, bundle: DataBundle, stage: EpochStage, runtime: Runtime,
                model: torch.nn.Module) -> str:
        """The log line before the first epoch."""
        raise NotImplementedError

    def finish(self, stage: EpochStage, model: torch.nn.Module) -> dict[str, Any]:
        """After the last epoch: the stage's result values (returned, and given to
        :meth:`history` / :meth:`write`)."""
        return {}

    def history(self, stage: EpochStage, outcome: dict[str, Any]) -> dict[str, Any]:
        """``history.json`` keys of this stage, between ``batch`` and ``epochs``."""
        return {}

    def write(self, paths: dict[str, Path], stage: EpochStage, model: torch.nn.Module,
              outcome: dict[str, Any]) -> None:
        """The stage's own output files (rank 0)."""

    def done(self, paths: dict[str, Path], outcome: dict[str, Any]) -> str:
        """The log line after the outputs are written."""
        raise NotImplementedError


def drive(recipe: Recipe, data: dict, cfg: dict, out_dir: str | Path, *,
          data_root: str | Path = "resources",
          device: str | torch.device | None = None) -> dict:
    """Run (or resume) ``recipe`` (see the module docstring).

    Returns the output paths by stem (as str), the recipe's :meth:`Recipe.finish` values,
    ``"train"`` / ``"valid"`` (metrics of the last epoch) and ``"resumed_from"``
    (``[epoch, step]`` or None)."""
    name = recipe.stage
    log = logging.getLogger(f"nas_core.stages.{name}")
    out_dir = Path(out_dir)
    paths = {file: out_dir / file for file in recipe.outputs}
    cfg = validate_stage_cfg(name, cfg)
    recipe.load()
    runtime = Runtime.resolve(cfg, device)
    recipe.check(cfg, runtime)
    bundle = load_data(data, data_root)
    world = runtime.world
    auto = cfg["batch_size"] == "auto"
    identity = recipe.identity()

    def fingerprint_at(batch: int) -> str:
        return run_fingerprint(name, data, bundle.source, world,
                               effective_cfg(cfg, batch, auto), identity)

    with runtime.determinism():
        split = recipe.split(cfg, bundle)
        plan = plan_batch(name, cfg, recipe.probe(cfg, bundle, runtime), runtime,
                          samples=len(split[0]), checkpoint=out_dir / CHECKPOINT,
                          fingerprint_of=fingerprint_at)
        cfg = effective_cfg(cfg, plan.batch_size, auto)
        fp = run_fingerprint(name, data, bundle.source, world, cfg, identity)
        seed_everything(cfg["seed"])
        model = recipe.network(cfg, bundle, runtime)
        if world.size > 1:  # equal weights on every rank, then per-rank random streams
            seed_everything(derive_seed(cfg["seed"], "rank", world.rank))
        stage = recipe.epoch_stage(cfg, bundle, runtime, model, split)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(stage.optimizer, T_max=cfg["epochs"],
                                                           eta_min=cfg["lr_min"])
        log.info("%s", recipe.started(bundle, stage, runtime, model))
        checkpointer = Checkpointer(out_dir / CHECKPOINT, fp, name,
                                    {"model": model, **stage.stateful, "scheduler": sched},
                                    world)
        loop = EpochLoop(name, cfg, model=model, dataset=recipe.dataset(cfg, bundle),
                         optimizer=stage.optimizer, scheduler=sched, checkpointer=checkpointer,
                         task=stage.task, runtime=runtime, label=bundle.name, out_dir=out_dir)
        with plan.guard(cfg):
            result: LoopResult = loop.run(stage)
        outcome = recipe.finish(stage, model)
    if world.is_main:
        atomic_write_json(out_dir / "history.json", {
            "stage": name, "results_version": versions.for_stage(name),
            "metric": stage.task.metric, "data": bundle.source, "batch": plan.record(), **recipe.history(stage, outcome),
            "epochs": result.history})
        atomic_write_json(out_dir / "timings.json", {
            "stage": name, "device": str(runtime.device), "nas_core_version": __version__,
            "epochs": result.timings, "total_seconds": result.total_seconds(),
            "memory": plan.memory_record()})
        recipe.write(paths, stage, model, outcome)
        plan.log_peak()
    log.info("%s", recipe.done(paths, outcome))
    last = result.history[-1] if result.history else {}
    return {
        **{file.split(".")[0]: str(p) for file, p in paths.items()},
        **outcome,
        "train": last.get("train"),
        "valid": last.get("valid"),
        "resumed_from": result.resumed_from,
    }
