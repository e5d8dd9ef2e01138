"""Figures from the stage outputs, as plain files (PNG, and graphviz sources for the cells).

- :func:`search_figures`: search curves, and the softmaxed alphas over the epochs as heatmaps
  (normal and reduction cell) from ``search/history.json``.
- :func:`cell_figures`: the normal and reduction cells of ``genotype.json`` drawn with graphviz
  (the ``.dot`` sources are always written; without the ``dot`` program the PNG is a text
  rendering of the cell and a warning is logged).
- :func:`train_figure`: training curves from ``train/history.json``.
- :func:`test_figure`: the test metrics of ``test.json``.

matplotlib runs with the Agg backend (no screen needed).  Metric names and labels come from
:mod:`nas_core.tasks`.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

from nas_core.fileio import atomic_write_bytes, atomic_write_text
from nas_core.tasks import Task, task_of_metric
from nas_core.ops import PRIMITIVES as DEFAULT_PRIMITIVES  # the alphas' column order

__all__ = ["search_figures", "cell_figures", "train_figure", "test_figure", "curves_figure",
           "alphas_figure", "cell_dot", "edge_labels", "MAX_ALPHA_PANELS"]

log = logging.getLogger(__name__)

MAX_ALPHA_PANELS = 6


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _save(fig, out: str | os.PathLike) -> None:
    """Save atomically (nas_core.fileio), in the format of the file name's suffix."""
    out = Path(out)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=out.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)
    atomic_write_bytes(out, buf.getvalue())


# -- curves -------------------------------------------------------------------------------


def _task(history: dict) -> Task:
    """The task of a stage's history.json, from the metric it records (top-1 if none)."""
    return task_of_metric(str(history.get("metric") or "top1"))


