"""Snakemake adapter, rule genotype: nas_core.stages.run_genotype -> results/{dataset}/genotype.json."""

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

from nas_core.stages import run_genotype  # noqa: E402

genotype = run_genotype(snakemake.params.source, Path(snakemake.output[0]))
logging.info("genotype from %s: %s", snakemake.params.source, genotype)
