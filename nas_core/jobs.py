"""What every workflow job does around its one ``nas_core`` call: logging, errors and its GPUs.

A job script starts with ``log_to(snakemake.log[0], snakemake.rule)``: from then on everything
the process prints goes to the job's log file, and an exception that ends the job is reported
in one of two ways:

- a *known* error (:func:`nas_core.errors.is_known`: config, data, download, genotype,
  checkpoint, stage, full disk): the traceback goes to the log, followed by the one line
  ``rule NAME: error: MESSAGE``, and that line alone goes to the console (the stderr the job
  started with); the exit status is 1;
- any other exception: its traceback goes to the log and to the console.

In the Snakemake process, :func:`report_failed_jobs` (called from the Snakefile's ``onerror``)
prints each failed job's one line again at exit, so that it is the last line on the console.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Iterator

import yaml

from nas_core.errors import is_known, one_line
from nas_core.fileio import atomic_write_text
from nas_core.gpu import acquire_gpus

__all__ = ["log_to", "gpu_job", "error_line", "report_error", "job_errors", "failed_job_errors",
           "report_failed_jobs", "slurm_tasks", "srun_stage"]

#: A duplicate of the job's original stderr (the console), saved by :func:`log_to`.
_CONSOLE_FD: int | None = None
_NAME: str | None = None


def log_to(path: str | os.PathLike, name: str | None = None) -> None:
    """Send everything this process prints (logging, warnings, tracebacks) to ``path``, and
    report an exception that ends the process as described in the module docstring (``name``:
    the job's name for the one line, e.g. the rule name)."""
    global _CONSOLE_FD, _NAME
    if _CONSOLE_FD is None:
        try:
            _CONSOLE_FD = os.dup(2)
        except OSError:
            _CONSOLE_FD = None
    _NAME = name
    stream = open(path, "w", buffering=1)
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    if _CONSOLE_FD is not None:  # the stages' progress lines on Snakemake's console too
        console = _ConsoleHandler(logging.INFO)
        console.setFormatter(logging.Formatter(
            f"%(asctime)s {'rule ' + name + ': ' if name else ''}%(message)s", "%H:%M:%S"))
        console.addFilter(lambda record: record.name.startswith(CONSOLE_LOGGERS))
        logging.getLogger().addHandler(console)
    sys.excepthook = _excepthook


#: Loggers whose INFO lines a job also prints to the console (start, epoch and end lines).
CONSOLE_LOGGERS = ("nas_core.stages", "nas_core.data", "nas_core.gpu")


class _ConsoleHandler(logging.Handler):
    """Writes records to the job's original stderr (:func:`_console`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _console(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never end the job
            self.handleError(record)


def error_line(exc: BaseException, name: str | None = None) -> str:
    """``rule NAME: error: MESSAGE`` (``error: MESSAGE`` without a name)."""
    prefix = f"rule {name}: " if name else ""
    return f"{prefix}error: {one_line(exc)}"


def _console(text: str) -> None:
    """Write to the job's original stderr (the console); nothing when it was not saved."""
    if _CONSOLE_FD is None:
        return
    data = text.encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(_CONSOLE_FD, data):]
    except OSError:
        pass


