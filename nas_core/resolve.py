"""One resolver of a dataset's effective configuration, used by the CLI and the workflow alike.

A config document in the workflow's format (``config/config.yaml``) has shared top-level
``search:`` / ``train:`` / ``test:`` / ``select:`` / ``gpus:`` / ``genotype:`` blocks and one
block per dataset under ``datasets.<name>``, whose sub-blocks override the shared ones key by key.
:func:`resolve_dataset` layers them (then command-line overrides), checks the stage blocks with
:mod:`nas_core.config`, and decides the dataset's data folder and genotype source, so that the
same config gives the same files whether a stage runs from Snakemake or ``python -m nas_core``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nas_core.config import STAGES, ConfigError, merge, search_seeds, validate_stage_cfg

__all__ = ["DatasetConfig", "resolve_dataset", "data_root", "genotype_source_kind",
           "GPU_DEFAULTS", "GENOTYPE_DEFAULTS", "BLOCKS"]

#: GPUs per job of each GPU stage (the workflow's ``gpus:`` block; ``select``: each candidate's
#: selection training)
GPU_DEFAULTS = {"search": 1, "train": 1, "test": 1, "select": 1}
#: where the trained cell comes from (the workflow's ``genotype:`` block)
GENOTYPE_DEFAULTS = {"source": "search", "max_skip": None}
#: the blocks of a dataset: its data block and the stage blocks
BLOCKS = ("data",) + STAGES


def data_root(name: str, data: Mapping[str, Any]) -> str:
    """Folder passed to :mod:`nas_core.data` as ``root`` (files go to ``root/{data.name}/``).

    A dataset named like its loader keeps its files in ``resources/{name}/``; another name (two
    configs of one source, say) gets its own ``resources/{name}/{data.name}/``, so two datasets
    never write to the same folder."""
    return "resources" if data.get("name", name) == name else f"resources/{name}"


def genotype_source_kind(source: str | Path) -> str:
    """``"search"``, ``"file"`` (an existing file, or a text that looks like a path: it has a
    suffix or a folder separator) or ``"name"`` (a published genotype name)."""
    text = str(source)
    if text == "search":
        return "search"
    path = Path(text)
    if path.is_file() or path.suffix or "/" in text or "\\" in text:
        return "file"
    return "name"


@dataclass(frozen=True)
class DatasetConfig:
    """The effective settings of one dataset (plain dicts; stage blocks validated, defaults
    filled in, unless resolved with ``validate=False``)."""

    name: str
    data: dict
    search: dict
    train: dict
    test: dict
    select: dict = field(default_factory=dict)
    gpus: dict = field(default_factory=lambda: dict(GPU_DEFAULTS))
    genotype: dict = field(default_factory=lambda: dict(GENOTYPE_DEFAULTS))

    @property
    def data_root(self) -> str:
        return data_root(self.name, self.data)

    @property
    def results(self) -> Path:
        """``results/{name}``: where the stages' outputs go by default."""
        return Path("results") / self.name

    @property
    def genotype_source(self) -> str:
        return str(self.genotype["source"])

    @property
    def genotype_kind(self) -> str:
        return genotype_source_kind(self.genotype_source)

    @property
    def seeds(self) -> list[int]:
        """The search seeds, ascending (``search.seeds``, or ``[search.seed]``; the order of
        the list changes nothing); ``[]`` when the genotype does not come from a search."""
        return sorted(search_seeds(self.search)) if self.genotype_kind == "search" else []

    @property
    def selects(self) -> bool:
        """Whether the genotype is picked among several searches (more than one seed)."""
        return len(self.seeds) > 1

    def search_for_seed(self, seed: int) -> dict:
        """The search block of one search job: ``seed`` set, ``seeds`` left out (so the list
        can change without touching an unchanged seed's job)."""
        out = {k: v for k, v in self.search.items() if k != "seeds"}
        out["seed"] = int(seed)
        return out

    def blocks(self) -> dict[str, dict]:
        """``{"data", "search", "train", "test", "select"}``."""
        return {name: getattr(self, name) for name in BLOCKS}


def _mapping(value: Any, where: str) -> Mapping | None:
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    return value


def resolve_dataset(doc: Mapping[str, Any] | None, name: str,
                    overrides: Mapping[str, Mapping[str, Any]] | None = None, *,
                    validate: bool = True) -> DatasetConfig:
    """The settings of dataset ``name``: the shared blocks of ``doc``, overridden by
    ``doc["datasets"][name]``, then by ``overrides`` (``{"search": {"epochs": 3}, ...}``).

    A dataset absent from ``doc`` resolves to the shared blocks and ``data: {name: NAME}``.
    ``validate``: check and complete the stage blocks (:func:`nas_core.config.validate_stage_cfg`);
    a bad value is a one-line :class:`ConfigError` starting ``datasets.NAME: ``.
    """
    doc = _mapping(doc, "the config") or {}
    overrides = overrides or {}
    datasets = _mapping(doc.get("datasets"), "datasets") or {}
    block = _mapping(datasets.get(name), f"datasets.{name}") or {}
    out: dict[str, Any] = {}
    for key in BLOCKS + ("gpus", "genotype"):
        shared = _mapping(doc.get(key), key) if key != "data" else None
        own = _mapping(block.get(key), f"datasets.{name}.{key}")
        out[key] = copy.deepcopy(merge(shared, own, overrides.get(key)))
    out["data"].setdefault("name", name)
    out["gpus"] = {**GPU_DEFAULTS, **out["gpus"]}
    out["genotype"] = {**GENOTYPE_DEFAULTS, **out["genotype"]}
    if validate:
        for stage in STAGES:
            try:
                out[stage] = validate_stage_cfg(stage, out[stage])
            except ConfigError as exc:
                raise ConfigError(f"datasets.{name}: {exc}") from None
    return DatasetConfig(name=name, **out)
