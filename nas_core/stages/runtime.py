"""Where and how a stage computes: one :class:`Runtime` resolved once from the stage config.

The device, the autocast dtype, the memory format, the DataLoader workers and the CPU threads
are decided here (``Runtime.resolve``) and the stages ask the object, instead of passing loose
arguments around: moving batches and models, autocast, loaders, deterministic mode, and
running a model over a dataset in eval mode (:meth:`Runtime.outputs`, :func:`evaluate`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from nas_core.distributed import SINGLE, World, current_world
from nas_core.stages.common import (autocast, determinism, make_loader, resolve_amp,
                                    resolve_channels_last, resolve_device)
from nas_core.tasks import Task

__all__ = ["Runtime", "evaluate", "index_batches"]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Runtime:
    """The resolved device settings of one stage run."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    num_workers: int
    threads: int
    deterministic: bool = False
    world: World = SINGLE

    @classmethod
    def resolve(cls, cfg: dict, device: str | torch.device | None = None, *,
                channels_last: Any = None) -> "Runtime":
        """From a validated stage block (``amp``, ``num_workers``, and ``channels_last`` /
        ``deterministic`` where the stage has them; ``channels_last`` overrides the block's,
        for the test stage which follows the train block) and a device (None: CUDA when
        available, else CPU)."""
        world = current_world()
        dev = resolve_device(device)
        if world.size > 1 and dev.type == "cuda":  # one device per rank
            dev = torch.device("cuda", world.local_rank % torch.cuda.device_count())
        amp_dtype = resolve_amp(cfg["amp"], dev)
        layout = cfg.get("channels_last", "auto") if channels_last is None else channels_last
        return cls(device=dev, amp_dtype=amp_dtype,
                   channels_last=resolve_channels_last(layout, dev, amp_dtype),
                   num_workers=int(cfg["num_workers"]), threads=torch.get_num_threads(),
                   deterministic=bool(cfg.get("deterministic", False)), world=world)

    def describe(self) -> str:
        """One line for the logs, e.g. ``cpu, amp off, channels_last on, 2 threads``."""
        amp = "off" if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")
        ranks = (f"{self.world.size} processes ({'NCCL' if self.device.type == 'cuda' else 'gloo'}"
                 f"), " if self.world.size > 1 else "")
        device = f"{self.device.type} x{self.world.size}" if self.world.size > 1 else self.device
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if self.device.type == "cuda" and visible:  # the machine's ids of this job's GPUs
            device = f"{device} (GPU {visible})"
        return (f"{device}, {ranks}amp {amp}, channels_last "
                f"{'on' if self.channels_last else 'off'}, {self.threads} threads"
                f"{' per process' if self.world.size > 1 else ''}, {self.num_workers} loader "
                f"workers")

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def determinism(self) -> contextlib.AbstractContextManager:
        return determinism(self.deterministic, self.device)

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on the device, in the run's memory format."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """A batch on the device (inputs in the run's memory format)."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def loader(self, dataset: Dataset, batches: Sequence[Sequence[Any]]) -> DataLoader:
        """A DataLoader yielding exactly ``batches`` (lists of dataset keys), in order."""
        return make_loader(dataset, batches, self.num_workers, self.device)

    @torch.no_grad()
    def outputs(self, model: torch.nn.Module, dataset: Dataset,
                batches: Sequence[Sequence[Any]]) -> Iterator[Batch]:
        """``(output, target)`` of ``model`` in eval mode (restored after) for each batch, on the
        device; a tuple output (the evaluation network's ``(logits, aux)``) gives its first."""
        was_training = model.training
        model.eval()
        try:
            for x, y in self.loader(dataset, batches):
                x, y = self.batch(x, y)
                with self.autocast():
                    out = model(x)
                yield (out[0] if isinstance(out, tuple) else out), y
        finally:
            model.train(was_training)


def index_batches(indices: Sequence[int], batch_size: int,
                  max_batches: int | None = None) -> list[list[int]]:
    """``indices`` in order, cut into batches; at most ``max_batches`` of them."""
    batches = [list(indices[k:k + batch_size]) for k in range(0, len(indices), batch_size)]
    return batches if max_batches is None else batches[:max_batches]


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, indices: Sequence[int], task: Task,
             runtime: Runtime, *, batch_size: int, max_batches: int | None = None) -> dict:
    """Loss and metric of ``model`` (eval mode) on ``dataset[indices]`` in order, at most
    ``max_batches`` batches: ``{"loss", task.metric}`` (None values when empty).  In a
    data-parallel run each rank reads its part of every batch and the sums are added."""
    world = runtime.world
    meter = task.meter()
    batches = [world.shard(b) for b in index_batches(indices, batch_size, max_batches)]
    for out, y in runtime.outputs(model, dataset, [b for b in batches if b]):
        with runtime.autocast():
            value = task.loss(out, y)
        meter.update(value, out, y)
    return meter.load(world.sum_values(meter.state())).result()
