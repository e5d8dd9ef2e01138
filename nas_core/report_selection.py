"""The selection figure: the candidates of a multi-seed search side by side.

From ``results/{dataset}/selection.json`` (:mod:`nas_core.stages.select`): the best held-out
metric of each seed's cell (bars, the winner marked), the held-out metric per epoch of each
candidate's selection training, and each candidate's normal and reduction cell as text (the
winner's framed).  Metric names and labels come from :mod:`nas_core.tasks`; matplotlib runs
with the Agg backend.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from nas_core.fileio import atomic_write_bytes
from nas_core.tasks import task_of_metric

__all__ = ["selection_figure", "cell_text"]

WINNER_COLOR = "tab:orange"
OTHER_COLOR = "tab:blue"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _source(j: int) -> str:
    return "c_{k-2}" if j == 0 else "c_{k-1}" if j == 1 else f"n{j - 2}"


def cell_text(pairs: Sequence[Sequence[Any]], concat: Sequence[int]) -> list[str]:
    """One line per intermediate node (``n0 = op(src) + op(src)``) and the concatenation."""
    lines = []
    for node in range(len(pairs) // 2):
        ops = [f"{op}({_source(int(j))})" for op, j in pairs[2 * node:2 * node + 2]]
        lines.append(f"n{node} = " + " + ".join(ops))
    lines.append("out = concat(" + ", ".join(_source(int(c)) for c in concat) + ")")
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def selection_figure(selection: str | os.PathLike, out: str | os.PathLike,
                     title: str | None = None) -> Path:
    """Draw ``selection`` (a selection.json) into ``out`` (PNG, or the suffix's format)."""
    with open(selection, encoding="utf-8") as f:
        doc = json.load(f)
    candidates = doc["candidates"]
    winner = doc["winner"]["seed"]
    task = task_of_metric(doc["rule"]["metric"])
    title = title or f"{Path(selection).parent.name}: selection among {len(candidates)} seeds"
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    n = len(candidates)
    fig = plt.figure(figsize=(max(10.0, 3.6 * n), 7.0))
    grid = fig.add_gridspec(2, 2 * n, height_ratios=(1.0, 0.9), hspace=0.3, wspace=0.6)
    bars = fig.add_subplot(grid[0, :n])
    curves = fig.add_subplot(grid[0, n:])

    labels = [f"seed {c['seed']}" for c in candidates]
    values = [c["valid"] for c in candidates]
    colors = [WINNER_COLOR if c["seed"] == winner else OTHER_COLOR for c in candidates]
    heights = [v if v is not None else 0.0 for v in values]
    drawn = bars.bar(labels, heights, color=colors)
    for rect, c in zip(drawn, candidates):
        text = _fmt(c["valid"]) + (" (winner)" if c["seed"] == winner else "")
        bars.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                      ha="center", va="bottom", fontsize=9,
                      fontweight="bold" if c["seed"] == winner else "normal")
    finite = [v for v in values if v is not None]
    if finite:
        lo, hi = min(finite), max(finite)
        pad = max((hi - lo) * 0.3, abs(hi) * 0.02, 1e-3)
        bottom = lo - 2 * pad  # zoomed in: the differences are what matters
        bars.set_ylim(0.0 if lo >= 0 > bottom else bottom, hi + pad)
    bars.set_ylabel(f"held-out {task.metric_label}")
    bars.set_title("best held-out epoch of each seed's cell")
    bars.grid(axis="y", alpha=0.3)

    for c in candidates:
        pts = [(i + 1, v) for i, v in enumerate(c.get("curve") or []) if v is not None]
        if pts:
            is_winner = c["seed"] == winner
            curves.plot(*zip(*pts), "-o", markersize=3, linewidth=2.5 if is_winner else 1.2,
                        label=f"seed {c['seed']}" + (" (winner)" if is_winner else ""),
                        color=WINNER_COLOR if is_winner else None)
    curves.set_xlabel("selection training epoch")
    curves.set_ylabel(f"held-out {task.metric_label}")
    curves.set_title("held-out metric per epoch")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.grid(alpha=0.3)
    if curves.lines:
        curves.legend(fontsize=8)

    for i, c in enumerate(candidates):
        ax = fig.add_subplot(grid[1, 2 * i:2 * i + 2])
        ax.set_xticks([])
        ax.set_yticks([])
        geno = c["genotype"]
        lines = [f"seed {c['seed']}" + ("  (winner)" if c["seed"] == winner else ""),
                 f"held-out {task.metric}: {_fmt(c['valid'])} (epoch {c.get('best_epoch')})",
                 "", "normal cell:"]
        lines += cell_text(geno["normal"], geno["normal_concat"])
        lines += ["", "reduction cell:"]
        lines += cell_text(geno["reduce"], geno["reduce_concat"])
        ax.text(0.03, 0.97, "\n".join(lines), va="top", ha="left", family="monospace",
                fontsize=7, transform=ax.transAxes)
        for spine in ax.spines.values():
            spine.set_color(WINNER_COLOR if c["seed"] == winner else "lightgray")
            spine.set_linewidth(3 if c["seed"] == winner else 1)
    rule = doc["rule"].get("text", "")
    fig.suptitle(f"{title}\n{rule}", fontsize=11)
    out = Path(out)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=out.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out
