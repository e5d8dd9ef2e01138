"""Figures and tables from the stage outputs, as plain files (PNG, HTML, graphviz sources).

- :func:`search_figures`: search curves, and the softmaxed alphas over the epochs as heatmaps
  (normal and reduction cell) from ``search/history.json``: a diverging scale centred on the
  uniform weight ``1 / operations`` (white: no preference), the same span for every panel, and
  the operations the genotype keeps at that epoch outlined.
- :func:`cell_figures`: the normal and reduction cells of ``genotype.json`` drawn the way the
  DARTS paper draws them (inputs ``c_{k-2}``, ``c_{k-1}`` on the left, intermediate nodes,
  their concatenation ``c_{k}`` on the right, edges labelled with operations), with matplotlib:
  no system program needed.  The graphviz ``.dot`` sources are written too; ``engine="graphviz"``
  renders them with the ``dot`` program when it is installed.
- :func:`train_figure`: training curves from ``train/history.json``.
- :func:`test_figure`: the test split: per-class accuracy and the confusion matrix
  (classification) or predicted against true values (regression), from ``test.json`` and the
  test stage's ``test_predictions.csv``; :func:`test_table`: the test metrics as an HTML
  table (the report shows it as a table, not as a picture of one).

Every figure is titled with the dataset's display name: its config key, the ``{dataset}`` of
``results/{dataset}/`` (``name=``; by default read from the path), never the loader's name.
matplotlib runs with the Agg backend (no screen needed).  Metric names and labels come from
:mod:`nas_core.tasks`.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

from nas_core.alpha_stats import MOVED
from nas_core.collapse import SKIP_LIMIT
from nas_core.fileio import atomic_write_bytes, atomic_write_text
from nas_core.ops import PRIMITIVES as DEFAULT_PRIMITIVES  # the alphas' column order
from nas_core.tasks import Task, task_of_metric

__all__ = ["search_figures", "cell_figures", "train_figure", "test_figure", "test_table",
           "curves_figure", "alphas_figure", "cell_figure", "cell_dot", "edge_labels",
           "chosen_edges", "dataset_name", "quality_figure", "MAX_ALPHA_PANELS",
           "CELL_COLOURS"]

log = logging.getLogger(__name__)

MAX_ALPHA_PANELS = 6
#: The DARTS paper's (graphviz) colours: inputs, intermediate nodes, output.
CELL_COLOURS = {"input": "#b4eeb4", "node": "#add8e6", "output": "#eee8aa"}


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


def dataset_name(path: str | os.PathLike) -> str:
    """The display name of the dataset a stage file belongs to: the folder that holds its
    ``search``/``train``/``select`` folder (``results/mnist/search/seed1/history.json`` ->
    ``mnist``), else the file's folder (``results/mnist/test.json`` -> ``mnist``)."""
    p = Path(path)
    parts = p.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] in ("search", "train", "select", "figures"):
            return parts[i - 1]
    return p.parent.name


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
    """Loss, metric (top-1 % or R²) and learning rate per epoch, train and valid; a search's
    history with collapse diagnostics adds a row of them (:func:`_collapse_panels`)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    history = _read_json(history_path)
    epochs = history.get("epochs", [])
    task = _task(history)
    metric, label = task.metric, task.metric_label
    diagnosed = [r for r in epochs if isinstance(r.get("collapse"), dict)]
    fig, grid = plt.subplots(2 if diagnosed else 1, 3, figsize=(13, 7.2 if diagnosed else 3.6),
                             squeeze=False)
    axes = grid[0]
    if diagnosed:
        _collapse_panels(grid[1], diagnosed)
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
    for ax in grid.flat:
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


def _collapse_panels(axes, epochs: list[dict]) -> None:
    """The search's collapse diagnostics per epoch (:mod:`nas_core.collapse`): kept
    parameter-free operations and skip connections, the alphas' movement and entropy, and the
    Hessian's dominant eigenvalue where measured."""
    xs = [int(r["epoch"]) + 1 for r in epochs]
    for cell, colour in (("normal", "tab:red"), ("reduce", "tab:blue")):
        diag = [r["collapse"][cell] for r in epochs]
        axes[0].plot(xs, [d["parameter_free"] for d in diag], "-o", color=colour,
                     markersize=3, label=f"{cell}: parameter-free")
        axes[0].plot(xs, [d["skip"] for d in diag], "--s", color=colour, markersize=3,
                     label=f"{cell}: skip_connect")
        axes[1].plot(xs, [d["movement"] for d in diag], "-o", color=colour, markersize=3,
                     label=f"{cell}: max |w - 1/K|")
    axes[0].axhline(SKIP_LIMIT, color="tab:gray", lw=0.8, ls=":")
    axes[0].set_ylabel("operations of the derived cell")
    axes[0].set_ylim(bottom=0)
    axes[1].axhline(MOVED, color="tab:gray", lw=0.8, ls=":")
    axes[1].set_ylabel("movement from uniform")
    entropy = axes[1].twinx()
    entropy.plot(xs, [r["collapse"]["normal"]["entropy"] for r in epochs], ":",
                 color="tab:red", label="normal: entropy (right)")
    entropy.set_ylabel("mean edge entropy (nats)")
    measured = [(x, r["collapse"]["hessian_eigenvalue"]) for x, r in zip(xs, epochs)
                if isinstance(r["collapse"].get("hessian_eigenvalue"), (int, float))]
    if measured:
        axes[2].plot(*zip(*measured), "-o", color="tab:purple", markersize=3)
    else:
        axes[2].text(0.5, 0.5, "not measured\n(search.hessian_every: 0)", ha="center",
                     va="center", transform=axes[2].transAxes)
    axes[2].set_ylabel("Hessian's dominant eigenvalue")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7, loc="upper left")
    entropy.legend(fontsize=7, loc="lower right")


