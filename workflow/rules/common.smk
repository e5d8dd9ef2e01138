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
    files = [
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*.py")
        if "__pycache__" not in p.parts
    ]
    report_modules = {"report.py", "report_selection.py"}
    no_effect = {
        "gpu.py",
        "jobs.py",
        "cli.py",
        "__main__.py",
        "schema.py",
        "summary.py",
        "inference.py",
    } | report_modules
    compute = [f for f in files if f[0] not in no_effect]
    report_files = [f for f in files if f[0] in report_modules]
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


def _global_resource(name: str):
    """An integer of --cores / --resources (``_cores``, ``gpu``), or None when not given."""
    value = workflow.global_resources.get(name)
    value = getattr(value, "value", value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def gpu_threads(stage: str, cpu_threads: int):
    """threads function of a GPU job: under a GPU cap (--resources gpu=N, N > 0) the cores
    per GPU times the job's GPUs, at least 1, so N one-GPU jobs run at once within --cores
    (--cores 4 --resources gpu=4: four jobs of one thread); with no cap, gpu=0 or a job of
    0 GPUs, ``cpu_threads`` (Snakemake lowers it to --cores)."""

    def threads(wildcards):
        cap, cores = _global_resource("gpu"), _global_resource("_cores")
        job_gpus = min(int(ds(wildcards).gpus[stage]), cap or 0)
        if not cap or not cores or job_gpus <= 0:
            return cpu_threads
        return max(1, cores * job_gpus // cap)

    return threads


def uses_search(name: str) -> bool:
    return DATASETS[name].genotype_kind == "search"


# -- search seeds and the selection (search.smk, genotype.smk, select.smk) -------------------
# One search job per seed of `search.seeds` (null: [search.seed]), in
# results/{dataset}/search/seed{seed}/. One seed: its alphas give genotype.json (rule genotype).
# Several: each seed's cell is trained briefly with the `select:` block (rule select_train, a
# GPU job per seed) and rule select writes selection.json and the winner's genotype.json.


def search_seeds(name: str) -> list[int]:
    """The search seeds of dataset ``name`` ([] when its genotype is not searched)."""
    return DATASETS[name].seeds


def selects(name: str) -> bool:
    """Whether dataset ``name`` picks its genotype among several search seeds."""
    return DATASETS[name].selects


def _names_regex(names) -> str:
    """A wildcard constraint matching exactly ``names``; one that never matches if none."""
    names = sorted(names, key=len, reverse=True)
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


# rule select writes genotype.json for these datasets, rule genotype for the others
SELECTING = _names_regex(n for n in DATASETS if selects(n))
NOT_SELECTING = _names_regex(n for n in DATASETS if not selects(n))
SEED = "0|[1-9][0-9]*"


def search_file(name: str, seed, file: str) -> str:
    return f"results/{name}/search/seed{seed}/{file}"


def search_cfg(wildcards) -> dict:
    """params function of the search rule, the dataset's search block for the job's seed
    (without `seeds`: changing the list does not touch an unchanged seed's search)."""
    return ds(wildcards).search_for_seed(int(wildcards.seed))


def single_search(file: str):
    """input function: ``file`` of the dataset's one search (report_search); a multi-seed
    dataset has per-seed figures instead."""

    def one(wildcards):
        seeds = search_seeds(wildcards.dataset)
        if len(seeds) != 1:
            raise WorkflowError(
                f"dataset '{wildcards.dataset}' has {len(seeds)} search seeds: its search "
                f"figures are results/{wildcards.dataset}/figures/seed{{seed}}/"
            )
        return search_file(wildcards.dataset, seeds[0], file)

    return one


def per_seed(pattern: str):
    """input function: ``pattern`` (with {dataset} and {seed}) for every search seed."""
    return lambda wildcards: [
        pattern.format(dataset=wildcards.dataset, seed=seed)
        for seed in search_seeds(wildcards.dataset)
    ]


def genotype_input(wildcards) -> list:
    """The one search's alphas, or the genotype/legacy file named in config (nothing for a
    published genotype name)."""
    dataset = DATASETS[wildcards.dataset]
    if dataset.genotype_kind == "search":
        return [search_file(wildcards.dataset, dataset.seeds[0], "alphas.json")]
    if dataset.genotype_kind == "file":
        return [dataset.genotype_source]
    return []


def genotype_param(wildcards) -> str:
    dataset = DATASETS[wildcards.dataset]
    if dataset.genotype_kind == "search":
        return search_file(wildcards.dataset, dataset.seeds[0], "alphas.json")
    return dataset.genotype_source


def figures(name: str) -> list[str]:
    """Every figure of one dataset (the report's content, also plain files)."""
    out = []
    search = ("search_curves.png", "alphas_normal.png", "alphas_reduce.png")
    if selects(name):
        out += [
            f"results/{name}/figures/seed{seed}/{f}"
            for seed in search_seeds(name)
            for f in search
        ]
        out += [f"results/{name}/figures/selection.png"]
    elif uses_search(name):
        out += [f"results/{name}/figures/{f}" for f in search]
    out += [
        f"results/{name}/figures/cell_normal.png",
        f"results/{name}/figures/cell_reduce.png",
        f"results/{name}/figures/train_curves.png",
        f"results/{name}/figures/test_metrics.png",
    ]
    return out


def dataset_outputs(name: str) -> list[str]:
    return [f"results/{name}/test.json"] + figures(name)


def check_genotype_sources() -> None:
    """A genotype source other than 'search' must be a published name or an existing file."""
    names = None
    for name, dataset in DATASETS.items():
        source, kind = dataset.genotype_source, dataset.genotype_kind
        if kind == "file" and not Path(source).is_file():
            raise WorkflowError(
                f"config: datasets.{name}.genotype.source: no file {source}"
            )
        if kind == "name":
            if names is None:
                from nas_core.genotypes import list_genotypes

                names = list_genotypes()
            if source not in names:
                raise WorkflowError(
                    f"config: datasets.{name}.genotype.source: unknown genotype {source!r}; "
                    f"'search', a file path or one of: {', '.join(names)}"
                )


check_genotype_sources()


# -- local data: the user's own files are inputs of the download rule, tracked by content ----
# A dataset reading local files (netcdf without source, image-folder, an import-path class with
# path keys) gets them as `ancient()` inputs of its download job (a missing one stops the DAG,
# naming dataset, key and path; a newer mtime alone triggers nothing) and their content digest
# as a param: a changed byte reruns download and everything after it, a `touch` nothing. The
# digest of an unchanged file comes from a stat-keyed cache, so files are hashed only when they
# changed (nas_core.data.digest).

from nas_core.data import DataError, Sha256Cache, local_inputs
from nas_core.data.local import describe_missing, local_digest

_SHA256_CACHE = Sha256Cache(".snakemake/nas_core/sha256.json")
_LOCAL_DATA = {}


def local_data(name: str) -> list:
    """The local inputs (nas_core.data.LocalInput) of dataset ``name``; a one-line
    WorkflowError when one is missing or the data block cannot be resolved."""
    if name not in _LOCAL_DATA:
        dataset = DATASETS[name]
        try:
            entries = local_inputs(dataset.data, dataset.data_root)
        except DataError as e:
            raise WorkflowError(f"config: datasets.{name}.data: {e}") from None
        for entry in entries:
            if not entry.exists:
                raise WorkflowError(
                    f"config: datasets.{name}.data.{entry.key}: {describe_missing(entry)}"
                )
        _LOCAL_DATA[name] = entries
    return _LOCAL_DATA[name]


def local_data_input(wildcards) -> list:
    """Input function of the download rule: the dataset's local files and folders."""
    return [ancient(str(entry.path)) for entry in local_data(wildcards.dataset)]


def local_data_content(wildcards) -> str:
    """Params function of the download rule: sha256 of the local data's content ("" if none)."""
    digest = local_digest(local_data(wildcards.dataset), cache=_SHA256_CACHE)
    _SHA256_CACHE.save()
    return digest
