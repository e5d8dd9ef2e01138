#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment of nas.yaml (snakemake --use-conda), once:
# install nas_core from this checkout (two folders up), editable, without dependencies (conda
# installed them from nas.yaml).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python -m pip install --no-deps --no-build-isolation --quiet -e "$root"
python -c "import nas_core; print('nas_core', nas_core.__version__, 'from', nas_core.__file__)"
