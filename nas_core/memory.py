"""Memory of a stage's step: measured by a probe, fitted, and turned into a batch size.

The estimate is derived from measurement, not from a formula: a *probe* runs the stage's real
step (the same network, optimizers, autocast and memory format, on the target device) at two
small batches, :func:`peak_bytes` measures the peak of each, and :class:`Estimate` fits
``peak(B) = fixed + per_sample * B`` through them.  ``fixed`` holds the weights, gradients and
optimizer states, ``per_sample`` the activations that autograd keeps and the workspace.

What is measured is *tensor memory*: the bytes PyTorch's allocator hands out.  On CUDA that is
``torch.cuda.max_memory_allocated`` (the CUDA context, ~0.5 GiB, and the caching allocator's
reserve come on top: the safety margin is for them).  On the CPU it is the running sum of the
allocation and free events of PyTorch's CPU allocator, read from ``torch.profiler`` with
``profile_memory=True``; the probe builds its model inside the measured window so that every
byte it holds is counted (the process's own ~0.5-0.7 GiB of libraries are not).

:func:`choose_batch` turns a budget (the device's free memory on CUDA, or ``memory_limit``)
into the largest batch whose measured peak fits, and :func:`is_out_of_memory` recognises the
errors a step raises when it runs out of memory anyway (:mod:`nas_core.stages.budget` turns
them into one line).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


__all__ = [
    "Estimate",
    "peak_bytes",
    "fit",
    "probe_batches",
    "measure",
    "estimate",
    "device_total",
    "choose_batch",
    "device_budget",
    "is_out_of_memory",
]

#: A probe runs the stage's step at a batch size on the target device (building its own model).
Probe = Callable[[int], None]


# -- measuring -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _cpu_allocations(events: list[tuple[int, int]]):
    """Collect ``(time_ns, bytes)`` of the CPU allocator's allocations (+) and frees (-)."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # kineto's start/stop lines on stderr
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield
    for e in prof.profiler.kineto_results.events():
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU:
            events.append((e.start_ns(), int(e.nbytes())))


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak tensor memory, in bytes, while ``fn()`` runs on ``device``, counted from zero at
    the start (so ``fn`` should create what it uses; see the module docstring).  Exceptions of
    ``fn`` propagate."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    events: list[tuple[int, int]] = []
    with _cpu_allocations(events):
        fn()
    total = peak = 0
    for _, nbytes in sorted(events):
        total += nbytes
        peak = max(peak, total)
    return peak


# -- the linear fit ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """``peak(B) = fixed + per_sample * B`` (bytes per device) from measured probe steps."""

    fixed: float
    per_sample: float
    measured: tuple[tuple[int, int], ...]  # (batch, peak bytes) of the probes

    def at(self, batch: int) -> int:
        """Expected peak bytes at ``batch`` samples per device."""
        return int(round(self.fixed + self.per_sample * batch))

    def largest_batch(self, budget: float) -> int:
        """The largest batch whose expected peak is within ``budget`` bytes (0: none)."""
        if self.per_sample <= 0:
            return 0
        return max(0, int(math.floor((budget - self.fixed) / self.per_sample)))

    def to_dict(self) -> dict:
        return {"fixed_bytes": int(round(self.fixed)),
                "per_sample_bytes": int(round(self.per_sample)),
                "probes": [{"batch": b, "peak_bytes": p} for b, p in self.measured]}


def fit(measured: Sequence[tuple[int, int]]) -> Estimate:
    """The line through the two largest-batch probes of ``measured`` ((batch, bytes) pairs);
    with one probe, all of it per sample."""
    pts = sorted(set(measured))
    if not pts:
        raise ValueError("no probe measurements")
    if len(pts) == 1:
        (b, p), = pts
        return Estimate(0.0, p / b, tuple(pts))
    (b1, p1), (b2, p2) = pts[-2], pts[-1]
    slope = max((p2 - p1) / (b2 - b1), 0.0)
    return Estimate(p2 - slope * b2, slope, tuple(pts))


