"""What identifies a stage's results: its config without what changes nothing, and its versions.

Two views of a stage block (torch-free; the workflow and the stages share them):

- :func:`params_cfg`: the block the workflow passes to a job as a param (Snakemake reruns a job
  when a param changes): keys at their neutral value (:attr:`nas_core.config.Key.neutral`)
  are left out where that value is also the default, so that the stage, filling in defaults,
  runs the same config, and adding such a key to nas_core reruns nothing;
- :func:`result_cfg`: the part of a block that the checkpoint fingerprint holds: without
  :data:`~nas_core.config.NON_RESULT_KEYS` and without keys at their neutral value.

:func:`run_identity` is what a checkpoint fingerprint hashes: the stage, its results versions
(:func:`nas_core.versions.for_stage`) and the result config, beside the data and whatever else
the stage names.  Source bytes are no part of it: a run interrupted before an upgrade that left
the versions alone resumes after it.
"""

from __future__ import annotations

from typing import Any, Mapping

from nas_core import versions
from nas_core.config import NON_RESULT_KEYS, SPECS

__all__ = ["params_cfg", "result_cfg", "run_identity", "neutral_keys"]


def neutral_keys(stage: str) -> dict[str, Any]:
    """``{key: neutral value}`` of the keys of ``stage`` that have one."""
    return {k: spec.neutral for k, spec in SPECS.get(stage, {}).items() if spec.has_neutral}


def _at_neutral(stage: str, key: str, value: Any, *, also_default: bool) -> bool:
    spec = SPECS.get(stage, {}).get(key)
    if spec is None or not spec.at_neutral(value):
        return False
    return not also_default or spec.at_neutral(spec.default)


def params_cfg(stage: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` without the keys at a neutral value that is also their default."""
    return {k: v for k, v in cfg.items() if not _at_neutral(stage, k, v, also_default=True)}


def result_cfg(stage: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` without :data:`~nas_core.config.NON_RESULT_KEYS` and keys at their neutral
    value."""
    return {k: v for k, v in cfg.items()
            if k not in NON_RESULT_KEYS and not _at_neutral(stage, k, v, also_default=False)}


def run_identity(stage: str, cfg: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """What the checkpoint fingerprint of one run of ``stage`` hashes: ``stage``,
    ``results_version`` (the stage's versions), ``fields`` (data, world size, genotype, ...)
    and ``cfg`` (:func:`result_cfg`)."""
    return {"stage": stage, "results_version": versions.for_stage(stage), **fields,
            "cfg": result_cfg(stage, cfg)}
