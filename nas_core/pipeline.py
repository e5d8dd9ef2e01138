"""What the Snakemake workflow asks of nas_core before its first job.

``workflow/rules/common.smk`` keeps only validation and input functions; the knowledge behind
them lives here, where tests reach it: the config's datasets resolved and checked
(:func:`resolve_datasets`), the files a dataset's target builds (:func:`dataset_outputs`,
:func:`figures`), the threads of a GPU job (:func:`gpu_job_threads`), the local data inputs
tracked by content (:class:`LocalData`) and the one-line text of a schema violation
(:func:`schema_error_line`).  Every check raises :class:`~nas_core.config.ConfigError` with the
line the user sees; common.smk turns it into a ``WorkflowError``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from nas_core.config import ConfigError
from nas_core.data import DataError, Sha256Cache, local_inputs
from nas_core.data.local import describe_missing, local_digest
from nas_core.genotypes import list_genotypes
from nas_core.resolve import DatasetConfig, resolve_dataset

__all__ = ["resolve_datasets", "check_genotype_sources", "unknown_dataset", "names_regex",
           "search_file", "figures", "dataset_outputs", "gpu_job_threads", "LocalData",
           "schema_error_line", "SEED_PATTERN", "SEARCH_FIGURES", "FIGURES"]

#: a search seed in a path (``seed{seed}``): 0 or a number without leading zeros
SEED_PATTERN = "0|[1-9][0-9]*"
#: the figures of one search, under ``figures/`` (``figures/seed{seed}/`` with several seeds)
SEARCH_FIGURES = ("search_curves.png", "alphas_normal.png", "alphas_reduce.png")
#: the figures every dataset gets, under ``figures/``
FIGURES = ("cell_normal.png", "cell_reduce.png", "train_curves.png", "test_metrics.png")


def schema_error_line(exc: Any) -> str:
    """One line naming the key of a jsonschema ``ValidationError``."""
    path = ".".join(str(p) for p in exc.absolute_path) or "(top level)"
    if exc.validator == "additionalProperties" and isinstance(exc.instance, dict):
        allowed = sorted((exc.schema.get("properties") or {}).keys())
        unknown = sorted(k for k in exc.instance if k not in allowed)
        where = f"{path}." if exc.absolute_path else ""
        keys = ", ".join(f"'{where}{k}'" for k in unknown)
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"config: unknown key {keys}{hint}"
    if exc.validator == "required":
        return f"config: {path}: {exc.message}"
    if exc.validator == "propertyNames":
        return f"config: {path}: bad name {exc.instance!r} (letters, digits, '_', '.', '-')"
    return f"config: {path}: {exc.message}"


def unknown_dataset(name: str, where: str, configured: Iterable[str]) -> ConfigError:
    return ConfigError(f"dataset '{name}' ({where}) is not in config 'datasets'; "
                       f"configured: {', '.join(sorted(configured))}")


def check_genotype_sources(datasets: Mapping[str, DatasetConfig]) -> None:
    """A genotype source other than 'search' must be a published name or an existing file."""
    names = list_genotypes()
    for name, dataset in datasets.items():
        source, kind = dataset.genotype_source, dataset.genotype_kind
        if kind == "file" and not Path(source).is_file():
            raise ConfigError(f"config: datasets.{name}.genotype.source: no file {source}")
        if kind == "name" and source not in names:
            raise ConfigError(
                f"config: datasets.{name}.genotype.source: unknown genotype {source!r}; "
                f"'search', a file path or one of: {', '.join(names)}")


def resolve_datasets(config: Mapping[str, Any]) -> dict[str, DatasetConfig]:
    """Every dataset of a schema-validated workflow config, resolved
    (:func:`nas_core.resolve.resolve_dataset`: the CLI's resolver too) and checked: stage
    blocks, ``targets`` among the datasets, genotype sources."""
    datasets = {}
    for name in config["datasets"]:
        try:
            datasets[name] = resolve_dataset(config, name)
        except ConfigError as e:
            raise ConfigError(f"config: {e}") from None
    for name in config["targets"]:
        if name not in datasets:
            raise unknown_dataset(name, "config 'targets'", datasets)
    check_genotype_sources(datasets)
    return datasets


def names_regex(names: Iterable[str]) -> str:
    """A wildcard constraint matching exactly ``names`` (longest first); one that never
    matches when there are none."""
    names = sorted(names, key=len, reverse=True)
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def search_file(name: str, seed: int | str, file: str) -> str:
    return f"results/{name}/search/seed{seed}/{file}"


def figures(dataset: DatasetConfig) -> list[str]:
    """Every figure of one dataset (the report's content, also plain files)."""
    base = f"results/{dataset.name}/figures"
    out = []
    if dataset.selects:
        out += [f"{base}/seed{seed}/{f}" for seed in dataset.seeds for f in SEARCH_FIGURES]
        out += [f"{base}/selection.png"]
    elif dataset.genotype_kind == "search":
        out += [f"{base}/{f}" for f in SEARCH_FIGURES]
    return out + [f"{base}/{f}" for f in FIGURES]


def dataset_outputs(dataset: DatasetConfig) -> list[str]:
    """What the default target builds for one dataset: ``test.json`` and the figures."""
    return [f"results/{dataset.name}/test.json"] + figures(dataset)


def gpu_job_threads(cap: int | None, cores: int | None, job_gpus: int,
                    cpu_threads: int) -> int:
    """The threads of a GPU job: under a GPU cap (``--resources gpu=N``, N > 0) the cores per
    GPU times the job's GPUs, at least 1, so N one-GPU jobs run at once within ``--cores``
    (``--cores 4 --resources gpu=4``: four jobs of one thread); with no cap, ``gpu=0`` or a job
    of 0 GPUs, ``cpu_threads`` (Snakemake lowers it to ``--cores``)."""
    job_gpus = min(job_gpus, cap or 0)
    if not cap or not cores or job_gpus <= 0:
        return cpu_threads
    return max(1, cores * job_gpus // cap)


class LocalData:
    """The user's own files a dataset reads, as inputs of its download job tracked by content.

    :meth:`inputs`: the local inputs (:func:`nas_core.data.local_inputs`), checked once per
    dataset (a missing one is a one-line error naming dataset, key and path); :meth:`digest`:
    sha256 of their content, from a stat-keyed cache (``cache_file``) so that unchanged files
    are not read again."""

    def __init__(self, datasets: Mapping[str, DatasetConfig],
                 cache_file: str | Path = ".snakemake/nas_core/sha256.json"):
        self.datasets = datasets
        self.cache = Sha256Cache(cache_file)
        self._inputs: dict[str, list] = {}

    def inputs(self, name: str) -> list:
        if name not in self._inputs:
            dataset = self.datasets[name]
            try:
                entries = local_inputs(dataset.data, dataset.data_root)
            except DataError as e:
                raise ConfigError(f"config: datasets.{name}.data: {e}") from None
            for entry in entries:
                if not entry.exists:
                    raise ConfigError(
                        f"config: datasets.{name}.data.{entry.key}: {describe_missing(entry)}")
            self._inputs[name] = entries
        return self._inputs[name]

    def digest(self, name: str) -> str:
        value = local_digest(self.inputs(name), cache=self.cache)
        self.cache.save()
        return value
