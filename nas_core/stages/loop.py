"""The resumable epoch loop that the search and train stages share.

:class:`EpochLoop` owns what both stages do around a step: restoring a checkpoint and the loop
position, each epoch's seeded batches (only those not done yet, after a resume), the progress
bar, the running meter, checkpoints inside and at the end of an epoch, the test-only kill hook,
wall-clock timing, the epoch's history record and log line, and the scheduler step.  A stage
supplies an :class:`EpochStage`: which batches an epoch reads, what one step does, and what
an epoch's record holds besides its training metrics.

Batches come as *streams*: ``schedule(epoch)`` returns one list of batches (dataset keys) per
input of the step.  The first stream sets the epoch's length (capped by
``max_steps_per_epoch``); the others are cycled to that length (the search's alpha half when it
has fewer batches than the weight half).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from nas_core import versions
from nas_core.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from nas_core.distributed import SINGLE, World
from nas_core.fileio import atomic_write_text
from nas_core.stages.common import (KILL_ENV, format_duration, format_metrics, progress,
                                    state_dict_cpu)
from nas_core.stages.runtime import Batch, Runtime
from nas_core.tasks import Task

__all__ = ["EpochLoop", "EpochStage", "LoopResult", "Checkpointer", "MetricsLog", "Timer",
           "lr_of"]

log = logging.getLogger("nas_core.stages")


class Checkpointer:
    """Saves and restores one stage run: its stateful objects (anything with ``state_dict`` /
    ``load_state_dict``, stored under their names), the RNG states and the loop position.

    In a data-parallel run rank 0 reads (moving an unreadable file aside) and writes the file;
    every rank restores from it, each its own RNG state."""

    def __init__(self, path: Path, fingerprint: str, stage: str, stateful: dict[str, Any],
                 world: World = SINGLE):
        self.path, self.fingerprint, self.stage, self.stateful = path, fingerprint, stage, stateful
        self.world = world

    def restore(self) -> dict[str, Any] | None:
        """Load the checkpoint into the stateful objects and the RNGs; its dict, or None."""
        ckpt = load_checkpoint(self.path, self.fingerprint) if self.world.is_main else None
        if self.world.broadcast(ckpt is not None) and not self.world.is_main:
            ckpt = load_checkpoint(self.path, self.fingerprint)
        if ckpt is None:
            return None
        for name, obj in self.stateful.items():
            obj.load_state_dict(ckpt[name])
        ranks = ckpt.get("rng_ranks")
        set_rng_state(ranks[self.world.rank] if ranks else ckpt["rng"])
        log.info("resuming from %s at epoch %d step %d", self.path, ckpt["epoch"], ckpt["step"])
        return ckpt

    def save(self, epoch: int, step: int, **extra: Any) -> None:
        """Checkpoint at ``step`` steps into ``epoch``, with ``extra`` plain values (every
        rank calls it; rank 0 writes)."""
        rngs = self.world.gather(get_rng_state())
        if not self.world.is_main:
            return
        state: dict[str, Any] = {"stage": self.stage,
                                 "results_version": versions.for_stage(self.stage),
                                 "epoch": epoch, "step": step}
        for name, obj in self.stateful.items():
            state[name] = (state_dict_cpu(obj) if isinstance(obj, torch.nn.Module)
                           else obj.state_dict())
        state["rng"] = rngs[0]
        if self.world.size > 1:
            state["rng_ranks"] = rngs
        state.update(extra)
        save_checkpoint(self.path, state, self.fingerprint)


class Timer:
    """Wall-clock seconds for timings.json (never written into compared outputs)."""

    def __init__(self, already: float = 0.0):
        self.start = time.perf_counter()
        self.already = already

    def seconds(self) -> float:
        return self.already + time.perf_counter() - self.start


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _kill_step() -> int | None:
    """The global step of the test-only kill hook (``KILL_ENV``; None when unset)."""
    value = os.environ.get(KILL_ENV)
    return int(value) if value else None


class MetricsLog:
    """Per-epoch metrics beside a stage's outputs: ``metrics.csv`` (rewritten whole after every
    epoch from the history, so a resumed run gives the same rows) and, when the
    ``tensorboard`` package is installed, TensorBoard event files in ``tensorboard/``
    (``tensorboard --logdir results/``; a resumed run purges the steps it redoes)."""

    COLUMNS = ("epoch", "lr", "train_loss", "train_{m}", "valid_loss", "valid_{m}", "seconds")

    def __init__(self, out_dir: Path, task: Task, start_epoch: int = 0):
        self.path = Path(out_dir) / "metrics.csv"
        self.metric = task.metric
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start_epoch)

    def write(self, history: list[dict], timings: list[dict]) -> None:
        seconds = {t["epoch"]: t["seconds"] for t in timings}
        header = [c.format(m=self.metric) for c in self.COLUMNS]
        rows = [",".join(header)]
        for rec in history:
            train, valid = rec.get("train") or {}, rec.get("valid") or {}
            values = [rec["epoch"], rec["lr"], train.get("loss"), train.get(self.metric),
                      valid.get("loss"), valid.get(self.metric), seconds.get(rec["epoch"])]
            rows.append(",".join("" if v is None else (f"{v:.6g}" if isinstance(v, float)
                                                       else str(v)) for v in values))
        atomic_write_text(self.path, "\n".join(rows) + "\n")
        if self.writer is not None and history:
            rec = history[-1]
            for part in ("train", "valid"):
                for key, value in (rec.get(part) or {}).items():
                    if isinstance(value, float):
                        self.writer.add_scalar(f"{part}/{key}", value, rec["epoch"])
            self.writer.add_scalar("lr", rec["lr"], rec["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class EpochStage:
    """What a stage supplies to :class:`EpochLoop` (override :meth:`schedule`, :meth:`step`
    and :meth:`end_epoch`; the others are optional)."""

    def schedule(self, epoch: int) -> Sequence[Sequence[Sequence[Any]]]:
        """The epoch's batch streams (see the module docstring)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Called once after a checkpoint (if any) is restored, before the first step."""

    def begin_epoch(self, epoch: int) -> dict[str, Any]:
        """Called before the epoch's first step; entries for its record (after epoch, lr)."""
        return {}

    def step(self, batches: Sequence[Batch], lr: float,
             shares: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimisation step on one batch per stream (on the device; in a data-parallel
        run this rank's part, whose weight in the global batch is ``shares[i]``, see
        :meth:`nas_core.distributed.World.average`): ``(loss, output, target)`` for the
        training meter."""
        raise NotImplementedError

    def end_epoch(self, record: dict[str, Any]) -> str:
        """Complete the epoch's ``record`` (it holds epoch, lr, train); returns the end of the
        epoch's log line."""
        raise NotImplementedError

    def stopped(self) -> bool:
        """Whether the stage ended its epochs early (after :meth:`end_epoch`; also right after
        a restore, so a resumed run that had stopped runs no further epoch)."""
        return False

    def state(self) -> dict[str, Any]:
        """Plain values the stage keeps in checkpoints besides the loop's."""
        return {}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Take back what :meth:`state` saved."""


@dataclass
class LoopResult:
    history: list[dict] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    #: ``[epoch, step]`` the run resumed from, or None
    resumed_from: list[int] | None = None

    def total_seconds(self) -> float:
        return sum(t["seconds"] for t in self.timings)


class EpochLoop:
    """Runs (or resumes) ``cfg["epochs"]`` epochs of ``stage`` (see the module docstring).

    ``cfg``: the validated stage block (``epochs``, ``max_steps_per_epoch``,
    ``checkpoint_every_steps``, ``batch_size`` resolved: checkpoints keep it, so that a resumed
    ``batch_size: auto`` run finds its batch); ``dataset`` is what the stage's batch keys
    index.
    """

    def __init__(self, name: str, cfg: dict, *, model: torch.nn.Module, dataset,
                 optimizer: torch.optim.Optimizer, scheduler, checkpointer: Checkpointer,
                 task: Task, runtime: Runtime, label: str = "", out_dir: Path | None = None):
        self.name = name
        self.label = label
        self.out_dir = out_dir
        self.log = logging.getLogger(f"nas_core.stages.{name}")
        self.epochs = int(cfg["epochs"])
        self.max_steps = cfg["max_steps_per_epoch"]
        self.every = int(cfg["checkpoint_every_steps"])
        self.batch_size = int(cfg["batch_size"])
        self.model, self.dataset = model, dataset
        self.optimizer, self.scheduler = optimizer, scheduler
        self.checkpointer, self.task, self.runtime = checkpointer, task, runtime

    def run(self, stage: EpochStage) -> LoopResult:
        world = self.runtime.world
        result = LoopResult()
        meter = self.task.meter()
        start_epoch, start_step, partial_seconds = 0, 0, 0.0
        ckpt = self.checkpointer.restore()
        if ckpt is not None:
            start_epoch, start_step = int(ckpt["epoch"]), int(ckpt["step"])
            result.history, result.timings = list(ckpt["history"]), list(ckpt["timings"])
            result.resumed_from = [start_epoch, start_step]
            if world.is_main:  # the saved sums are over every rank
                meter.load(ckpt["meter"])
            partial_seconds = float(ckpt["epoch_seconds"])
            stage.load_state(ckpt)
        del ckpt
        stage.prepare()

        def save(epoch: int, step: int, seconds: float) -> None:
            self.checkpointer.save(epoch, step, meter=world.sum_values(meter.state()),
                                   history=result.history, timings=result.timings,
                                   epoch_seconds=seconds, batch_size=self.batch_size,
                                   **stage.state())

        kill_at = _kill_step()
        metrics = (MetricsLog(self.out_dir, self.task, start_epoch)
                   if self.out_dir and world.is_main else None)
        where = f" {self.label}" if self.label else ""
        self.log.info("%s%s: epoch %d of %d%s, %s", self.name, where, start_epoch + 1,
                      self.epochs, f" (resumed at step {start_step})" if start_step else "",
                      self.runtime.describe())
        run_seconds: list[float] = []  # epochs of this run (the ETA's basis)
        for epoch in range(start_epoch, self.epochs):
            if stage.stopped():
                break
            timer = Timer(partial_seconds if epoch == start_epoch else 0.0)
            streams = stage.schedule(epoch)
            n_steps = len(streams[0])
            if self.max_steps is not None:
                n_steps = min(n_steps, self.max_steps)
            step0 = start_step if epoch == start_epoch else 0
            if step0 == 0:
                meter = self.task.meter()
            lr = lr_of(self.optimizer)
            record: dict[str, Any] = {"epoch": epoch, "lr": lr, **stage.begin_epoch(epoch)}
            plan = [[s[k % len(s)] for k in range(step0, n_steps)] for s in streams]
            shares = [[world.share(len(b)) for b in batches] for batches in plan]
            loaders = [self.runtime.loader(self.dataset, [world.shard(b) for b in batches])
                       for batches in plan]
            self.model.train()
            bar = progress(n_steps, step0, f"{self.name}{where} {epoch + 1}/{self.epochs}")
            try:
                for step, raw in enumerate(zip(*loaders), start=step0):
                    k = step - step0
                    loss, out, y = stage.step(tuple(self.runtime.batch(*b) for b in raw), lr,
                                              tuple(share[k] for share in shares))
                    meter.update(loss, out, y)
                    bar.update(1)
                    done = step + 1
                    if self.every and done % self.every == 0 and done < n_steps:
                        save(epoch, done, timer.seconds())
                    if kill_at is not None and epoch * n_steps + done == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)  # test-only (KILL_ENV)
            finally:
                bar.close()
            record["train"] = self.task.meter().load(world.sum_values(meter.state())).result()
            world.sync_buffers(self.model)  # every rank evaluates the model rank 0 saves
            note = stage.end_epoch(record)
            result.history.append(record)
            seconds = timer.seconds()
            result.timings.append({"epoch": epoch, "seconds": seconds})
            run_seconds.append(seconds)
            eta = (self.epochs - epoch - 1) * sum(run_seconds) / len(run_seconds)
            valid = record.get("valid")
            self.log.info("%s%s epoch %d/%d lr %.4e train %s valid %s %.1fs ETA %s%s",
                          self.name, where, epoch + 1, self.epochs, lr,
                          format_metrics(record["train"]),
                          format_metrics(valid) if valid else "-", seconds,
                          format_duration(eta), note)
            if metrics is not None:
                metrics.write(result.history, result.timings)
            self.scheduler.step()
            meter = self.task.meter()
            save(epoch + 1, 0, 0.0)
        if metrics is not None:
            metrics.close()
        self.log.info("%s%s: %d epochs done in %s", self.name, where, len(result.history),
                      format_duration(result.total_seconds()))
        return result
