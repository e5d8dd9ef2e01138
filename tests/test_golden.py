"""Golden values per stage: what keeps the results versions (nas_core.versions) honest.

Each test runs one stage tiny and deterministic on the CPU (digits, fixed seeds, a few steps,
one thread) and compares what it computed with the record in ``tests/data/golden.json``,
within a tolerance that holds across machines (relative 1e-4: float32 sums in another order
stay far inside it; a change of the math, a BatchNorm's eps say, does not).

A failure means the stage now computes other results than the version the record was made
with.  If that is intended, bump the version the message names in ``nas_core/versions.py``
and rewrite the record in the same commit::

    NAS_CORE_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py

A record made at another version than nas_core's (a bump without a new record) fails too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from nas_core import versions

GOLDEN = Path(__file__).resolve().parent / "data" / "golden.json"
UPDATE = os.environ.get("NAS_CORE_UPDATE_GOLDEN") == "1"
RTOL, ATOL = 1e-4, 1e-6
DIGITS = {"name": "digits"}
#: which integer of nas_core/versions.py a stage's record answers for
CONSTANT = {"download": "DATA", "search": "SEARCH", "genotype": "GENOTYPE",
            "select": "SELECT", "train": "TRAIN", "test": "TEST", "model_card": "MODEL_CARD"}

SEARCH = dict(epochs=1, batch_size=16, layers=2, init_channels=4, steps=2, multiplier=2,
              max_steps_per_epoch=3, num_workers=0, seed=2)
TRAIN = dict(epochs=1, batch_size=16, layers=2, init_channels=4, max_steps_per_epoch=3,
             num_workers=0, drop_path_prob=0.2, cutout=2, valid_fraction=0.2, seed=0)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("NAS_CORE_PROGRESS", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- comparing with the record ------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _diffs(expected: Any, actual: Any, path: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{path}.{k}: missing" for k in expected if k not in actual]
        out += [f"{path}.{k}: new" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                out += _diffs(expected[k], actual[k], f"{path}.{k}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: {len(expected)} items recorded, {len(actual)} now"]
        return [d for i, (e, a) in enumerate(zip(expected, actual))
                for d in _diffs(e, a, f"{path}[{i}]")]
    if (isinstance(expected, (int, float)) and isinstance(actual, (int, float))
            and not isinstance(expected, bool) and not isinstance(actual, bool)):
        if math.isclose(expected, actual, rel_tol=RTOL, abs_tol=ATOL):
            return []
        return [f"{path}: recorded {expected!r}, now {actual!r}"]
    return [] if expected == actual else [f"{path}: recorded {expected!r}, now {actual!r}"]


def check_golden(stage: str, rule: str, values: dict) -> None:
    """``values`` against the record of ``stage``; with NAS_CORE_UPDATE_GOLDEN=1, rewrite it."""
    values = _plain(values)
    now = versions.of(rule)
    doc = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if UPDATE:
        doc[stage] = {"results_version": now, "values": values}
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return
    name = CONSTANT[stage]
    record = doc.get(stage)
    redo = "NAS_CORE_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py"
    assert record is not None, f"no golden record of {stage} in {GOLDEN}: run {redo}"
    if record["results_version"] != now:
        pytest.fail(f"the golden record of {stage} was made at "
                    f"{versions.describe(record['results_version'])}, nas_core computes "
                    f"{versions.describe(now)}: rewrite the record ({redo}) in the commit "
                    f"that bumps the version", pytrace=False)
    diffs = _diffs(record["values"], values)
    if diffs:
        current = getattr(versions, name)
        also = "" if stage == "download" else " (if the download record fails too, bump DATA)"
        pytest.fail(f"{stage} computes other results than {stage} v{current} did "
                    f"({len(diffs)} values differ; {'; '.join(diffs[:3])}). If that is "
                    f"intended, bump nas_core.versions.{name} to {current + 1}{also} and "
                    f"rewrite the record in the same commit: {redo}", pytrace=False)


def _sum(tensors) -> dict:
    """A checksum of a state dict: sum and sum of absolute values over its float tensors."""
    floats = [t.double() for t in tensors.values() if t.is_floating_point()]
    return {"sum": float(sum(t.sum() for t in floats)),
            "abs": float(sum(t.abs().sum() for t in floats))}


def _metrics(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


# -- the stages ------------------------------------------------------------------------------------


def test_data_golden(tmp_path):
    from nas_core.data import download_data, load_data

    download_data(DIGITS, tmp_path, manifest=tmp_path / "download.json")
    bundle = load_data(DIGITS, tmp_path)
    first = [bundle.train[i] for i in range(4)] + [bundle.test[i] for i in range(2)]
    check_golden("download", "download", {
        "sizes": [len(bundle.train), len(bundle.train_eval), len(bundle.test)],
        "shape": [bundle.in_channels, *bundle.input_size], "num_outputs": bundle.num_outputs,
        "samples": [{"sum": float(x.double().sum()), "abs": float(x.double().abs().sum()),
                     "y": int(y)} for x, y in first],
        "normalize": bundle.source.get("normalize"),
    })


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    from nas_core.stages import run_search

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("golden_search")
    run_search(DIGITS, SEARCH, out, data_root=out / "resources", device="cpu")
    return out


def _probe(net: torch.nn.Module, in_channels: int = 1, seed: int = 11) -> dict:
    """One training-mode forward and backward of ``net`` on a seeded batch: the loss and the
    gradients (the most sensitive record of the math: an op, an initialisation, an eps)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, in_channels, 8, 8, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    net.train()
    out = net(x)
    out = out[0] if isinstance(out, tuple) else out
    loss = torch.nn.functional.cross_entropy(out, y)
    loss.backward()
    grads = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
    probe = {"loss": float(loss.detach()), "logits": _sum({"out": out.detach()}),
             "grads": _sum({k: v.abs() for k, v in grads.items()})}
    for name in ("alphas_normal", "alphas_reduce"):
        if name in grads:
            probe[name] = [round(float(v), 10) for v in grads[name].flatten()]
    return probe


