"""Collapse diagnostics: the Hessian's dominant eigenvalue, the per-epoch figures, the rules."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from nas_core import collapse
from nas_core.hessian import (dominant_eigenvalue, hessian_vector_product, plain_twin,
                              supernet_eigenvalue)
from nas_core.model_search import SearchNetwork
from nas_core.stages import run_search


def test_eigenvalue_of_a_known_quadratic():
    """L = 1/2 x^T A x has Hessian A: power iteration finds its eigenvalue of largest
    magnitude, also when the parameters come as several tensors."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(7, 7, dtype=torch.float64))
    eig = torch.tensor([5.0, -2.0, 1.5, 1.0, 0.5, 0.1, -0.3], dtype=torch.float64)
    a = q @ torch.diag(eig) @ q.T
    x1 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def loss():
        x = torch.cat([x1, x2.flatten()])
        return 0.5 * x @ a @ x

    value = dominant_eigenvalue(lambda v: hessian_vector_product(loss, [x1, x2], v),
                                [x1, x2], iters=200, seed=3)
    assert value == pytest.approx(5.0, rel=1e-9)
    # a negative dominant eigenvalue is found with its sign
    value = dominant_eigenvalue(lambda v: hessian_vector_product(lambda: -3 * loss(), [x1, x2],
                                                                 v), [x1, x2], iters=200)
    assert value == pytest.approx(-15.0, rel=1e-9)
    # seeded: the same start, the same value after few iterations
    few = [dominant_eigenvalue(lambda v: hessian_vector_product(loss, [x1, x2], v), [x1, x2],
                               iters=3, seed=1) for _ in range(2)]
    assert few[0] == few[1] and few[0] != pytest.approx(5.0, rel=1e-6)


