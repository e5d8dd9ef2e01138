"""Activation recomputation (gradient checkpointing) of one module call, with the same results.

:func:`checkpointed` runs ``module(*args)`` under ``torch.utils.checkpoint.checkpoint``
(non-reentrant): the forward keeps only the call's inputs, and the backward runs the module
again to get the tensors it needs.  Memory goes down by the activations kept inside the call;
time goes up by one extra forward of it.

What the recomputation leaves as it was:

* the module's buffers: BatchNorm running statistics and ``num_batches_tracked`` are updated
  once, by the forward; the recomputation runs inside :class:`RestoredBuffers`, which copies
  every buffer back to its value before the recomputation, whatever kernel updated it (the
  supernet's lean and shared BatchNorms update them in their own kernels);
* random numbers: the recomputation replays the forward's CPU (and device) RNG state, so
  drop-path masks are the same, and restores the state it found, so the global RNG state after
  a step equals that of a step without recomputation (``preserve_rng_state``);
* autocast: the forward's autocast state is re-entered (``torch.utils.checkpoint``).

The non-reentrant variant works with ``torch.autograd.grad(loss, inputs)`` and
``loss.backward(inputs=...)`` alike and needs no double backward.  The module's parameters
must not change between the forward and the backward (true of every step here: each forward
is differentiated before the weights move).

:func:`recompute_plan` chooses which cells of a stack to recompute (the networks'
``recompute_cells``): the first ones, up to where the rest would not raise the peak.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

__all__ = ["RestoredBuffers", "RecomputedCells", "checkpointed", "recompute_active",
           "recompute_plan", "cell_indices"]


class RestoredBuffers:
    """Context manager: on exit, every buffer of ``module`` gets back the value it had on
    entry (in place, so the tensors stay the same objects).  Reusable; a snapshot per entry."""

    __slots__ = ("module", "_buffers", "_copies")

    def __init__(self, module: nn.Module):
        self.module = module
        self._buffers: list[torch.Tensor] = []
        self._copies: list[torch.Tensor] = []

    def __enter__(self) -> "RestoredBuffers":
        self._buffers = list(self.module.buffers())
        with torch.no_grad():
            self._copies = [b.clone() for b in self._buffers]
        return self

    def __exit__(self, *exc: object) -> None:
        bufs, copies = self._buffers, self._copies
        self._buffers, self._copies = [], []
        if bufs:
            with torch.no_grad():
                torch._foreach_copy_(bufs, copies)


def recompute_active(module: nn.Module) -> bool:
    """Whether a forward of ``module`` now would be recomputed (when switched on): training
    mode with gradients enabled; eval mode and ``no_grad`` / ``inference_mode`` run plainly."""
    return module.training and torch.is_grad_enabled()


def checkpointed(module: nn.Module, *args: Any, preserve_rng_state: bool = True) -> Any:
    """``module(*args)``, its activations recomputed in the backward pass.

    Same values and gradients as ``module(*args)``; buffers and the RNG state as after a
    plain call (see the module docstring).  Non-tensor arguments (floats, None) are passed
    through.  Call it only where :func:`recompute_active` holds; otherwise call the module.
    """
    return checkpoint(module, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state,
                      context_fn=lambda: (contextlib.nullcontext(), RestoredBuffers(module)))


def recompute_plan(sizes: Sequence[float]) -> tuple[int, ...]:
    """The cells to recompute, from an estimate of the activation size of each cell of a stack
    (any unit; e.g. channels x pixels of its nodes): the first ``k`` cells, with the smallest
    ``k`` for which the cells after them together are no larger than the largest of them.

    The peak of the backward pass is the largest recomputed cell's activations (the cells run
    in order, the deepest are differentiated first): the trailing cells left out keep their
    activations only until their own backward, which ends before the first cells are
    recomputed, so leaving them out saves their recomputation and does not raise the peak.
    """
    sizes = [float(s) for s in sizes]
    for k in range(1, len(sizes) + 1):
        if sum(sizes[k:]) <= max(sizes[:k]):
            return tuple(range(k))
    return ()


def cell_indices(cells: Iterable[int], count: int) -> tuple[int, ...]:
    """``cells`` as a sorted tuple of distinct indices into a stack of ``count`` cells
    (ValueError naming the first index out of range)."""
    out = sorted({operator.index(i) for i in cells})
    for i in out:
        if not 0 <= i < count:
            raise ValueError(f"recompute_cells: cell index {i} out of range 0..{count - 1}")
    return tuple(out)


class RecomputedCells:
    """Mixin of the networks (a ``cells`` stack): which cells run under recomputation."""

    _recompute_cells: tuple[int, ...] = ()
    cells: nn.ModuleList

    @property
    def recompute(self) -> bool:
        """Whether cells' activations are recomputed in the backward pass (constructor, or
        :attr:`recompute_cells` set; active in training mode with gradients on)."""
        return bool(self._recompute_cells)

    @property
    def recompute_cells(self) -> tuple[int, ...]:
        """Indices of the cells run under recomputation; () without ``recompute``.  By default
        (:func:`recompute_plan` on channels x pixels of each cell) the first cells, leaving out
        the trailing ones whose activations together are no larger than the largest recomputed
        cell's: leaving those out saves their recomputation without raising the peak.
        Assignable: any cell indices, e.g. ``range(len(net.cells))`` for all."""
        return self._recompute_cells

    @recompute_cells.setter
    def recompute_cells(self, cells: Iterable[int]) -> None:
        self._recompute_cells = cell_indices(cells, len(self.cells))
