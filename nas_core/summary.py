"""The summary of every finished dataset: one row per dataset with a ``test.json``.

Columns (``results/summary.tsv``, tab-separated, one header line): ``dataset`` (the config key,
the name the figures and the report use), ``task``, ``metric`` (``top1`` or ``r2``),
``value`` (on the test split), ``test_samples``, ``parameters`` (without the auxiliary head),
``genotype`` (where the cell came from: ``search``, a published name or a file), ``seconds``
(wall-clock seconds of the search(es), selection and training: the sum of every
``timings.json`` under ``results/{dataset}/``).

The workflow writes it twice with the same function: the ``summary`` rule (a report item, so the
same table opens the HTML report) and the Snakefile's ``onsuccess`` handler, which also prints
it as the last lines of Snakemake's output (:func:`print_summary_at_exit`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from nas_core.fileio import atomic_write_text

__all__ = ["COLUMNS", "collect", "summary_rows", "to_tsv", "to_text", "to_html",
           "write_summary", "print_summary_at_exit", "format_seconds"]

COLUMNS = ("dataset", "task", "metric", "value", "test_samples", "parameters", "genotype",
           "seconds")
METRIC_TEXT = {"top1": ("top-1", "%"), "r2": ("R²", "")}


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _seconds(folder: Path) -> float | None:
    total, found = 0.0, False
    for p in sorted(folder.rglob("timings.json")):
        if "checkpoints" in p.parts:
            continue
        doc = _read(p)
        if isinstance(doc, dict) and isinstance(doc.get("total_seconds"), (int, float)):
            total += float(doc["total_seconds"])
            found = True
    return total if found else None


def collect(results: str | os.PathLike, name: str,
            genotype_source: str | None = None) -> dict | None:
    """The summary row of ``results/name`` (None while it has no test.json)."""
    folder = Path(results) / name
    test = _read(folder / "test.json")
    if not isinstance(test, dict):
        return None
    task = str(test.get("task", ""))
    metric = "top1" if task == "classification" else "r2" if task == "regression" else ""
    value = (test.get("metrics") or {}).get(metric)
    if genotype_source is None:
        card = _read(folder / "model.json")
        genotype_source = (card or {}).get("genotype_source") or test.get("genotype_source")
    genotype_source = str(genotype_source or "")
    return {
        "dataset": name,
        "task": task,
        "metric": metric,
        "value": float(value) if isinstance(value, (int, float)) else None,
        "test_samples": test.get("num_samples"),
        "parameters": test.get("num_parameters"),
        "genotype": genotype_source,
        "seconds": _seconds(folder),
    }


def summary_rows(results: str | os.PathLike, datasets: Iterable[str] | Mapping[str, str | None]
                 ) -> list[dict]:
    """Rows of every finished dataset among ``datasets`` (names, or ``{name: genotype
    source}``), in that order."""
    sources = datasets if isinstance(datasets, Mapping) else {d: None for d in datasets}
    rows = [collect(results, name, src) for name, src in sources.items()]
    return [r for r in rows if r is not None]


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "value":
        return f"{value:.6g}"
    if key == "seconds":
        return f"{value:.1f}"
    return str(value)


def to_tsv(rows: list[dict]) -> str:
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(_cell(k, r.get(k)) for k in COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def _display(row: dict) -> list[str]:
    label, unit = METRIC_TEXT.get(row["metric"], (row["metric"], ""))
    value = row["value"]
    if value is None:
        metric = f"{label} -"
    elif row["metric"] == "top1":
        metric = f"{label} {value:.2f} {unit}".rstrip()
    else:
        metric = f"{label} {value:.4f}"
    params = f"{row['parameters']:,}" if isinstance(row.get("parameters"), int) else "-"
    return [row["dataset"], row["task"], metric, params, row["genotype"] or "-",
            format_seconds(row.get("seconds"))]


HEADERS = ("dataset", "task", "test metric", "parameters", "genotype", "time")


def to_text(rows: list[dict]) -> str:
    """A fixed-width table for the console."""
    table = [list(HEADERS)] + [_display(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    right = {3, 5}
    out = []
    for line in table:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def to_html(rows: list[dict], title: str = "Results") -> str:
    """The table as an HTML5 page without ``html``/``head``/``body`` tags, so that it is also a
    fragment: the report shows it as an item and includes it in its landing page (the CSS is
    scoped to ``table.nas-summary``)."""
    from html import escape

    head = "".join(f"<th>{escape(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(
        f"<td{' class=num' if i in (3, 5) else ''}>{escape(c)}</td>"
        for i, c in enumerate(_display(r))) + "</tr>\n" for r in rows)
    return (
        "<!DOCTYPE html>\n<meta charset=\"utf-8\">\n"
        f"<title>{escape(title)}</title>\n<style>"
        "table.nas-summary{border-collapse:collapse;margin:0.5em 0;font-size:0.9em}"
        "table.nas-summary th,table.nas-summary td{border-bottom:1px solid #ccc;"
        "padding:3px 8px;text-align:left;white-space:nowrap}"
        "table.nas-summary td.num{text-align:right;font-variant-numeric:tabular-nums}"
        "</style>\n"
        f"<p><strong>{escape(title)}</strong></p>\n"
        f"<table class=\"nas-summary\"><thead><tr>{head}</tr></thead><tbody>\n{body}"
        "</tbody></table>\n<p>Test split of each finished dataset; time: search(es), "
        "selection and training, wall clock (results/summary.tsv).</p>\n")


def write_summary(results: str | os.PathLike, datasets: Iterable[str] | Mapping[str, str | None],
                  tsv: str | os.PathLike | None = None, html: str | os.PathLike | None = None
                  ) -> list[dict]:
    """Write ``tsv`` (default ``results/summary.tsv``) and, if given, ``html``; returns the
    rows.  A file whose content would not change is left alone (no new mtime)."""
    rows = summary_rows(results, datasets)
    tsv = Path(tsv) if tsv is not None else Path(results) / "summary.tsv"
    for path, text in ((tsv, to_tsv(rows)), (html, to_html(rows) if html else None)):
        if path is None or text is None:
            continue
        path = Path(path)
        with contextlib.suppress(OSError):
            if path.read_text(encoding="utf-8") == text:
                continue
        atomic_write_text(path, text)
    return rows


def print_summary_at_exit(results: str | os.PathLike,
                          datasets: Iterable[str] | Mapping[str, str | None],
                          tsv: str | os.PathLike | None = None) -> list[dict]:
    """For the Snakefile's ``onsuccess``: write the summary and print it to stderr when the
    Snakemake process exits, after Snakemake's own closing lines.  Never raises (a summary is
    not worth failing a finished run)."""
    try:
        rows = write_summary(results, datasets, tsv)
    except Exception as exc:  # noqa: BLE001
        print(f"summary: not written ({type(exc).__name__}: {exc})", file=sys.stderr)
        return []
    if rows:
        where = tsv if tsv is not None else Path(results) / "summary.tsv"
        text = f"\nSummary of the finished datasets ({where}):\n" + to_text(rows)
        atexit.register(_print_last, text)
    return rows


def _print_last(text: str) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.write(text)
        sys.stderr.flush()
