"""Figures, tables and the summary: display names, the alpha heatmaps' scale and marks, cells
drawn without any system program, the test metrics as a table, results/summary.tsv."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nas_core import report, summary
from nas_core.genotypes import get_genotype

PNG = b"\x89PNG\r\n\x1a\n"


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_history(path: Path, epochs: int = 3, scale: float = 1.0) -> Path:
    """A search history.json with alphas that move by ``scale`` and each epoch's genotype."""
    import torch

    from nas_core.genotypes import derive_genotype

    rng = np.random.default_rng(0)
    a_n, a_r = np.zeros((14, 8)), np.zeros((14, 8))
    recs = []
    for e in range(epochs):
        a_n += rng.normal(0, scale, a_n.shape)
        a_r += rng.normal(0, scale, a_r.shape)
        wn, wr = _softmax(a_n), _softmax(a_r)
        geno = derive_genotype(torch.tensor(wn), torch.tensor(wr))
        recs.append({"epoch": e, "lr": 0.02, "train": {"loss": 1.0, "top1": 50.0 + e},
                     "valid": {"loss": 1.1, "top1": 48.0 + e},
                     "alphas": {"normal": wn.tolist(), "reduce": wr.tolist()},
                     "genotype": geno.to_dict()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": "search", "metric": "top1", "epochs": recs}))
    return path


# -- names ------------------------------------------------------------------------------------


def test_dataset_name_is_the_results_folder_also_for_seeds():
    assert report.dataset_name("results/sheets/search/history.json") == "sheets"
    assert report.dataset_name("results/sheets/search/seed2/history.json") == "sheets"
    assert report.dataset_name("results/sheets/train/history.json") == "sheets"
    assert report.dataset_name("results/sheets/test.json") == "sheets"


# -- alphas -----------------------------------------------------------------------------------


def test_chosen_edges_index_the_edges_of_each_node():
    g = get_genotype("DARTS_V2").to_dict()
    ops = list(report.DEFAULT_PRIMITIVES)
    chosen = report.chosen_edges(g, "normal", ops)
    labels = report.edge_labels(14)
    # DARTS_V2 normal: node 3 <- skip_connect(c_{k-2}), dil_conv_3x3(node 0)
    assert (labels[chosen[6][0]], ops[chosen[6][1]]) == ("3 <- c_{k-2}", "skip_connect")
    assert (labels[chosen[7][0]], ops[chosen[7][1]]) == ("3 <- 0", "dil_conv_3x3")
    assert len(chosen) == 8 and report.chosen_edges(None, "normal", ops) == []


def test_alpha_heatmaps_are_centred_on_uniform_with_a_floor_and_mark_the_genotype(tmp_path):
    """Nearly uniform alphas (the issue's 0.1242..0.1260) must not fill the colour range: the
    scale is centred on 1/8 and spans at least +-25 % of it; each panel outlines the genotype's
    eight operations."""
    hist = write_history(tmp_path / "demo" / "search" / "history.json", scale=0.001)
    info = report.alphas_figure(hist, "normal", tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG
    assert info["uniform"] == pytest.approx(0.125)
    assert info["vmax"] - info["uniform"] == pytest.approx(info["uniform"] - info["vmin"])
    assert info["vmax"] - info["uniform"] >= 0.25 * 0.125 - 1e-12
    assert info["outlined"] == [8, 8, 8]
    # Large moves widen the scale to the largest distance from uniform.
    hist = write_history(tmp_path / "big" / "search" / "history.json", scale=1.0)
    info = report.alphas_figure(hist, "reduce", tmp_path / "b.png")
    doc = json.loads(hist.read_text())
    far = max(float(np.max(np.abs(np.asarray(r["alphas"]["reduce"]) - 0.125)))
              for r in doc["epochs"])
    assert info["vmax"] == pytest.approx(0.125 + far)


def test_search_figures_are_titled_with_the_display_name(tmp_path):
    hist = write_history(tmp_path / "results" / "sheets" / "search" / "seed1" / "history.json")
    outs = report.search_figures(hist, tmp_path / "c.png", tmp_path / "n.png", tmp_path / "r.png")
    assert all(p.read_bytes()[:8] == PNG for p in outs)


# -- cells ------------------------------------------------------------------------------------


def _genotype_file(tmp_path: Path, name: str = "DARTS_V2") -> Path:
    geno = tmp_path / "demo" / "genotype.json"
    geno.parent.mkdir(parents=True, exist_ok=True)
    geno.write_text(json.dumps(get_genotype(name).to_dict()))
    return geno


def test_cells_are_drawn_without_any_system_program(tmp_path, monkeypatch):
    """matplotlib draws the cells (no graphviz `dot` needed); the .dot sources are written."""
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    geno = _genotype_file(tmp_path)
    out = tmp_path / "figures"
    used = report.cell_figures(geno, out / "n.png", out / "r.png", out / "n.dot", out / "r.dot")
    assert used == {"normal": "matplotlib", "reduce": "matplotlib"}
    for name in ("n.png", "r.png"):
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size > 10_000
    assert "sep_conv_3x3" in (out / "n.dot").read_text()


def test_graphviz_engine_falls_back_to_matplotlib(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    geno = _genotype_file(tmp_path)
    with caplog.at_level("INFO", logger="nas_core.report"):
        used = report.cell_figures(geno, tmp_path / "n.png", tmp_path / "r.png",
                                   engine="graphviz")
    assert used == {"normal": "matplotlib", "reduce": "matplotlib"}
    assert "graphviz 'dot' not found" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed")
def test_cells_are_drawn_with_graphviz_when_asked(tmp_path):
    geno = _genotype_file(tmp_path)
    used = report.cell_figures(geno, tmp_path / "n.png", tmp_path / "r.png", engine="graphviz")
    assert used == {"normal": "graphviz", "reduce": "graphviz"}


@pytest.mark.parametrize("name", ["NASNet", "AmoebaNet", "MNIST", "GRAPHENE"])
def test_every_published_cell_draws(tmp_path, name):
    g = get_genotype(name).to_dict()
    report.cell_figure(g["reduce"], g["reduce_concat"], name, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG


# -- test metrics -----------------------------------------------------------------------------


def _classification(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "results" / "sheets"
    folder.mkdir(parents=True)
    rows = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (2, 0)]
    per_class = [200 / 3, 100.0, 50.0]
    test = {"dataset": "netcdf", "task": "classification",
            "metrics": {"top1": 500 / 7, "top5": 100.0, "loss": 0.7,
                        "per_class_accuracy": per_class,
                        "per_class_accuracy_by_name": dict(zip(["cat", "dog", "eel"], per_class))},
            "num_samples": 7, "num_parameters": 1234, "genotype_source": "DARTS_V2",
            "data": {"dataset": "netcdf", "class_names": ["cat", "dog", "eel"]}}
    (folder / "test.json").write_text(json.dumps(test))
    names = ["cat", "dog", "eel"]
    lines = ["index,target,prediction,target_name,prediction_name,probability"]
    lines += [f"{i},{t},{p},{names[t]},{names[p]},0.9" for i, (t, p) in enumerate(rows)]
    (folder / "test_predictions.csv").write_text("\n".join(lines) + "\n")
    return folder / "test.json", folder / "test_predictions.csv"


def test_test_metrics_table_and_figure_of_a_classification(tmp_path):
    test, preds = _classification(tmp_path)
    table = report.test_table(test, tmp_path / "t.html", preds).read_text()
    # the display name is the results folder, not the loader ("netcdf")
    assert "<h3>sheets: test split" in table and "netcdf" not in table
    assert "71.43 %" in table and "1,234" in table and "DARTS_V2" in table
    for name in ("cat", "dog", "eel"):
        assert f"<td>{name}</td>" in table
    assert "confusion matrix" in table and "<td class='num diag'>2</td>" in table
    fig = report.test_figure(test, tmp_path / "t.png", preds)
    assert fig.read_bytes()[:8] == PNG


def test_test_figure_of_a_regression_is_a_scatter(tmp_path):
    folder = tmp_path / "results" / "graph"
    folder.mkdir(parents=True)
    (folder / "test.json").write_text(json.dumps({
        "dataset": "graphene", "task": "regression", "num_samples": 50,
        "metrics": {"r2": 0.9, "mse": 0.1, "mae": 0.2, "loss": 0.1}}))
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    lines = ["index,target,prediction"] + [f"{i},{a},{a + 0.1 * b}" for i, (a, b) in
                                             enumerate(zip(y, rng.normal(size=50)))]
    (folder / "test_predictions.csv").write_text("\n".join(lines) + "\n")
    assert report.test_figure(folder / "test.json", tmp_path / "s.png",
                              folder / "test_predictions.csv").read_bytes()[:8] == PNG
    table = report.test_table(folder / "test.json", tmp_path / "s.html").read_text()
    assert "R²" in table and "graph: test split" in table and "per class" not in table


# -- summary ----------------------------------------------------------------------------------


def _finished(results: Path, name: str, top1: float, params: int, seconds: float) -> None:
    folder = results / name
    (folder / "train").mkdir(parents=True)
    (folder / "test.json").write_text(json.dumps({
        "task": "classification", "metrics": {"top1": top1}, "num_samples": 360,
        "num_parameters": params, "genotype_source": f"results/{name}/genotype.json"}))
    (folder / "train" / "timings.json").write_text(json.dumps({"total_seconds": seconds}))


def test_summary_lists_every_finished_dataset(tmp_path, capsys):
    results = tmp_path / "results"
    _finished(results, "digits", 97.5, 12345, 61.0)
    _finished(results, "digits-pub", 40.0, 999, 3600.4)
    (results / "digits" / "search").mkdir()
    (results / "digits" / "search" / "timings.json").write_text('{"total_seconds": 20}')
    rows = summary.write_summary(results, {"digits": "search", "mnist": "search",
                                           "digits-pub": "DARTS_V2"},
                                 html=results / "summary.html")
    assert [r["dataset"] for r in rows] == ["digits", "digits-pub"]  # mnist: not finished
    tsv = (results / "summary.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == list(summary.COLUMNS)
    assert tsv[1].split("\t") == ["digits", "classification", "top1", "97.5", "360", "12345",
                                  "search", "81.0"]
    text = summary.to_text(rows)
    assert "top-1 97.50 %" in text and "12,345" in text and "1:00:00" in text
    assert "DARTS_V2" in text and "0:01:21" in text
    html = (results / "summary.html").read_text()
    assert "nas-summary" in html and "digits-pub" in html
    mtime = (results / "summary.tsv").stat().st_mtime_ns
    summary.write_summary(results, {"digits": "search", "digits-pub": "DARTS_V2"})
    assert (results / "summary.tsv").stat().st_mtime_ns == mtime  # unchanged: not rewritten
    # onsuccess: printed at exit; here the atexit function is called by hand
    registered = []
    import atexit

    monkey = pytest.MonkeyPatch()
    monkey.setattr(atexit, "register", lambda f, *a: registered.append((f, a)))
    try:
        summary.print_summary_at_exit(results, ["digits", "digits-pub"])
    finally:
        monkey.undo()
    fn, args = registered[0]
    fn(*args)
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1].startswith("digits-pub")
    assert "Summary of the finished datasets" in err
