"""search.method: darts | random | random_ws, through the stages (nas_core.stages.search)."""

from __future__ import annotations

import json

import pytest
import torch

from nas_core.alpha_stats import MOVED, moved_line, movement
from nas_core.config import ConfigError, json_schema, validate_stage_cfg
from nas_core.genotypes import get_genotype
from nas_core.model_search import SearchNetwork
from nas_core.samplers import genotype_weights, sample_genotype
from nas_core.single_path import cell_path, path_forward
from nas_core.stages import run_genotype, run_search, run_test, run_train
from nas_core.stages.random_ws import draw
from nas_core.stages.runtime import seed_everything

DIGITS = {"name": "digits"}
TINY = dict(epochs=1, batch_size=16, layers=3, init_channels=4, steps=2, multiplier=2,
            max_steps_per_epoch=2, num_workers=0, candidates=3)
TINY_TRAIN = dict(epochs=1, batch_size=16, layers=2, init_channels=4, max_steps_per_epoch=2,
                  num_workers=0, drop_path_prob=0.0)


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("NAS_CORE_PROGRESS", "0")


def test_method_is_a_validated_key_with_darts_the_default():
    assert validate_stage_cfg("search", {})["method"] == "darts"
    assert json_schema("search")["properties"]["method"]["enum"] == [
        "darts", "random", "random_ws"]
    with pytest.raises(ConfigError, match=r"search\.method: must be one of"):
        validate_stage_cfg("search", {"method": "evolution"})
    with pytest.raises(ConfigError, match=r"search\.partial_channels: 2 is not for "
                                          r"search\.method random_ws"):
        validate_stage_cfg("search", {"method": "random_ws", "partial_channels": 2})
    with pytest.raises(ConfigError, match=r"search\.candidates"):
        validate_stage_cfg("search", {"candidates": 0})


@pytest.mark.parametrize("method", ["darts", "random", "random_ws"])
def test_each_method_through_search_genotype_train_test(tmp_path, method):
    res = run_search(DIGITS, dict(TINY, method=method), tmp_path / "search", device="cpu")
    doc = json.loads((tmp_path / "search" / "alphas.json").read_text())
    history = json.loads((tmp_path / "search" / "history.json").read_text())
    assert doc["method"] == history["method"] == method
    genotype = run_genotype(tmp_path / "search" / "alphas.json", tmp_path / "genotype.json")
    assert genotype.to_dict() == res["genotype"]
    assert (tmp_path / "search" / "supernet.pt").is_file()
    if method == "random":
        assert history["epochs"] == [] and res["valid"] is None
    else:
        assert len(history["epochs"]) == 1 and res["valid"]["loss"] > 0
    if method == "random_ws":
        cands = history["candidates"]
        assert len(cands) == 3 == len(doc["candidates"])
        losses = [c["valid"]["loss"] for c in cands]
        assert doc["chosen"] == history["chosen"] == losses.index(min(losses))
        assert cands[doc["chosen"]]["genotype"] == res["genotype"]
        assert "alphas" not in history["epochs"][0]
    run_train(DIGITS, TINY_TRAIN, tmp_path / "genotype.json", tmp_path / "train", device="cpu")
    test = run_test(DIGITS, TINY_TRAIN, {"num_workers": 0}, tmp_path / "genotype.json",
                    tmp_path / "train" / "model.pt", tmp_path / "test.json", device="cpu")
    assert test["genotype"] == res["genotype"]


def test_random_is_reproducible_by_seed_and_differs_across_seeds(tmp_path):
    cfg = dict(TINY, method="random", steps=4, multiplier=4)
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        runs[name] = run_search(DIGITS, dict(cfg, seed=seed), tmp_path / name, device="cpu")
    assert ((tmp_path / "a" / "alphas.json").read_bytes()
            == (tmp_path / "b" / "alphas.json").read_bytes())
    assert ((tmp_path / "a" / "supernet.pt").read_bytes()
            == (tmp_path / "b" / "supernet.pt").read_bytes())
    assert runs["a"]["genotype"] == runs["b"]["genotype"] != runs["c"]["genotype"]
    # the cell is one draw of the space: no 'none', two distinct inputs per node
    g = runs["a"]["genotype"]
    for cell in (g["normal"], g["reduce"]):
        for node in range(4):
            (_, i), (_, j) = cell[2 * node:2 * node + 2]
            assert i != j and max(i, j) < node + 2
        assert all(op != "none" for op, _ in cell)