# -- alphas -------------------------------------------------------------------------------


def _input_name(j: int) -> str:
    return ("c_{k-2}", "c_{k-1}")[j] if j < 2 else str(j - 2)


def edge_labels(num_edges: int) -> list[str]:
    """``node <- input`` for the edges of a DARTS cell (node i has i + 2 inputs)."""
    labels = []
    node = 0
    while len(labels) < num_edges:
        for j in range(node + 2):
            labels.append(f"{node} <- {_input_name(j)}")
        node += 1
    return labels[:num_edges]


def chosen_edges(genotype: dict | None, cell: str, ops: Sequence[str]) -> list[tuple[int, int]]:
    """``(edge row, operation column)`` of the operations a genotype (dict) keeps in ``cell``
    (node i's inputs are edges ``i (i + 3) / 2 + j``); [] when there is none."""
    if not isinstance(genotype, dict) or not isinstance(genotype.get(cell), list):
        return []
    out = []
    for k, pair in enumerate(genotype[cell]):
        try:
            op, j = str(pair[0]), int(pair[1])
        except (TypeError, ValueError, IndexError):
            continue
        node = k // 2
        if op in ops:
            out.append((node * (node + 3) // 2 + j, list(ops).index(op)))
    return out


def _pick_epochs(n: int, k: int = MAX_ALPHA_PANELS) -> list[int]:
    if n <= k:
        return list(range(n))
    picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
    return picks


def alphas_figure(history_path: str | os.PathLike, cell: str, out: str | os.PathLike,
                  primitives: Sequence[str] | None = None, title: str = "",
                  final_genotype: dict | None = None) -> dict:
    """Heatmaps of the softmaxed alphas (edges x operations) of ``cell`` ("normal" or
    "reduce") at up to six epochs spread over the search, the last included.

    The colour scale is diverging and centred on the uniform weight ``1 / operations`` (white),
    symmetric, the same for every panel, and never narrower than +-25 % of the uniform weight:
    alphas that barely moved stay pale instead of filling the colour range.  Outlined cells:
    the operations the genotype keeps at that epoch (the epoch's ``genotype`` in the history;
    ``final_genotype`` for the last panel when given).  Returns the colour scale
    (``uniform``, ``vmin``, ``vmax``), the ``epochs`` shown and the number of ``outlined``
    cells per panel."""
    plt = _plt()
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    history = _read_json(history_path)
    recs = [r for r in history.get("epochs", []) if isinstance(r.get("alphas"), dict)
            and r["alphas"].get(cell)]
    if not recs:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        method = history.get("method", "darts")
        ax.text(0.5, 0.5, f"search.method {method}: the cell was sampled, no architecture "
                          f"weights to show" if method != "darts" else
                f"no alphas of the {cell} cell in {history_path}", ha="center")
        _save(fig, out)
        return {"epochs": [], "outlined": []}
    picks = [recs[i] for i in _pick_epochs(len(recs))]
    first = np.asarray(picks[0]["alphas"][cell], dtype=float)
    n_edges, n_ops = first.shape
    ops = list(primitives) if primitives and len(primitives) == n_ops else (
        list(DEFAULT_PRIMITIVES) if n_ops == len(DEFAULT_PRIMITIVES) else [str(i) for i in range(n_ops)])
    rows = edge_labels(n_edges)
    uniform = 1.0 / n_ops
    spread = max(float(np.max(np.abs(np.asarray(r["alphas"][cell], dtype=float) - uniform)))
                 for r in picks)
    half = max(spread, 0.25 * uniform)
    norm = TwoSlopeNorm(vcenter=uniform, vmin=max(0.0, uniform - half), vmax=uniform + half)
    fig, axes = plt.subplots(1, len(picks), figsize=(2.3 + 1.9 * len(picks), 0.28 * n_edges + 2.6),
                             squeeze=False, sharey=True, layout="constrained")
    image = None
    outlined = []
    for n, (ax, rec) in enumerate(zip(axes[0], picks)):
        w = np.asarray(rec["alphas"][cell], dtype=float)
        image = ax.imshow(w, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_title(f"epoch {int(rec['epoch']) + 1}\nmax |w - 1/{n_ops}| "
                     f"{float(np.max(np.abs(w - uniform))):.2g}", fontsize=8)
        ax.set_xticks(range(n_ops))
        ax.set_xticklabels(ops, rotation=90, fontsize=7)
        ax.set_yticks(range(n_edges))
        ax.set_yticklabels(rows, fontsize=7)
        geno = final_genotype if (n == len(picks) - 1 and final_genotype) else rec.get("genotype")
        chosen = chosen_edges(geno, cell, ops)
        outlined.append(len(chosen))
        for r, c in chosen:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="black",
                                   linewidth=1.6))
    bar = fig.colorbar(image, ax=axes[0].tolist(), fraction=0.04, pad=0.02)
    bar.set_label("softmax(alpha)")
    ticks = sorted({norm.vmin, uniform, norm.vmax})
    bar.set_ticks(ticks)
    bar.set_ticklabels([f"{t:.3g}" + (f"\n(1/{n_ops}, uniform)" if t == uniform else "")
                        for t in ticks])
    note = (f"\nthe alphas moved less than {MOVED} from uniform: the kept operations are "
            f"close to a random pick" if spread < MOVED else "")
    fig.suptitle((title or f"{cell} cell: architecture weights over the search")
                 + f"\nwhite = uniform 1/{n_ops}; red: above, blue: below; outlined: the "
                   f"operations the genotype keeps{note}", fontsize=10)
    _save(fig, out)
    return {"uniform": uniform, "vmin": float(norm.vmin), "vmax": float(norm.vmax),
            "epochs": [int(r["epoch"]) + 1 for r in picks], "outlined": outlined}


def search_figures(history: str | os.PathLike, curves_out: str | os.PathLike,
                   normal_out: str | os.PathLike, reduce_out: str | os.PathLike,
                   alphas: str | os.PathLike | None = None, name: str | None = None,
                   genotype: str | os.PathLike | None = None) -> list[Path]:
    """The search's curves and its alpha heatmaps (normal and reduction cell); ``alphas``
    (``search/alphas.json``) supplies the operation names, ``genotype`` (a genotype.json)
    the operations outlined in the last panel; ``name``: the dataset's display name."""
    primitives = None
    if alphas is not None and Path(alphas).is_file():
        primitives = _read_json(alphas).get("primitives")
    final = _read_json(genotype) if genotype is not None and Path(genotype).is_file() else None
    name = name or dataset_name(history)
    curves_figure(history, curves_out, f"{name}: search")
    alphas_figure(history, "normal", normal_out, primitives,
                  f"{name}: normal cell, softmax(alpha) over the search", final)
    alphas_figure(history, "reduce", reduce_out, primitives,
                  f"{name}: reduction cell, softmax(alpha) over the search", final)
    return [Path(curves_out), Path(normal_out), Path(reduce_out)]


def train_figure(history: str | os.PathLike, out: str | os.PathLike,
                 name: str | None = None) -> Path:
    """The training curves of the evaluation network."""
    curves_figure(history, out, f"{name or dataset_name(history)}: training")
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
        g.edge(_input_name(int(j)), str(node), label=str(op), fillcolor="gray")
    g.node("c_{k}", fillcolor="palegoldenrod")
    for j in concat:
        g.edge(_input_name(int(j)), "c_{k}", fillcolor="gray")
    return g.source


def _render_dot(source_path: Path, out: Path) -> bool:
    dot = shutil.which("dot")
    if dot is None:
        return False
    try:
        png = subprocess.run([dot, "-Tpng", "-Gdpi=110", str(source_path)],
                             check=True, capture_output=True, timeout=120).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        log.warning("report: graphviz failed on %s (%s); drawing with matplotlib", source_path, exc)
        return False
    atomic_write_bytes(out, png)
    return True


def _cell_layout(pairs, concat) -> tuple[dict[str, int], int]:
    """Rank (column) of every node of a cell: inputs 0, a node one more than its deepest
    input, the output after the deepest node."""
    steps = len(pairs) // 2
    rank = {"c_{k-2}": 0, "c_{k-1}": 0}
    for i in range(steps):
        srcs = [_input_name(int(j)) for _, j in pairs[2 * i:2 * i + 2]]
        rank[str(i)] = 1 + max(rank.get(s, 0) for s in srcs)
    last = max(rank.values()) + 1
    rank["c_{k}"] = last
    return rank, last


def _bezier(start, end, rad: float, t: float) -> tuple[float, float]:
    """The point at ``t`` of matplotlib's ``arc3,rad=rad`` curve from ``start`` to ``end``."""
    mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
    cx, cy = mx + rad * (end[1] - start[1]), my - rad * (end[0] - start[0])
    return ((1 - t) ** 2 * start[0] + 2 * (1 - t) * t * cx + t ** 2 * end[0],
            (1 - t) ** 2 * start[1] + 2 * (1 - t) * t * cy + t ** 2 * end[1])


def _overlap(a, b) -> float:
    """Overlap area of two boxes ``(x0, y0, x1, y1)``."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def cell_figure(pairs: Sequence[Sequence[Any]], concat: Sequence[int], title: str,
                out: str | os.PathLike) -> None:
    """One cell drawn with matplotlib in the DARTS paper's style: columns by depth (inputs
    ``c_{k-2}``, ``c_{k-1}`` left, ``c_{k}`` right), boxes in the paper's colours, each edge
    labelled with its operation; the edges into ``c_{k}`` (the concatenation) are grey and
    unlabelled.  Edges that skip a column bend around the boxes in it; labels are placed
    along their edge where they overlap nothing."""
    plt = _plt()
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    rank, last = _cell_layout(pairs, concat)
    sources: dict[str, list[str]] = {}
    for k, (_, j) in enumerate(pairs):
        sources.setdefault(str(k // 2), []).append(_input_name(int(j)))
    for j in concat:
        sources.setdefault("c_{k}", []).append(_input_name(int(j)))
    dx, dy, bw, bh = 4.4, 1.7, 1.1, 0.6
    pos: dict[str, tuple[float, float]] = {"c_{k-2}": (0.0, dy / 2), "c_{k-1}": (0.0, -dy / 2)}
    for r in range(1, last + 1):
        nodes = [n for n, v in rank.items() if v == r]
        # barycentre of the inputs' heights (fewer crossings), ties in node order
        nodes.sort(key=lambda n: (-sum(pos[s][1] for s in sources[n]) / len(sources[n]),
                                  n != "c_{k}" and int(n) if n != "c_{k}" else 0))
        for k, node in enumerate(nodes):
            pos[node] = (r * dx, (len(nodes) - 1) / 2 * dy - k * dy)
    boxes = {n: (x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2) for n, (x, y) in pos.items()}
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    xlim = (min(xs) - bw, max(xs) + bw)
    ylim = (min(ys) - 1.2, max(ys) + 1.2)
    width_in = 1.0 + 2.6 * (last + 1)
    unit = width_in / (xlim[1] - xlim[0])  # inches per data unit (equal aspect)
    fig, ax = plt.subplots(figsize=(width_in, 0.6 + unit * (ylim[1] - ylim[0])))
    for node, (x, y) in pos.items():
        kind = "input" if node.startswith("c_{k-") else "output" if node == "c_{k}" else "node"
        ax.add_patch(FancyBboxPatch((x - bw / 2, y - bh / 2), bw, bh,
                                    boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor=CELL_COLOURS[kind], edgecolor="black",
                                    linewidth=1.6, zorder=3))
        text = f"${node}$" if node.startswith("c_") else node
        ax.text(x, y, text, ha="center", va="center", fontsize=13, family="serif", zorder=4)

    edges = [(_input_name(int(j)), str(k // 2), str(op)) for k, (op, j) in enumerate(pairs)]
    edges += [(_input_name(int(j)), "c_{k}", None) for j in concat]
    used: dict[tuple[str, str], set] = {}
    drawn: list[tuple[float, float]] = []  # points of the edges drawn so far
    multiplicity: dict[tuple[str, str], int] = {}
    for src, dst, _ in edges:
        multiplicity[(src, dst)] = multiplicity.get((src, dst), 0) + 1
    labels: list[tuple] = []
    char_w, text_h = 0.072 / unit, 0.2 / unit  # serif 8.5 pt, in data units
    for src, dst, label in edges:
        start = (pos[src][0] + bw / 2, pos[src][1])
        end = (pos[dst][0] - bw / 2, pos[dst][1])
        others = [b for n, b in boxes.items() if n not in (src, dst)]
        best = None
        candidates = (0.0, 0.12, -0.12, 0.25, -0.25, 0.4, -0.4, 0.55, -0.55)
        if multiplicity[(src, dst)] > 1:  # two operations on one edge: bend them apart
            sign = 1 if not used.get((src, dst)) else -1
            candidates = tuple(sign * r for r in (0.15, 0.3, 0.45))
        for rad in candidates:
            if rad in used.get((src, dst), set()):
                continue
            pts = [_bezier(start, end, rad, t / 20) for t in range(1, 20)]
            hits = sum(1 for px, py in pts for b in others
                       if b[0] - 0.15 <= px <= b[2] + 0.15 and b[1] - 0.15 <= py <= b[3] + 0.15)
            # running along an edge already drawn (not just crossing it) hides both
            near = sum(1 for px, py in pts[2:-2] if any(
                abs(px - qx) < 0.3 and abs(py - qy) < 0.18 for qx, qy in drawn))
            score = 10 * hits + 0.5 * near + 10 * abs(rad)
            if best is None or score < best[0]:
                best = (score, rad, pts)
        rad = best[1]
        drawn.extend(best[2][2:-2])
        used.setdefault((src, dst), set()).add(rad)
        ax.add_patch(FancyArrowPatch(start, end, connectionstyle=f"arc3,rad={rad}",
                                     arrowstyle="-|>", mutation_scale=14,
                                     color="black" if label else "0.6", linewidth=1.3,
                                     zorder=2 if label else 1, shrinkA=0, shrinkB=1))
        if label:
            w, h = char_w * len(label) + 0.12, text_h
            choice = None
            for t in (0.5, 0.42, 0.58, 0.34, 0.66, 0.27, 0.73, 0.2, 0.8):
                px, py = _bezier(start, end, rad, t)
                box = (px - w / 2, py - h / 2, px + w / 2, py + h / 2)
                grown = (box[0] - 0.05, box[1] - 0.05, box[2] + 0.05, box[3] + 0.05)
                cost = sum(_overlap(grown, b) for b in labels) + 10 * sum(
                    _overlap(grown, b) for b in boxes.values())
                if choice is None or cost < choice[0] - 1e-9:
                    choice = (cost, px, py, box)
                if cost == 0:
                    break
            _, px, py, box = choice
            labels.append(box)
            ax.text(px, py, label, ha="center", va="center", fontsize=8.5, family="serif",
                    zorder=5, bbox=dict(boxstyle="round,pad=0.12", facecolor="white",
                                        edgecolor="none", alpha=0.92))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=12)
    _save(fig, out)


def cell_figures(genotype: str | os.PathLike, normal_out: str | os.PathLike,
                 reduce_out: str | os.PathLike, normal_dot: str | os.PathLike | None = None,
                 reduce_dot: str | os.PathLike | None = None, *, name: str | None = None,
                 engine: str = "matplotlib") -> dict[str, str]:
    """Draw the normal and the reduction cell of ``genotype`` (a genotype.json).

    ``engine``: ``matplotlib`` (default, :func:`cell_figure`: no system program needed) or
    ``graphviz`` (the ``dot`` program; where it is missing or fails, matplotlib, with an info
    line).  The graphviz sources always go to ``*_dot`` (default: the PNG path with
    ``.dot``).  Returns ``{"normal": engine used, "reduce": ...}``."""
    if engine not in ("matplotlib", "graphviz"):
        raise ValueError(f"cell_figures: engine must be 'matplotlib' or 'graphviz', got {engine!r}")
    doc = _read_json(genotype)
    name = name or dataset_name(genotype)
    used = {}
    for cell, out, dot_out in (("normal", normal_out, normal_dot), ("reduce", reduce_out, reduce_dot)):
        out = Path(out)
        dot_path = Path(dot_out) if dot_out is not None else out.with_suffix(".dot")
        title = f"{name}: {'normal' if cell == 'normal' else 'reduction'} cell"
        pairs, concat = doc[cell], doc[f"{cell}_concat"]
        atomic_write_text(dot_path, cell_dot(pairs, concat, title))
        if engine == "graphviz":
            if _render_dot(dot_path, out):
                used[cell] = "graphviz"
                continue
            if shutil.which("dot") is None:
                log.info("report: graphviz 'dot' not found; %s drawn with matplotlib (the "
                         "graph source is %s)", out, dot_path)
        cell_figure(pairs, concat, title, out)
        used[cell] = "matplotlib"
    return used


# -- test metrics -------------------------------------------------------------------------


def _read_predictions(path: str | os.PathLike | None) -> list[dict] | None:
    if path is None or not Path(path).is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    classes = bool(rows) and "target_name" in rows[0]
    for r in rows:
        for k in ("target", "prediction"):
            r[k] = int(r[k]) if classes else float(r[k])
    return rows


def _class_names(doc: dict, card: dict | None, k: int) -> list[str]:
    names = (card or {}).get("class_names") or (doc.get("data") or {}).get("class_names")
    if isinstance(names, list) and len(names) == k:
        return [str(n) for n in names]
    by_name = (doc.get("metrics") or {}).get("per_class_accuracy_by_name")
    if isinstance(by_name, dict) and len(by_name) == k:
        return [str(n) for n in by_name]
    return [str(i) for i in range(k)]


def _confusion(rows: list[dict], k: int) -> list[list[int]]:
    m = [[0] * k for _ in range(k)]
    for r in rows:
        t, p = int(r["target"]), int(r["prediction"])
        if 0 <= t < k and 0 <= p < k:
            m[t][p] += 1
    return m


def _load_test(test_json, predictions, card):
    doc = _read_json(test_json)
    card_doc = _read_json(card) if card is not None and Path(card).is_file() else None
    return doc, _read_predictions(predictions), card_doc


def test_figure(test_json: str | os.PathLike, out: str | os.PathLike,
                predictions: str | os.PathLike | None = None, *, name: str | None = None,
                card: str | os.PathLike | None = None) -> Path:
    """The test split in pictures.  Classification: per-class accuracy (bars, class names)
    and the confusion matrix (rows: true class, columns: predicted; colour: share of the true
    class, numbers: counts); regression: predicted against true values with the identity
    line, and the residuals.  ``predictions``: the test stage's ``test_predictions.csv``
    (without it, only what ``test.json`` holds: the per-class accuracy)."""
    plt = _plt()
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    doc, rows, card_doc = _load_test(test_json, predictions, card)
    name = name or Path(test_json).parent.name
    metrics = doc.get("metrics", {})
    task = doc.get("task", "classification")
    n = doc.get("num_samples")
    if task == "regression":
        fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.4))
        r2 = metrics.get("r2")
        title = (f"{name}: test split, R² {r2:.4f}" if isinstance(r2, (int, float))
                 else f"{name}: test split") + (f" ({n} samples)" if n else "")
        if rows:
            y = np.array([r["target"] for r in rows], dtype=float)
            p = np.array([r["prediction"] for r in rows], dtype=float)
            ax = axes[0]
            ax.scatter(y, p, s=10, alpha=0.6, color="tab:blue", edgecolors="none")
            lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
            pad = 0.03 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "-", color="0.3", linewidth=1,
                    label="predicted = true")
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_aspect("equal")
            ax.set_xlabel("true value")
            ax.set_ylabel("predicted value")
            ax.legend(loc="upper left")
            ax.grid(alpha=0.3)
            ax.set_title("predicted against true")
            ax = axes[1]
            ax.hist(p - y, bins=min(40, max(5, len(y) // 5)), color="tab:gray")
            ax.axvline(0, color="0.2", linewidth=1)
            ax.set_xlabel("residual (predicted - true)")
            ax.set_ylabel("samples")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            mae = metrics.get("mae")
            ax.set_title("residuals" + (f" (MAE {mae:.4g})" if isinstance(mae, (int, float)) else ""))
            ax.grid(alpha=0.3)
        else:
            for ax in axes:
                ax.axis("off")
            axes[0].text(0.5, 0.5, "no predictions file", ha="center", va="center")
        fig.suptitle(title)
        fig.tight_layout()
        _save(fig, out)
        return Path(out)

    per_class = metrics.get("per_class_accuracy")
    k = len(per_class) if isinstance(per_class, list) else int(
        ((card_doc or {}).get("network") or {}).get("num_outputs") or 0)
    names = _class_names(doc, card_doc, k)
    top1 = metrics.get("top1")
    title = (f"{name}: test split, top-1 {top1:.2f} %" if isinstance(top1, (int, float))
             else f"{name}: test split") + (f" ({n} samples)" if n else "")
    with_matrix = bool(rows) and k > 0
    size = max(4.0, min(14.0, 0.45 * k + 2.5))
    fig, axes = plt.subplots(1, 2 if with_matrix else 1, squeeze=False,
                             figsize=((max(5.0, 0.35 * k + 2) + size) if with_matrix
                                      else max(5.0, 0.35 * k + 2), size if with_matrix else 3.8),
                             gridspec_kw={"width_ratios": [1, 1.25]} if with_matrix else None)
    ax = axes[0][0]
    if isinstance(per_class, list) and per_class:
        values = [v if isinstance(v, (int, float)) else float("nan") for v in per_class]
        ax.bar(range(len(values)), [0 if math.isnan(v) else v for v in values], color="tab:blue")
        for i, v in enumerate(values):
            if math.isnan(v):
                ax.text(i, 2, "no\nsamples", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(names, rotation=90 if max(map(len, names)) > 3 else 0, fontsize=8)
        if isinstance(top1, (int, float)):
            ax.axhline(top1, color="tab:red", linewidth=1, linestyle="--",
                       label=f"top-1 {top1:.2f} %")
            ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("per-class accuracy")
    ax.grid(axis="y", alpha=0.3)
    if with_matrix:
        ax = axes[0][1]
        m = np.array(_confusion(rows, k), dtype=float)
        share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        if k <= 20:
            for t in range(k):
                for p in range(k):
                    if m[t, p]:
                        ax.text(p, t, f"{int(m[t, p])}", ha="center", va="center", fontsize=7,
                                color="white" if share[t, p] > 0.5 else "black")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title("confusion matrix (counts; colour: share of the true class)")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out)
    return Path(out)


test_figure.__test__ = False  # not a pytest test despite the name


_LABELS = {"top1": ("top-1 accuracy", "%"), "top5": ("top-5 accuracy", "%"),
           "loss": ("loss (mean cross entropy)", ""), "r2": ("R²", ""),
           "mse": ("mean squared error", ""), "mae": ("mean absolute error", "")}


def _fmt(value: Any, unit: str = "") -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return (f"{value:.2f} %" if unit == "%" else f"{value:.4g}") if math.isfinite(value) else str(value)
    return str(value)


def test_table(test_json: str | os.PathLike, out: str | os.PathLike,
               predictions: str | os.PathLike | None = None, *, name: str | None = None,
               card: str | os.PathLike | None = None) -> Path:
    """The test metrics as an HTML page of tables: every metric of ``test.json`` (with the
    number of samples and parameters and the genotype's source), per-class accuracy with class
    names and sample counts, and the confusion matrix in counts (classification, up to 30
    classes)."""
    doc, rows, card_doc = _load_test(test_json, predictions, card)
    name = name or Path(test_json).parent.name
    metrics = doc.get("metrics", {})
    esc = html.escape
    parts = [f"<h3>{esc(name)}: test split ({esc(str(doc.get('task', '')))})</h3>",
             "<table><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>"]
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            label, unit = _LABELS.get(key, (key, ""))
            parts.append(f"<tr><td>{esc(label)}</td><td class='num'>{esc(_fmt(value, unit))}</td></tr>")
    source = (card_doc or {}).get("genotype_source") or doc.get("genotype_source")
    for label, value in (("test samples", doc.get("num_samples")),
                         ("parameters (without auxiliary head)", doc.get("num_parameters")),
                         ("genotype", source)):
        if value is not None:
            parts.append(f"<tr><td>{esc(label)}</td><td class='num'>{esc(_fmt(value))}</td></tr>")
    parts.append("</tbody></table>")
    per_class = metrics.get("per_class_accuracy")
    if isinstance(per_class, list) and per_class:
        k = len(per_class)
        names = _class_names(doc, card_doc, k)
        counts = [0] * k
        matrix = _confusion(rows, k) if rows else None
        if rows:
            for r in rows:
                if 0 <= int(r["target"]) < k:
                    counts[int(r["target"])] += 1
        parts.append("<h4>per class</h4><table><thead><tr><th>class</th><th>name</th>"
                     + ("<th>test samples</th><th>correct</th>" if rows else "")
                     + "<th>accuracy</th></tr></thead><tbody>")
        for i, acc in enumerate(per_class):
            extra = (f"<td class='num'>{counts[i]}</td><td class='num'>{matrix[i][i]}</td>"
                     if rows else "")
            parts.append(f"<tr><td class='num'>{i}</td><td>{esc(names[i])}</td>{extra}"
                         f"<td class='num'>{esc(_fmt(acc, '%') if acc is not None else 'no samples')}</td></tr>")
        parts.append("</tbody></table>")
        if matrix is not None and k <= 30:
            parts.append("<h4>confusion matrix (rows: true class, columns: predicted; counts)"
                         "</h4><table class='matrix'><thead><tr><th>true \\ predicted</th>"
                         + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr></thead><tbody>")
            for i, row in enumerate(matrix):
                cells = "".join(
                    f"<td class='num{' diag' if i == j else (' off' if v else '')}'>{v or ''}</td>"
                    for j, v in enumerate(row))
                parts.append(f"<tr><th>{esc(names[i])}</th>{cells}</tr>")
            parts.append("</tbody></table>")
    page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{esc(name)}: test metrics</title><style>"
            "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1em}"
            "th,td{border-bottom:1px solid #ccc;padding:3px 9px;text-align:left}"
            "td.num{text-align:right;font-variant-numeric:tabular-nums}"
            "table.matrix td{min-width:2em}td.diag{background:#cfe3f5;font-weight:bold}"
            "td.off{background:#fbe3d6}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    atomic_write_text(Path(out), page)
    return Path(out)


test_table.__test__ = False


# -- search quality against random cells --------------------------------------------------
def quality_figure(rows: Sequence[dict], out: str | os.PathLike,
                   metric_label: str = "test top-1 (%)") -> dict:
    """The reference distribution of random cells with each method's cells marked
    (``benchmarks/search_quality.py``): one row per method, a dot per cell (its ``top1``), a
    bar at the method's mean, the reference cells' median as a dashed line across.
    ``rows``: ``{"label", "top1", "parameter_free"}``; ``label`` "reference" is the
    distribution.  Returns the reference median (None without reference cells)."""
    plt = _plt()
    import statistics

    labels = ["reference"] + [lb for lb in dict.fromkeys(r["label"] for r in rows)
                              if lb != "reference"]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(labels) + 1.6), layout="constrained")
    reference = [r["top1"] for r in rows if r["label"] == "reference"]
    median = statistics.median(reference) if reference else None
    for y, label in enumerate(reversed(labels)):
        values = [r["top1"] for r in rows if r["label"] == label]
        colour = "0.55" if label == "reference" else f"C{labels.index(label) - 1}"
        ax.scatter(values, [y] * len(values), s=36, color=colour, alpha=0.8, zorder=3)
        if values:
            ax.plot([statistics.mean(values)] * 2, [y - 0.3, y + 0.3], color=colour, lw=2.5)
    if median is not None:
        ax.axvline(median, color="0.3", ls="--", lw=1, label=f"median random cell "
                                                             f"{median:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels([f"{lb} ({sum(r['label'] == lb for r in rows)})"
                        for lb in reversed(labels)])
    ax.set_xlabel(metric_label)
    ax.set_title("searched cells against random cells, same training budget\n(dots: cells; "
                 "bars: means)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, out)
    return {"reference_median": median}
