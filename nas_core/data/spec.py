"""What a dataset is to the registry: :class:`DatasetSpec` and the functions it holds.

A loader ``(opts, folder) -> DataBundle``; an optional downloader ``(opts, folder)`` returning
its files, each a path or, for an S3 object, the :class:`~.s3.S3Download` (path and
verification record) of :func:`~.s3.download_s3`; a function listing its files; its local
inputs (:mod:`.local`); an optional ``describe(opts, folder) -> dict`` (extra facts for
``download.json``).  ``opts`` are the resolved options, ``folder`` is ``root/{folder_name}/``.
Registered datasets (:mod:`.registry`) and datasets given by import path (:mod:`.custom`) are
both a :class:`DatasetSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .base import DataBundle
from .local import LocalInput
from .options import Option
from .s3 import S3Download

__all__ = ["DatasetSpec", "Loader", "Downloader", "FileLister", "LocalLister", "Describer"]

Loader = Callable[[dict, Path], DataBundle]
Downloader = Callable[[dict, Path], "list[Path | S3Download]"]
FileLister = Callable[[dict, Path], "list[Path]"]
LocalLister = Callable[[dict, Path], "list[LocalInput]"]
Describer = Callable[[dict, Path], dict]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset.  ``options``: key -> default (``REQUIRED``: none); ``option_specs``: key ->
    :class:`Option` (kind, range, description), in declaration order."""

    name: str
    loader: Loader
    options: dict[str, Any]
    downloader: Downloader | None = None
    files: FileLister | None = None
    option_specs: dict[str, Option] = field(default_factory=dict)
    local: LocalLister | None = None
    describe: Describer | None = None
    #: any other key is accepted too (datasets given by import path take their own keys)
    open_options: bool = False
    #: the folder under ``root`` (the name; ``custom`` for a dataset given by import path)
    folder: str = ""

    @property
    def folder_name(self) -> str:
        return self.folder or self.name