def _one_hot_alphas(model: SearchNetwork, genotype) -> None:
    """Alphas whose softmax is exactly one-hot: the path's op on its edges, ``none`` on the
    other edges (float64: exp(-1e4) is exactly 0)."""
    wn, wr = genotype_weights(genotype, model.steps, model.primitives)
    with torch.no_grad():
        for alphas, w in ((model.alphas_normal, wn), (model.alphas_reduce, wr)):
            w = w.clone().double()
            w[w.sum(1) == 0, model.primitives.index("none")] = 1.0
            alphas.copy_(1e4 * w)


def test_path_forward_is_the_supernet_at_one_hot_weights():
    torch.manual_seed(0)
    model = SearchNetwork(1, 4, 5, 3, steps=3, multiplier=3).double().eval()
    genotype = sample_genotype(torch.Generator().manual_seed(3), 3, 3)
    _one_hot_alphas(model, genotype)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(path_forward(model, x, genotype), model(x),
                                   rtol=1e-10, atol=1e-12)


def test_a_path_trains_only_its_own_operations():
    torch.manual_seed(0)
    model = SearchNetwork(1, 4, 3, 3, steps=2, multiplier=2)
    genotype = sample_genotype(torch.Generator().manual_seed(1), 2, 2)
    path_forward(model, torch.randn(4, 1, 8, 8), genotype).sum().backward()
    paths = {False: cell_path(genotype.normal, model.primitives, 2),
             True: cell_path(genotype.reduce, model.primitives, 2)}
    for cell in model.cells:
        on = {(e, o) for pair in paths[cell.reduction] for e, o, _ in pair}
        for e, mixed in enumerate(cell._ops):
            for o, op in enumerate(mixed._ops):
                grads = [p.grad for p in op.parameters()]
                if (e, o) in on:
                    assert all(g is not None for g in grads), (e, o)
                else:
                    assert all(g is None for g in grads), (e, o)
    assert model.alphas_normal.grad is None and model.alphas_reduce.grad is None


def test_random_ws_search_changes_only_the_sampled_paths(tmp_path):
    """Through the stage: one step trains exactly the operations on the path of step 0."""
    cfg = dict(TINY, method="random_ws", epochs=1, max_steps_per_epoch=1, seed=4)
    run_search(DIGITS, cfg, tmp_path / "s", device="cpu")
    after = torch.load(tmp_path / "s" / "supernet.pt", weights_only=True)
    seed_everything(4)  # the stage's initialisation (driver: seed, then the network)
    model = SearchNetwork(1, 4, 10, 3, steps=2, multiplier=2)
    before = model.state_dict()
    genotype = draw(validate_stage_cfg("search", cfg), model.primitives, "path", 0)
    paths = {False: cell_path(genotype.normal, model.primitives, 2),
             True: cell_path(genotype.reduce, model.primitives, 2)}
    reductions = {1, 2}  # layers 3: reduction cells at 3 // 3 and 2 * 3 // 3
    changed, kept = 0, 0
    for key, value in before.items():
        parts = key.split(".")
        if parts[0] != "cells" or parts[2] != "_ops" or not value.is_floating_point():
            continue
        cell, edge, op = int(parts[1]), int(parts[3]), int(parts[5])
        on = (edge, op) in {(e, o) for pr in paths[cell in reductions] for e, o, _ in pr}
        same = torch.equal(after[key], value)
        if on and key.endswith("weight"):
            assert not same, key
            changed += 1
        elif not on:
            assert same, key
            kept += 1
    assert changed > 0 and kept > changed


def test_movement_and_the_console_line():
    uniform = [[1 / 8] * 8 for _ in range(14)]
    moved = [row[:] for row in uniform]
    moved[3] = [0.2] + [0.8 / 7] * 7
    assert movement(uniform) == pytest.approx(0.0, abs=1e-15)
    assert movement(moved) == pytest.approx(0.075)
    assert "normal 0.075, reduce 0.000" in moved_line(moved, uniform)
    assert "close to a random pick" not in moved_line(moved, uniform)
    assert "close to a random pick" in moved_line(uniform, moved)
    assert MOVED == 0.05
    with pytest.raises(ValueError, match="edges x operations"):
        movement([])


def test_darts_search_ends_with_how_far_the_alphas_moved(tmp_path, caplog):
    caplog.set_level("INFO", logger="nas_core")
    run_search(DIGITS, TINY, tmp_path / "s", device="cpu")
    last = [r.getMessage() for r in caplog.records if "search done" in r.getMessage()][-1]
    assert "alphas moved from uniform: max |w - 1/8| normal" in last
    doc = json.loads((tmp_path / "s" / "alphas.json").read_text())
    assert f"normal {movement(doc['softmax']['normal']):.3f}" in last


def test_parameter_free_count():
    g = get_genotype("DARTS_V2")
    assert g.parameter_free("normal") == 2 and g.parameter_free("reduce") == 8
