"""Pieces shared by the search network (``model_search``) and the evaluation network
(``model_eval``).

Both networks start with the same stem, chain their cells alike (each reads the outputs of
the two before it; channels double at the reduction cells, which sit at the same depths), and
zero-pad their inputs to a multiple of ``2 ** number of reductions``; keeping those pieces here
lets each network module import them without importing the other.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["pad_to_multiple", "reduction_layers", "make_stem", "CellStack", "build_cells"]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last two dims of ``x`` (N, C, H, W) up to multiples of ``multiple``.

    The padding is split evenly, the odd pixel going to the bottom / right (30x80 -> 32x80 puts
    one zero row on top and one at the bottom).  Returns ``x`` itself when nothing is needed.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells of a ``layers``-cell network: layers//3 and 2*layers//3
    (once each).  Inputs are zero-padded to multiples of ``2 ** len(...)``."""
    return tuple(sorted({layers // 3, 2 * layers // 3}))


def make_stem(in_channels: int, channels: int) -> nn.Sequential:
    """The DARTS stem: 3x3 convolution to ``channels`` and BatchNorm (``stem.0``, ``stem.1``)."""
    return nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(channels))


class CellStack(NamedTuple):
    """What :func:`build_cells` builds: the stem, the cells, and per cell its output channels
    and its activation size (channels x pixels of a node, relative to the input's; for
    :func:`nas_core.recompute.recompute_plan`)."""

    stem: nn.Sequential
    cells: nn.ModuleList
    out_channels: tuple[int, ...]
    sizes: tuple[float, ...]


def build_cells(in_channels: int, channels: int, layers: int, stem_multiplier: int,
                make_cell: Callable[[int, int, int, bool, bool], nn.Module]) -> CellStack:
    """The stem (``stem_multiplier * channels`` outputs) and the chain of ``layers`` cells of
    both networks, built in this order (the order of their random initialisation).

    ``make_cell(c_prev_prev, c_prev, c, reduction, reduction_prev)`` builds cell ``i`` on the
    outputs of the two cells before it (the stem's for the first); ``c`` doubles at each
    reduction cell (:func:`reduction_layers`); a cell's output has ``cell.multiplier * c``
    channels.
    """
    c_curr = stem_multiplier * channels
    stem = make_stem(in_channels, c_curr)
    c_prev_prev, c_prev, c_curr = c_curr, c_curr, channels
    cells = nn.ModuleList()
    out_channels, sizes, scale = [], [], 1.0
    reductions, reduction_prev = reduction_layers(layers), False
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            c_curr *= 2
            scale /= 4
        sizes.append(c_curr * scale)
        cell = make_cell(c_prev_prev, c_prev, c_curr, reduction, reduction_prev)
        cells.append(cell)
        reduction_prev = reduction
        c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
        out_channels.append(c_prev)
    return CellStack(stem, cells, tuple(out_channels), tuple(sizes))