def test_search_golden(searched):
    from nas_core.model_search import SearchNetwork

    history = json.loads((searched / "history.json").read_text())
    alphas = json.loads((searched / "alphas.json").read_text())
    supernet = torch.load(searched / "supernet.pt", weights_only=True)
    torch.manual_seed(3)
    probe = _probe(SearchNetwork(1, 4, 10, 2, steps=2, multiplier=2))
    check_golden("search", "search", {
        "probe": probe,
        "epochs": [{"lr": e["lr"], "train": _metrics(e["train"]), "valid": _metrics(e["valid"]),
                    "genotype": e["genotype"]} for e in history["epochs"]],
        "alphas": {cell: alphas[cell] for cell in ("normal", "reduce") if cell in alphas},
        "supernet": _sum(supernet),
    })


def test_the_search_record_catches_a_changed_batchnorm_eps():
    """A change of the math as small as the eps of the supernet's BatchNorms (1e-5 -> 1e-3)
    is far outside the tolerance: the record is fine enough to keep SEARCH honest."""
    from nas_core.model_search import SearchNetwork

    if UPDATE or not GOLDEN.is_file():
        pytest.skip("no record to compare with")
    record = json.loads(GOLDEN.read_text())["search"]["values"]["probe"]
    torch.manual_seed(3)
    net = SearchNetwork(1, 4, 10, 2, steps=2, multiplier=2)
    assert not _diffs(record, _probe(net))
    torch.manual_seed(3)
    net = SearchNetwork(1, 4, 10, 2, steps=2, multiplier=2)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 1e-3
    net.replan()
    assert len(_diffs(record, _probe(net))) > 10


def test_genotype_golden(tmp_path):
    from nas_core.genotypes import derive_genotype
    from nas_core.stages import run_genotype

    g = torch.Generator().manual_seed(7)
    weights = [torch.softmax(torch.randn(14, 8, generator=g), dim=-1) for _ in range(2)]
    legacy = tmp_path / "genotype.txt"
    legacy.write_text("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), "
                      "('max_pool_3x3', 0), ('dil_conv_5x5', 2)], normal_concat=[2, 3], "
                      "reduce=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
                      "('sep_conv_5x5', 0)], reduce_concat=[2, 3])\n")
    check_golden("genotype", "genotype", {
        "derived": derive_genotype(*weights).to_dict(),
        "derived_2x2": derive_genotype(*(w[:5] for w in weights), steps=2,
                                       multiplier=2).to_dict(),
        "legacy": run_genotype(legacy, tmp_path / "g.json").to_dict(),
        "published": run_genotype("DARTS_V2", tmp_path / "p.json").to_dict(),
    })


