"""Snakemake adapter, rule download: nas_core.data.download_data -> resources/{dataset}/download.json."""

import json
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

from nas_core.data import download_data  # noqa: E402

files = download_data(snakemake.params.data, root=snakemake.params.root)
# The marker lists the files (no timestamps): rewriting it unchanged does not trigger reruns.
out = Path(snakemake.output[0])
out.parent.mkdir(parents=True, exist_ok=True)
tmp = out.with_suffix(".json.tmp")
tmp.write_text(json.dumps({"data": snakemake.params.data, "root": snakemake.params.root,
                           "files": sorted(str(f) for f in files)}, indent=2, sort_keys=True) + "\n")
os.replace(tmp, out)
logging.info("download: %d file(s) for %s", len(files), snakemake.wildcards.dataset)
