"""One-line error text: the form every user-facing error of the project takes."""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(exc: BaseException | str, limit: int | None = None) -> str:
    """``exc``'s message on one line (runs of whitespace and newlines collapsed), cut to
    ``limit`` characters; the exception's class name when the message is empty."""
    text = " ".join(str(exc).split())
    if limit is not None:
        text = text[:limit]
    if not text and isinstance(exc, BaseException):
        return type(exc).__name__
    return text
