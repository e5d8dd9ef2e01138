"""Genotype type, canonical JSON, derivation rule, legacy parser and published genotypes."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_core.genotypes import (
    Genotype,
    GenotypeError,
    derive_genotype,
    get_genotype,
    list_genotypes,
    parse_legacy_genotype,
)
from nas_core.legacy import read_alpha_npy, read_search_log
from nas_core.ops import PRIMITIVES

GRAPHENE_SEARCH = "logs/search-GRAPHENE-20191014-131026"
MNIST_SEARCH = "logs/search-MNIST-20191004-160833/log.txt"

SMALL = dict(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 2), ("dil_conv_5x5", 0)],
    normal_concat=[2, 3],
    reduce=[("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 2), ("skip_connect", 1)],
    reduce_concat=range(2, 4),
)


@pytest.fixture(scope="module")
def published(darts_fixtures: Path) -> dict:
    return json.loads((darts_fixtures / "genotypes_published.json").read_text())


# -- construction and JSON ------------------------------------------------------------------
def test_construction_normalises_to_tuples_and_is_frozen():
    g = Genotype(**SMALL)
    assert g.normal == (("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 2),
                        ("dil_conv_5x5", 0))
    assert g.normal_concat == (2, 3) and g.reduce_concat == (2, 3)
    assert hash(g) == hash(Genotype(**SMALL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.normal = ()  # type: ignore[misc]


def test_json_round_trip_and_canonical_bytes(tmp_path: Path):
    g = Genotype(**SMALL)
    text = g.to_json()
    assert text == (
        '{"normal":[["sep_conv_3x3",0],["skip_connect",1],["max_pool_3x3",2],["dil_conv_5x5",0]],'
        '"normal_concat":[2,3],"reduce":[["avg_pool_3x3",1],["max_pool_3x3",0],'
        '["sep_conv_5x5",2],["skip_connect",1]],"reduce_concat":[2,3]}\n')
    assert Genotype.from_json(text) == g
    assert Genotype.from_dict(g.to_dict()) == g
    # key order of the input does not matter: identical genotypes give identical bytes
    shuffled = json.dumps(dict(reversed(list(g.to_dict().items()))), indent=3)
    assert Genotype.from_json(shuffled).to_json() == text
    p1, p2 = g.save(tmp_path / "a" / "genotype.json"), Genotype(**SMALL).save(tmp_path / "b.json")
    assert p1.read_bytes() == p2.read_bytes() == text.encode()
    assert Genotype.load(p1) == g
    assert sorted(x.name for x in (tmp_path / "a").iterdir()) == ["genotype.json"]  # no temp left


def test_save_replaces_existing_file(tmp_path: Path):
    path = tmp_path / "genotype.json"
    path.write_text("old")
    get_genotype("DARTS_V2").save(path)
    assert Genotype.load(path) == get_genotype("DARTS_V2")


# -- malformed genotypes ----------------------------------------------------------------------
def _with(**changes):
    d = {k: list(v) for k, v in SMALL.items()}
    d.update(changes)
    return d


@pytest.mark.parametrize("changes, expected", [
    (dict(normal=[("sep_conv_3x3", 0), ("conv_9x9", 1)]), r"normal\[1\]: unknown operation 'conv_9x9'"),
    (dict(reduce=[("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 3),
                  ("skip_connect", 0)]), r"reduce\[2\]: input 3 out of range for node 1 \(allowed 0..2\)"),
    (dict(normal=[("sep_conv_3x3", 0), ("skip_connect", -1)]), r"normal\[1\]: input -1 out of range"),
    (dict(normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 2)]),
     r"normal: 3 entries; every node needs exactly two inputs"),
    (dict(normal=[]), r"normal: empty"),
    (dict(normal=[("sep_conv_3x3", 0), ("skip_connect", 1.0)]), r"normal\[1\]: input index must be an integer"),
    (dict(normal=[("sep_conv_3x3", 0), ("skip_connect", True)]), r"normal\[1\]: input index must be an integer"),
    (dict(normal=[("sep_conv_3x3", 0), ("skip_connect", 1, 2)]), r"normal\[1\]: expected an \(operation, input\) pair"),
    (dict(normal_concat=[2, 4]), r"normal_concat\[1\]: state 4 out of range \(allowed 0..3\)"),
    (dict(reduce_concat=[2, 2]), r"reduce_concat\[1\]: state 2 listed twice"),
    (dict(reduce_concat=[]), r"reduce_concat: empty"),
])
def test_malformed_genotype_raises_naming_fault(changes, expected):
    with pytest.raises(GenotypeError, match=expected):
        Genotype(**_with(**changes))
    with pytest.raises(GenotypeError, match="^genotype.json: " + expected):
        Genotype.from_dict(json.loads(json.dumps(_with(**changes))), source="genotype.json")


def test_genotype_error_is_value_error_and_one_line():
    with pytest.raises(ValueError) as info:
        Genotype(**_with(normal=[("bogus", 0), ("skip_connect", 1)]))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("{not json", r"^g.json: invalid JSON: "),
    ("[1, 2]", r"^g.json: genotype must be a JSON object, got list"),
    ('{"normal": [], "reduce": [], "reduce_concat": []}', r"lacks key 'normal_concat'"),
])
def test_bad_json_raises(text, expected):
    with pytest.raises(GenotypeError, match=expected):
        Genotype.from_json(text, source="g.json")


def test_unknown_key_and_load_errors_name_the_file(tmp_path: Path):
    d = Genotype(**SMALL).to_dict()
    d["extra"] = 1
    with pytest.raises(GenotypeError, match=r"unknown key 'extra'"):
        Genotype.from_dict(d)
    bad = tmp_path / "broken.json"
    bad.write_text('{"normal": [["sep_conv_3x3", 0], ["nope", 1]], "normal_concat": [2],'
                   '"reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}')
    with pytest.raises(GenotypeError, match=rf"^{re.escape(str(bad))}: normal\[1\]: unknown operation 'nope'"):
        Genotype.load(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Genotype.load(tmp_path / "missing.json")


# -- legacy text ------------------------------------------------------------------------------
LEGACY_MNIST = (
    "Genotype(normal=[('max_pool_3x3', 0), ('skip_connect', 1), ('max_pool_3x3', 0), "
    "('sep_conv_3x3', 2), ('sep_conv_3x3', 3), ('sep_conv_3x3', 2), ('sep_conv_5x5', 4), "
    "('sep_conv_3x3', 3)], normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), "
    "('avg_pool_3x3', 1), ('avg_pool_3x3', 0), ('avg_pool_3x3', 1), ('avg_pool_3x3', 0), "
    "('dil_conv_5x5', 3), ('avg_pool_3x3', 0), ('dil_conv_5x5', 4)], reduce_concat=[2, 3, 4, 5])")


def test_parse_legacy_genotype():
    g = parse_legacy_genotype(LEGACY_MNIST)
    assert g == get_genotype("MNIST")
    assert g.normal_concat == (2, 3, 4, 5)
    for name in list_genotypes():
        assert parse_legacy_genotype(get_genotype(name).to_legacy()) == get_genotype(name)
    # positional arguments (namedtuple style) work as well
    assert parse_legacy_genotype(
        "Genotype([('skip_connect', 0), ('skip_connect', 1)], range(2, 3), "
        "[('max_pool_3x3', 0), ('max_pool_3x3', 1)], (2,))").reduce_concat == (2,)


@pytest.mark.parametrize("text, expected", [
    ("__import__('os').system('x')", r"call not allowed \(only Genotype and range\): Call `__import__\('os'\).system\('x'\)`"),
    ("Genotype(normal=__import__('os').system('x'), normal_concat=[2], reduce=[], reduce_concat=[2])",
     r"call not allowed \(only Genotype and range\): Call `__import__\('os'\).system\('x'\)` at column 17"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=list(range(2, 3)), "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])",
     r"call not allowed .*: Call `list\(range\(2, 3\)\)`"),
    ("Genotype(normal=[('skip_connect', x)], normal_concat=[2], reduce=[], reduce_concat=[2])",
     r"construct not allowed .*: Name `x`"),
    ("Genotype(normal=[('skip_connect', 1+1)], normal_concat=[2], reduce=[], reduce_concat=[2])",
     r"construct not allowed .*: BinOp `1 \+ 1`"),
    ("genotypes.Genotype(normal=[], normal_concat=[], reduce=[], reduce_concat=[])",
     r"call not allowed .*: Call `genotypes.Genotype"),
    ("[('skip_connect', 0)]", r"expected a Genotype\(...\) call, got List"),
    ("Genotype(normal=[(", r"not a Python expression"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=range('a'), "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", r"range\(\) arguments must be integers"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2], extra=1)", r"unknown field 'extra'"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)])", r"missing field 'reduce_concat'"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 5)], normal_concat=[2], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])",
     r"^legacy genotype: normal\[1\]: input 5 out of range"),
])
def test_parse_legacy_genotype_rejects(text, expected):
    with pytest.raises(GenotypeError, match=expected):
        parse_legacy_genotype(text)


# -- published genotypes ----------------------------------------------------------------------
def test_published_genotypes_equal_fixture(published: dict):
    # CHEST_XRAY is not in the fixture: the fork's name of the 2019-12-04 cell (below)
    assert [n for n in list_genotypes() if n != "CHEST_XRAY"] == list(published)
    assert list_genotypes().index("CHEST_XRAY") == list(published).index("CHEST_XRAY_V1")
    for name, d in published.items():
        assert get_genotype(name) == Genotype.from_dict(d), name
        assert get_genotype(name).to_dict() == d, name


# genotype.arch of the fork's eval-chest-xray-Run01-20191204-104236 (trained as 'CHEST_XRAY')
CHEST_XRAY_RUN01 = (
    "Genotype(normal=[('max_pool_3x3', 0), ('dil_conv_5x5', 1), ('max_pool_3x3', 0), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_5x5', 2), ('skip_connect', 2), "
    "('max_pool_3x3', 0)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('dil_conv_5x5', 2), ('dil_conv_5x5', 0), ('dil_conv_5x5', 3), "
    "('sep_conv_5x5', 2), ('sep_conv_5x5', 2), ('dil_conv_5x5', 3)], reduce_concat=range(2, 6))")


def test_chest_xray_is_the_2019_12_04_cell_not_the_placeholder(published: dict):
    """The fork named the 2019-12-04 search result CHEST_XRAY (runs 1-3 were trained with it)
    and renamed it CHEST_XRAY_V1 on 2019-12-06; its earlier CHEST_XRAY = DARTS_V2 was a
    placeholder."""
    chest = get_genotype("CHEST_XRAY")
    assert chest == parse_legacy_genotype(CHEST_XRAY_RUN01)
    assert chest == Genotype.from_dict(published["CHEST_XRAY_V1"]) == get_genotype("chest-xray")
    assert chest != get_genotype("DARTS_V2")
    assert get_genotype("CHEST_XRAY_20191206_UNNAMED") != chest


# A genotype of the fork's 2019 random search (saved scripts/genotypes.py): avg_pool_2x2 on
# normal-cell edges, max_pool_2x2 in the reduction cell.
WITH_2X2_POOLS = (
    "Genotype(normal=[('dil_conv_3x3', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 0), "
    "('avg_pool_2x2', 1), ('sep_conv_3x3', 1), ('dil_conv_3x3', 3), ('dil_conv_5x5', 1), "
    "('avg_pool_2x2', 3)], normal_concat=range(2, 6), reduce=[('skip_connect', 1), "
    "('max_pool_2x2', 0), ('avg_pool_3x3', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 3), "
    "('sep_conv_3x3', 2), ('max_pool_3x3', 1), ('sep_conv_3x3', 4)], reduce_concat=range(2, 6))")


def test_avg_pool_2x2_genotypes_build_and_run():
    from nas_core.model_eval import EvalNetwork
    from nas_core.ops import create_op, has_op

    assert has_op("avg_pool_2x2")
    g = parse_legacy_genotype(WITH_2X2_POOLS)
    net = EvalNetwork(g, 3, 8, 5, 3)
    out, _ = net(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    # the fork's definition: ZeroPad2d((0, 1, 0, 1)) then AvgPool2d(2, stride), zeros counted
    x = torch.randn(2, 4, 8, 8)
    for stride in (1, 2):
        ref = torch.nn.Sequential(torch.nn.ZeroPad2d((0, 1, 0, 1)),
                                  torch.nn.AvgPool2d(2, stride=stride, padding=0,
                                                     count_include_pad=False))
        got = create_op("avg_pool_2x2", 4, stride)(x)
        assert got.shape == (2, 4, 8 // stride, 8 // stride)
        torch.testing.assert_close(got, ref(x))
    assert float(create_op("avg_pool_2x2", 1, 1)(torch.ones(1, 1, 2, 2))[0, 0, 1, 1]) == 0.25


def test_get_genotype_aliases_and_unknown():
    assert get_genotype("darts_v2") is get_genotype("DARTS_V2") is get_genotype("DARTS")
    assert get_genotype("cifar-10") == get_genotype("DARTS_V2")
    assert get_genotype("fashion-mnist") is get_genotype("FASHION_MNIST")
    assert get_genotype("nasnet") is get_genotype("NASNet")
    with pytest.raises(GenotypeError, match=r"unknown genotype 'digits'; known: NASNet, AmoebaNet, "
                                            r"DARTS_V1, DARTS_V2, CIFAR_10, MNIST"):
        get_genotype("digits")


# -- derivation rule ---------------------------------------------------------------------------
def test_derive_reproduces_graphene_epoch_49(darts_fixtures: Path):
    normal, reduce = read_alpha_npy(darts_fixtures / GRAPHENE_SEARCH, 49)
    log = read_search_log(darts_fixtures / GRAPHENE_SEARCH / "log.txt")
    expected = log.genotypes[49]
    assert derive_genotype(normal, reduce) == expected
    assert derive_genotype(torch.from_numpy(normal), torch.from_numpy(reduce)) == expected


def test_last_mnist_search_genotype_is_published_mnist(darts_fixtures: Path):
    log = read_search_log(darts_fixtures / MNIST_SEARCH)
    assert max(log.genotypes) == 49
    assert log.final_genotype == get_genotype("MNIST")


def _weights(best: dict[int, tuple[int, float]], steps: int = 4) -> np.ndarray:
    """Edges x 8 weights: 0.01 everywhere, ``none`` 0.9, and best[edge] = (op, weight)."""
    n_edges = steps * (steps + 3) // 2
    w = np.full((n_edges, len(PRIMITIVES)), 0.01)
    w[:, 0] = 0.9  # none is always the largest, and always ignored
    for edge, (op, value) in best.items():
        w[edge, op] = value
    return w


def test_derive_ties_go_to_lower_input_and_first_op():
    # node 0: edges 0,1 ; node 1: edges 2,3,4 ; node 2: edges 5..8 ; node 3: edges 9..13
    w = _weights({0: (4, 0.5), 1: (5, 0.5),              # equal: input 0 first
                  2: (1, 0.3), 3: (2, 0.5), 4: (3, 0.5),   # tie between inputs 1 and 2 -> 1, 2
                  8: (7, 0.6), 5: (6, 0.2)})
    w[5, 4] = 0.2                                          # equal ops on edge 5: first (op 4) wins
    w[6, 1] = w[7, 1] = 0.2                                # node 2: inputs 3 then 0 (tie 0/1/2 -> 0)
    g = derive_genotype(w, w)
    assert g.normal == (
        ("sep_conv_3x3", 0), ("sep_conv_5x5", 1),
        ("avg_pool_3x3", 1), ("skip_connect", 2),
        ("dil_conv_5x5", 3), ("sep_conv_3x3", 0),
        ("max_pool_3x3", 0), ("max_pool_3x3", 1),  # all-equal rows: inputs 0, 1; first op max_pool
    )
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    assert g.reduce == g.normal


def test_derive_ranks_edges_by_best_non_none_weight():
    w = _weights({9: (4, 0.2), 10: (5, 0.4), 11: (6, 0.3), 12: (7, 0.25), 13: (2, 0.39)})
    g = derive_genotype(w, w)
    assert g.normal[6:] == (("sep_conv_5x5", 1), ("avg_pool_3x3", 4))  # strongest first


def test_derive_options_and_errors():
    w = _weights({})
    g = derive_genotype(w[:5], w[:5], steps=2, multiplier=1)
    assert len(g.normal) == 4 and g.normal_concat == (3,)
    # 'none' excluded by name, not by column: a search space without it uses all columns
    prims = ("skip_connect", "sep_conv_3x3")
    w2 = np.zeros((2, 2))
    w2[0] = [0.4, 0.6]
    g2 = derive_genotype(w2, w2, primitives=prims, steps=1, multiplier=1)
    assert g2.normal == (("sep_conv_3x3", 0), ("skip_connect", 1))
    with pytest.raises(GenotypeError, match=r"weights_normal: expected shape \(14, 8\).*got \(14, 7\)"):
        derive_genotype(w[:, :7], w)
    with pytest.raises(GenotypeError, match=r"weights_reduce: contains NaN"):
        derive_genotype(w, np.full_like(w, np.nan))
    with pytest.raises(GenotypeError, match=r"multiplier must be in 1..4"):
        derive_genotype(w, w, multiplier=5)
