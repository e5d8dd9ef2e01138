"""The DARTS search network (supernet), with the original module tree and an optional PC-DARTS mode.

Module layout (equal to the original ``model_search.Network`` state dict, key for key):
``stem.{0,1}``, ``cells.{i}.preprocess0/1``, ``cells.{i}._ops.{edge}._ops.{primitive}``
(pooling ops are ``nn.Sequential(pool, BatchNorm2d(affine=False))``), ``global_pooling``,
``classifier``.  The architecture parameters ``alphas_normal`` / ``alphas_reduce`` (and in
partial-channel mode ``betas_normal`` / ``betas_reduce``) are extra keys; being parameters of
the root module they come first in ``state_dict()``.

Math of one edge (``partial_channels == 1``): ``sum_k softmax(alpha)_k * op_k(x)``; the ``none``
operation contributes exactly zero and is skipped (its alpha still gets the correct gradient
through the softmax).  Node ``i`` sums its incoming edges; the cell concatenates the last
``multiplier`` nodes.

Partial-channel mode (PC-DARTS, Xu et al. 2020), ``partial_channels = K > 1``: each mixed op
works on the first ``C/K`` channels; the other channels bypass it (2x2 max-pooled on stride-2
edges), the two parts are concatenated and channel-shuffled with ``K`` groups, and each edge
output is scaled by its edge-normalisation weight: softmax of ``betas`` over the edges entering
the same node.

Speed (same math): each mixed op and cell runs along a plan (:mod:`nas_core.search_paths`,
kernels in :mod:`nas_core.search_kernels`), made at construction.  Two switches are
constructor arguments of :class:`SearchNetwork` (handed down to every cell and mixed op):
``lean_batchnorm`` (an op's final BatchNorm keeps its output, not its input; off: plain
BatchNorm, needed for second derivatives through the supernet) and ``fuse_node_sums`` (one
graph node per node sum in plain DARTS mode; off: one ``addcmul_`` per op output).  Plans hold
the op's submodules: after assigning a submodule (e.g. ReLU -> Softplus) or changing a setting
in place (an activation's ``inplace``, a BatchNorm's ``eps`` or ``affine``) call ``replan()``
(:meth:`SearchNetwork.replan`, or the cell's or mixed op's).

Batched switch: ``SearchNetwork(..., batched_edges=True)`` runs each cell along a
:class:`~nas_core.search_paths.BatchedCellPlan`: the edges that read one node as one stacked
computation (grouped convolutions, one BatchNorm per block, one fused weighted sum), about a
third of the reference's ATen operators per step, and faster than the plain path on the CPU
(benchmarks/README.md); same parameters (state dict unchanged) and the same math
(tests/test_search_speed_math.py).  Off by default (the search stage runs the plain path).

Collapse guards (:mod:`nas_core.guards`): ``SearchNetwork(..., aux_skip=True)`` adds DARTS-'s
auxiliary skip connection to every edge, with the weight :attr:`SearchNetwork.aux_skip_weight`
(set by :meth:`SearchNetwork.set_aux_skip`; :mod:`nas_core.guards` decays it from 1 to 0): the
edge computes ``sum_k w_k op_k(x) + beta * skip(x)``, which is the mixed op with ``beta`` added to
the ``skip_connect`` weight (the identity on stride-1 edges; on the reduction cell's stride-2
edges the skip op's own FactorizedReduce).  :meth:`SearchNetwork.perturbed` (SDARTS-RS) runs
the forwards inside it on ``softmax(alpha) + noise``, clipped back to the simplex.

Memory switch: ``SearchNetwork(..., recompute=True)`` runs cells under activation
recomputation (:func:`nas_core.recompute.checkpointed`) in training mode with gradients on:
the forward keeps only such a cell's inputs, the backward runs the cell again.  Same
gradients, BatchNorm running statistics and RNG state as without; eval mode and ``no_grad``
unchanged.  Which cells: :attr:`SearchNetwork.recompute_cells` (by default every cell but the
trailing ones that do not raise the peak, :func:`nas_core.recompute.recompute_plan`).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas_core.genotypes import Genotype, derive_genotype
from nas_core.network_parts import build_cells, pad_to_multiple, reduction_layers
from nas_core.ops import PRIMITIVES, FactorizedReduce, ReLUConvBN, create_op
from nas_core.recompute import (RecomputedCells, checkpointed, recompute_active,
                                recompute_plan)
from nas_core.search_paths import (BatchedCellPlan, CellPlan, EdgeInputCache, EdgePlan,
                                   channel_shuffle)

__all__ = ["SearchNetwork", "SearchCell", "MixedOp", "EdgeInputCache", "channel_shuffle",
           "num_edges", "clip_to_simplex"]


def num_edges(steps: int) -> int:
    """Number of mixed-op edges in a cell with ``steps`` intermediate nodes."""
    return sum(2 + i for i in range(steps))


def clip_to_simplex(w: torch.Tensor) -> torch.Tensor:
    """Each row of ``w`` clamped to [0, 1] and divided by its sum (SDARTS' projection of the
    perturbed weights); a row that clamps to all zeros becomes one-hot at its largest entry."""
    top = w.argmax(dim=-1)
    w = w.clamp(0.0, 1.0)
    total = w.sum(dim=-1, keepdim=True)
    empty = total == 0
    if bool(empty.any()):
        w = torch.where(empty, F.one_hot(top, w.shape[-1]).to(w.dtype), w)
        total = w.sum(dim=-1, keepdim=True)
    return w / total


def _edge_softmax(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """Softmax of ``betas`` over the edges that enter the same node (PC-DARTS edge normalisation)."""
    parts, start = [], 0
    for i in range(steps):
        parts.append(F.softmax(betas[start:start + 2 + i], dim=-1))
        start += 2 + i
    return torch.cat(parts)


class MixedOp(nn.Module):
    """All candidate operations of one edge; ``_ops.{k}`` follows the ``primitives`` order.

    Runs along :attr:`plan` (:class:`~nas_core.search_paths.EdgePlan`: each op's path, made at
    construction and by :meth:`replan`); edges that read the same node share work through one
    :class:`EdgeInputCache`.  ``lean_batchnorm`` (on): the batch normalisation that ends an op
    (sep/dil conv, pooling, FactorizedReduce) keeps its output instead of its input, so the
    tensor before it is freed; off: plain BatchNorm (needed for second derivatives).
    """

    def __init__(self, channels: int, stride: int, primitives: Sequence[str],
                 partial_channels: int = 1, *, lean_batchnorm: bool = True):
        super().__init__()
        self.stride = stride
        self.partial_channels = partial_channels
        self.primitives = tuple(primitives)
        self._lean_batchnorm = bool(lean_batchnorm)
        c = channels // partial_channels
        self._ops = nn.ModuleList()
        for name in primitives:
            op = create_op(name, c, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
            self._ops.append(op)
        #: how the ops run (one object; :meth:`replan` renews its paths)
        self.plan = EdgePlan(self.primitives, stride, partial_channels, self._lean_batchnorm)
        self.replan()

    @property
    def lean_batchnorm(self) -> bool:
        """Whether an op's final BatchNorm keeps its output, not its input (constructor)."""
        return self._lean_batchnorm

    def replan(self) -> None:
        """Decide each op's path anew from the current submodules and their settings."""
        self.plan.replan(self._ops)

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor],
                cache: EdgeInputCache | None = None) -> torch.Tensor:
        """``weights``: the softmaxed alphas of this edge (one per primitive); ``cache``: shared
        by the edges that read the same ``x`` (None: a fresh one)."""
        return self.plan(x, weights, cache)


