"""One-line error text, and which errors are "known": the form every user-facing error of the
project takes.

A *known* error is one whose message alone tells the user what is wrong (a bad config key, a
NaN in a data file, a malformed genotype, a failed download, a full disk): the CLI and the
workflow jobs print ``error: <one line>`` for it, with no traceback on the console.  Every
known error class of the project derives from :class:`NasCoreError` (and keeps its own
built-in base: ``ConfigError`` is also a ``ValueError``); any other exception is a bug or an
unforeseen failure and keeps its traceback.
"""

from __future__ import annotations

import errno

__all__ = ["NasCoreError", "one_line", "is_known", "known_errors", "DISK_ERRNOS"]


class NasCoreError(Exception):
    """The base of the project's known errors: the message is one line that names the file,
    key or value at fault."""

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
    """The known error classes defined so far (:class:`NasCoreError` and its subclasses in the
    modules imported); a disk OSError (:data:`DISK_ERRNOS`) is known too, see
    :func:`is_known`."""
    out, todo = [], [NasCoreError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return tuple(out)


def is_known(exc: BaseException) -> bool:
    """Whether ``exc`` is a known error (its one line says it all)."""
    return isinstance(exc, NasCoreError) or (isinstance(exc, OSError)
                                             and exc.errno in DISK_ERRNOS)
