# Shared by all rules: config validation, per-dataset settings, paths, fingerprints.
# Nothing here starts a job; every check below fails before the first job, with one line naming
# the offending key or dataset.

import copy
import hashlib
import importlib.util
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from nas_core import config as nas_config
from nas_core.resolve import DatasetConfig, resolve_dataset

SCHEMA = "../schemas/config.schema.yaml"


def _config_error(exc) -> str:
    """One line naming the key from a jsonschema ValidationError."""
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


def validate_config(cfg: dict) -> None:
    """Check ``cfg`` against the schema, fill in the shared defaults; one-line WorkflowError."""
    raw_datasets = copy.deepcopy(cfg.get("datasets"))
    try:
        validate(cfg, SCHEMA, set_default=True)
    except WorkflowError as e:
        cause = e.__context__
        if cause is not None and hasattr(cause, "absolute_path"):
            raise WorkflowError(_config_error(cause)) from None
        raise
    # Dataset blocks are overrides: keep them as written (the validation filled in defaults).
    cfg["datasets"] = raw_datasets


def _resolve(name: str) -> DatasetConfig:
    """The settings of one dataset (nas_core.resolve: the CLI's resolver too): shared blocks
    overridden by the dataset's, stage blocks checked by nas_core.config (ranges, lr_min <= lr,
    ...). Plain dicts: Snakemake tracks them as params."""
    try:
        return resolve_dataset(config, name)
    except nas_config.ConfigError as e:
        raise WorkflowError(f"config: {e}") from None


def _fingerprint(files) -> str:
    h = hashlib.sha256()
    for rel, path in sorted(files):
        h.update(b"\0".join((rel.encode(), path.read_bytes(), b"")))
    return h.hexdigest()[:16]


def _library_fingerprints() -> tuple[str, str]:
    """sha256 over the nas_core sources that shape results, and over report.py alone.

    Edits to nas_core rerun the compute rules through a param; gpu/cli/report modules cannot
    change results and are left out (report.py changes rerun only the figures)."""
    spec = importlib.util.find_spec("nas_core")
    if spec is None or not spec.submodule_search_locations:
        raise WorkflowError("nas_core is not importable: pip install -e . first")
    root = Path(list(spec.submodule_search_locations)[0])
    files = [(p.relative_to(root).as_posix(), p) for p in root.rglob("*.py")
             if "__pycache__" not in p.parts]
    no_effect = {"gpu.py", "jobs.py", "cli.py", "__main__.py", "report.py", "schema.py"}
    compute = [f for f in files if f[0] not in no_effect]
    report_files = [f for f in files if f[0] == "report.py"]
    return _fingerprint(compute), _fingerprint(report_files)


validate_config(config)
DATASETS = {name: _resolve(name) for name in config["datasets"]}
NAS_CORE_VERSION, NAS_CORE_REPORT_VERSION = _library_fingerprints()


def _unknown_dataset(name: str, where: str) -> WorkflowError:
    return WorkflowError(
        f"dataset '{name}' ({where}) is not in config 'datasets'; "
        f"configured: {', '.join(sorted(DATASETS))}"
    )


for _name in config["targets"]:
    if _name not in DATASETS:
        raise _unknown_dataset(_name, "config 'targets'")


_KNOWN = "|".join(re.escape(n) for n in DATASETS)


def refuse_unknown_dataset(wildcards):
    """Input function of the unknown_dataset guard in download.smk; stops with a message."""
    raise _unknown_dataset(
        wildcards.unknown, f"in {wildcards.top}/{wildcards.unknown}/{wildcards.path}"
    )


wildcard_constraints:
    dataset="|".join(re.escape(n) for n in sorted(DATASETS, key=len, reverse=True)),


# -- per-dataset helpers (used by the rules as input/params functions) ----------------------


def ds(wildcards) -> DatasetConfig:
    return DATASETS[wildcards.dataset]


def stage_cfg(stage: str):
    """params function: the merged, checked block of ``stage`` for the job's dataset."""
    return lambda wildcards: getattr(ds(wildcards), stage)


def data_cfg(wildcards) -> dict:
    return ds(wildcards).data


def data_root(wildcards) -> str:
    """Folder passed to nas_core.data as ``root`` (nas_core.resolve.data_root)."""
    return ds(wildcards).data_root


def gpus(stage: str):
    return lambda wildcards: int(ds(wildcards).gpus[stage])


def uses_search(name: str) -> bool:
    return DATASETS[name].genotype_kind == "search"


def genotype_input(wildcards) -> list:
    """The search's alphas, or the genotype/legacy file named in config (nothing for a
    published genotype name)."""
    dataset = DATASETS[wildcards.dataset]
    if dataset.genotype_kind == "search":
        return [f"results/{wildcards.dataset}/search/alphas.json"]
    if dataset.genotype_kind == "file":
        return [dataset.genotype_source]
    return []


def genotype_param(wildcards) -> str:
    dataset = DATASETS[wildcards.dataset]
    if dataset.genotype_kind == "search":
        return f"results/{wildcards.dataset}/search/alphas.json"
    return dataset.genotype_source


def figures(name: str) -> list[str]:
    """Every figure of one dataset (the report's content, also plain files)."""
    out = []
    if uses_search(name):
        out += [f"results/{name}/figures/search_curves.png",
                f"results/{name}/figures/alphas_normal.png",
                f"results/{name}/figures/alphas_reduce.png"]
    out += [f"results/{name}/figures/cell_normal.png",
            f"results/{name}/figures/cell_reduce.png",
            f"results/{name}/figures/train_curves.png",
            f"results/{name}/figures/test_metrics.png"]
    return out


def dataset_outputs(name: str) -> list[str]:
    return [f"results/{name}/test.json"] + figures(name)


def check_genotype_sources() -> None:
    """A genotype source other than 'search' must be a published name or an existing file."""
    names = None
    for name, dataset in DATASETS.items():
        source, kind = dataset.genotype_source, dataset.genotype_kind
        if kind == "file" and not Path(source).is_file():
            raise WorkflowError(f"config: datasets.{name}.genotype.source: no file {source}")
        if kind == "name":
            if names is None:
                from nas_core.genotypes import list_genotypes

                names = list_genotypes()
            if source not in names:
                raise WorkflowError(
                    f"config: datasets.{name}.genotype.source: unknown genotype {source!r}; "
                    f"'search', a file path or one of: {', '.join(names)}")


check_genotype_sources()