@pytest.mark.parametrize("partial_channels", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_supernet_eigenvalue_is_the_top_eigenvalue_of_the_full_hessian(partial_channels):
    """On a tiny float64 supernet the power iteration's value is the eigenvalue of largest
    magnitude of the Hessian of the mean batch loss over every architecture parameter,
    computed in full by torch.autograd.functional.hessian; the supernet is left as it was."""
    torch.manual_seed(0)
    model = SearchNetwork(2, 2, 3, 3, steps=2, multiplier=2,
                          partial_channels=partial_channels).double().train()
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_(0, 0.5)
    batches = [(torch.randn(4, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (4,)))
               for _ in range(2)]
    loss = torch.nn.functional.cross_entropy
    before = {k: v.clone() for k, v in model.state_dict().items()}

    value = supernet_eigenvalue(model, batches, loss, iters=100)

    twin = plain_twin(model)
    params = twin.arch_parameters()
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def flat_loss(flat):
        parts = [t.view(s) for t, s in zip(torch.split(flat, sizes), shapes)]
        return sum(loss(_forward_with(twin, parts, x), y) for x, y in batches) / len(batches)

    flat = torch.cat([p.detach().flatten() for p in params])
    full = torch.autograd.functional.hessian(flat_loss, flat)
    eig = torch.linalg.eigvalsh(full)
    top = eig[eig.abs().argmax()].item()
    assert value == pytest.approx(top, rel=1e-6)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _arch_named(model):
    ids = {id(p) for p in model.arch_parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


def _forward_with(model, parts, x):
    names = [n for n, _ in _arch_named(model)]
    return torch.func.functional_call(model, dict(zip(names, parts)), (x,), strict=False)


def test_cell_diagnostics_and_entropy():
    uniform = [[1 / 8] * 8 for _ in range(14)]
    d = collapse.cell_diagnostics(uniform, ["skip_connect", "max_pool_3x3", "sep_conv_3x3",
                                            "skip_connect", "none", "dil_conv_5x5",
                                            "avg_pool_3x3", "skip_connect"])
    assert d == {"parameter_free": 6, "skip": 3, "ops": 8, "movement": pytest.approx(0.0),
                 "entropy": pytest.approx(math.log(8))}
    one_hot = [[1.0] + [0.0] * 7, [0.5, 0.5] + [0.0] * 6]
    assert collapse.entropy(one_hot) == pytest.approx(math.log(2) / 2)
    assert collapse.cell_diagnostics(one_hot, [])["movement"] == pytest.approx(7 / 8)


def test_the_skip_warning_and_the_rdarts_rule():
    diag = {"normal": {"skip": 3}, "reduce": {"skip": 0}}
    lines = collapse.warnings(diag)
    assert len(lines) == 1 and "3 skip connections (more than 2)" in lines[0]
    assert collapse.warnings({"normal": {"skip": 2}, "reduce": {"skip": 5}}) == []
    # R-DARTS: local means over 5 measurements, 5 back, ratio below 0.75
    flat = [1.0] * 10
    assert collapse.rdarts_rule(flat) is None
    assert collapse.rdarts_rule([1.0] * 9) is None  # fewer than k + window
    grown = [1.0] * 5 + [1.5] * 5  # mean 1.0 then 1.5: ratio 0.667
    assert collapse.rdarts_rule(grown) == pytest.approx(1 / 1.5)
    assert collapse.rdarts_rule([1.0] * 5 + [1.3] * 5) is None  # 0.77: not yet
    lines = collapse.warnings({"normal": {"skip": 0}}, grown)
    assert len(lines) == 1 and "grew 1.50x over the last 5 measurements" in lines[0]


def test_the_search_records_the_diagnostics_every_epoch(tmp_path, caplog):
    """history.json holds each epoch's diagnostics of the derived cells (matching its
    genotype and alphas), the eigenvalue on the hessian_every epochs and the last; the epoch
    line says them in short."""
    cfg = {"epochs": 3, "layers": 2, "init_channels": 4, "steps": 2, "multiplier": 2,
           "batch_size": 16, "max_steps_per_epoch": 2, "num_workers": 0, "hessian_every": 2,
           "hessian_batches": 1, "arch_lr": 0.05}
    with caplog.at_level(logging.INFO, logger="nas_core"):
        run_search({"name": "digits"}, cfg, tmp_path)
    epochs = json.loads((tmp_path / "history.json").read_text())["epochs"]
    for rec in epochs:
        diag = rec["collapse"]
        for cell in ("normal", "reduce"):
            ops = [op for op, _ in rec["genotype"][cell]]
            assert diag[cell] == collapse.cell_diagnostics(rec["alphas"][cell], ops)
    assert [("hessian_eigenvalue" in r["collapse"]) for r in epochs] == [False, True, True]
    assert all(math.isfinite(r["collapse"]["hessian_eigenvalue"]) for r in epochs[1:])
    lines = [r.getMessage() for r in caplog.records if " epoch 2/3 " in r.getMessage()]
    assert len(lines) == 1 and "| normal cell " in lines[0]
    assert "parameter-free" in lines[0] and "| Hessian eigenvalue " in lines[0]


def _crafted(skip_weights, second):
    """Normal-cell weights of 14 edges (4 nodes) where every edge's best op is skip_connect
    with ``skip_weights[row]`` and its second-best ``second[row]`` (name, weight)."""
    from nas_core.ops import PRIMITIVES
    rows = []
    for row in range(14):
        w = [0.01] * len(PRIMITIVES)
        w[PRIMITIVES.index("skip_connect")] = skip_weights[row]
        name, value = second[row]
        w[PRIMITIVES.index(name)] = value
        rows.append(w)
    return rows


def test_max_skip_replaces_the_weakest_skips_by_the_next_best_op():
    """P-DARTS' limit on crafted alphas: every edge prefers skip; with max_skip 2 the two
    strongest skips stay, and each other kept skip gives way to its edge's next-best op, or
    to the node's next-best edge."""
    from nas_core.genotypes import derive_genotype
    # rows: node 0 = 0, 1; node 1 = 2..4; node 2 = 5..8; node 3 = 9..13 (inputs 0, 1, ...)
    skip = [0.50, 0.49, 0.60, 0.30, 0.36, 0.70, 0.26, 0.27, 0.28, 0.40, 0.41, 0.42, 0.43, 0.44]
    second = [("sep_conv_3x3", 0.25)] * 14
    second[4] = ("dil_conv_5x5", 0.35)
    wn = _crafted(skip, second)
    reduce = [[1 / 8] * 8 for _ in range(14)]
    plain = derive_genotype(wn, reduce)
    assert plain.normal == (("skip_connect", 0), ("skip_connect", 1),
                            ("skip_connect", 0), ("skip_connect", 2),
                            ("skip_connect", 0), ("skip_connect", 3),
                            ("skip_connect", 4), ("skip_connect", 3))
    limited = derive_genotype(wn, reduce, max_skip=2)
    assert limited.normal == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                              ("skip_connect", 0), ("dil_conv_5x5", 2),
                              ("skip_connect", 0), ("sep_conv_3x3", 1),
                              ("sep_conv_3x3", 0), ("sep_conv_3x3", 1))
    assert limited.reduce == plain.reduce
    assert derive_genotype(wn, reduce, max_skip=8) == plain
    assert derive_genotype(wn, reduce, max_skip=0).parameter_free() == 0
    with pytest.raises(ValueError, match="max_skip must be >= 0"):
        derive_genotype(wn, reduce, max_skip=-1)


def test_run_genotype_applies_max_skip_to_a_darts_search_only(tmp_path):
    from nas_core.genotypes import derive_genotype
    from nas_core.stages import run_genotype
    skip = [0.50, 0.49, 0.60, 0.30, 0.36, 0.70, 0.26, 0.27, 0.28, 0.40, 0.41, 0.42, 0.43, 0.44]
    wn = _crafted(skip, [("sep_conv_3x3", 0.25)] * 14)
    reduce = [[1 / 8] * 8 for _ in range(14)]
    from nas_core.ops import PRIMITIVES
    doc = {"format": "nas_core.alphas/1", "method": "darts", "primitives": list(PRIMITIVES),
           "steps": 4, "multiplier": 4, "weights": {"normal": wn, "reduce": reduce}}
    (tmp_path / "alphas.json").write_text(json.dumps(doc))
    g = run_genotype(tmp_path / "alphas.json", tmp_path / "g.json", max_skip=2)
    assert g == derive_genotype(wn, reduce, max_skip=2) != derive_genotype(wn, reduce)
    doc["method"] = "random"  # a sampled cell is the baseline as drawn
    (tmp_path / "alphas.json").write_text(json.dumps(doc))
    g = run_genotype(tmp_path / "alphas.json", tmp_path / "g.json", max_skip=2)
    assert g == derive_genotype(wn, reduce)


# -- early stop ---------------------------------------------------------------------------
def _genotype(normal_ops, reduce_ops=("sep_conv_3x3",) * 8):
    return {"normal": [[op, 0] for op in normal_ops], "reduce": [[op, 0] for op in reduce_ops]}


def test_early_stop_rules():
    from nas_core.early_stop import EarlyStop
    off = EarlyStop({"early_stop_skips": None, "early_stop_stable": None,
                     "early_stop_hessian": False})
    assert not off.active and off.update(0, _genotype(["skip_connect"] * 8)) is None

    skips = EarlyStop({"early_stop_skips": 2})
    assert skips.update(0, _genotype(["skip_connect"] + ["sep_conv_3x3"] * 7)) is None
    d = skips.update(1, _genotype(["skip_connect"] * 2 + ["sep_conv_3x3"] * 6))
    assert d["epoch"] == d["keep"] == 1 and "2 skip connections" in d["reason"]
    assert skips.update(2, _genotype(["sep_conv_3x3"] * 8)) is d  # stopped stays stopped

    stable = EarlyStop({"early_stop_stable": 2})
    cells = [_genotype(["sep_conv_3x3"] * 8), _genotype(["dil_conv_3x3"] * 8)]
    assert [stable.update(e, cells[c]) for e, c in enumerate([0, 1, 1])] == [None] * 3
    restored = EarlyStop({"early_stop_stable": 2})
    restored.load(json.loads(json.dumps(stable.state())))  # plain values, as checkpoints
    assert restored.update(3, cells[1])["reason"].endswith("not changed for 2 epochs "
                                                           "(early_stop_stable 2)")

    hessian = EarlyStop({"early_stop_hessian": True})
    eig = []
    for e, v in enumerate([1.0] * 5 + [1.2] * 4 + [2.0]):
        eig.append((e * 3, v))  # measured every 3rd epoch
        d = hessian.update(e * 3, cells[e % 2], eig, measured=True)
        assert (d is None) == (e < 9)
    # means 1.0 (measurements 0..4) and 1.36 (5..9): ratio 0.735 < 0.75; keep measurement 4
    assert d["epoch"] == 27 and d["keep"] == 12 and "grew 1.36x" in d["reason"]


def test_a_stopped_search_ends_early_and_a_resumed_one_stops_alike(tmp_path):
    """early_stop_stable 1 with still alphas (arch_lr 1e-9): the cells do not change, so the
    search ends after its second epoch of four, says why, and records it; killed in its
    second epoch and resumed it stops at the same epoch with the same bytes."""
    from test_stages import _assert_killed, _assert_ok, _cli, _sets
    cfg = {"epochs": 4, "layers": 3, "init_channels": 4, "steps": 2, "multiplier": 2,
           "batch_size": 16, "max_steps_per_epoch": 3, "num_workers": 0,
           "checkpoint_every_steps": 0, "arch_lr": 1e-9, "early_stop_stable": 1}
    ref = tmp_path / "ref"
    result = run_search({"name": "digits"}, cfg, ref, device="cpu")
    history = json.loads((ref / "history.json").read_text())
    assert len(history["epochs"]) == 2
    assert history["early_stop"]["epoch"] == history["early_stop"]["keep"] == 1
    assert json.loads((ref / "alphas.json").read_text())["epochs"] == 2
    assert result["genotype"] == history["epochs"][-1]["genotype"]
    # the same rule replayed on the epochs of the search that did not stop
    from nas_core.early_stop import EarlyStop
    plain = tmp_path / "plain"
    run_search({"name": "digits"}, {**cfg, "early_stop_stable": None}, plain, device="cpu")
    full = json.loads((plain / "history.json").read_text())
    assert len(full["epochs"]) == 4
    decision, genotype = EarlyStop.replay(full, {"early_stop_stable": 1})
    assert decision == history["early_stop"] and genotype == result["genotype"]
    assert EarlyStop.replay(full, {}) == (None, full["epochs"][-1]["genotype"])

    out = tmp_path / "killed"
    args = ["search", "--dataset", "digits", *_sets("search", cfg), "--out", str(out),
            "--device", "cpu"]
    _assert_killed(_cli(args, kill_at=5))  # epoch 1, step 2: after epoch 0's checkpoint
    proc = _cli(args)
    _assert_ok(proc)
    assert "stopped early after epoch 2" in proc.stderr
    for name in ("alphas.json", "history.json", "supernet.pt"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