def _series(epochs: list[dict], part: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rec in epochs:
        block = rec.get(part)
        if isinstance(block, dict) and isinstance(block.get(key), (int, float)):
            value = float(block[key])
            if math.isfinite(value):
                xs.append(int(rec["epoch"]) + 1)
                ys.append(value)
    return xs, ys


def curves_figure(history_path: str | os.PathLike, out: str | os.PathLike, title: str) -> None:
    """Loss, metric (top-1 % or R²) and learning rate per epoch, train and valid."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    history = _read_json(history_path)
    epochs = history.get("epochs", [])
    task = _task(history)
    metric, label = task.metric, task.metric_label
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, ylabel in ((axes[0], "loss", "loss"), (axes[1], metric, label)):
        for part, style in (("train", "-o"), ("valid", "-s")):
            xs, ys = _series(epochs, part, key)
            if xs:
                ax.plot(xs, ys, style, markersize=3, label=part)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    lrs = [(int(r["epoch"]) + 1, float(r["lr"])) for r in epochs if isinstance(r.get("lr"), (int, float))]
    if lrs:
        axes[2].plot(*zip(*lrs), "-", color="tab:gray")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("learning rate")
    axes[2].grid(alpha=0.3)
    if not epochs:
        axes[1].text(0.5, 0.5, "no epochs recorded", ha="center", va="center",
                     transform=axes[1].transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out)


# -- alphas -------------------------------------------------------------------------------


def edge_labels(num_edges: int) -> list[str]:
    """``node <- input`` for the edges of a DARTS cell (node i has i + 2 inputs)."""
    labels = []
    node = 0
    while len(labels) < num_edges:
        for j in range(node + 2):
            src = ("c_{k-2}", "c_{k-1}")[j] if j < 2 else str(j - 2)
            labels.append(f"{node} <- {src}")
        node += 1
    return labels[:num_edges]


def _pick_epochs(n: int, k: int = MAX_ALPHA_PANELS) -> list[int]:
    if n <= k:
        return list(range(n))
    picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
    return picks


def alphas_figure(history_path: str | os.PathLike, cell: str, out: str | os.PathLike,
                  primitives: Sequence[str] | None = None, title: str = "") -> None:
    """Heatmaps of the softmaxed alphas (edges x operations) of ``cell`` ("normal" or
    "reduce") at up to six epochs spread over the search, the last included."""
    plt = _plt()
    import numpy as np

    history = _read_json(history_path)
    recs = [r for r in history.get("epochs", []) if isinstance(r.get("alphas"), dict)
            and r["alphas"].get(cell)]
    if not recs:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no alphas of the {cell} cell in {history_path}", ha="center")
        _save(fig, out)
        return
    picks = [recs[i] for i in _pick_epochs(len(recs))]
    first = np.asarray(picks[0]["alphas"][cell], dtype=float)
    n_edges, n_ops = first.shape
    ops = list(primitives) if primitives and len(primitives) == n_ops else (
        list(DEFAULT_PRIMITIVES) if n_ops == len(DEFAULT_PRIMITIVES) else [str(i) for i in range(n_ops)])
    rows = edge_labels(n_edges)
    # One colour scale for all panels, from the data: early alphas are nearly uniform (1/ops),
    # so a fixed 0..1 scale would hide how they move.
    lo = min(float(np.min(r["alphas"][cell])) for r in picks)
    hi = max(float(np.max(r["alphas"][cell])) for r in picks)
    if hi - lo < 1e-6:
        lo, hi = lo - 1e-3, hi + 1e-3
    fig, axes = plt.subplots(1, len(picks), figsize=(2.1 + 1.9 * len(picks), 0.28 * n_edges + 2.2),
                             squeeze=False, sharey=True)
    image = None
    for ax, rec in zip(axes[0], picks):
        w = np.asarray(rec["alphas"][cell], dtype=float)
        image = ax.imshow(w, aspect="auto", cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(f"epoch {int(rec['epoch']) + 1}", fontsize=9)
        ax.set_xticks(range(n_ops))
        ax.set_xticklabels(ops, rotation=90, fontsize=7)
        ax.set_yticks(range(n_edges))
        ax.set_yticklabels(rows, fontsize=7)
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.025, pad=0.02, label="softmax(alpha)")
    fig.suptitle(title or f"{cell} cell: architecture weights over the search")
    _save(fig, out)


def search_figures(history: str | os.PathLike, curves_out: str | os.PathLike,
                   normal_out: str | os.PathLike, reduce_out: str | os.PathLike,
                   alphas: str | os.PathLike | None = None) -> list[Path]:
    """The search's curves and its alpha heatmaps (normal and reduction cell); ``alphas``
    (``search/alphas.json``) supplies the operation names."""
    primitives = None
    if alphas is not None and Path(alphas).is_file():
        primitives = _read_json(alphas).get("primitives")
    name = Path(history).parent.parent.name
    curves_figure(history, curves_out, f"{name}: search")
    alphas_figure(history, "normal", normal_out, primitives, f"{name}: normal cell, softmax(alpha) over the search")
    alphas_figure(history, "reduce", reduce_out, primitives, f"{name}: reduction cell, softmax(alpha) over the search")
    return [Path(curves_out), Path(normal_out), Path(reduce_out)]


def train_figure(history: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The training curves of the evaluation network."""
    curves_figure(history, out, f"{Path(history).parent.parent.name}: training")
    return Path(out)


# -- cells --------------------------------------------------------------------------------


def cell_dot(pairs: Sequence[Sequence[Any]], concat: Sequence[int], title: str) -> str:
    """graphviz source of one cell (the layout of DARTS' visualize.py)."""
    import graphviz

    g = graphviz.Digraph(
        name=title.replace(" ", "_"),
        format="png",
        edge_attr={"fontsize": "16", "fontname": "times"},
        node_attr={"style": "filled", "shape": "rect", "align": "center", "fontsize": "16",
                   "height": "0.5", "width": "0.5", "penwidth": "2", "fontname": "times"},
        engine="dot",
    )
    g.attr(label=title, labelloc="t", fontsize="18")
    g.body.extend(["rankdir=LR"])
    g.node("c_{k-2}", fillcolor="darkseagreen2")
    g.node("c_{k-1}", fillcolor="darkseagreen2")
    steps = len(pairs) // 2
    for i in range(steps):
        g.node(str(i), fillcolor="lightblue")
    for k, (op, j) in enumerate(pairs):
        node = k // 2
        j = int(j)
        src = "c_{k-2}" if j == 0 else "c_{k-1}" if j == 1 else str(j - 2)
        g.edge(src, str(node), label=str(op), fillcolor="gray")
    g.node("c_{k}", fillcolor="palegoldenrod")
    for j in concat:
        j = int(j)
        src = "c_{k-2}" if j == 0 else "c_{k-1}" if j == 1 else str(j - 2)
        g.edge(src, "c_{k}", fillcolor="gray")
    return g.source


def _render_dot(source_path: Path, out: Path) -> bool:
    dot = shutil.which("dot")
    if dot is None:
        return False
    try:
        png = subprocess.run([dot, "-Tpng", "-Gdpi=110", str(source_path)],
                             check=True, capture_output=True, timeout=120).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        log.warning("report: graphviz failed on %s (%s); writing a text rendering", source_path, exc)
        return False
    atomic_write_bytes(out, png)
    return True


def _text_cell_png(pairs, concat, title: str, dot_path: Path, out: Path) -> None:
    plt = _plt()
    lines = [title, ""]
    for k, (op, j) in enumerate(pairs):
        j = int(j)
        src = "c_{k-2}" if j == 0 else "c_{k-1}" if j == 1 else f"node {j - 2}"
        lines.append(f"node {k // 2}  <-  {op}({src})")
    lines.append(f"c_k = concat(nodes {', '.join(str(int(c) - 2) for c in concat)})")
    lines += ["", f"(graphviz 'dot' not found: install graphviz to draw {dot_path.name})"]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(lines) + 0.6))
    ax.axis("off")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9,
            transform=ax.transAxes)
    _save(fig, out)


