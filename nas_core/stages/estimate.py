"""``python -m nas_core memory STAGE``: a stage's expected peak memory without running it.

The stage's own probe (:func:`nas_core.stages.search.search_probe`, or ``random_ws_probe``
for that method, ``train_probe``,
``test_probe``) and the stages' own planning (:func:`nas_core.stages.budget.measure_plan`):
the expected peak per device for the configured batch and for any list of batch sizes; with
``batch_size: auto`` the batch the stage would choose, measured the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from nas_core.config import validate_stage_cfg
from nas_core.data import load_data
from nas_core.memory import device_total
from nas_core.sizes import format_bytes
from nas_core.stages.budget import measure_plan
from nas_core.stages.genotype import load_genotype_source
from nas_core.stages.runtime import Runtime
from nas_core.stages.random_ws import random_ws_probe
from nas_core.stages.search import search_probe, search_split
from nas_core.stages.test import test_probe
from nas_core.stages.train import train_probe, train_split

__all__ = ["estimate_stage", "format_estimate", "MEMORY_STAGES"]

MEMORY_STAGES = ("search", "train", "test", "select")


def estimate_stage(stage: str, data: dict, cfg: dict, *, train_cfg: dict | None = None,
                   genotype: str | Path | None = None, data_root: str | Path = "resources",
                   device: str | torch.device | None = None,
                   batch_sizes: Sequence[int] = ()) -> dict[str, Any]:
    """The memory estimate of ``stage`` (``search``, ``train``, ``select`` or ``test``; the
    latter two read ``genotype``, ``test`` also ``train_cfg``) for its configured batch and
    for ``batch_sizes``: a plain dict (see :func:`format_estimate`)."""
    block = "train" if stage == "select" else stage
    cfg = validate_stage_cfg(stage, cfg)
    train_cfg = validate_stage_cfg("train", train_cfg)
    runtime = Runtime.resolve(cfg, device, channels_last=(
        train_cfg["channels_last"] if stage == "test" else None))
    bundle = load_data(data, data_root)
    if block == "search":
        # random_ws steps one sampled path; darts (and random, which trains nothing, at
        # the step a DARTS search of the same supernet would take) the whole mixed op
        probe = (random_ws_probe if cfg["method"] == "random_ws" else search_probe)(
            cfg, bundle, runtime)
        samples = len(search_split(cfg, bundle)[0])
    else:
        geno = load_genotype_source(genotype)
        if block == "train":
            probe = train_probe(cfg, geno, bundle, runtime)
            samples = len(train_split(cfg, bundle)[0])
        else:
            probe = test_probe(train_cfg, geno, bundle, runtime)
            samples = len(bundle.test)
    with runtime.determinism():
        plan = measure_plan(stage, cfg, probe, runtime.device, samples=max(1, samples))
    est, budget, margin = plan.estimate, plan.budget, plan.margin
    chosen = plan.batch_size if plan.auto else None
    sizes = sorted(set(batch_sizes) | {plan.batch_size})
    limit = None if budget is None else budget * (1 - margin)
    return {
        "stage": stage, "dataset": bundle.name, "device": str(runtime.device),
        "settings": runtime.describe(),
        "budget_bytes": budget, "budget_source": plan.budget_source, "margin": margin,
        "device_total_bytes": device_total(runtime.device),
        "batch_size": cfg["batch_size"], "auto_batch": chosen,
        "largest_batch_by_estimate": None if limit is None else est.largest_batch(limit),
        "estimate": est.to_dict(),
        "rows": [{"batch": b, "expected_peak_bytes": est.at(b),
                  "fits": None if limit is None else est.at(b) <= limit} for b in sizes],
    }


def format_estimate(doc: dict[str, Any]) -> str:
    """The estimate as a few lines of text for the console."""
    est = doc["estimate"]
    probes = ", ".join(f"batch {p['batch']}: {format_bytes(p['peak_bytes'])}"
                       for p in est["probes"])
    lines = [f"{doc['stage']} on {doc['dataset']}: {doc['settings']}",
             f"measured (tensor memory per device): {probes}; "
             f"{format_bytes(est['fixed_bytes'])} + {format_bytes(est['per_sample_bytes'])} "
             f"per sample"]
    if doc["budget_bytes"] is not None:
        lines.append(f"budget: {format_bytes(doc['budget_bytes'])} ({doc['budget_source']}), "
                     f"margin {doc['margin']:g}: largest batch by the estimate "
                     f"{doc['largest_batch_by_estimate']}")
    if doc["auto_batch"] is not None:
        lines.append(f"batch_size auto: {doc['auto_batch']} (largest measured fit)")
    lines.append(f"{'batch':>8}  {'expected peak':>14}  fits")
    for row in doc["rows"]:
        fits = "?" if row["fits"] is None else ("yes" if row["fits"] else "no")
        mark = " (configured)" if row["batch"] == doc["batch_size"] else ""
        lines.append(f"{row['batch']:>8}  {format_bytes(row['expected_peak_bytes']):>14}  "
                     f"{fits}{mark}")
    return "\n".join(lines) + "\n"