def probe_batches(batch: int | None) -> tuple[int, int]:
    """The two small batches a probe measures: (4, 8), or smaller for a smaller ``batch``."""
    top = 8 if batch is None else max(2, min(8, batch))
    return (max(1, top // 2), top)


def measure(probe: Probe, device: torch.device, batches: Sequence[int]) -> list[tuple[int, int]]:
    """``(batch, peak bytes)`` of one probe step per batch, on ``device``; the RNG states are
    left as they were."""
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for b in batches:
            out.append((int(b), peak_bytes(lambda: probe(b), device)))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def estimate(probe: Probe, device: torch.device, batch: int | None = None) -> Estimate:
    """The fitted estimate from probe steps at :func:`probe_batches` of ``batch``."""
    return fit(measure(probe, device, probe_batches(batch)))


def choose_batch(probe: Probe, device: torch.device, budget: int, *, margin: float = 0.1,
                 maximum: int | None = None,
                 max_probes: int = 14) -> tuple[int, Estimate, list[tuple[int, int]]]:
    """The largest batch whose *measured* peak stays within ``budget * (1 - margin)`` bytes.

    The fitted line of the small probes gives the first candidate; real steps are measured
    until one fails, then the batch is narrowed between the largest measured fit and the
    smallest measured non-fit (interpolated on the line through them, and halved, in turn)
    until they are neighbours or ``max_probes`` steps ran (the largest measured fit is taken).
    A probe that runs out of memory counts as a non-fit.  ``maximum`` caps the batch (e.g. the
    data's size).  Returns ``(batch, estimate, measurements)``: the estimate refitted through
    the measured points on both sides of the answer when there are such; batch 0 when not even
    one sample fits."""
    target = budget * (1.0 - margin)
    est = estimate(probe, device)
    points = dict(est.measured)
    cap = maximum if maximum is not None else 1 << 24

    def fits(b: int) -> bool:
        if b not in points:
            try:
                points[b] = measure(probe, device, [b])[0][1]
            except Exception as exc:  # noqa: BLE001 - out of memory: does not fit
                if not is_out_of_memory(exc):
                    raise
                points[b] = 1 << 62
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        return points[b] <= target

    lo = max([b for b, p in points.items() if p <= target], default=0)
    hi = min([b for b, p in points.items() if p > target], default=None)
    hi = cap + 1 if hi is None or hi > cap + 1 else hi
    probes = 0

    def step(b: int) -> bool:
        nonlocal lo, hi, probes
        probes += b not in points
        ok = fits(b)
        if ok:
            lo = max(lo, b)
        else:
            hi = min(hi, b)
        return ok

    guess = est.largest_batch(target)
    while hi > cap and lo < cap and probes < max_probes:  # bracket: find a batch that fails
        step(min(max(guess, 2 * lo, 1), cap))
        if hi > cap:
            guess = fit([(b, p) for b, p in points.items() if p <= target]).largest_batch(target)
    secant = True
    while hi - lo > 1 and probes < max_probes:  # narrow: interpolate and halve in turn
        if secant and lo:
            line = fit([(lo, points[lo]), (hi, points[hi])]) if points.get(hi, 1 << 62) < 1 << 62 \
                else est
            step(min(max(line.largest_batch(target), lo + 1), hi - 1))
        else:
            step((lo + hi) // 2)
        secant = not secant
    if lo and hi is not None and points[hi] < 1 << 62:
        est = fit([(lo, points[lo]), (hi, points[hi])])
    return min(lo, cap), est, sorted((b, p) for b, p in points.items() if p < 1 << 62)


# -- the budget ----------------------------------------------------------------------------------
def _meminfo(key: str) -> int | None:
    """``key`` of ``/proc/meminfo`` (e.g. ``MemAvailable``) in bytes; None when unreadable."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def device_budget(device: torch.device, memory_limit: int | None) -> tuple[int, str]:
    """``(bytes, where from)`` a step may use on ``device``: ``memory_limit`` when set, else the
    free memory of the CUDA device (``torch.cuda.mem_get_info``, plus what this process's
    caching allocator holds) or the CPU's available memory (``MemAvailable``)."""
    if memory_limit is not None:
        return int(memory_limit), "memory_limit"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device)
                   - torch.cuda.memory_allocated(device)), "free memory of the device"
    avail = _meminfo("MemAvailable")
    if avail is None:
        raise ValueError("cannot read the available memory of this machine: set memory_limit")
    return avail, "available memory (MemAvailable)"


def device_total(device: torch.device) -> int | None:
    """Total memory of ``device`` (CUDA: the card; CPU: MemTotal), or None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return _meminfo("MemTotal")


# -- out of memory -------------------------------------------------------------------------------
_CPU_OOM = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of a device (CUDA's ``OutOfMemoryError``, the
    CPU allocator's failure, Python's MemoryError)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _CPU_OOM)
