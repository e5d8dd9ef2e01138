"""Architectures drawn at random from the DARTS search space: the baselines' sampler.

A cell of the space (``steps`` intermediate nodes) gives each node ``i`` two distinct inputs
among the ``2 + i`` earlier states and an operation on each, any primitive but ``none``; the
cell concatenates the last ``multiplier`` nodes.  :func:`sample_genotype` draws the normal and
the reduction cell uniformly from that space (each node's pair of inputs uniformly among the
pairs, each operation uniformly among the primitives), from a ``torch.Generator``, so a seed
gives the same architecture on every machine.  Li & Talwalkar ("Random Search and
Reproducibility for Neural Architecture Search", UAI 2019) use this distribution both for the
random-sampling baseline and for the paths of random search with weight sharing.

:func:`genotype_weights` writes a genotype as one-hot architecture weights (edges x ops), the
form ``alphas.json`` stores: ``derive_genotype`` of them gives the genotype back (within a node
the lower input comes first, the order the derivation keeps for equal weights).
"""

from __future__ import annotations

from typing import Sequence

import torch

from nas_core.genotypes import Genotype
from nas_core.ops import PRIMITIVES

__all__ = ["sample_cell", "sample_genotype", "genotype_weights", "edge_index"]


def edge_index(node: int, source: int) -> int:
    """The row of edge ``source -> node`` (node 0-based among the intermediate nodes) in the
    edges x ops matrices: the edges of node ``i`` follow those of nodes ``0..i-1``."""
    return node * (node + 3) // 2 + source


def sample_cell(generator: torch.Generator, steps: int,
                primitives: Sequence[str] = PRIMITIVES) -> tuple[tuple[str, int], ...]:
    """One cell: for each node two distinct inputs (lower first) with an operation each."""
    ops = [p for p in primitives if p != "none"]
    cell = []
    for node in range(steps):
        inputs = sorted(torch.randperm(node + 2, generator=generator)[:2].tolist())
        for source in inputs:
            cell.append((ops[int(torch.randint(len(ops), (1,), generator=generator))], source))
    return tuple(cell)


def sample_genotype(generator: torch.Generator, steps: int = 4, multiplier: int = 4,
                    primitives: Sequence[str] = PRIMITIVES) -> Genotype:
    """A normal and a reduction cell drawn uniformly from the space (module docstring)."""
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    normal = sample_cell(generator, steps, primitives)
    reduce = sample_cell(generator, steps, primitives)
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


def genotype_weights(genotype: Genotype, steps: int,
                     primitives: Sequence[str] = PRIMITIVES) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normal, reduce)``: one-hot weights (edges x ops, float32) of the genotype's edges."""
    primitives = list(primitives)
    n_edges = steps * (steps + 3) // 2

    def one_hot(cell: Sequence[tuple[str, int]]) -> torch.Tensor:
        w = torch.zeros(n_edges, len(primitives))
        for k, (op, source) in enumerate(cell):
            w[edge_index(k // 2, source), primitives.index(op)] = 1.0
        return w

    return one_hot(genotype.normal), one_hot(genotype.reduce)
