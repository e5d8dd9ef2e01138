"""Content identity of local data files: what the workflow tracks instead of modification times.

:func:`content_digest` is one sha256 over ``path, size, sha256`` of each file of a dataset; the
workflow passes it to the download rule as a param, so a changed byte reruns the download and
everything downstream, while a ``touch`` (same bytes, newer mtime) reruns nothing.

Hashing a large file at every ``snakemake`` invocation would be slow, so :class:`Sha256Cache`
remembers each file's sha256 under its stat signature (size, mtime, ctime, inode) in a small
JSON file (the workflow keeps it in ``.snakemake/nas_core/sha256.json``): a file is read again
only when its signature changed, and then once.  ``ctime`` cannot be set back by a user, so a
file rewritten with its old mtime restored (``cp -p``, ``rsync -t``) is hashed again too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from nas_core.fileio import atomic_write_text

__all__ = ["Sha256Cache", "file_records", "content_digest", "records_digest"]


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Sha256Cache:
    """sha256 of files keyed by their stat signature; persisted to ``path`` by :meth:`save`
    (best effort: a cache that cannot be read or written is simply rebuilt)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, list] = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    self.entries = {k: v for k, v in data.items()
                                    if isinstance(v, list) and len(v) == 5}
            except (OSError, ValueError):
                self.entries = {}

    @staticmethod
    def _signature(st: os.stat_result) -> list:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def sha256(self, path: str | os.PathLike) -> str:
        p = Path(path).resolve()
        sig = self._signature(p.stat())
        key = str(p)
        entry = self.entries.get(key)
        if entry is not None and entry[:4] == sig:
            return entry[4]
        digest = _hash(p)
        self.entries[key] = sig + [digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        try:
            atomic_write_text(self.path, json.dumps(self.entries, sort_keys=True))
            self.changed = False
        except OSError:
            pass


def file_records(files: Iterable[str | os.PathLike], *, base: str | os.PathLike | None = None,
                 cache: Sha256Cache | None = None) -> list[dict]:
    """``[{"path", "size", "sha256"}]`` of ``files`` in the given order; ``path`` relative to
    ``base`` when given (POSIX separators), else as given."""
    cache = cache or Sha256Cache()
    out = []
    for f in files:
        p = Path(f)
        shown = p.relative_to(base).as_posix() if base is not None else str(p)
        out.append({"path": shown, "size": p.stat().st_size, "sha256": cache.sha256(p)})
    return out


def records_digest(records: Iterable[dict]) -> str:
    """sha256 over ``path<TAB>size<TAB>sha256`` lines of :func:`file_records` output."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r['path']}\t{r['size']}\t{r['sha256']}\n".encode("utf-8"))
    return h.hexdigest()


def content_digest(files: Iterable[str | os.PathLike], *, base: str | os.PathLike | None = None,
                   cache: Sha256Cache | None = None) -> str:
    """One sha256 identifying the content (names, sizes, bytes) of ``files``."""
    return records_digest(file_records(files, base=base, cache=cache))
