"""The select stage: pick the best of several searches' cells (the DARTS paper's protocol).

DARTS searches four times with different seeds and keeps the cell that does best when trained
from scratch for a short while and scored on held-out data.  The training of each candidate is
:func:`nas_core.stages.run_train` with the ``select:`` block (its ``valid_fraction`` holds out
part of the *training* data; the test split is never read); this module reads the candidates'
training histories and writes the decision:

- ``selection.json``: the rule (metric, direction, tie break), every candidate (seed, genotype,
  best held-out metric and its epoch, epochs trained, seconds of search and of selection
  training) and the winner;
- ``genotype.json``: the winner's genotype, byte for byte what :func:`run_genotype` writes.

The metric and its direction come from :mod:`nas_core.tasks` (``history.json``'s ``metric``);
the value of a candidate is its best held-out epoch (``history.json``'s ``selection`` block).
Ties go to the lower seed; a candidate without a finite value never wins unless none has one.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from nas_core import versions
from nas_core.fileio import atomic_write_json, atomic_write_text
from nas_core.genotypes import Genotype
from nas_core.stages.common import StageError
from nas_core.tasks import task_of_metric

__all__ = ["run_select", "read_candidate", "SELECTION_FORMAT"]

log = logging.getLogger("nas_core.stages.select")

SELECTION_FORMAT = "nas_core.selection/1"


def _read_json(path: str | Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise StageError(f"select: cannot read {what} {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise StageError(f"select: {what} {path} is not JSON: {exc.msg} at line {exc.lineno}") \
            from None
    if not isinstance(doc, dict):
        raise StageError(f"select: {what} {path} is not a JSON object")
    return doc


def _seconds(path: str | Path | None) -> float | None:
    if not path or not Path(path).is_file():
        return None
    value = _read_json(path, "timings").get("total_seconds")
    return round(float(value), 3) if isinstance(value, (int, float)) else None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_candidate(candidate: Mapping[str, Any]) -> dict[str, Any]:
    """One candidate's record for ``selection.json`` from its files.

    ``candidate``: ``seed``, ``genotype`` (the seed's genotype.json), ``history`` (its
    selection training's history.json) and optionally ``timings`` (that training's
    timings.json) and ``search_timings`` (the search's)."""
    seed = int(candidate["seed"])
    history = _read_json(candidate["history"], "history")
    metric = history.get("metric")
    try:
        task = task_of_metric(str(metric))
    except ValueError as exc:
        raise StageError(f"select: {candidate['history']}: {exc}") from None
    chosen = history.get("selection") or {}
    if chosen.get("on") != "valid":
        raise StageError(f"select: {candidate['history']} has no held-out scores "
                         f"(select.valid_fraction must be > 0)")
    epochs = history.get("epochs") or []
    best_epoch = chosen.get("best_epoch")
    valid = next((dict(rec.get("valid") or {}) for rec in epochs
                  if rec.get("epoch") == best_epoch), {})
    return {
        "seed": seed,
        "genotype": Genotype.load(candidate["genotype"]).to_dict(),
        "metric": task.metric,
        "valid": _finite(chosen.get("best_value")),
        "valid_loss": _finite(valid.get("loss")),
        "best_epoch": best_epoch,
        "epochs": len(epochs),
        "curve": [_finite((rec.get("valid") or {}).get(task.metric)) for rec in epochs],
        "select_seconds": _seconds(candidate.get("timings")),
        "search_seconds": _seconds(candidate.get("search_timings")),
        "files": {k: str(candidate[k]) for k in ("genotype", "history") if candidate.get(k)},
    }


def run_select(candidates: Iterable[Mapping[str, Any]], output_json: str | Path,
               genotype_json: str | Path, *, cfg: Mapping[str, Any] | None = None) -> dict:
    """Pick the best candidate; write ``output_json`` (selection.json) and ``genotype_json``.

    ``candidates``: one mapping per search seed (see :func:`read_candidate`).  ``cfg``: the
    ``select`` block the candidates were trained with (recorded, not used).  Returns the
    selection document.  Raises :class:`StageError` (one line) on unreadable or inconsistent
    inputs."""
    records = sorted((read_candidate(c) for c in candidates), key=lambda r: r["seed"])
    if not records:
        raise StageError("select: no candidates")
    seeds = [r["seed"] for r in records]
    if len(set(seeds)) != len(seeds):
        raise StageError(f"select: a seed appears twice among {seeds}")
    metrics = {r["metric"] for r in records}
    if len(metrics) != 1:
        raise StageError(f"select: the candidates were scored with different metrics "
                         f"({', '.join(sorted(metrics))})")
    task = task_of_metric(metrics.pop())
    winner = records[0]
    for record in records[1:]:  # in seed order: a tie keeps the lower seed
        if record["valid"] is not None and (winner["valid"] is None
                                            or task.better(record["valid"], winner["valid"])):
            winner = record
    if winner["valid"] is None:
        log.warning("select: no candidate has a finite held-out %s; keeping the lowest seed %d",
                    task.metric, winner["seed"])
    doc = {
        "format": SELECTION_FORMAT,
        "results_version": versions.for_stage("select"),
        "rule": {
            "metric": task.metric,
            "label": task.metric_label,
            "better": "higher" if task.better(1.0, 0.0) else "lower",
            "on": "held-out part of the training data (select.valid_fraction), best epoch",
            "ties": "lower seed",
            "text": (f"each seed's cell trained from scratch; the best held-out "
                     f"{task.metric} wins; ties go to the lower seed"),
        },
        "select": ({k: cfg[k] for k in ("epochs", "layers", "init_channels", "batch_size",
                                        "valid_fraction", "seed") if k in cfg}
                   if cfg else None),
        "candidates": records,
        "winner": {"seed": winner["seed"], "valid": winner["valid"],
                   "genotype": winner["genotype"]},
    }
    genotype = Genotype.from_dict(winner["genotype"])
    atomic_write_text(genotype_json, genotype.to_json())
    atomic_write_json(output_json, doc)
    table = ", ".join(f"seed {r['seed']}: "
                      f"{'-' if r['valid'] is None else format(r['valid'], '.4g')}"
                      for r in records)
    log.info("select: held-out %s %s; winner seed %d", task.metric, table, winner["seed"])
    return doc
