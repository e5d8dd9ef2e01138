"""A stage's batch and memory plan, decided before its first epoch.

:func:`plan_batch` measures the stage's step with a probe (:mod:`nas_core.memory`), logs the
expected peak memory per device, resolves ``batch_size: auto`` (the largest batch whose
measured peak fits the budget; a resumed run keeps the batch of its checkpoint) and the
learning-rate factor of ``lr_scaling``.  :meth:`BatchPlan.guard` turns an out-of-memory error
of the stage into one line that names the batch, the estimate, the device's memory and the
settings that would fit.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from nas_core.checkpoint import peek_checkpoint
from nas_core.errors import one_line
from nas_core.memory import (Estimate, Probe, choose_batch, device_budget, device_total,
                             estimate, is_out_of_memory)
from nas_core.sizes import format_bytes
from nas_core.stages.common import StageError
from nas_core.stages.runtime import Runtime

__all__ = ["BatchPlan", "plan_batch", "measure_plan", "effective_cfg"]

log = logging.getLogger("nas_core.stages")


def effective_cfg(cfg: dict, batch_size: int, auto: bool) -> dict:
    """``cfg`` with ``batch_size`` resolved and, for an automatic batch with ``lr_scaling:
    linear``, ``lr`` and ``lr_min`` scaled by ``batch_size / reference_batch_size``."""
    out = dict(cfg, batch_size=int(batch_size))
    if auto and cfg.get("lr_scaling") == "linear" and "reference_batch_size" in cfg:
        factor = batch_size / cfg["reference_batch_size"]
        out["lr"] = cfg["lr"] * factor
        out["lr_min"] = cfg["lr_min"] * factor
    return out


@dataclass
class BatchPlan:
    """The batch a stage runs with and what its memory is expected to be."""

    stage: str
    batch_size: int                  # global batch (all data-parallel processes)
    per_device: int                  # samples per process and device
    auto: bool
    chosen: str                      # "config", "measured", "checkpoint"
    device: torch.device
    estimate: Estimate | None = None
    budget: int | None = None
    budget_source: str | None = None
    margin: float = 0.1
    measured: list = field(default_factory=list)

    @property
    def expected(self) -> int | None:
        """Expected peak bytes per device at this plan's batch."""
        return None if self.estimate is None else self.estimate.at(self.per_device)

    def record(self) -> dict[str, Any]:
        """The plan's reproducible part, for ``history.json``."""
        return {"batch_size": self.batch_size, "auto": self.auto}

    def memory_record(self) -> dict[str, Any]:
        """Estimate, budget and (on CUDA) the run's measured peak, for ``timings.json``."""
        out: dict[str, Any] = {
            "device": str(self.device), "batch_size": self.batch_size,
            "per_device_batch": self.per_device, "chosen": self.chosen,
            "expected_peak_bytes": self.expected, "budget_bytes": self.budget,
            "budget_source": self.budget_source, "device_total_bytes": device_total(self.device),
        }
        if self.estimate is not None:
            out["estimate"] = self.estimate.to_dict()
        if self.measured:
            out["auto_probes"] = [{"batch": b, "peak_bytes": p} for b, p in self.measured]
        if self.device.type == "cuda":
            out["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        return out

    def log_peak(self) -> None:
        """On CUDA, log the run's measured peak against the estimate."""
        if self.device.type == "cuda":
            log.info("%s memory: peak %s allocated on %s (expected %s)", self.stage,
                     format_bytes(torch.cuda.max_memory_allocated(self.device)), self.device,
                     format_bytes(self.expected))

    def describe(self) -> str:
        """One line: the expected peak and what it rests on."""
        if self.estimate is None:
            return f"batch {self.batch_size}"
        probes = " and ".join(str(b) for b, _ in self.estimate.measured[:2])
        per = f" ({self.per_device} per device)" if self.per_device != self.batch_size else ""
        return (f"expected peak {format_bytes(self.expected)} per device at batch "
                f"{self.batch_size}{per} ({format_bytes(self.estimate.fixed)} + "
                f"{format_bytes(self.estimate.per_sample)} per sample, from probe steps at "
                f"batch {probes} on {self.device.type}; tensor memory)")

    def knobs(self, cfg: dict) -> list[str]:
        """Settings that would lower the memory of this stage's step."""
        out = []
        total = device_total(self.device) if self.budget_source != "memory_limit" else self.budget
        if self.estimate is not None and total:
            fits = self.estimate.largest_batch(total * (1 - self.margin))
            fits *= max(1, self.batch_size // max(1, self.per_device))  # per device -> global
            if 1 <= fits < self.batch_size:  # (not when the estimate itself said it fits)
                out.append(f"batch_size {fits} (estimate)")
        if not self.auto:
            out.append("batch_size: auto")
        if cfg.get("partial_channels") == 1:
            k = 4 if cfg["init_channels"] % 4 == 0 else 2 if cfg["init_channels"] % 2 == 0 else 0
            if k:
                out.append(f"partial_channels: {k} (PC-DARTS)")
        if cfg.get("recompute") is False:
            out.append("recompute: true")
        if cfg.get("amp") in ("off", "auto") and not (cfg.get("amp") == "auto"
                                                         and self.device.type == "cuda"):
            out.append("amp: bf16")
        return out

    def oom_message(self, exc: BaseException, cfg: dict) -> str:
        """One line: stage, batch, estimate, the device's memory, the knobs; the cause."""
        total = device_total(self.device)
        have = f"the device has {format_bytes(total)}" if total else "the device's size is unknown"
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            have += f" ({format_bytes(free)} free now)"
        if self.budget_source == "memory_limit":
            have += f", memory_limit {format_bytes(self.budget)}"
        knobs = self.knobs(cfg)
        return (f"{self.stage} ran out of memory on {self.device} at batch {self.batch_size}"
                f"{f' ({self.per_device} per device)' if self.per_device != self.batch_size else ''}"
                f": expected peak {format_bytes(self.expected)}, {have}; "
                f"{'would fit: ' + ', '.join(knobs) if knobs else 'no smaller setting known'}"
                f" ({type(exc).__name__}: {one_line(exc, 160)})")

    @contextlib.contextmanager
    def guard(self, cfg: dict) -> Iterator[None]:
        """Out-of-memory errors inside become a one-line :class:`StageError`."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are translated
            if not is_out_of_memory(exc):
                raise
            raise StageError(self.oom_message(exc, cfg)) from None


def _peek_batch(checkpoint: Path | None,
                fingerprint_of: Callable[[int], str] | None) -> int | None:
    """The batch of a checkpoint written by this configuration with ``batch_size: auto``."""
    if checkpoint is None or fingerprint_of is None:
        return None
    seen = peek_checkpoint(checkpoint, "batch_size")
    if not seen or not isinstance(seen.get("batch_size"), int):
        return None
    batch = seen["batch_size"]
    return batch if fingerprint_of(batch) == seen["fingerprint"] else None


def plan_batch(stage: str, cfg: dict, probe: Probe, runtime: Runtime, *, samples: int,
               checkpoint: Path | None = None,
               fingerprint_of: Callable[[int], str] | None = None) -> BatchPlan:
    """Measure ``probe`` (the stage's step at a batch), resolve ``batch_size: auto`` and log
    the expected peak memory per device.

    ``samples``: the most samples one global batch can hold (the batch is capped there).
    ``checkpoint`` / ``fingerprint_of(batch)``: a resumed automatic run keeps the batch its
    checkpoint was written with, when the checkpoint's fingerprint is this configuration's at
    that batch.  In a data-parallel run rank 0 measures and every rank gets its plan."""
    world, device = runtime.world, runtime.device
    plan, failed = None, None
    if world.is_main:
        try:
            plan = measure_plan(stage, cfg, probe, device, samples=samples,
                                world_size=world.size, checkpoint=checkpoint,
                                fingerprint_of=fingerprint_of)
        except Exception as exc:  # noqa: BLE001 - every rank stops, not only rank 0
            if world.size == 1:
                raise
            failed = exc
    plan, reason = world.broadcast((plan, None if failed is None else one_line(failed)))
    if failed is not None:
        raise failed
    if reason is not None:
        raise StageError(f"{stage}: rank 0 could not plan the batch: {reason}")
    plan = replace(plan, device=device)
    if device.type == "cuda":  # the run's own peak from here on (memory_record, log_peak)
        torch.cuda.reset_peak_memory_stats(device)
    if world.is_main:
        log.info("%s memory: %s", stage, plan.describe())
        if plan.auto:
            log.info("%s batch_size auto: %d (%s; budget %s from %s, margin %.0f%%)%s", stage,
                     plan.batch_size, "kept from the checkpoint" if plan.chosen == "checkpoint"
                     else "largest measured fit", format_bytes(plan.budget), plan.budget_source,
                     100 * plan.margin, _lr_note(cfg, plan.batch_size))
        elif plan.budget is not None and plan.expected is not None and plan.expected > plan.budget:
            log.warning("%s memory: the estimate %s exceeds %s (%s); would fit: %s", stage,
                        format_bytes(plan.expected), format_bytes(plan.budget),
                        plan.budget_source, ", ".join(plan.knobs(cfg)))
    return plan


def _lr_note(cfg: dict, batch: int) -> str:
    if cfg.get("lr_scaling") != "linear" or "reference_batch_size" not in cfg:
        return ""
    eff = effective_cfg(cfg, batch, True)
    return (f"; lr {eff['lr']:.4g} (lr {cfg['lr']:g} x {batch}/"
            f"{cfg['reference_batch_size']}, lr_scaling linear)")


def measure_plan(stage: str, cfg: dict, probe: Probe, device: torch.device, *, samples: int,
                 world_size: int = 1, checkpoint: Path | None = None,
                 fingerprint_of: Callable[[int], str] | None = None) -> BatchPlan:
    """The plan of one process, measured on ``device`` and not logged (:func:`plan_batch` runs
    it on rank 0; the ``memory`` command runs it alone)."""
    auto = cfg["batch_size"] == "auto"
    margin = float(cfg.get("memory_margin", 0.1))
    try:
        budget, source = device_budget(device, cfg.get("memory_limit"))
    except ValueError:
        budget, source = None, None
    if not auto:
        per_device = math.ceil(cfg["batch_size"] / world_size)
        return BatchPlan(stage, cfg["batch_size"], per_device, False, "config", device,
                         estimate(probe, device, per_device), budget, source, margin)
    kept = _peek_batch(checkpoint, fingerprint_of)
    if kept is not None:
        per_device = math.ceil(kept / world_size)
        return BatchPlan(stage, kept, per_device, True, "checkpoint", device,
                         estimate(probe, device, per_device), budget, source, margin)
    if budget is None:
        raise StageError(f"{stage}.batch_size auto: cannot read this machine's available "
                         f"memory; set {stage}.memory_limit")
    cap = max(1, samples // world_size)
    per_device, est, points = choose_batch(probe, device, budget, margin=margin, maximum=cap)
    if per_device < 1:
        raise StageError(f"{stage}.batch_size auto: not even one sample per device fits "
                         f"{format_bytes(budget * (1 - margin))} ({source}, margin "
                         f"{margin:g}): expected {format_bytes(est.at(1))} at batch 1")
    return BatchPlan(stage, per_device * world_size, per_device, True, "measured", device,
                     est, budget, source, margin, points)
