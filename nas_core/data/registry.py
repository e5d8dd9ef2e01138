"""The dataset registry and the entry points ``load_data``, ``download_data``,
``dataset_files`` and ``local_inputs``.

A dataset registers a loader ``(opts, folder) -> DataBundle``, an optional downloader
``(opts, folder) -> list[Path | S3Download]`` (an S3 object's :class:`~.s3.S3Download` carries
its verification record), a function listing its files, its local inputs (the user's own files
or folders it reads, :mod:`.local`), an optional ``describe(opts, folder) -> dict`` (extra
facts for ``download.json``, e.g. ``class_names``), and its config keys: ``{key:
Option(default, kind, description, ...)}`` (:mod:`.options`; ``REQUIRED`` for keys without a
default; a bare default is accepted too); the registry keeps them as a
:class:`~.spec.DatasetSpec`.  ``cfg`` is the dataset's ``data:`` block; ``folder`` is
``root/{name}/``, so two datasets never share files.

A ``name`` of the form ``package.module:Attribute`` is not looked up in the registry but
imported (:mod:`.custom`): the user's own dataset class or function, no fork needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from nas_core import versions
from nas_core.fileio import atomic_write_json

from .base import DataBundle, DataError
from .custom import import_dataset
from .digest import Sha256Cache, file_records
from .local import LocalInput
from .options import REQUIRED, Option
from .s3 import S3Download
from .spec import DatasetSpec, Describer, Downloader, FileLister, Loader, LocalLister

__all__ = ["register_dataset", "list_datasets", "get_dataset", "resolve_options",
           "load_data", "download_data", "dataset_files", "local_inputs", "is_import_path",
           "REQUIRED"]


def is_import_path(name: Any) -> bool:
    """Whether ``name`` is meant as an import path ``package.module:Attribute`` (it holds a
    ``:``, which no registry key does), not a registry key."""
    return isinstance(name, str) and ":" in name


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    *,
    options: Mapping[str, Option | Any],
    downloader: Downloader | None = None,
    files: FileLister | None = None,
    local: LocalLister | None = None,
    describe: Describer | None = None,
) -> Callable[[Loader], Loader]:
    """Decorator registering a loader under ``name`` with its config keys: ``{key: Option}``
    (a bare value is a default without kind or description)."""
    if is_import_path(name):
        raise ValueError(f"dataset name {name!r}: ':' is reserved for import paths")
    specs = {k: v if isinstance(v, Option) else Option(v) for k, v in options.items()}

    def wrap(loader: Loader) -> Loader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = DatasetSpec(name, loader, {k: o.default for k, o in specs.items()},
                                      downloader, files, specs, local, describe)
        return loader

    return wrap


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    """The spec of ``name``: a registered dataset, or the user's dataset class / function for
    an import path ``package.module:Attribute`` (:func:`nas_core.data.custom.import_dataset`);
    DataError listing the known names otherwise."""
    if is_import_path(name):
        return import_dataset(name)
    try:
        return _DATASETS[name]
    except (KeyError, TypeError):
        raise DataError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}"
        ) from None


def resolve_options(cfg: dict) -> tuple[DatasetSpec, dict]:
    """Check ``cfg`` against the dataset's keys; return the spec and the options with defaults."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise DataError(f"data config must be a mapping with a 'name' key, got {cfg!r}")
    spec = get_dataset(cfg["name"])
    unknown = sorted(set(cfg) - set(spec.options) - {"name"})
    if unknown and not spec.open_options:
        raise DataError(
            f"{spec.name}: unknown config key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(spec.options)) or '(none)'}"
        )
    opts = {k: cfg.get(k, v) for k, v in spec.options.items()}
    if spec.open_options:
        opts.update({k: v for k, v in cfg.items() if k != "name" and k not in opts})
    missing = sorted(k for k, v in opts.items() if v is REQUIRED)
    if missing:
        raise DataError(
            f"{spec.name}: missing required config key(s) {', '.join(map(repr, missing))}"
        )
    opts["name"] = spec.name
    return spec, opts


def load_data(cfg: dict, root: str | Path = "resources") -> DataBundle:
    """Load the dataset described by ``cfg`` (a ``data:`` block) from ``root/{name}/``."""
    spec, opts = resolve_options(cfg)
    return spec.loader(opts, Path(root) / spec.folder_name)


def download_data(cfg: dict, root: str | Path = "resources",
                  manifest: str | Path | None = None) -> list[Path]:
    """Fetch the dataset's files into ``root/{name}/`` (nothing for ``digits``); returns them.

    Files already present and verified are not fetched again; a dataset of local files (a
    netCDF file without ``source``, an image folder) checks that they are there.  With
    ``manifest``, also write (atomically) the workflow's download output, ``download.json``:
    ``data`` (the config block), ``root``, ``files`` (paths), ``content`` (``path``, ``size``,
    ``sha256`` of each file), the dataset's own facts (``class_names``, ...) and the S3
    ``verification`` records.  It holds no timestamps: it changes only when the data does.
    """
    spec, opts = resolve_options(cfg)
    folder = Path(root) / spec.folder_name
    fetched = dataset_files(cfg, root) if spec.downloader is None else spec.downloader(opts, folder)
    files = [f.path if isinstance(f, S3Download) else f for f in fetched]
    if manifest is not None:
        cache = Sha256Cache()
        doc: dict[str, Any] = {"results_version": versions.for_stage("download"),
                               "data": cfg, "root": str(root),
                               "files": sorted(str(f) for f in files)}
        doc["content"] = file_records(sorted(files, key=str), cache=cache)
        if spec.describe is not None:
            doc.update(spec.describe(opts, folder))
        checks = [f.verification for f in fetched if isinstance(f, S3Download)]
        if checks:
            doc["verification"] = checks
        atomic_write_json(manifest, doc)
    return files


def dataset_files(cfg: dict, root: str | Path = "resources") -> list[Path]:
    """The files ``load_data`` reads for ``cfg`` (the download stage's outputs); [] for digits."""
    spec, opts = resolve_options(cfg)
    if spec.files is None:
        return []
    return spec.files(opts, Path(root) / spec.folder_name)


def local_inputs(cfg: dict, root: str | Path = "resources") -> list[LocalInput]:
    """The user's own files and folders ``cfg`` reads (:class:`LocalInput`: config key, path,
    files to track); [] for downloaded data.  Missing ones are listed too (``exists`` False):
    the caller reports them (the workflow stops its dry run, naming dataset, key and path)."""
    spec, opts = resolve_options(cfg)
    if spec.local is None:
        return []
    return spec.local(opts, Path(root) / spec.folder_name)
