"""Atomic file writes and resumable checkpoints.

Every file a stage writes goes through :func:`nas_core.fileio.atomic_write_bytes` (temporary
file in the destination folder, fsync, ``os.replace``, fsync of the folder): a reader or a
restarted job sees the old file or the new one, never a torn one.

Checkpoints are ``torch.save`` dicts that load with ``torch.load(weights_only=True)``: they hold
only tensors, (ordered) dicts, lists, tuples, strings, numbers, booleans and None.  RNG states
are stored as tensors and plain types (:func:`get_rng_state` / :func:`set_rng_state`).  Every
checkpoint carries a ``fingerprint`` (:func:`fingerprint`); :func:`load_checkpoint` returns None
for a missing file or another fingerprint, and moves an unreadable file aside to
``<name>.corrupt`` (logged) instead of deleting it.  A write the file system refuses (disk full,
file-size limit) raises :class:`~nas_core.fileio.WriteError` with one line and leaves the
previous checkpoint in place.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_core.errors import NasCoreError, one_line
from nas_core.fileio import atomic_write_bytes, fsync_dir, to_plain

__all__ = [
    "CheckpointError",
    "atomic_torch_save",
    "torch_save_bytes",
    "fingerprint",
    "peek_checkpoint",
    "get_rng_state",
    "set_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "CHECKPOINT_FORMAT",
]

log = logging.getLogger(__name__)

#: Version of the checkpoint layout; a checkpoint of another format is ignored like a stale one.
CHECKPOINT_FORMAT = 1


class CheckpointError(NasCoreError, RuntimeError):
    """A checkpoint could not be read (it has been moved aside)."""


def torch_save_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory.  The bytes depend only on ``obj`` (saving straight to a
    temporary file would embed its random name in the zip archive)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, what: str = "") -> Path:
    """``torch.save(obj)`` to ``path`` atomically, byte-reproducibly (``what``: see
    :func:`nas_core.fileio.atomic_write_bytes`)."""
    return atomic_write_bytes(path, torch_save_bytes(obj), what=what)


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, compact separators)."""
    text = json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- RNG states as weights_only-loadable values ------------------------------------------------
def get_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python RNG states, as tensors/plain types."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [int(py_state[0]), list(py_state[1]), py_state[2]],
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n_dev = torch.cuda.device_count()
        if len(cuda) == n_dev:
            torch.cuda.set_rng_state_all(cuda)
        else:  # another device count: restore what matches
            for i, s in enumerate(cuda[:n_dev]):
                torch.cuda.set_rng_state(s, i)


# -- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], fingerprint: str) -> Path:
    """Write ``state`` (a dict of tensors / plain values) with its fingerprint, atomically.

    When the file system refuses (disk full, file-size limit) this raises
    :class:`nas_core.fileio.WriteError` (an OSError, one line: "cannot write checkpoint PATH:
    no space left on device; the previous checkpoint is unchanged and a rerun resumes from
    it"); the previous checkpoint stays in place, loadable."""
    payload = dict(state)
    payload["format"] = CHECKPOINT_FORMAT
    payload["fingerprint"] = fingerprint
    return atomic_torch_save(payload, path, what="checkpoint")


def _move_aside(path: Path, reason: str) -> Path:
    target = path.with_name(path.name + ".corrupt")
    os.replace(path, target)
    fsync_dir(path.parent)
    log.warning("checkpoint %s cannot be read (%s); moved aside to %s", path, reason, target)
    return target


def peek_checkpoint(path: str | os.PathLike, *keys: str) -> dict[str, Any] | None:
    """``fingerprint`` and the plain values ``keys`` of the checkpoint at ``path`` (read
    memory-mapped, nothing moved aside); None when it is missing or cannot be read."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - load_checkpoint deals with unreadable files
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        return None
    return {k: state.get(k) for k in ("fingerprint",) + keys}


def load_checkpoint(path: str | os.PathLike, fingerprint: str, *,
                    map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists, can be read and has ``fingerprint``; else None.

    An unreadable file (truncated, not a torch file, not weights-only) is moved aside to
    ``<name>.corrupt`` with a warning.  A checkpoint with another fingerprint (or format) is
    left in place and logged as ignored; the stage will overwrite it.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(state, dict) or "fingerprint" not in state:
            raise CheckpointError("not a nas_core checkpoint")
    except Exception as exc:  # noqa: BLE001 - any failure to read means "unreadable"
        reason = one_line(exc, 200)
        _move_aside(path, f"{type(exc).__name__}: {reason}")
        return None
    if state.get("format") != CHECKPOINT_FORMAT or state["fingerprint"] != fingerprint:
        made = state.get("results_version")
        log.warning("ignoring checkpoint %s (configuration changed or another results "
                    "version: fingerprint %s, expected %s; written by %s); starting fresh", path,
                    str(state.get("fingerprint"))[:12], fingerprint[:12],
                    ", ".join(f"{k} v{v}" for k, v in made.items())
                    if isinstance(made, dict) else "a nas_core without results versions")
        return None
    return state
