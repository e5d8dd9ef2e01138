"""Data-parallel runs on torch.distributed: the process group, the launcher, the collectives.

A stage run over ``N > 1`` processes (the devices a job was granted, or ``--nproc`` on the
CLI) is launched here with ``torch.multiprocessing`` (:func:`launch`): each process joins one
process group (NCCL on CUDA, gloo on the CPU; a ``file://`` rendezvous in a private temporary
folder, so nothing listens on a port), takes device ``cuda:RANK`` of the job's visible devices,
runs the same stage function and the launcher returns rank 0's result.  An exception in any
rank stops the whole job: ``torch.multiprocessing`` ends the other processes and the launcher
re-raises the failing rank's error as a one-line :class:`DistributedError` (known errors keep
their text).  Under Slurm, where ``srun`` already started one task per device, the tasks join
through Slurm's environment instead (:func:`slurm_env`).

What is shared between ranks (the rules the stages follow):

* every global batch of the seeded epoch order is cut into ``N`` contiguous parts (sizes differ
  by at most one; :meth:`World.shard`), rank ``r`` reads part ``r``: no overlap, no loss;
* each rank's gradients are those of its part's mean loss; :meth:`World.average` sums them
  weighted by the part's share of the batch, so every rank holds the gradient of the global
  batch's mean loss (weights, and in the search the architecture parameters), and the
  optimisers, started equal, stay equal;
* BatchNorm keeps per-rank batch statistics (each rank normalises its own part, as
  ``DistributedDataParallel`` does by default; the running statistics of rank 0 are saved).
  SyncBatchNorm is not used: the supernet's BatchNorm is a fused kernel of its own and the
  DARTS batches per rank stay large enough on GPUs;
* meters are sums, added over ranks (:meth:`World.sum_values`);
* only rank 0 writes outputs, logs and checkpoints; each rank's RNG state is kept in them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nas_core.errors import NasCoreError, is_known, one_line

__all__ = ["World", "SINGLE", "current_world", "launch", "data_parallel", "slurm_env",
           "init_process_group", "DistributedError"]

START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"


class DistributedError(NasCoreError, RuntimeError):
    """A rank of a data-parallel run failed; the message names the rank and its error."""


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (``size == 1``: no process group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, keys: Sequence[Any]) -> list[Any]:
        """This rank's contiguous part of one global batch."""
        n, k = len(keys), self.size
        start = self.rank * (n // k) + min(self.rank, n % k)
        return list(keys[start:start + n // k + (1 if self.rank < n % k else 0)])

    def share(self, n: int) -> float:
        """The weight of this rank's part of a global batch of ``n`` samples."""
        return len(self.shard(range(n))) / n if n else 0.0

    def average(self, tensors: Sequence[torch.Tensor], weight: float) -> None:
        """``t := sum over ranks of weight_r * t_r`` in place (a coalesced all-reduce)."""
        if self.size == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors]) * weight
        dist.all_reduce(flat)
        offset = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        """``values`` added over ranks (float64 on the CPU side)."""
        if self.size == 1:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                         device=_collective_device())
        dist.all_reduce(t)
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        if self.size == 1:
            return [obj]
        out: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, as
        ``DistributedDataParallel(broadcast_buffers=True)`` does."""
        if self.size == 1:
            return
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


SINGLE = World()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def current_world() -> World:
    """The process group this process is in, or :data:`SINGLE`."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", dist.get_rank())))
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local)


def slurm_env() -> dict[str, Any] | None:
    """Rank, size, local rank and rendezvous of a Slurm step with several tasks (``srun``;
    ``SLURM_STEP_NUM_TASKS`` > 1), or None outside one.  The master is the step's first node; the port follows from the job id."""
    try:  # a step's own task count: a batch script outside srun sees SLURM_NTASKS only
        size = int(os.environ["SLURM_STEP_NUM_TASKS"])
        rank = int(os.environ["SLURM_PROCID"])
    except (KeyError, ValueError):
        return None
    if size < 2:
        return None
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    master = os.environ.get("MASTER_ADDR") or _first_host(nodes) or "127.0.0.1"
    port = int(os.environ.get("MASTER_PORT") or 20000 + int(os.environ.get("SLURM_JOB_ID", 0))
               % 20000)
    return {"rank": rank, "size": size, "local_rank": int(os.environ.get("SLURM_LOCALID", 0)),
            "init_method": f"tcp://{master}:{port}"}


