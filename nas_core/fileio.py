"""Durable file primitives shared by every module that writes or identifies files.

:func:`atomic_write_bytes` writes to a temporary file in the destination folder, flushes and
fsyncs it, renames it over the destination with ``os.replace`` and fsyncs the folder: a reader
(or a restarted job) sees the old file or the new one, never a torn one.  When the write
fails (disk full, quota, file-size limit, permissions) the temporary file is removed, the old
file is left as it was, and the error is a :class:`WriteError` (an ``OSError`` with the same
errno) whose message is one line naming the file and the cause.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from nas_core.errors import NasCoreError, one_line

__all__ = ["WriteError", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "dumps_json", "to_plain", "fsync_dir", "sha256_file"]

_WHY = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (over the file-size limit, ulimit -f, or the file system's "
                 "maximum)",
    errno.EROFS: "read-only file system",
}


class WriteError(NasCoreError, OSError):
    """Writing ``path`` failed; ``errno`` is the cause's, ``cause`` the original OSError.

    One-line message: ``cannot write {what} {path}: {why}; {what the old file did}``."""

    def __init__(self, path: str | os.PathLike, cause: OSError, *, what: str = "",
                 existed: bool = False) -> None:
        why = _WHY.get(cause.errno) or (cause.strerror if cause.strerror and len(cause.args) > 1
                                        else one_line(cause))
        super().__init__(cause.errno, why, str(path))
        self.cause = cause
        self.what = what
        self.existed = existed
        noun = f"{what} " if what else ""
        kept = (f"the previous {what or 'file'} is unchanged" if existed
                else "nothing was written")
        if what == "checkpoint" and existed:
            kept += " and a rerun resumes from it"
        self.text = f"cannot write {noun}{path}: {why}; {kept}"

    def __str__(self) -> str:
        return self.text

    def __reduce__(self):  # picklable (e.g. across worker processes)
        return (_rebuild_write_error, (self.filename, self.cause, self.what, self.existed))


def _rebuild_write_error(path, cause, what, existed) -> "WriteError":
    return WriteError(path, cause, what=what, existed=existed)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "") -> Path:
    """Write ``data`` to ``path`` atomically; creates the folder; returns the path.

    :class:`WriteError` (``what`` names the file's role in its message, e.g. "checkpoint")
    when the file system refuses; ``path`` is then unchanged and no temporary file is left."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(path, exc, what=what, existed=path.exists()) from exc
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, what: str = "") -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text (no newline translation)."""
    return atomic_write_bytes(path, text.encode("utf-8"), what=what)


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, cached in memory by (resolved path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA256_CACHE[key] = h.hexdigest()
    return _SHA256_CACHE[key]


# -- JSON: the project's one text form of a document -------------------------------------------
def to_plain(obj: Any) -> Any:
    """JSON-able copy: arrays and scalars of numpy or torch (anything with ``tolist``) to
    Python, non-finite floats to None, paths to text, mapping keys to text."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        if hasattr(obj, "detach"):  # a torch tensor: no autograd, on the CPU
            obj = obj.detach().cpu()
        return to_plain(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _format(obj: Any, level: int) -> str:
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_format(v, level + 1)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):  # scalars: one line
            return json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(", ", ": "))
        return "[\n" + ",\n".join(inner + _format(v, level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False, ensure_ascii=False)


def dumps_json(obj: Any) -> str:
    """The project's JSON text: plain types (:func:`to_plain`), 2-space indent with lists of
    scalars on one line, key order kept, NaN/inf as null, one trailing newline.  Deterministic
    for equal inputs."""
    return _format(to_plain(obj), 0) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any, *, what: str = "") -> Path:
    """Write :func:`dumps_json` of ``obj`` atomically (``what``: see
    :func:`atomic_write_bytes`)."""
    return atomic_write_text(path, dumps_json(obj), what=what)
