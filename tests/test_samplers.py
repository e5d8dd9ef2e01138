"""Architectures drawn at random from the DARTS space (nas_core.samplers)."""

from __future__ import annotations

import torch

from nas_core.genotypes import derive_genotype
from nas_core.ops import PRIMITIVES
from nas_core.samplers import edge_index, genotype_weights, sample_genotype


def _draw(seed: int, steps: int = 4):
    return sample_genotype(torch.Generator().manual_seed(seed), steps=steps, multiplier=steps)


def test_a_seed_gives_one_architecture_and_seeds_differ() -> None:
    assert _draw(3) == _draw(3)
    assert len({_draw(seed) for seed in range(20)}) == 20


def test_cells_are_in_the_space() -> None:
    for seed in range(50):
        g = _draw(seed)
        for cell in (g.normal, g.reduce):
            assert len(cell) == 8
            for node in range(4):
                (op_a, a), (op_b, b) = cell[2 * node:2 * node + 2]
                assert 0 <= a < b < node + 2  # two distinct earlier states, lower first
                assert "none" not in (op_a, op_b) and {op_a, op_b} <= set(PRIMITIVES)


def test_every_input_pair_and_op_is_drawn_about_uniformly() -> None:
    pairs, ops = {}, {}
    for seed in range(600):
        (op_a, a), (op_b, b) = _draw(seed).normal[6:8]  # node 3: 10 pairs of 5 states
        pairs[(a, b)] = pairs.get((a, b), 0) + 1
        for op in (op_a, op_b):
            ops[op] = ops.get(op, 0) + 1
    assert len(pairs) == 10 and min(pairs.values()) > 30  # expected 60 each
    assert len(ops) == 7 and min(ops.values()) > 120      # expected ~171 each


def test_one_hot_weights_derive_the_genotype_back() -> None:
    assert edge_index(0, 1) == 1 and edge_index(1, 0) == 2 and edge_index(3, 4) == 13
    for seed in range(20):
        g = _draw(seed)
        wn, wr = genotype_weights(g, 4)
        assert wn.shape == (14, len(PRIMITIVES)) and wn.sum() == 8
        assert derive_genotype(wn, wr, steps=4, multiplier=4) == g