def test_select_golden(tmp_path):
    from nas_core.genotypes import get_genotype
    from nas_core.stages.select import run_select

    candidates = []
    for seed, name, curve in ((1, "DARTS_V1", [40.0, 61.5, 60.0]), (2, "DARTS_V2", [50.0, 61.5]),
                              (3, "MNIST", [30.0, 55.0, 58.25])):
        get_genotype(name).save(tmp_path / f"g{seed}.json")
        best = max(range(len(curve)), key=lambda i: (curve[i], -i))
        (tmp_path / f"h{seed}.json").write_text(json.dumps({
            "stage": "train", "metric": "top1",
            "selection": {"on": "valid", "metric": "top1", "best_epoch": best,
                          "best_value": curve[best]},
            "epochs": [{"epoch": i, "valid": {"loss": 2.0 - v / 50, "top1": v}}
                       for i, v in enumerate(curve)]}))
        candidates.append({"seed": seed, "genotype": tmp_path / f"g{seed}.json",
                           "history": tmp_path / f"h{seed}.json"})
    doc = run_select(candidates, tmp_path / "selection.json", tmp_path / "genotype.json",
                     cfg={"epochs": 3, "seed": 0})
    check_golden("select", "select", {
        "rule": doc["rule"], "winner": doc["winner"],
        "candidates": [{k: v for k, v in c.items() if k not in ("files", "select_seconds",
                                                                 "search_seconds")}
                       for c in doc["candidates"]],
        "genotype": json.loads((tmp_path / "genotype.json").read_text()),
    })


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A results folder: DARTS_V2 trained tiny (train/), its genotype.json."""
    from nas_core.genotypes import get_genotype
    from nas_core.stages import run_train

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("golden_train")
    get_genotype("DARTS_V2").save(folder / "genotype.json")
    run_train(DIGITS, TRAIN, folder / "genotype.json", folder / "train",
              data_root=folder / "resources", device="cpu")
    return folder


def test_train_golden(trained):
    from nas_core.genotypes import get_genotype
    from nas_core.model_eval import EvalNetwork

    history = json.loads((trained / "train" / "history.json").read_text())
    model = torch.load(trained / "train" / "model.pt", weights_only=True)
    torch.manual_seed(4)
    probe = _probe(EvalNetwork(get_genotype("DARTS_V2"), 1, 4, 10, 3, auxiliary=True,
                               drop_path_prob=0.0))
    check_golden("train", "train", {
        "probe": probe,
        "epochs": [{"lr": e["lr"], "drop_path_prob": e.get("drop_path_prob"),
                    "train": _metrics(e["train"]), "valid": _metrics(e["valid"])}
                   for e in history["epochs"]],
        "selection": history["selection"], "model": _sum(model),
    })


@pytest.fixture(scope="module")
def tested(tmp_path_factory) -> Path:
    """A results folder whose model is a seeded, untrained network (so that the test record
    answers for the test stage alone, not for training)."""
    from nas_core.config import validate_stage_cfg
    from nas_core.genotypes import get_genotype
    from nas_core.model_eval import EvalNetwork
    from nas_core.stages import run_test

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("golden_test")
    geno = get_genotype("DARTS_V2")
    geno.save(folder / "genotype.json")
    cfg = validate_stage_cfg("train", TRAIN)
    torch.manual_seed(5)
    net = EvalNetwork(geno, 1, cfg["init_channels"], 10, cfg["layers"])
    (folder / "train").mkdir()
    torch.save(net.state_dict(), folder / "train" / "model.pt")
    run_test(DIGITS, TRAIN, {"num_workers": 0}, folder / "genotype.json",
             folder / "train" / "model.pt", folder / "test.json",
             data_root=folder / "resources", device="cpu")
    return folder


def test_test_golden(tested):
    result = json.loads((tested / "test.json").read_text())
    rows = (tested / "test_predictions.csv").read_text().splitlines()
    check_golden("test", "test", {
        "metrics": result["metrics"], "num_samples": result["num_samples"],
        "num_parameters": result["num_parameters"],
        "predictions": [row.split(",")[:3] for row in rows[:12]],
    })


def test_model_card_golden(tested):
    from nas_core.stages.model_card import write_model_card

    card = write_model_card(DIGITS, TRAIN, tested, dataset="digits", genotype_source="DARTS_V2",
                            data_root=tested / "resources", device="cpu")
    keep = ("format", "dataset", "data", "task", "network", "genotype", "genotype_source",
            "weights", "preprocessing", "class_names", "target_stats", "netcdf", "test")
    check_golden("model_card", "model_card", {k: card.get(k) for k in keep})
