"""Faults outside the code: bad inputs in a workflow job, a job's error reporting, a full disk
(a file-size limit) during a checkpoint write and the resume after it.

Job processes run as subprocesses (``nas_core.jobs.log_to`` redirects fds 1 and 2); the workflow
test runs ``python -m snakemake`` in a temporary copy of the workflow files.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from datafiles import write_netcdf
from nas_core import errors
from nas_core.jobs import error_line, failed_job_errors
from test_workflow import copy_workflow

ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str, *args: str, cwd: Path, fsize: int | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (optionally under RLIMIT_FSIZE = ``fsize`` bytes)."""
    def limit():  # in the child, before exec
        if fsize is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, hard))

    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


# -- one-line errors ------------------------------------------------------------------------------
def test_known_errors_and_one_line():
    from nas_core.config import ConfigError
    from nas_core.data import DataError, DownloadError
    from nas_core.fileio import WriteError
    from nas_core.genotypes import GenotypeError

    for exc in (ConfigError("x"), DataError("x"), DownloadError("x"), GenotypeError("x"),
                WriteError("f", OSError(28, "No space left on device")),
                OSError(28, "No space left on device", "out.pt")):
        assert errors.is_known(exc), exc
    for exc in (ValueError("x"), RuntimeError("x"), KeyError("x"), OSError(2, "No such file")):
        assert not errors.is_known(exc), exc
    assert set(errors.known_errors()) >= {ConfigError, DataError, GenotypeError, WriteError}
    assert errors.one_line(OSError(28, "No space left on device", "a/b.pt")) == \
        "No space left on device: a/b.pt"
    assert errors.one_line(ValueError("two\n  lines")) == "two lines"
    assert error_line(DataError("bad\nfile"), "search") == "rule search: error: bad file"


JOB = """
    import sys
    from nas_core.jobs import log_to
    log_to(sys.argv[1], "demo")
    print("some output")
    kind = sys.argv[2]
    if kind == "known":
        from nas_core.config import ConfigError
        raise ConfigError("config: search.lr must be > 0, got -1\\n(see the schema)")
    raise RuntimeError("a bug")
"""


def test_job_known_error_is_one_line_on_the_console_traceback_in_the_log(tmp_path):
    proc = run_py(JOB, str(tmp_path / "job.log"), "known", cwd=tmp_path)
    line = "rule demo: error: config: search.lr must be > 0, got -1 (see the schema)"
    assert proc.returncode == 1
    assert proc.stderr == line + "\n" and proc.stdout == ""
    log = (tmp_path / "job.log").read_text()
    assert log.startswith("some output\n")
    assert "Traceback (most recent call last)" in log and "ConfigError" in log
    assert log.rstrip("\n").splitlines()[-1] == line


