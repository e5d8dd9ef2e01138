"""One path through the supernet: the forward of random search with weight sharing.

Li & Talwalkar ("Random Search and Reproducibility for Neural Architecture Search", UAI 2019)
train the DARTS supernet one sampled architecture at a time: each step draws a cell (two
inputs and one operation per node, :func:`nas_core.samplers.sample_genotype`) and runs only
that path.  :func:`path_forward` is that forward on a
:class:`~nas_core.model_search.SearchNetwork`: node ``i`` of a cell is the sum of its two
chosen edges' chosen operation (``cells.{c}._ops.{edge}._ops.{op}``, the supernet's own
modules), the cell concatenates the last ``multiplier`` nodes, the stem, preprocessing and
head are the supernet's.  No architecture weight enters it, and an operation that is not on
the path is not called: its parameters get no gradient (``grad`` stays None, so SGD leaves
them, momentum and weight decay included, as they are) and its BatchNorm statistics do not
move.  The same genotype's cells are used by every normal (every reduction) cell, as in the
network that is trained afterwards.

Modules are called as modules (plain BatchNorm math, not the supernet's fused plans), so the
path is the evaluation network's computation with the supernet's weights; partial channels
(PC-DARTS) are not part of a single path (``search.method random_ws`` requires
``partial_channels: 1``).
"""

from __future__ import annotations

from typing import Sequence

import torch

from nas_core.genotypes import Genotype
from nas_core.network_parts import pad_to_multiple
from nas_core.samplers import edge_index

__all__ = ["path_forward", "cell_path"]


def cell_path(cell: Sequence[tuple[str, int]], primitives: Sequence[str],
              steps: int) -> list[tuple[tuple[int, int, int], ...]]:
    """Per node, its two ``(edge, op, source)`` triples: the rows of the supernet's edges
    and the columns of their operations."""
    if len(cell) != 2 * steps:
        raise ValueError(f"a cell of {steps} nodes has {2 * steps} edges, got {len(cell)}")
    primitives = list(primitives)
    out = []
    for node in range(steps):
        pair = []
        for op, source in cell[2 * node:2 * node + 2]:
            if not 0 <= source < node + 2:
                raise ValueError(f"node {node}: input {source} is not among 0..{node + 1}")
            pair.append((edge_index(node, source), primitives.index(op), source))
        out.append(tuple(pair))
    return out


def path_forward(model, x: torch.Tensor, genotype: Genotype) -> torch.Tensor:
    """``model`` (a SearchNetwork without partial channels) on ``x`` along ``genotype``'s
    path only (module docstring): N x in_channels x H x W -> N x num_outputs."""
    if model.partial_channels != 1:
        raise ValueError("a single path needs partial_channels=1")
    paths = {False: cell_path(genotype.normal, model.primitives, model.steps),
             True: cell_path(genotype.reduce, model.primitives, model.steps)}
    x = pad_to_multiple(x, model.size_multiple)
    s0 = s1 = model.stem(x)
    for cell in model.cells:
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        for pair in paths[cell.reduction]:
            states.append(sum(cell._ops[edge]._ops[op](states[source])
                              for edge, op, source in pair))
        s0, s1 = s1, torch.cat(states[-cell.multiplier:], dim=1)
    return model.classifier(model.global_pooling(s1).flatten(1))
