"""Outputs made by another results version: what an upgrade of nas_core means for results.

Every output of a compute rule records the versions that made it (``results_version``, see
:mod:`nas_core.versions`).  :func:`outdated` compares them with this nas_core's for every
existing output of the configured datasets and gives one :class:`Stale` per output that
another version made, or an earlier nas_core that recorded none; :func:`lines` words them:

    results/mnist/search/seed1: made by search v3, this nas_core computes search v4: will rerun

The workflow prints these lines when it parses the Snakefile (so ``snakemake -n`` says why the
compute rules rerun), and ``python -m nas_core status`` lists them.  Snakemake itself reruns
the outputs through the rules' ``results`` param; an output Snakemake holds no record of (a
results folder copied without ``.snakemake/``) is named with the ``--forcerun`` that reruns it.

``genotype.json`` holds the cell alone (its format is the genotype's): the versions that made
it are read from Snakemake's record of the file instead (``.snakemake/metadata/``: the rule's
``results`` param), when there is one.  Torch-free.
"""

from __future__ import annotations

import ast
import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from nas_core import versions

__all__ = ["Stale", "outputs", "outdated", "lines", "recorded_version"]


@dataclass(frozen=True)
class Stale:
    """One existing output of ``rule`` whose recorded versions differ from this nas_core's."""

    rule: str
    output: str          #: the output named in the line (a folder for the per-seed stages)
    record: str          #: the file that records the versions
    made: str            #: e.g. "search v3", or "a nas_core that recorded no results version"
    now: str             #: e.g. "search v4"
    tracked: bool = True  #: whether Snakemake holds a record of the file (False: it won't rerun)

    def line(self) -> str:
        tail = ("will rerun" if self.tracked else
                f"stale, but Snakemake holds no record of it: rerun with --forcerun {self.rule}")
        return f"{self.output}: made by {self.made}, this nas_core computes {self.now}: {tail}"


def _seeds(dataset: Any) -> list[int]:
    return list(getattr(dataset, "seeds", []) or [])


def outputs(datasets: Mapping[str, Any], *, results: str | Path = "results",
            resources: str | Path = "resources") -> list[tuple[str, str, Path]]:
    """``(rule, output named in the line, file recording the versions)`` of every compute
    output the configured ``datasets`` (name -> :class:`~nas_core.resolve.DatasetConfig`)
    can have, existing or not; the paths as the workflow writes them."""
    out: list[tuple[str, str, Path]] = []
    results, resources = Path(results), Path(resources)
    for name, dataset in datasets.items():
        base = results / name
        out.append(("download", str(resources / name / "download.json"),
                    resources / name / "download.json"))
        seeds = _seeds(dataset)
        for seed in seeds:
            folder = base / "search" / f"seed{seed}"
            out.append(("search", str(folder), folder / "history.json"))
        if len(seeds) > 1:
            for seed in seeds:
                geno = base / "search" / f"seed{seed}" / "genotype.json"
                out.append(("seed_genotype", str(geno), geno))
        else:
            out.append(("genotype", str(base / "genotype.json"), base / "genotype.json"))
        if len(seeds) > 1:
            for seed in seeds:
                folder = base / "select" / f"seed{seed}"
                out.append(("select_train", str(folder), folder / "history.json"))
            out.append(("select", str(base / "selection.json"), base / "selection.json"))
        out.append(("train", str(base / "train"), base / "train" / "history.json"))
        out.append(("test", str(base / "test.json"), base / "test.json"))
        out.append(("model_card", str(base / "model.json"), base / "model.json"))
    return out


def recorded_version(path: str | Path) -> tuple[bool, Any]:
    """``(readable, results_version or None)`` of a JSON output."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False, None
    return True, doc.get("results_version") if isinstance(doc, dict) else None


#: outputs whose format has no room for the versions: read from Snakemake's record
FROM_SNAKEMAKE = ("genotype", "seed_genotype")


def _record_file(path: Path, snakemake_dir: Path) -> Path:
    """Where Snakemake's file-based metadata keeps its record of ``path``."""
    metadata = snakemake_dir / "metadata"
    b64 = base64.urlsafe_b64encode(str(path).encode()).decode()
    try:
        max_len = os.pathconf(metadata, "PC_NAME_MAX") or 255
    except (OSError, ValueError, AttributeError):
        max_len = 255
    parts = [b64[i:i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    parts = ["@" + s for s in parts[:-1]] + [parts[-1]]
    return metadata.joinpath(*parts)


def _snakemake_knows(path: Path, snakemake_dir: Path) -> bool:
    """Whether Snakemake's file-based metadata (``.snakemake/metadata/``) has a record of
    ``path`` (True when Snakemake keeps its records in a database instead)."""
    if not (snakemake_dir / "metadata").is_dir():
        return snakemake_dir.is_dir() and any(
            p.suffix in (".db", ".sqlite", ".sqlite3") for p in snakemake_dir.iterdir())
    return _record_file(path, snakemake_dir).is_file()


def snakemake_version(path: Path, snakemake_dir: Path, rule: str) -> tuple[bool, Any]:
    """``(found, results_version or None)`` from Snakemake's record of ``path``: the rule's
    ``results`` param among the recorded params (None: a record without one, i.e. made by
    a nas_core before results versions)."""
    try:
        with open(_record_file(path, snakemake_dir), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False, None
    if not isinstance(record, dict) or (record.get("record_format_version") or 0) < 6:
        return False, None
    names = set(versions.RULES.get(rule, ()))
    for text in record.get("params") or []:
        try:
            value = ast.literal_eval(text) if isinstance(text, str) else None
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict) and set(value) == names:
            return True, value
    return True, None


def outdated(datasets: Mapping[str, Any], *, results: str | Path = "results",
             resources: str | Path = "resources",
             snakemake_dir: str | Path | None = None) -> list[Stale]:
    """Every existing output of ``datasets`` made by other results versions than this
    nas_core's (or by an earlier nas_core that recorded none).  ``snakemake_dir`` (e.g.
    ``.snakemake``): also tell whether Snakemake holds a record of the file (and so reruns
    it on the version change by itself)."""
    stale = []
    for rule, output, record in outputs(datasets, results=results, resources=resources):
        if not record.is_file():
            continue
        if rule in FROM_SNAKEMAKE:
            if snakemake_dir is None:
                continue
            readable, recorded = snakemake_version(record, Path(snakemake_dir), rule)
        else:
            readable, recorded = recorded_version(record)
        if not readable:
            continue  # Snakemake decides about a torn or foreign file; nothing to say here
        diff = versions.differences(recorded, rule)
        if diff is None:
            continue
        made, now = diff
        if recorded is None:
            made += " (an earlier format)"
        tracked = True if snakemake_dir is None else _snakemake_knows(record,
                                                                      Path(snakemake_dir))
        stale.append(Stale(rule, output, str(record), made, now, tracked))
    return stale


def lines(stale: Iterable[Stale]) -> list[str]:
    """One line per stale output."""
    return [s.line() for s in stale]
