"""Data layer: dataset registry, loading, seeded splits and the download stage.

Public API (see docs/architecture.md, "Data layer")::

    load_data(cfg, root="resources") -> DataBundle
    download_data(cfg, root="resources") -> list[Path]
    dataset_files(cfg, root="resources") -> list[Path]
    split_indices(n, first_fraction, seed) -> (first, second)
    list_datasets(), register_dataset(name, options=..., downloader=..., files=...)

Datasets: digits, mnist, fashion-mnist, cifar-10, graphene, netcdf; each in ``root/{name}/``.
"""

from __future__ import annotations

from .base import ArrayDataset, DataBundle, DataError, DownloadError
from .registry import (
    dataset_files,
    download_data,
    get_dataset,
    list_datasets,
    load_data,
    register_dataset,
)
from .splits import random_test_split, split_indices

# Registering modules (import for their side effect).
from . import digits as _digits  # noqa: E402,F401
from . import netcdf as _netcdf  # noqa: E402,F401
from . import vision as _vision  # noqa: E402,F401

__all__ = [
    "ArrayDataset",
    "DataBundle",
    "DataError",
    "DownloadError",
    "dataset_files",
    "download_data",
    "get_dataset",
    "list_datasets",
    "load_data",
    "random_test_split",
    "register_dataset",
    "split_indices",
]