def report_error(exc: BaseException, name: str | None = None) -> bool:
    """Report ``exc``, which ends the job: the traceback to the log (stderr), and the one line
    (known error) or the traceback (other) to the console.  Returns whether it was known."""
    name = _NAME if name is None else name
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    known = is_known(exc)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    try:
        sys.stderr.write(tb)
        if known:
            sys.stderr.write(error_line(exc, name) + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - the log itself may be what failed (disk full)
        pass
    redirected = _CONSOLE_FD is not None
    if known:
        _console(error_line(exc, name) + "\n")
    elif redirected:
        _console(tb)
    return known


def _excepthook(exc_type, exc, tb) -> None:
    if isinstance(exc, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    if exc.__traceback__ is None:
        exc = exc.with_traceback(tb)
    report_error(exc)


@contextlib.contextmanager
def job_errors(name: str | None = None) -> Iterator[None]:
    """Report an exception leaving the block (see :func:`report_error`) and exit with status
    1; for code that cannot rely on :func:`log_to`'s exception hook (e.g. a thread)."""
    try:
        yield
    except (SystemExit, KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - reported, then exit 1
        report_error(exc, name)
        raise SystemExit(1) from None


# -- in the Snakemake process ----------------------------------------------------------------
_FAILED_BLOCK = re.compile(r"^Error in rule (?P<rule>\S+):$")
_FAILED_LOG = re.compile(r"^\s+log: (?P<logs>.+) \(check log file\(s\) for error details\)$")


def failed_job_errors(snakemake_log, workdir: str | os.PathLike = ".") -> list[str]:
    """The one-line errors of the jobs that failed in a Snakemake run, read from the last line
    of each failed job's log (those written by :func:`report_error` for a known error), in
    the order the jobs failed.  ``snakemake_log`` is Snakemake's own log of the run (the
    ``log`` an ``onerror`` handler gets: a path or a list of paths); unreadable ones are
    skipped."""
    paths = [snakemake_log] if isinstance(snakemake_log, (str, os.PathLike)) else \
        list(snakemake_log or [])
    lines: list[str] = []
    for p in paths:
        try:
            lines += Path(p).read_text(errors="replace").splitlines()
        except (OSError, TypeError):
            continue
    out: list[str] = []
    rule = None
    for line in lines:
        m = _FAILED_BLOCK.match(line)
        if m:
            rule = m.group("rule")
            continue
        m = _FAILED_LOG.match(line)
        if m and rule is not None:
            for log in m.group("logs").split(", "):
                last = _last_line(Path(workdir) / log)
                if last and last.startswith(f"rule {rule}: error: ") and last not in out:
                    out.append(last)
            rule = None
    return out


def _last_line(path: Path, tail: int = 65536) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else None


def report_failed_jobs(snakemake_log: str | os.PathLike) -> list[str]:
    """For a Snakefile's ``onerror``: print the failed jobs' one-line errors to stderr when
    the Snakemake process exits, after Snakemake's own closing lines, so that they are the
    last lines on the console.  Returns them.  Never raises: it runs on Snakemake's error
    path."""
    try:
        errors = failed_job_errors(snakemake_log)
    except Exception:  # noqa: BLE001 - a summary is not worth masking the real failure
        return []
    if errors:
        atexit.register(_print_last, "\n".join(errors) + "\n")
    return errors


def _print_last(text: str) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
        sys.stderr.write(text)
        sys.stderr.flush()


@contextlib.contextmanager
def gpu_job(gpus: int, threads: int) -> Iterator[list[str]]:
    """Hold ``gpus`` devices from the lock pool (0 = CPU) and set torch's CPU threads.

    CUDA must not start before the devices are chosen, so torch is imported only inside."""
    with acquire_gpus(gpus) as granted:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        yield granted


# -- several Slurm tasks (multi-node) -----------------------------------------------------------
def slurm_tasks(resources) -> int:
    """The Slurm tasks a job runs: its ``tasks`` resource when the rule has the executor
    plugin's ``mpi`` resource inside a Slurm job (the plugin then runs the job script once in
    the batch step and the script starts the tasks with ``srun``), else 1."""
    if not os.environ.get("SLURM_JOB_ID") or not getattr(resources, "mpi", None):
        return 1
    return max(1, int(getattr(resources, "tasks", 1) or 1))


def srun_stage(stage: str, tasks: int, dataset: str, blocks: dict, *, data_root: str,
               log: str | os.PathLike, args: list[str]) -> None:
    """Run ``python -m nas_core STAGE`` as ``tasks`` Slurm tasks (``srun --ntasks``); the tasks
    join one process group from Slurm's environment (:func:`nas_core.distributed.slurm_env`)
    and rank 0 writes the outputs.  The dataset's resolved ``blocks`` travel in a config file
    beside the log; the tasks' output goes to the job's log.  A failed step raises
    :class:`nas_core.stages.common.StageError` (the tasks' own one-line error is in the log)."""
    from nas_core.stages.common import StageError  # imports torch: not before the GPUs

    config = Path(f"{log}.srun.yaml")
    atomic_write_text(config, yaml.safe_dump({"datasets": {dataset: blocks}}, sort_keys=False))
    cmd = ["srun", f"--ntasks={tasks}", "--kill-on-bad-exit=1", sys.executable, "-m",
           "nas_core", stage, "--config", str(config), "--dataset", dataset, "--data-root",
           data_root, *map(str, args)]
    logging.getLogger("nas_core.jobs").info("%s over %d Slurm tasks: %s", stage, tasks,
                                            " ".join(cmd))
    code = subprocess.run(cmd, check=False).returncode
    if code != 0:
        raise StageError(f"{stage}: srun over {tasks} tasks failed (exit status {code}); "
                         f"the tasks' error is in {log}")