def cell_figures(genotype: str | os.PathLike, normal_out: str | os.PathLike,
                 reduce_out: str | os.PathLike, normal_dot: str | os.PathLike | None = None,
                 reduce_dot: str | os.PathLike | None = None) -> dict[str, bool]:
    """Draw the normal and the reduction cell of ``genotype`` (a genotype.json).

    The graphviz sources go to ``*_dot`` (default: the PNG path with ``.dot``).  Returns
    ``{"normal": rendered_with_graphviz, "reduce": ...}``; where the ``dot`` program is missing
    the PNG is a text rendering and a warning is logged, so the workflow still completes."""
    doc = _read_json(genotype)
    name = Path(genotype).parent.name
    rendered = {}
    for cell, out, dot_out in (("normal", normal_out, normal_dot), ("reduce", reduce_out, reduce_dot)):
        out = Path(out)
        dot_path = Path(dot_out) if dot_out is not None else out.with_suffix(".dot")
        title = f"{name}: {'normal' if cell == 'normal' else 'reduction'} cell"
        pairs, concat = doc[cell], doc[f"{cell}_concat"]
        atomic_write_text(dot_path, cell_dot(pairs, concat, title))
        ok = _render_dot(dot_path, out)
        if not ok:
            if shutil.which("dot") is None:
                log.warning("report: graphviz 'dot' not found; %s is a text rendering, the "
                            "graph source is %s (install graphviz to draw it)", out, dot_path)
            _text_cell_png(pairs, concat, title, dot_path, out)
        rendered[cell] = ok
    return rendered


# -- test metrics -------------------------------------------------------------------------


def test_figure(test_json: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The test metrics: a table of every scalar, and per-class accuracy when present."""
    plt = _plt()
    doc = _read_json(test_json)
    metrics = doc.get("metrics", doc)
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    rows = [(k, f"{v:.4g}") for k, v in scalars]
    for key in ("num_samples", "num_parameters"):
        if isinstance(doc.get(key), (int, float)):
            rows.append((key, f"{doc[key]:,}"))
    per_class = metrics.get("per_class_accuracy")
    has_bars = isinstance(per_class, list) and per_class
    fig, axes = plt.subplots(1, 2 if has_bars else 1, figsize=(11 if has_bars else 5, 3.6),
                             squeeze=False)
    ax = axes[0][0]
    ax.axis("off")
    table = ax.table(cellText=rows or [["-", "-"]], colLabels=["metric", "value"], loc="center",
                     cellLoc="left")
    table.scale(1, 1.4)
    title = f"{doc.get('dataset', Path(test_json).parent.name)}: test split ({doc.get('task', '')})"
    ax.set_title(title)
    if has_bars:
        ax = axes[0][1]
        values = [v if isinstance(v, (int, float)) else 0.0 for v in per_class]
        ax.bar(range(len(values)), values, color="tab:blue")
        ax.set_xlabel("class")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xticks(range(len(values)))
        ax.set_title("per-class accuracy")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, out)
    return Path(out)


test_figure.__test__ = False  # not a pytest test despite the name
