"""The dataset registry and the three entry points ``load_data``, ``download_data`` and
``dataset_files``.

A dataset registers a loader ``(opts, folder) -> DataBundle``, an optional downloader
``(opts, folder) -> list[Path]``, a function listing its files, and its config keys: ``{key:
Option(default, kind, description, ...)}`` (:mod:`.options`; ``REQUIRED`` for keys without a
default; a bare default is accepted too).  ``cfg`` is the dataset's ``data:`` block; ``folder``
is ``root/{name}/``, so two datasets never share files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from nas_core.checkpoint import atomic_write_json

from .base import DataBundle, DataError
from .s3 import verification
from .options import REQUIRED, Option

__all__ = ["DatasetSpec", "register_dataset", "list_datasets", "get_dataset", "resolve_options",
           "load_data", "download_data", "dataset_files", "REQUIRED"]

Loader = Callable[[dict, Path], DataBundle]
Downloader = Callable[[dict, Path], "list[Path]"]
FileLister = Callable[[dict, Path], "list[Path]"]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.  ``options``: key -> default (``REQUIRED``: none);
    ``option_specs``: key -> :class:`Option` (kind, range, description), in declaration order."""

    name: str
    loader: Loader
    options: dict[str, Any]
    downloader: Downloader | None = None
    files: FileLister | None = None
    option_specs: dict[str, Option] = field(default_factory=dict)


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    *,
    options: Mapping[str, Option | Any],
    downloader: Downloader | None = None,
    files: FileLister | None = None,
) -> Callable[[Loader], Loader]:
    """Decorator registering a loader under ``name`` with its config keys: ``{key: Option}``
    (a bare value is a default without kind or description)."""
    specs = {k: v if isinstance(v, Option) else Option(v) for k, v in options.items()}

    def wrap(loader: Loader) -> Loader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = DatasetSpec(name, loader, {k: o.default for k, o in specs.items()},
                                      downloader, files, specs)
        return loader

    return wrap


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    """The spec of ``name``; DataError listing the known names otherwise."""
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
    if unknown:
        raise DataError(
            f"{spec.name}: unknown config key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(spec.options)) or '(none)'}"
        )
    opts = {k: cfg.get(k, v) for k, v in spec.options.items()}
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
    return spec.loader(opts, Path(root) / spec.name)


def download_data(cfg: dict, root: str | Path = "resources",
                  manifest: str | Path | None = None) -> list[Path]:
    """Fetch the dataset's files into ``root/{name}/`` (nothing for ``digits``); returns them.

    Files already present and verified are not fetched again.  With ``manifest``, also write
    (atomically) a JSON list of the config, the root and the files: the workflow's download
    output.  It holds no timestamps, so rewriting it unchanged triggers no rerun downstream.
    """
    spec, opts = resolve_options(cfg)
    folder = Path(root) / spec.name
    files = dataset_files(cfg, root) if spec.downloader is None else spec.downloader(opts, folder)
    if manifest is not None:
        checks = [v for v in map(verification, files) if v is not None]
        atomic_write_json(manifest, {"data": cfg, "root": str(root),
                                     "files": sorted(str(f) for f in files),
                                     **({"verification": checks} if checks else {})})
    return files


def dataset_files(cfg: dict, root: str | Path = "resources") -> list[Path]:
    """The files ``load_data`` reads for ``cfg`` (the download stage's outputs); [] for digits."""
    spec, opts = resolve_options(cfg)
    if spec.files is None:
        return []
    return spec.files(opts, Path(root) / spec.name)
