# Shared by all rules: config validation and input/params functions. The knowledge behind them
# is nas_core's (nas_core.pipeline, nas_core.resolve, nas_core.versions, nas_core.identity,
# nas_core.outdated), where tests reach it. Nothing here starts a job; every check fails before
# the first job, with one line naming the offending key or dataset.

import copy
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from nas_core import outdated, pipeline, versions
from nas_core.code_version import report_fingerprint
from nas_core.config import ConfigError
from nas_core.identity import params_cfg

SCHEMA = "../schemas/config.schema.yaml"


def validate_config(cfg: dict) -> None:
    """Check ``cfg`` against the schema, fill in the shared defaults; one-line WorkflowError."""
    raw_datasets = copy.deepcopy(cfg.get("datasets"))
    try:
        validate(cfg, SCHEMA, set_default=True)
    except WorkflowError as e:
        cause = e.__context__
        if cause is not None and hasattr(cause, "absolute_path"):
            raise WorkflowError(pipeline.schema_error_line(cause)) from None
        raise
    # Dataset blocks are overrides: keep them as written (the validation filled in defaults).
    cfg["datasets"] = raw_datasets


def checked(fn, *args):
    """``fn(*args)``, a ConfigError of nas_core turned into Snakemake's one-line error."""
    try:
        return fn(*args)
    except ConfigError as e:
        raise WorkflowError(str(e)) from None


validate_config(config)
# Each dataset's settings (nas_core.resolve: the CLI's resolver too), checked: stage blocks,
# targets, genotype sources. Plain dicts: Snakemake tracks them as params.
DATASETS = checked(pipeline.resolve_datasets, config)
# Edits of the figure modules rerun the report rules (nas_core.code_version); the compute
# rules rerun on their results versions instead (results_version below), not on source bytes.
NAS_CORE_REPORT_VERSION = report_fingerprint()
LOCAL_DATA = pipeline.LocalData(DATASETS)

_KNOWN = pipeline.names_regex(DATASETS)
# rule select writes genotype.json for these datasets, rule genotype for the others
SELECTING = pipeline.names_regex(n for n, d in DATASETS.items() if d.selects)
NOT_SELECTING = pipeline.names_regex(n for n, d in DATASETS.items() if not d.selects)
SEED = pipeline.SEED_PATTERN


wildcard_constraints:
    dataset=_KNOWN,


def refuse_unknown_dataset(wildcards):
    """Input function of the unknown_dataset guard in download.smk; stops with a message."""
    where = f"in {wildcards.top}/{wildcards.unknown}/{wildcards.path}"
    raise WorkflowError(
        str(pipeline.unknown_dataset(wildcards.unknown, where, DATASETS))
    )


# -- results versions: what reruns after an upgrade of nas_core --------------------------------
# The compute rules take `results=results_version(...)`, the versions their results depend on
# (nas_core.versions, e.g. {"data": 1, "search": 1}). Snakemake reruns a rule when they change
# and never for an edit that leaves them alone (a comment, a log line, a faster kernel). Before
# the first job, one line per existing output that another version made (nas_core.outdated):
# `results/digits/search/seed2: made by search v1, this nas_core computes search v2: will
# rerun`; the same list: `python -m nas_core status`.


def results_version(rule: str) -> dict:
    """params value of a compute rule, by name: its results versions (a plain dict)."""
    return versions.of(rule)


if workflow.is_main_process:
    _stale = outdated.outdated(DATASETS, snakemake_dir=".snakemake")
    for _line in outdated.lines(_stale):
        print(_line, file=sys.stderr)


# -- per-dataset input and params functions ---------------------------------------------------


def ds(wildcards):
    return DATASETS[wildcards.dataset]


def stage_cfg(stage: str):
    """params function: the merged, checked block of ``stage`` for the job's dataset,
    without keys at a neutral default (nas_core.identity.params_cfg)."""
    return lambda wildcards: params_cfg(stage, getattr(ds(wildcards), stage))


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
    """threads function of a GPU job (nas_core.pipeline.gpu_job_threads)."""
    return lambda wildcards: pipeline.gpu_job_threads(
        _global_resource("gpu"),
        _global_resource("_cores"),
        int(ds(wildcards).gpus[stage]),
        cpu_threads,
    )


# -- search seeds and the selection (search.smk, genotype.smk, select.smk) -------------------
# One search job per seed of `search.seeds` (null: [search.seed]), in
# results/{dataset}/search/seed{seed}/. One seed: its alphas give genotype.json (rule genotype).
# Several: each seed's cell is trained briefly with the `select:` block (rule select_train, a
# GPU job per seed) and rule select writes selection.json and the winner's genotype.json.


def search_seeds(name: str) -> list[int]:
    """The search seeds of dataset ``name`` ([] when its genotype is not searched)."""
    return DATASETS[name].seeds


def search_cfg(wildcards) -> dict:
    """params function of the search rule, the dataset's search block for the job's seed
    (without `seeds`: changing the list does not touch an unchanged seed's search; without
    keys at a neutral default, nas_core.identity.params_cfg)."""
    return params_cfg("search", ds(wildcards).search_for_seed(int(wildcards.seed)))


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
        return pipeline.search_file(wildcards.dataset, seeds[0], file)

    return one


def per_seed(pattern: str):
    """input function: ``pattern`` (with {dataset} and {seed}) for every search seed."""
    return lambda wildcards: [
        pattern.format(dataset=wildcards.dataset, seed=seed)
        for seed in search_seeds(wildcards.dataset)
    ]


def genotype_param(wildcards) -> str:
    """The one search's alphas, or the genotype source named in config."""
    dataset = ds(wildcards)
    if dataset.genotype_kind == "search":
        return pipeline.search_file(dataset.name, dataset.seeds[0], "alphas.json")
    return dataset.genotype_source


def genotype_max_skip(wildcards):
    """genotype.max_skip of the dataset (None: DARTS' derivation as published)."""
    return ds(wildcards).genotype.get("max_skip")


def genotype_input(wildcards) -> list:
    """The one search's alphas or the genotype/legacy file (nothing for a published name)."""
    return [] if ds(wildcards).genotype_kind == "name" else [genotype_param(wildcards)]


def figures(name: str) -> list[str]:
    """Every figure of one dataset (the report's content, also plain files)."""
    return pipeline.figures(DATASETS[name])


def dataset_outputs(name: str) -> list[str]:
    return pipeline.dataset_outputs(DATASETS[name])


# -- local data: the user's own files are inputs of the download rule, tracked by content ----
# A dataset reading local files (netcdf without source, image-folder, an import-path class with
# path keys) gets them as `ancient()` inputs of its download job (a missing one stops the DAG,
# naming dataset, key and path; a newer mtime alone triggers nothing) and their content digest
# as a param: a changed byte reruns download and everything after it, a `touch` nothing.


def local_data_input(wildcards) -> list:
    """Input function of the download rule: the dataset's local files and folders."""
    entries = checked(LOCAL_DATA.inputs, wildcards.dataset)
    return [ancient(str(entry.path)) for entry in entries]


def local_data_content(wildcards) -> str:
    """Params function of the download rule: sha256 of the local data's content ("" if none)."""
    return checked(LOCAL_DATA.digest, wildcards.dataset)
