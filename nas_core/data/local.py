"""Local inputs: the user's own files and folders a dataset reads (not downloaded ones).

A dataset declares them with ``register_dataset(..., local=fn)``: ``fn(opts, folder)`` returns
:class:`LocalInput` entries (the config key naming it, the path, the files to track).  The
workflow makes each an input of the download rule and tracks its content
(:func:`nas_core.data.digest.content_digest`), and stops the dry run when one is missing.

Relative paths resolve against the working directory (where ``snakemake`` or ``python -m
nas_core`` runs): :func:`resolve_local`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .digest import Sha256Cache, file_records, records_digest

__all__ = ["LocalInput", "resolve_local", "describe_missing", "local_digest"]


@dataclass(frozen=True)
class LocalInput:
    """``key``: the ``data:`` key naming it (``path``); ``path``: the file or folder as the
    loader reads it; ``files``: the files whose content identifies the data (for a folder, the
    files it reads inside it; empty when the path is missing); ``given``: the value as written
    in the config; ``exists``: whether ``path`` is there."""

    key: str
    path: Path
    given: str
    files: tuple[Path, ...] = field(default_factory=tuple)
    is_folder: bool = False

    @property
    def exists(self) -> bool:
        return self.path.is_dir() if self.is_folder else self.path.is_file()


def resolve_local(value: str | os.PathLike, legacy_folder: Path | None = None) -> Path:
    """A user's path: ``~`` expanded; absolute as is; relative to the working directory.

    ``legacy_folder``: where a relative path was looked up before (``resources/{dataset}/
    netcdf/``); used only when the path is not found in the working directory and is there."""
    p = Path(str(value)).expanduser()
    if p.is_absolute() or legacy_folder is None or p.exists():
        return p
    old = legacy_folder / p
    return old if old.exists() else p


def describe_missing(entry: LocalInput, lead: str = "no") -> str:
    """``no file 'x.nc' (relative to the working directory: /wd/x.nc)``: the one-line reason
    of a missing input."""
    what = "folder" if entry.is_folder else "file"
    if entry.path.is_absolute():
        return f"{lead} {what} {entry.given!r}"
    return (f"{lead} {what} {entry.given!r} (relative to the working directory: "
            f"{Path.cwd() / entry.path})")


def local_digest(entries: list[LocalInput], cache: Sha256Cache | None = None) -> str:
    """One sha256 over the content of every local input (each file's path inside its folder,
    or the config key for a file, size and sha256); ``""`` when there are none."""
    if not entries:
        return ""
    records = []
    for e in entries:
        base = e.path if e.is_folder else None
        for r in file_records(e.files, base=base, cache=cache):
            shown = f"{e.key}/{r['path']}" if e.is_folder else e.key
            records.append({**r, "path": shown})
    return records_digest(records)