def _first_host(nodelist: str) -> str | None:
    """The first host of a Slurm node list (``node[01-03],gpu7`` -> ``node01``)."""
    text = nodelist.split(",")[0].strip()
    if not text:
        return None
    if "[" in text:
        prefix, rest = text.split("[", 1)
        first = rest.split(",")[0].split("-")[0].rstrip("]")
        return prefix + first
    return text


def init_process_group(rank: int, size: int, init_method: str, local_rank: int) -> World:
    """Join the group: NCCL with ``cuda:local_rank`` when CUDA is available, gloo otherwise."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":  # Slurm may give each task only its own GPU
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size)
    os.environ["LOCAL_RANK"] = str(local_rank)
    return World(rank=rank, size=size, local_rank=local_rank)


def _worker(local_rank: int, size: int, init_method: str, fn: Callable, args: tuple,
            kwargs: dict, folder: str, threads: int) -> None:
    torch.set_num_threads(threads)
    init_process_group(local_rank, size, init_method, local_rank)
    if local_rank != 0:  # rank 0 speaks for the run
        logging.getLogger("nas_core").setLevel(logging.WARNING)
    try:
        result = fn(*args, **kwargs)
        if local_rank == 0:
            Path(folder, "result.json").write_text(json.dumps(result))
        dist.barrier()
    except Exception as exc:
        # when one rank fails the others fail next (their peer is gone): record when and what,
        # so the launcher can name the first
        known = is_known(exc)
        Path(folder, f"error-{local_rank}.json").write_text(json.dumps({
            "time": time.time(), "known": known,
            "text": one_line(exc) if known else traceback.format_exc()}))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(fn: Callable, nprocs: int, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in ``nprocs`` processes of one process group (local ranks
    0..nprocs-1 on this machine) and return rank 0's result (plain JSON values).  The CPU
    threads of this process are divided among them (at least one each).  When ranks fail, the
    first failure is raised: a known error as one line (:class:`DistributedError`), anything
    else with its traceback."""
    threads = max(1, torch.get_num_threads() // nprocs)
    with tempfile.TemporaryDirectory(prefix="nas_core_dist_") as tmp:
        init_method = Path(tmp, "rendezvous").as_uri()
        try:  # fork: the workers keep this process's logging and console (nothing ran yet)
            mp.start_processes(_worker, nprocs=nprocs, join=True, start_method=START_METHOD,
                               args=(nprocs, init_method, fn, args, kwargs, tmp, threads))
        except mp.ProcessRaisedException as exc:
            _raise_first_error(Path(tmp), nprocs, str(exc))
        except mp.ProcessExitedException as exc:
            raise DistributedError(f"a rank of {nprocs} died: {one_line(exc)}") from None
        return json.loads(Path(tmp, "result.json").read_text())


def _raise_first_error(folder: Path, nprocs: int, fallback: str) -> None:
    errors = []
    for rank in range(nprocs):
        try:
            errors.append((json.loads(Path(folder, f"error-{rank}.json").read_text()), rank))
        except (OSError, ValueError):
            continue
    if not errors:
        raise RuntimeError(f"a rank of {nprocs} failed:\n{fallback}") from None
    first, rank = min(errors, key=lambda e: e[0]["time"])
    if first["known"]:
        raise DistributedError(f"rank {rank} of {nprocs}: {first['text']}") from None
    raise RuntimeError(f"rank {rank} of {nprocs} failed:\n{first['text']}") from None


def data_parallel(fn: Callable) -> Callable:
    """Decorator of a stage function: ``fn(..., nproc=N)`` runs in ``N`` processes
    (:func:`launch`); inside a Slurm step of several tasks every task joins the step's process
    group from Slurm's environment; already in a group, or ``N`` of 1 or None, ``fn`` runs
    here.  Every rank returns ``fn``'s result; the launcher returns rank 0's."""

    @functools.wraps(fn)
    def wrapper(*args: Any, nproc: int | None = None, **kwargs: Any) -> Any:
        if dist.is_available() and dist.is_initialized():
            return fn(*args, **kwargs)
        env = slurm_env()
        if env is not None:
            init_process_group(env["rank"], env["size"], env["init_method"], env["local_rank"])
            if env["rank"]:  # rank 0 speaks for the run
                logging.getLogger("nas_core").setLevel(logging.WARNING)
            try:
                result = fn(*args, **kwargs)
                dist.barrier()
                return result
            finally:
                dist.destroy_process_group()
        if nproc is not None and nproc > 1:
            return launch(fn, nproc, *args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper
