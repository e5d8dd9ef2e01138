"""One-line error text, and which errors are "known": the form every user-facing error of the
project takes.

A *known* error is one whose message alone tells the user what is wrong (a bad config key, a
NaN in a data file, a malformed genotype, a failed download, a full disk): the CLI and the
workflow jobs print ``error: <one line>`` for it, with no traceback on the console.  Any other
exception is a bug or an unforeseen failure and keeps its traceback.
"""

from __future__ import annotations

import errno
import importlib
import sys

__all__ = ["one_line", "is_known", "known_errors", "KNOWN_ERROR_NAMES", "DISK_ERRNOS"]

#: The known error classes, as (module, class name): imported lazily, so that this module
#: stays importable from every other one.  Subclasses count (DownloadError is a DataError).
KNOWN_ERROR_NAMES: tuple[tuple[str, str], ...] = (
    ("nas_core.config", "ConfigError"),
    ("nas_core.data.base", "DataError"),
    ("nas_core.genotypes", "GenotypeError"),
    ("nas_core.legacy", "LegacyFormatError"),
    ("nas_core.checkpoint", "CheckpointError"),
    ("nas_core.stages.common", "StageError"),
    ("nas_core.gpu", "GPUError"),
    ("nas_core.fileio", "WriteError"),
    ("nas_core.distributed", "DistributedError"),
    ("nas_core.inference", "InferenceError"),
)

#: An OSError with one of these errno values is known whatever raised it: the disk (full,
#: quota, file-size limit, read-only), not the code, is at fault.
DISK_ERRNOS = frozenset(
    e for e in (getattr(errno, n, None) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS"))
    if e is not None
)


def one_line(exc: BaseException | str, limit: int | None = None) -> str:
    """``exc``'s message on one line (runs of whitespace and newlines collapsed), cut to
    ``limit`` characters; the exception's class name when the message is empty.  A plain
    OSError reads ``strerror: filename`` (not ``[Errno N] ...``)."""
    if (isinstance(exc, OSError) and type(exc).__str__ is OSError.__str__
            and exc.strerror and len(exc.args) >= 2):
        text = exc.strerror + (f": {exc.filename}" if exc.filename is not None else "")
        text = " ".join(text.split())
    else:
        text = " ".join(str(exc).split())
    if limit is not None:
        text = text[:limit]
    if not text and isinstance(exc, BaseException):
        return type(exc).__name__
    return text


def known_errors() -> tuple[type[BaseException], ...]:
    """The known error classes (imports their modules), e.g. for ``except known_errors():``;
    a disk OSError (:data:`DISK_ERRNOS`) is known too, see :func:`is_known`."""
    out = []
    for module, name in KNOWN_ERROR_NAMES:
        out.append(getattr(importlib.import_module(module), name))
    return tuple(out)


def is_known(exc: BaseException) -> bool:
    """Whether ``exc`` is a known error (its one line says it all).

    Looks only at modules already imported: an exception of a class never imported cannot
    have been raised, and a failing job need not import torch to decide."""
    for module, name in KNOWN_ERROR_NAMES:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return True
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS
