"""Snakemake adapter, rule search: nas_core.stages.run_search on the job's GPU(s)."""

import logging
import os
import sys
from pathlib import Path


def log_to(path):
    """Everything this job prints (logging, warnings, tracebacks) goes to its log file."""
    stream = open(path, "w", buffering=1)
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


log_to(snakemake.log[0])

from nas_core.gpu import acquire_gpus  # noqa: E402  (no torch: CUDA must not start yet)

with acquire_gpus(snakemake.resources.gpu):
    import torch

    torch.set_num_threads(max(1, snakemake.threads))
    from nas_core.stages import run_search

    run_search(
        snakemake.params.data,
        snakemake.params.search,
        Path(snakemake.output.alphas).parent,
        data_root=snakemake.params.root,
    )