def test_job_unknown_error_keeps_its_traceback(tmp_path):
    proc = run_py(JOB, str(tmp_path / "job.log"), "unknown", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == "RuntimeError: a bug"
    assert "error:" not in proc.stderr
    log = (tmp_path / "job.log").read_text()
    assert "Traceback (most recent call last)" in log and "RuntimeError: a bug" in log


def test_failed_job_errors_reads_snakemakes_log(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "search.log").write_text("Traceback ...\nDataError: x\n"
                                                  "rule search: error: x\n")
    (tmp_path / "logs" / "train.log").write_text("Traceback ...\nRuntimeError: bug\n")
    main = tmp_path / "run.snakemake.log"
    main.write_text(
        "Error in rule search:\n    jobid: 1\n"
        "    log: logs/search.log (check log file(s) for error details)\n"
        "Error in rule train:\n    jobid: 2\n"
        "    log: logs/train.log (check log file(s) for error details)\n")
    assert failed_job_errors(main, tmp_path) == ["rule search: error: x"]
    assert failed_job_errors([str(main)], tmp_path) == ["rule search: error: x"]
    assert failed_job_errors(tmp_path / "missing.log", tmp_path) == []


# -- the workflow ---------------------------------------------------------------------------------
def snakemake(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m snakemake`` with stdout and stderr interleaved as on a console."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["NAS_CORE_GPU_LOCK_DIR"] = str(workdir / ".gpu_locks")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def test_workflow_job_with_a_nan_in_its_netcdf_ends_with_the_one_line_error(tmp_path):
    """The console's last line is the job's one-line error (as the CLI prints it); the
    traceback is in the job's log only."""
    wf = copy_workflow(tmp_path / "wf")
    profile = yaml.safe_load((wf / "profiles" / "default" / "profile.yaml").read_text())
    if "report_failed_jobs" not in (wf / "Snakefile").read_text() or \
            profile.get("show-failed-logs"):
        pytest.fail("the workflow needs the Snakefile's `onerror: report_failed_jobs(log)` hook "
                    "and `show-failed-logs: false` in profiles/default/profile.yaml")
    rng = np.random.default_rng(0)
    images = rng.random((12, 30, 80), dtype=np.float32)
    images[3, 4, 5] = np.nan
    write_netcdf(wf / "resources" / "bad" / "netcdf" / "cuts.nc", {
        "fine_image": (("n", "h", "w"), images),
        "stress": (("n",), rng.random(12, dtype=np.float32)),
    })
    cfg = {"targets": ["bad"], "datasets": {"bad": {
        "data": {"name": "netcdf", "path": "cuts.nc", "image_var": "fine_image",
                 "target_var": "stress", "task": "regression"},
        "search": {"epochs": 1, "max_steps_per_epoch": 1, "layers": 2, "init_channels": 4,
                   "batch_size": 4, "num_workers": 0}}}}
    (wf / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(wf, "--cores", "1", "--configfile", "bad.yaml", "--",
                     "results/bad/search/seed2/alphas.json")  # search.seed: 2
    out = proc.stdout
    line = ("rule search: error: netcdf: resources/bad/netcdf/cuts.nc variable 'fine_image' "
            "has 1 NaN/inf value(s)")
    assert proc.returncode == 1, out
    assert out.rstrip("\n").splitlines()[-1] == line, out
    assert "Traceback (most recent call last)" not in out, out
    log = (wf / "logs" / "bad" / "search" / "seed2.log").read_text()
    assert "Traceback (most recent call last)" in log and "nas_core.data.base.DataError" in log
    assert log.rstrip("\n").splitlines()[-1] == line


# -- a full disk: checkpoint writes under a file-size limit ----------------------------------------
TRAIN = """
    import sys
    from pathlib import Path
    import torch
    from nas_core.checkpoint import load_checkpoint, save_checkpoint
    from nas_core.jobs import log_to

    out = Path(sys.argv[1])
    log_to(out / "train.log", "train")
    ck, fp = out / "ck" / "checkpoint.pt", "f" * 64
    state = load_checkpoint(ck, fp)
    start = state["epoch"] if state else 0
    print("resumed at epoch", start, flush=True)
    for epoch in range(start + 1, 4):  # the checkpoint grows by ~200 kB an epoch
        save_checkpoint(ck, {"epoch": epoch, "w": torch.full((epoch * 50_000,), float(epoch))}, fp)
        print("saved epoch", epoch, flush=True)
    (out / "done").write_text("ok")
"""


def test_checkpoint_write_over_the_file_size_limit_then_resume(tmp_path):
    # Epoch 1 (~200 kB) fits under the 300 kB limit; epoch 2 (~400 kB) does not.
    first = run_py(TRAIN, str(tmp_path), cwd=tmp_path, fsize=300_000)
    ck = tmp_path / "ck" / "checkpoint.pt"
    assert first.returncode == 1, first.stderr
    expected = (f"rule train: error: cannot write checkpoint {ck}: file too large (over the "
                f"file-size limit, ulimit -f, or the file system's maximum); the previous "
                f"checkpoint is unchanged and a rerun resumes from it")
    assert first.stderr == expected + "\n"
    assert sorted(p.name for p in ck.parent.iterdir()) == ["checkpoint.pt"]  # no temp file
    import torch

    assert torch.load(ck, weights_only=True)["epoch"] == 1  # the previous one, loadable
    log = (tmp_path / "train.log").read_text()
    assert "saved epoch 1" in log and "Traceback (most recent call last)" in log
    assert not (tmp_path / "done").exists()

    second = run_py(TRAIN, str(tmp_path), cwd=tmp_path)  # the space is back
    assert second.returncode == 0, second.stderr + (tmp_path / "train.log").read_text()
    log = (tmp_path / "train.log").read_text()
    assert "resumed at epoch 1" in log and "saved epoch 3" in log
    assert torch.load(ck, weights_only=True)["epoch"] == 3
