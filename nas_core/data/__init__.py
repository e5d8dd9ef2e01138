"""Data layer: dataset registry, loading, seeded splits and the download stage.

Public API (see docs/architecture.md, "Data layer")::

    load_data(cfg, root="resources") -> DataBundle
    download_data(cfg, root="resources", manifest=None) -> list[Path]
    dataset_files(cfg, root="resources") -> list[Path]
    local_inputs(cfg, root="resources") -> list[LocalInput]
    content_digest(files, base=None, cache=None) -> str
    split_indices(n, first_fraction, seed) -> (first, second)
    list_datasets(), register_dataset(name, options=..., downloader=..., files=..., local=...,
                                      describe=...), get_dataset(name)

Datasets: digits, synthetic, mnist, fashion-mnist, cifar-10, graphene, netcdf, image-folder, and any
``package.module:Attribute`` import path (the user's own dataset class, :mod:`.custom`); each
in ``root/{name}/``.
"""

from __future__ import annotations

from .base import ArrayDataset, DataBundle, DataError, DownloadError, encode_labels
from .digest import Sha256Cache, content_digest
from .local import LocalInput
from .registry import (
    dataset_files,
    download_data,
    get_dataset,
    is_import_path,
    list_datasets,
    load_data,
    local_inputs,
    register_dataset,
)
from .splits import random_test_split, split_indices

# Registering modules (import for their side effect).
from . import digits as _digits  # noqa: E402,F401
from . import netcdf as _netcdf  # noqa: E402,F401
from . import vision as _vision  # noqa: E402,F401
from . import folder as _folder  # noqa: E402,F401
from . import synthetic as _synthetic  # noqa: E402,F401

__all__ = [
    "ArrayDataset",
    "DataBundle",
    "DataError",
    "DownloadError",
    "LocalInput",
    "Sha256Cache",
    "content_digest",
    "dataset_files",
    "download_data",
    "encode_labels",
    "get_dataset",
    "is_import_path",
    "list_datasets",
    "load_data",
    "local_inputs",
    "random_test_split",
    "register_dataset",
    "split_indices",
]
