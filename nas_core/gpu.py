"""A GPU pool for jobs that share one machine: one lock file per GPU.

Snakemake only counts GPUs (``resources: gpu=1``); it never tells a job *which* device to use.
Every GPU job therefore takes its devices here, before CUDA starts in its process::

    with acquire_gpus(snakemake.resources.gpu) as gpus:   # e.g. ["2"]
        import torch                                       # CUDA now sees only GPU 2
        ...

How it works:

- The pool is the set of GPUs this process may see: the entries of ``CUDA_VISIBLE_DEVICES``
  when it is set to a list, otherwise ``NAS_CORE_FAKE_GPU_COUNT`` (tests), otherwise the
  devices the NVIDIA driver lists (``/proc/driver/nvidia/gpus`` or ``nvidia-smi -L``).  CUDA is
  never initialised here (torch is not imported).
- Each GPU has a lock file ``gpu-<id>.lock`` in the lock folder (``NAS_CORE_GPU_LOCK_DIR``,
  else ``$XDG_RUNTIME_DIR/nas_core_gpu_locks``, else ``/tmp/nas_core_gpu_locks-<uid>``).
  A job takes a GPU with a non-blocking ``fcntl.flock``; it holds the lock until the context
  exits.  The kernel drops the lock when the process dies, so a crashed job (even
  ``kill -9``) never leaves a GPU blocked.  When too few GPUs are free, the job gives back what
  it took and polls again (no partial hoarding, no deadlock).
- The granted ids are written to ``CUDA_VISIBLE_DEVICES``, so CUDA in this process (and its
  children) sees only them.
- ``count == 0`` means the CPU: ``CUDA_VISIBLE_DEVICES=""`` and an empty list.
- Where a scheduler already gave the job its GPUs (Slurm, Kubernetes: ``CUDA_VISIBLE_DEVICES``
  lists exactly ``count`` devices), nothing is locked and the list is returned as is.
- A machine without GPUs runs the job on the CPU whatever ``count`` asks (said once, at INFO),
  so the same workflow runs on a laptop.

Locks are per user by default; users who share GPUs set ``NAS_CORE_GPU_LOCK_DIR`` to one
world-writable folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from nas_core.errors import NasCoreError

__all__ = ["acquire_gpus", "visible_gpus", "default_lock_dir", "GPUError", "ENV_LOCK_DIR",
           "ENV_FAKE_COUNT"]

log = logging.getLogger(__name__)

ENV_LOCK_DIR = "NAS_CORE_GPU_LOCK_DIR"
ENV_FAKE_COUNT = "NAS_CORE_FAKE_GPU_COUNT"


#: Whether this process already said that the machine has no GPU (said once, at INFO).
_SAID_NO_GPU = False


class GPUError(NasCoreError, RuntimeError):
    """A GPU request that cannot be met (more GPUs asked for than the machine has)."""


def default_lock_dir() -> Path:
    """The lock folder: ``$NAS_CORE_GPU_LOCK_DIR``, ``$XDG_RUNTIME_DIR/...`` or ``/tmp/...``."""
    if os.environ.get(ENV_LOCK_DIR):
        return Path(os.environ[ENV_LOCK_DIR])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "nas_core_gpu_locks"
    return Path("/tmp") / f"nas_core_gpu_locks-{os.getuid()}"


def _parse_visible(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _driver_gpu_ids() -> list[str]:
    """Physical GPU indices as the NVIDIA driver lists them, without initialising CUDA."""
    proc = Path("/proc/driver/nvidia/gpus")
    try:
        entries = [p for p in proc.iterdir() if p.is_dir()]
    except OSError:
        entries = []
    if entries:
        return [str(i) for i in range(len(entries))]
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "-L"], capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        lines = [line for line in out.splitlines() if line.startswith("GPU ")]
        return [str(i) for i in range(len(lines))]
    return []


def visible_gpus() -> list[str]:
    """The ids this process may use, in the form ``CUDA_VISIBLE_DEVICES`` takes them."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip() not in ("", "-1", "NoDevFiles"):
        return _parse_visible(env)
    if env is not None:
        return []  # explicitly no GPU
    fake = os.environ.get(ENV_FAKE_COUNT)
    if fake:
        return [str(i) for i in range(int(fake))]
    return _driver_gpu_ids()


def _lock_name(gpu_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in gpu_id)
    return f"gpu-{safe}.lock"


def _try_lock(lock_dir: Path, gpu_id: str) -> int | None:
    """Open and flock the GPU's lock file without blocking; the fd, or None when taken."""
    path = lock_dir / _lock_name(gpu_id)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    # Who holds it, for people looking at the folder (the lock itself is the flock).
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()} since {time.time():.0f}\n".encode())
    except OSError:
        pass
    return fd


def _release(fds: list[int]) -> None:
    for fd in fds:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextlib.contextmanager
def acquire_gpus(
    count: int,
    lock_dir: str | Path | None = None,
    *,
    poll_seconds: float = 2.0,
    timeout: float | None = None,
) -> Iterator[list[str]]:
    """Hold ``count`` GPUs of this machine for the life of the ``with`` block.

    Yields the granted ids (strings, as in ``CUDA_VISIBLE_DEVICES``) after setting
    ``CUDA_VISIBLE_DEVICES`` to them; ``[]`` means the CPU.  Blocks (polling every
    ``poll_seconds``) while fewer than ``count`` GPUs are free; ``timeout`` seconds, if given,
    bound the wait (``TimeoutError``).  Raises ``GPUError`` when the machine has fewer than
    ``count`` GPUs.
    """
    count = int(count or 0)
    if count < 0:
        raise GPUError(f"GPU count must be >= 0, got {count}")
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")

    def restore() -> None:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous

    if count == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        log.info("gpu: 0 GPUs requested: running on the CPU")
        try:
            yield []
        finally:
            restore()
        return

    pool = visible_gpus()
    if not pool:
        global _SAID_NO_GPU
        if not _SAID_NO_GPU:  # a normal state (a laptop), said once per process, not a problem
            log.info("gpu: this machine has no GPU: running on the CPU")
            _SAID_NO_GPU = True
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        try:
            yield []
        finally:
            restore()
        return
    if previous is not None and len(pool) == count:
        # The scheduler (Slurm, Kubernetes, a user) already gave this job exactly its GPUs.
        log.info("gpu: using the %d GPU(s) assigned by the environment: %s", count, ",".join(pool))
        yield list(pool)
        return
    if count > len(pool):
        raise GPUError(
            f"{count} GPU(s) requested but only {len(pool)} visible ({','.join(pool)}); "
            "lower the rule's gpu resource or --resources gpu"
        )

    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    announced = False
    while True:
        held: list[int] = []
        granted: list[str] = []
        for gpu_id in pool:
            fd = _try_lock(lock_dir, gpu_id)
            if fd is None:
                continue
            held.append(fd)
            granted.append(gpu_id)
            if len(granted) == count:
                break
        if len(granted) == count:
            break
        _release(held)  # not enough free: give back and wait, so two jobs never deadlock
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"no {count} free GPU(s) among {','.join(pool)} after {timeout:.0f} s")
        if not announced:
            log.info("gpu: waiting for %d free GPU(s) among %s (locks in %s)", count, ",".join(pool), lock_dir)
            announced = True
        time.sleep(poll_seconds)

    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(granted)
    log.info("gpu: granted GPU(s) %s (locks in %s)", ",".join(granted), lock_dir)
    try:
        yield granted
    finally:
        _release(held)
        restore()
