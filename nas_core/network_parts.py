"""Pieces shared by the search network (``model_search``) and the evaluation network
(``model_eval``).

Both networks start with the same stem, put their reduction cells at the same depths, and
zero-pad their inputs to a multiple of ``2 ** number of reductions``; keeping those pieces here
lets each network module import them without importing the other.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["pad_to_multiple", "reduction_layers", "make_stem"]


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
