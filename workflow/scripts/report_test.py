"""Snakemake adapter, rule report_test: figures from nas_core.report."""

import logging
import os
import sys


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

from nas_core import report  # noqa: E402

report.test_figure(snakemake.input[0], snakemake.output[0])
