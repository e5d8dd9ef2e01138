"""Where and how a stage computes: one :class:`Runtime` resolved once from the stage config.

The device, the autocast dtype, the memory format, the DataLoader workers and the CPU threads
are decided here (``Runtime.resolve``) and the stages ask the object, instead of passing loose
arguments around: moving batches and models, autocast, loaders, deterministic mode, and
running a model over a dataset in eval mode (:meth:`Runtime.outputs`, :func:`evaluate`).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nas_core.distributed import SINGLE, World, current_world
from nas_core.stages.common import StageError, make_loader
from nas_core.tasks import Task

__all__ = ["Runtime", "evaluate", "index_batches", "resolve_device", "resolve_amp",
           "resolve_channels_last", "autocast", "determinism", "seed_everything"]

Batch = tuple[torch.Tensor, torch.Tensor]


# -- device and precision ---------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else CUDA (the first visible device) when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise StageError(f"bad device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StageError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``"auto"`` -> bf16 on CUDA, None (off) elsewhere; ``"bf16"`` -> bf16."""
    if amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def resolve_channels_last(value: str | bool, device: torch.device,
                          amp_dtype: torch.dtype | None = None) -> bool:
    """``"auto"`` -> on with CUDA and on the CPU (faster on both, benchmarks/README.md), except
    on the CPU under reduced-precision autocast (torch 2.14.1 gave NaN depthwise-convolution
    gradients for bf16 + channels_last there); off on other devices.  Booleans as given.

    (On the CPU it was opt-in until ``ops.strided_1x1`` routed around torch 2.14.1's oneDNN heap
    corruption in the weight gradient of FactorizedReduce's strided 1x1 convolutions.)"""
    if value == "auto":
        if device.type == "cpu":
            return amp_dtype is None
        return device.type == "cuda"
    return bool(value)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context when None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic mode while the stage runs (restored afterwards).

    ``enabled``: ``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN deterministic
    without benchmark, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (if not set).  Otherwise cuDNN
    benchmark is switched on for CUDA.  CPU kernels are deterministic for a fixed thread count
    either way.
    """
    prev = (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if enabled:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic = prev[2]
        torch.backends.cudnn.benchmark = prev[3]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)



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