class SearchCell(nn.Module):
    """A normal or reduction cell of the supernet (original ``model_search.Cell``).

    Its nodes run along :attr:`plan` (:class:`~nas_core.search_paths.CellPlan`): in plain DARTS
    mode with ``fuse_node_sums`` each node's weighted sum over all op outputs of its incoming
    edges is one ``WeightedSum`` (off: one in-place ``addcmul_`` per term).
    ``lean_batchnorm`` goes to every :class:`MixedOp`.
    """

    def __init__(self, steps: int, multiplier: int, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool, primitives: Sequence[str],
                 partial_channels: int = 1, *, lean_batchnorm: bool = True,
                 fuse_node_sums: bool = True, batched_edges: bool = False):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self._fuse_node_sums = bool(fuse_node_sums)
        self._batched_edges = bool(batched_edges)
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(c_prev_prev, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList(
            MixedOp(c, 2 if reduction and j < 2 else 1, primitives, partial_channels,
                    lean_batchnorm=lean_batchnorm)
            for i in range(steps) for j in range(2 + i))
        #: how the nodes run (the mixed ops planned themselves)
        self.plan = self._cell_plan()

    @property
    def fuse_node_sums(self) -> bool:
        """Whether plain-DARTS node sums are one ``WeightedSum`` each (constructor)."""
        return self._fuse_node_sums

    @property
    def batched_edges(self) -> bool:
        """Whether the edges that read one node run stacked (constructor)."""
        return self._batched_edges

    def _cell_plan(self) -> CellPlan | BatchedCellPlan:
        plan = CellPlan if not self._batched_edges else BatchedCellPlan
        return plan(self._ops, self.steps, self._fuse_node_sums)

    def replan(self) -> None:
        """Re-plan every mixed op, then the nodes (needed after replacing a mixed op)."""
        for mixed in self._ops:
            mixed.replan()
        self.plan = self._cell_plan()

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``weights``: edges x ops (softmaxed); ``edge_weights``: one per edge (PC-DARTS) or None."""
        states = self.plan([self.preprocess0(s0), self.preprocess1(s1)], weights, edge_weights)
        return torch.cat(states[-self.multiplier:], dim=1)


class SearchNetwork(RecomputedCells, nn.Module):
    """The DARTS supernet: stem, ``layers`` cells (reductions at layers//3 and 2*layers//3), head.

    ``num_outputs`` is the number of classes, or 1 for regression.  ``partial_channels=K > 1``
    switches on PC-DARTS (``channels`` must be divisible by K).  ``lean_batchnorm`` and
    ``fuse_node_sums`` are the speed switches of the cells and mixed ops (same math; see the
    module docstring): ``lean_batchnorm=False`` is needed only to differentiate twice through
    the network (``create_graph=True``); the DARTS second-order step does not (finite
    differences).  ``batched_edges``: the edges that read one node run stacked (module
    docstring; plain path when False, the default).  ``aux_skip``: DARTS-'s auxiliary skip
    connection on every edge (module docstring; needs ``skip_connect`` among the
    primitives).  ``recompute``: cells' activations are recomputed in the backward pass
    instead of kept (training mode with gradients on; see the module docstring and
    :attr:`recompute_cells`): less memory, one more forward of those cells per backward, same
    results.
    """

    def __init__(self, in_channels: int, channels: int, num_outputs: int, layers: int,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3,
                 primitives: Iterable[str] = PRIMITIVES, partial_channels: int = 1, *,
                 lean_batchnorm: bool = True, fuse_node_sums: bool = True,
                 batched_edges: bool = False, recompute: bool = False,
                 aux_skip: bool = False):
        super().__init__()
        primitives = tuple(primitives)
        for name, value in (("in_channels", in_channels), ("channels", channels),
                            ("num_outputs", num_outputs), ("layers", layers), ("steps", steps),
                            ("stem_multiplier", stem_multiplier),
                            ("partial_channels", partial_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 1 <= multiplier <= steps:
            raise ValueError(f"multiplier must be in 1..{steps} (steps), got {multiplier!r}")
        if not primitives:
            raise ValueError("primitives must not be empty")
        if len(set(primitives)) != len(primitives):
            raise ValueError(f"primitives contain duplicates: {primitives!r}")
        if channels % partial_channels:
            raise ValueError(f"partial_channels={partial_channels} must divide "
                             f"channels={channels}")
        if aux_skip and "skip_connect" not in primitives:
            raise ValueError(f"aux_skip needs skip_connect among the primitives, got "
                             f"{primitives!r}")
        self.in_channels = in_channels
        self.channels = channels
        self.num_outputs = num_outputs
        self.layers = layers
        self.steps = steps
        self.multiplier = multiplier
        self.primitives = primitives
        self.partial_channels = partial_channels
        self._lean_batchnorm = bool(lean_batchnorm)
        self._fuse_node_sums = bool(fuse_node_sums)
        self._batched_edges = bool(batched_edges)
        self.reduction_layers = reduction_layers(layers)
        #: H and W are zero-padded to multiples of this (2 ** number of reduction cells).
        self.size_multiple = 2 ** len(self.reduction_layers)

        stack = build_cells(in_channels, channels, layers, stem_multiplier,
                            lambda *shape: SearchCell(steps, multiplier, *shape, primitives,
                                                      partial_channels,
                                                      lean_batchnorm=lean_batchnorm,
                                                      fuse_node_sums=fuse_node_sums,
                                                      batched_edges=batched_edges))
        self.stem, self.cells = stack.stem, stack.cells
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(stack.out_channels[-1], num_outputs)
        self._recompute_cells = recompute_plan(stack.sizes) if recompute else ()

        n_edges, n_ops = num_edges(steps), len(primitives)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        if partial_channels > 1:
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(n_edges))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(n_edges))
        else:
            self.betas_normal = None
            self.betas_reduce = None
        #: DARTS-: the auxiliary skip's weight (1 to start with, as in DARTS-) in the
        #: skip_connect column of a row added to the mixing weights (a non-persistent buffer:
        #: the state dict is unchanged), or None when off
        self._skip_index = primitives.index("skip_connect") if aux_skip else None
        column = (F.one_hot(torch.tensor(self._skip_index), n_ops).float() if aux_skip
                  else None)
        self.register_buffer("aux_skip_weight", column, persistent=False)
        self._noise: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def lean_batchnorm(self) -> bool:
        """Whether the ops' final BatchNorms keep their output, not their input (constructor)."""
        return self._lean_batchnorm

    @property
    def fuse_node_sums(self) -> bool:
        """Whether plain-DARTS node sums are one graph node each (constructor)."""
        return self._fuse_node_sums

    @property
    def batched_edges(self) -> bool:
        """Whether each cell runs the edges that read one node stacked (constructor)."""
        return self._batched_edges

    def set_aux_skip(self, beta: float) -> None:
        """DARTS-'s auxiliary skip weight ``beta`` (in place: a captured CUDA graph sees it)."""
        if self.aux_skip_weight is None:
            raise ValueError("set_aux_skip: the supernet was built without aux_skip")
        with torch.no_grad():
            self.aux_skip_weight.zero_()
            self.aux_skip_weight[self._skip_index] = beta

    @property
    def aux_skip(self) -> float | None:
        """The auxiliary skip weight now, or None when the supernet has none."""
        w = self.aux_skip_weight
        return None if w is None else float(w[self._skip_index])

    @contextlib.contextmanager
    def perturbed(self, noise: Sequence[torch.Tensor]) -> Iterator[None]:
        """Forwards inside run on ``clip_to_simplex(softmax(alpha) + noise)`` per cell type
        (``noise``: normal, reduce; edges x ops), detached from the alphas (SDARTS-RS)."""
        self._noise = (noise[0], noise[1])
        try:
            yield
        finally:
            self._noise = None

    def replan(self) -> None:
        """Plan every cell and mixed op anew from the current submodules and their settings:
        call it after assigning a submodule or changing a setting in place (module docstring)."""
        for cell in self.cells:
            cell.replan()

    # -- parameters ------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """Alphas (normal, reduce), then in PC-DARTS mode the betas (normal, reduce)."""
        params = [self.alphas_normal, self.alphas_reduce]
        if self.betas_normal is not None:
            params += [self.betas_normal, self.betas_reduce]
        return params

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an architecture parameter, in ``parameters()`` order."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- architecture weights --------------------------------------------------------------
    def _mixing_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return F.softmax(self.alphas_normal, dim=-1), F.softmax(self.alphas_reduce, dim=-1)

    def _edge_mixing_weights(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.betas_normal is None:
            return None, None
        return (_edge_softmax(self.betas_normal, self.steps),
                _edge_softmax(self.betas_reduce, self.steps))

    @torch.no_grad()
    def arch_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(alphas) per edge as detached float tensors (normal, reduce), edges x ops."""
        wn, wr = self._mixing_weights()
        return wn.detach().clone(), wr.detach().clone()

    @torch.no_grad()
    def edge_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge-normalisation weights (normal, reduce), detached; all ones without PC-DARTS."""
        if self.betas_normal is None:
            ones = torch.ones(num_edges(self.steps), device=self.alphas_normal.device)
            return ones, ones.clone()
        en, er = self._edge_mixing_weights()
        return en.detach().clone(), er.detach().clone()

    def genotype(self) -> Genotype:
        """The genotype by the original DARTS rule (PC-DARTS: on softmax(alphas) * edge weights)."""
        (wn, wr), (en, er) = self.arch_weights(), self.edge_weights()
        return derive_genotype((wn * en[:, None]).cpu(), (wr * er[:, None]).cpu(),
                               primitives=self.primitives, steps=self.steps,
                               multiplier=self.multiplier)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: N x in_channels x H x W (zero-padded to ``size_multiple``) -> N x num_outputs."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input N x {self.in_channels} x H x W, got "
                             f"{tuple(x.shape)}")
        x = pad_to_multiple(x, self.size_multiple)
        w_normal, w_reduce = self._mixing_weights()
        if self._noise is not None:
            w_normal, w_reduce = (clip_to_simplex(w.detach() + n.to(w))
                                  for w, n in zip((w_normal, w_reduce), self._noise))
        if self.aux_skip_weight is not None:
            w_normal, w_reduce = w_normal + self.aux_skip_weight, w_reduce + self.aux_skip_weight
        e_normal, e_reduce = self._edge_mixing_weights()
        recompute = self._recompute_cells if recompute_active(self) else ()
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            args = ((s0, s1, w_reduce, e_reduce) if cell.reduction
                    else (s0, s1, w_normal, e_normal))
            s0, s1 = s1, checkpointed(cell, *args) if i in recompute else cell(*args)
        return self.classifier(self.global_pooling(s1).flatten(1))
