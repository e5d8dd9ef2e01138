"""What every workflow job does around its one ``nas_core`` call: logging and its GPUs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

from nas_core.gpu import acquire_gpus


def log_to(path: str | os.PathLike) -> None:
    """Send everything this process prints (logging, warnings, tracebacks) to ``path``."""
    stream = open(path, "w", buffering=1)
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


@contextlib.contextmanager
def gpu_job(gpus: int, threads: int) -> Iterator[list[str]]:
    """Hold ``gpus`` devices from the lock pool (0 = CPU) and set torch's CPU threads.

    CUDA must not start before the devices are chosen, so torch is imported only inside."""
    with acquire_gpus(gpus) as granted:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        yield granted
