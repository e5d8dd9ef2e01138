"""One resolver of a dataset's settings (nas_core.resolve) for the CLI and the workflow: the
same config gives the same files whichever way a stage runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nas_core.config import ConfigError
from nas_core.resolve import (GENOTYPE_DEFAULTS, GPU_DEFAULTS, data_root, genotype_source_kind,
                              resolve_dataset)
from test_workflow import copy_workflow, snakemake, write_config

DOC = {
    "search": {"epochs": 7, "lr": 0.1},
    "gpus": {"train": 2},
    "datasets": {
        "digits": {"data": {"name": "digits"}, "search": {"epochs": 3}},
        "digits-small": {"data": {"name": "digits", "seed": 1}, "train": {"layers": 4},
                         "genotype": {"source": "DARTS_V2"}},
    },
}


def test_shared_blocks_are_overridden_key_by_key_then_validated():
    ds = resolve_dataset(DOC, "digits", {"search": {"batch_size": 8}})
    assert ds.search["epochs"] == 3 and ds.search["lr"] == 0.1 and ds.search["batch_size"] == 8
    assert ds.search["layers"] == 8  # the nas_core.config default
    assert ds.gpus == {**GPU_DEFAULTS, "train": 2} and ds.genotype == GENOTYPE_DEFAULTS
    assert ds.data_root == "resources" and str(ds.results) == "results/digits"
    raw = resolve_dataset(DOC, "digits", validate=False)
    assert raw.search == {"epochs": 3, "lr": 0.1}
    # the document is not changed by resolving
    assert DOC["search"] == {"epochs": 7, "lr": 0.1}


def test_a_dataset_named_apart_from_its_loader_gets_its_own_folder():
    ds = resolve_dataset(DOC, "digits-small")
    assert ds.data == {"name": "digits", "seed": 1}
    assert ds.data_root == "resources/digits-small" == data_root("digits-small", ds.data)
    assert ds.genotype_kind == "name" and ds.genotype_source == "DARTS_V2"
    # a dataset the config does not list: its own loader, the shared blocks
    other = resolve_dataset(DOC, "mnist")
    assert other.data == {"name": "mnist"} and other.data_root == "resources"


def test_bad_values_name_the_dataset_and_key():
    with pytest.raises(ConfigError, match=r"^datasets\.digits: search\.epochs: 0 is out of range"):
        resolve_dataset(DOC, "digits", {"search": {"epochs": 0}})
    with pytest.raises(ConfigError, match=r"^datasets\.x\.train must be a mapping$"):
        resolve_dataset({"datasets": {"x": {"train": [1]}}}, "x")


@pytest.mark.parametrize("source, kind", [
    ("search", "search"), ("DARTS_V2", "name"), ("runs/log.txt", "file"),
    ("genotype.json", "file"), ("my.genotype", "file"), ("sub/NAME", "file"),
])
def test_genotype_source_kind(source, kind):
    assert genotype_source_kind(source) == kind


def test_an_existing_file_without_suffix_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "MYCELL").write_text("Genotype(normal=[], normal_concat=[], reduce=[], "
                                     "reduce_concat=[])")
    assert genotype_source_kind("MYCELL") == "file"


@pytest.mark.slow
def test_cli_and_workflow_read_the_same_files(tmp_path):
    """A dataset named apart from its loader (``sheets-small`` with ``data.name: netcdf``) reads
    resources/sheets-small/netcdf/ both from the CLI and under Snakemake."""
    datafiles = pytest.importorskip("datafiles")
    wf = copy_workflow(tmp_path / "wf")
    rng = np.random.RandomState(0)
    datafiles.write_netcdf(wf / "resources" / "sheets-small" / "netcdf" / "sheets.nc", {
        "image": (("sample", "y", "x"), rng.rand(12, 8, 8).astype(np.float32)),
        "label": (("sample",), (np.arange(12) % 2).astype(np.int64)),
    })
    cfg = write_config(wf / "sheets.yaml", {"targets": ["sheets-small"], "datasets": {
        "sheets-small": {"data": {"name": "netcdf", "path": "sheets.nc", "image_var": "image",
                                  "target_var": "label", "task": "classification"}}}})
    cli = subprocess.run([sys.executable, "-m", "nas_core", "download", "--config", str(cfg),
                          "--dataset", "sheets-small"], cwd=wf, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr
    cli_files = json.loads(cli.stdout)["files"]
    assert cli_files == ["resources/sheets-small/netcdf/sheets.nc"]

    proc = snakemake(wf, "resources/sheets-small/download.json", "--cores", "1",
                     "--configfile", str(cfg))
    assert proc.returncode == 0, proc.output[-3000:]
    manifest = json.loads((wf / "resources" / "sheets-small" / "download.json").read_text())
    assert manifest["files"] == cli_files
    assert manifest["root"] == "resources/sheets-small"
