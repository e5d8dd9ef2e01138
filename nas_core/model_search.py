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

Speed paths (same math; the kernels are in :mod:`nas_core.search_kernels`): each candidate op
runs along a path chosen once, when the op is planned (:meth:`MixedOp.replan`), and the edges
that read the same tensor share work through one :class:`EdgeInputCache`.  Two switches are
constructor arguments of :class:`SearchNetwork` (handed down to every cell and mixed op):
``lean_batchnorm`` (an op's final BatchNorm keeps its output, not its input; off: plain
BatchNorm, needed for second derivatives through the supernet) and ``fuse_node_sums`` (one
graph node per node sum in plain DARTS mode; off: one ``addcmul_`` per op output).

Memory switch: ``SearchNetwork(..., recompute=True)`` runs cells under activation
recomputation (:func:`nas_core.recompute.checkpointed`) in training mode with gradients on:
the forward keeps only such a cell's inputs, the backward runs the cell again.  Same
gradients, BatchNorm running statistics and RNG state as without; eval mode and ``no_grad``
unchanged.  Which cells: :attr:`SearchNetwork.recompute_cells` (by default every cell but the
trailing ones that do not raise the peak, :func:`nas_core.recompute.recompute_plan`).

Plans hold the op's submodules: a submodule assigned after construction (``setattr`` on any
module, e.g. ReLU -> Softplus) marks every plan stale, and each mixed op re-plans before its
next forward.  Settings changed in place on an existing submodule (an activation's ``inplace``,
a BatchNorm's ``eps`` or ``affine``) need :meth:`SearchNetwork.replan`.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.module import register_module_module_registration_hook

from nas_core.genotypes import Genotype, derive_genotype
from nas_core.network_parts import build_cells, pad_to_multiple, reduction_layers
from nas_core.ops import (PRIMITIVES, DilConv, FactorizedReduce, Identity, MaxPool2x2, ReLUConvBN,
                          SepConv, create_op)
from nas_core.recompute import (RecomputedCells, checkpointed, recompute_active,
                                recompute_plan)
from nas_core.search_kernels import (WeightedSum, batch_norm, batch_norm_last, max_pool,
                                     shared_batch_norm, tracks_running_stats)

__all__ = ["SearchNetwork", "SearchCell", "MixedOp", "EdgeInputCache", "channel_shuffle",
           "num_edges"]


def num_edges(steps: int) -> int:
    """Number of mixed-op edges in a cell with ``steps`` intermediate nodes."""
    return sum(2 + i for i in range(steps))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS channel shuffle: view channels as (groups, C/groups), transpose, flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _edge_softmax(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """Softmax of ``betas`` over the edges that enter the same node (PC-DARTS edge normalisation)."""
    parts, start = [], 0
    for i in range(steps):
        parts.append(F.softmax(betas[start:start + 2 + i], dim=-1))
        start += 2 + i
    return torch.cat(parts)


# -- staleness of the op plans ---------------------------------------------------------------------
#: Submodule assignments anywhere in the process so far (a global nn.Module registration hook);
#: a plan built at another count may hold a module that has been replaced.
_tree_version = 0


def _count_registration(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
    global _tree_version
    _tree_version += 1


register_module_module_registration_hook(_count_registration)


# -- the per-forward cache of one node -----------------------------------------------------------
class EdgeInputCache:
    """The work shared by the edges that read one tensor (one node) during one cell forward.

    Filled by the first edge that needs an entry; every later edge reads it (same math):

    * :meth:`activation`: the output of a stateless activation (``relu(x)`` for sep/dil conv,
      FactorizedReduce, ReLUConvBN), one per activation type and settings; autograd sums the
      edges' gradients before one activation backward;
    * :attr:`pooled`: pooling + ``BatchNorm2d(affine=False)`` results (training mode, or no
      running statistics), keyed by (primitive, stride, eps);
    * :attr:`bypass`: the PC-DARTS bypass (max-pooled channels) of stride-2 edges.

    ``readers``: the mixed ops of the edges that read this tensor (their pooling BatchNorms get
    their running-statistics updates together); ``counters``: the cell's list of
    ``num_batches_tracked`` tensors, incremented after the forward (None: at once).
    """

    __slots__ = ("readers", "counters", "activations", "pooled", "bypass")

    def __init__(self, readers: Sequence["MixedOp"] = (),
                 counters: list[torch.Tensor] | None = None):
        self.readers = readers
        self.counters = counters
        #: activation key (type, settings) -> act(x)
        self.activations: dict[Hashable, torch.Tensor] = {}
        #: (primitive, stride, eps) -> batch-normalised pooling of x
        self.pooled: dict[Hashable, torch.Tensor] = {}
        #: PC-DARTS: ``max_pool2d`` of the bypassed channels (stride-2 edges)
        self.bypass: torch.Tensor | None = None

    def activation(self, key: Hashable, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``act(x)``, computed by the first edge that asks for ``key``."""
        y = self.activations.get(key)
        if y is None:
            y = self.activations[key] = act(x)
        return y


# -- op paths: how one candidate op runs, decided when it is planned ------------------------------
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, MaxPool2x2)

#: Elementwise activations without state whose output on a node can be shared by the edges.
_SHAREABLE_ACTIVATIONS = (nn.ReLU, nn.Softplus, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Tanh,
                          nn.Sigmoid)

# steps of an activation-tail path
_MODULE, _RELU_IN_PLACE, _BATCH_NORM, _LEAN_BATCH_NORM = range(4)


def _shareable(act: nn.Module) -> bool:
    return type(act) in _SHAREABLE_ACTIVATIONS and not getattr(act, "inplace", False)


def _activation_key(act: nn.Module) -> Hashable:
    return type(act), act.extra_repr()


class _OpPath:
    """An op run as itself: ``op(x)``.  Base of the paths; ``pool_bn`` is the BatchNorm of a
    pooling + BN path (None for every other path)."""

    pool_bn: nn.BatchNorm2d | None = None

    def __init__(self, op: nn.Module):
        self.op = op

    def __call__(self, x: torch.Tensor, cache: EdgeInputCache) -> torch.Tensor:
        return self.op(x)


class _IdentityPath(_OpPath):
    """``skip_connect`` at stride 1: ``x`` itself."""

    def __call__(self, x: torch.Tensor, cache: EdgeInputCache) -> torch.Tensor:
        return x


class _ActivationTailPath(_OpPath):
    """An op that starts with a shareable activation (sep/dil conv, ReLUConvBN, a
    ``Sequential`` such as conv_7x1_1x7): the shared ``act(x)``, then the other modules, a ReLU
    after a BatchNorm rectifying in place (BatchNorm's backward reads its input, not its
    output: one activation fewer kept per sep_conv; autograd checks the versions), BatchNorms
    as one kernel, the last one lean (:func:`batch_norm_last`) when planned so."""

    def __init__(self, op: nn.Module, act: nn.Module, steps: tuple[tuple[int, nn.Module], ...]):
        super().__init__(op)
        self.act = act
        self.key = _activation_key(act)
        self.steps = steps

    def __call__(self, x: torch.Tensor, cache: EdgeInputCache) -> torch.Tensor:
        y = cache.activation(self.key, self.act, x)
        counters = cache.counters
        for kind, m in self.steps:
            if kind == _MODULE:
                y = m(y)
            elif kind == _RELU_IN_PLACE:
                y = F.relu(y, inplace=True)
            elif kind == _BATCH_NORM or not m.training:
                y = batch_norm(m, y, counters)
            else:  # _LEAN_BATCH_NORM in training mode: the tensor before it is not kept
                y = batch_norm_last(m, y, counters)
        return y


class _FactorizedReducePath(_OpPath):
    """``skip_connect`` at stride 2: the shared ``relu(x)``, the two offset convolutions, the
    BatchNorm (lean when planned so and in training mode)."""

    def __init__(self, op: FactorizedReduce, lean: bool):
        super().__init__(op)
        self.act = op.relu
        self.key = _activation_key(op.relu)
        self.bn = op.bn
        self.lean = lean

    def __call__(self, x: torch.Tensor, cache: EdgeInputCache) -> torch.Tensor:
        y = self.op.convolve(cache.activation(self.key, self.act, x))
        if self.lean and self.bn.training:
            return batch_norm_last(self.bn, y, cache.counters)
        return batch_norm(self.bn, y, cache.counters)


class _PoolBatchNormPath(_OpPath):
    """``Sequential(pool, BatchNorm2d(affine=False))``: in training mode (or without running
    statistics) the pooled, batch-normalised tensor is computed once per (node, primitive,
    stride, eps), and each edge's BatchNorm module still gets its own running-statistics update
    from the shared batch statistics; in eval mode with running statistics each edge runs its
    own op."""

    def __init__(self, op: nn.Module, pool: nn.Module, bn: nn.BatchNorm2d, index: int,
                 primitive: str, stride: int, lean: bool):
        super().__init__(op)
        self.pool = pool
        self.pool_bn = bn
        self.index = index
        self.stride = stride
        self.key = (primitive, stride, bn.eps)
        self.lean = lean

    def __call__(self, x: torch.Tensor, cache: EdgeInputCache) -> torch.Tensor:
        bn = self.pool_bn
        track = tracks_running_stats(bn)
        if not bn.training and track:
            return self.op(x)
        y = cache.pooled.get(self.key)
        if y is None:
            group: list[nn.BatchNorm2d] = []
            if bn.training and track:
                # this primitive's BN on every edge that reads x: each gets its own update
                group.append(bn)
                for other in cache.readers:
                    other_bn = other._paths[self.index].pool_bn
                    if (other_bn is not None and other_bn is not bn
                            and other.stride == self.stride and other_bn.training
                            and tracks_running_stats(other_bn)):
                        group.append(other_bn)
            pooled = max_pool(self.pool, x) if self.lean else self.pool(x)
            y = cache.pooled[self.key] = shared_batch_norm(pooled, bn.eps, group, self.lean,
                                                           cache.counters)
        return y


def _plan_op(op: nn.Module, index: int, primitive: str, stride: int, lean: bool) -> _OpPath:
    """The path of candidate op ``index`` (``primitive``) of a mixed op."""
    if primitive == "none":
        return _OpPath(op)  # never run in a sum (exact zero); only for a `none`-only edge
    if isinstance(op, Identity):
        return _IdentityPath(op)
    seq = op.op if isinstance(op, (ReLUConvBN, SepConv, DilConv)) else op
    if isinstance(seq, nn.Sequential) and len(seq) > 1:
        act, *rest = seq._modules.values()
        if _shareable(act):
            steps = []
            prev = None
            for m in rest:
                if type(m) is nn.ReLU and type(prev) is nn.BatchNorm2d:
                    steps.append((_RELU_IN_PLACE, m))
                elif type(m) is nn.BatchNorm2d:
                    last = lean and m is rest[-1] and not m.affine
                    steps.append((_LEAN_BATCH_NORM if last else _BATCH_NORM, m))
                else:
                    steps.append((_MODULE, m))
                prev = m
            return _ActivationTailPath(op, act, tuple(steps))
    if isinstance(op, FactorizedReduce) and _shareable(op.relu):
        return _FactorizedReducePath(op, lean and not op.bn.affine)
    if isinstance(op, nn.Sequential) and len(op) == 2:
        pool, bn = op._modules.values()
        if isinstance(pool, _POOLS) and type(bn) is nn.BatchNorm2d and not bn.affine:
            return _PoolBatchNormPath(op, pool, bn, index, primitive, stride, lean)
    return _OpPath(op)


class MixedOp(nn.Module):
    """All candidate operations of one edge; ``_ops.{k}`` follows the ``primitives`` order.

    Each op runs along a path decided when it is planned (at construction; again when a
    submodule has been replaced since, or on :meth:`replan`): ``x`` itself (stride-1
    ``skip_connect``); the shared activation then the op's other modules (sep/dil conv,
    ReLUConvBN-like sequences); the shared ReLU, convolutions and BatchNorm (FactorizedReduce);
    pooling + BatchNorm shared by the edges that read the same node; else ``op(x)``.  Edges
    that read the same node share work through one :class:`EdgeInputCache`.

    The weighted sum is accumulated in place with ``addcmul_`` (one kernel per op, no
    temporaries; in plain DARTS mode the cell sums each node with one ``WeightedSum``
    instead); ``none`` is an exact zero and never evaluated (its alpha still gets its
    gradient through the softmax).

    ``lean_batchnorm`` (on): the batch normalisation that ends an op (sep/dil conv, pooling,
    FactorizedReduce) keeps its output instead of its input (``BatchNormFromOutput``), so the
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
        # `none` is an exact zero: it is never evaluated (same math, less work).
        self._active = [k for k, name in enumerate(primitives) if name != "none"]
        self._zero_index = next((k for k, name in enumerate(primitives) if name == "none"), None)
        self._paths: list[_OpPath] = []
        self._planned_at = -1
        self.replan()

    @property
    def lean_batchnorm(self) -> bool:
        """Whether an op's final BatchNorm keeps its output, not its input (constructor)."""
        return self._lean_batchnorm

    def replan(self) -> None:
        """Decide each op's path anew from the current submodules."""
        self._paths = [_plan_op(op, k, name, self.stride, self._lean_batchnorm)
                       for k, (name, op) in enumerate(zip(self.primitives, self._ops))]
        self._planned_at = _tree_version

    def _op_output(self, k: int, x: torch.Tensor, cache: EdgeInputCache) -> torch.Tensor:
        """``op_k(x)`` along its planned path."""
        return self._paths[k](x, cache)

    def _mix(self, x: torch.Tensor, weights: Sequence[torch.Tensor],
             cache: EdgeInputCache | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """``out + sum_k weights[k] * op_k(x)`` (``out`` is updated in place when given)."""
        if not self._active:  # only `none`: keep the graph and the output shape
            y = weights[self._zero_index] * self._ops[self._zero_index](x)
            return y if out is None else out.add_(y)
        if cache is None:
            cache = EdgeInputCache()
        for k in self._active:
            y = self._op_output(k, x, cache)
            if out is None:
                out = weights[k] * y
            else:
                out = out.addcmul_(weights[k], y)
        return out

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor],
                cache: EdgeInputCache | None = None) -> torch.Tensor:
        """``weights``: the softmaxed alphas of this edge (one per primitive).

        ``cache``: shared by the edges that read the same ``x`` (see :class:`EdgeInputCache`).
        """
        if self._planned_at != _tree_version:
            self.replan()
        if cache is None:
            cache = EdgeInputCache()
        k = self.partial_channels
        if k == 1:
            return self._mix(x, weights, cache)
        c = x.shape[1] // k
        mixed = self._mix(x[:, :c], weights, cache)
        if self.stride == 2:
            rest = cache.bypass
            if rest is None:
                rest = cache.bypass = (max_pool(None, x[:, c:], 2, 2) if self.lean_batchnorm
                                       else F.max_pool2d(x[:, c:], 2, 2))
        else:
            rest = x[:, c:]
        return channel_shuffle(torch.cat([mixed, rest], dim=1), k)


class SearchCell(nn.Module):
    """A normal or reduction cell of the supernet (original ``model_search.Cell``).

    In plain DARTS mode each node's weighted sum over all op outputs of its incoming edges is
    one ``WeightedSum`` (``fuse_node_sums``; off: one in-place ``addcmul_`` per term), and the
    ``num_batches_tracked`` counters of the BatchNorms that ran are incremented together at the
    end of the forward (modules with ``momentum=None`` at once, as their average needs them).
    ``lean_batchnorm`` goes to every :class:`MixedOp`.
    """

    def __init__(self, steps: int, multiplier: int, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool, primitives: Sequence[str],
                 partial_channels: int = 1, *, lean_batchnorm: bool = True,
                 fuse_node_sums: bool = True):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self._fuse_node_sums = bool(fuse_node_sums)
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(c_prev_prev, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(MixedOp(c, stride, primitives, partial_channels,
                                         lean_batchnorm=lean_batchnorm))
        self._fused = False
        self._readers: list[list[MixedOp]] = []
        self._planned_at = -1
        self._plan_cell()  # the mixed ops planned themselves

    @property
    def fuse_node_sums(self) -> bool:
        """Whether plain-DARTS node sums are one ``WeightedSum`` each (constructor)."""
        return self._fuse_node_sums

    def replan(self) -> None:
        """Re-plan every mixed op, the readers of each state and the node-sum path."""
        for mixed in self._ops:
            mixed.replan()
        self._plan_cell()

    def _plan_cell(self) -> None:
        """The readers of each state and the node-sum path, from the current mixed ops."""
        # plain DARTS: the node sums go through one WeightedSum each
        self._fused = self._fuse_node_sums and all(m.partial_channels == 1 and m._active
                                                   for m in self._ops)
        #: per state j, the mixed ops of the edges that read it (every later node)
        steps = self.steps
        self._readers = [[self._ops[sum(range(2, 2 + i)) + j] for i in range(steps) if j < 2 + i]
                         for j in range(steps + 2)]
        self._planned_at = _tree_version

    def _mark_planned(self) -> None:
        """Declare the plans current (nothing under this cell was replaced since they were
        made: the network's own construction registered only modules outside it)."""
        for mixed in self._ops:
            mixed._planned_at = _tree_version
        self._planned_at = _tree_version

    def _fused_node(self, states: list[torch.Tensor], caches: list[EdgeInputCache],
                    weights: torch.Tensor, offset: int) -> torch.Tensor:
        """Every op output of every incoming edge, summed by one ``WeightedSum``."""
        n_ops = weights.shape[1]
        ys, slots = [], []
        for j, h in enumerate(states):
            mixed = self._ops[offset + j]
            for k in mixed._active:
                ys.append(mixed._op_output(k, h, caches[j]))
                slots.append(j * n_ops + k)
        return WeightedSum.apply(weights[offset:offset + len(states)], tuple(slots), *ys)

    def _plain_node(self, states: list[torch.Tensor], caches: list[EdgeInputCache],
                    rows: Sequence[torch.Tensor], edge: Sequence[torch.Tensor] | None,
                    offset: int) -> torch.Tensor:
        """The node summed edge by edge (PC-DARTS edge weights, or ``fuse_node_sums`` off)."""
        s = None
        for j, h in enumerate(states):
            mixed = self._ops[offset + j]
            w = rows[offset + j].unbind(0)
            if edge is None and mixed.partial_channels == 1:
                s = mixed._mix(h, w, caches[j], s)  # accumulates into s in place
                continue
            y = mixed(h, w, caches[j])
            if edge is not None:
                s = edge[offset + j] * y if s is None else s.addcmul_(edge[offset + j], y)
            else:
                s = y if s is None else s + y
        return s

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``weights``: edges x ops (softmaxed); ``edge_weights``: one per edge (PC-DARTS) or None."""
        if self._planned_at != _tree_version:
            self.replan()
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        # one cache per state, shared by the edges that read it; the BatchNorms run in
        # training mode put their num_batches_tracked in `counters`, + 1 at the end
        counters: list[torch.Tensor] = []
        caches = [EdgeInputCache(self._readers[j], counters) for j in range(2)]
        fused = self._fused and edge_weights is None
        rows = None if fused else weights.unbind(0)
        edge = edge_weights.unbind(0) if edge_weights is not None else None
        offset = 0
        for _ in range(self.steps):
            if fused:
                s = self._fused_node(states, caches, weights, offset)
            else:
                s = self._plain_node(states, caches, rows, edge, offset)
            offset += len(states)
            states.append(s)
            caches.append(EdgeInputCache(self._readers[len(states) - 1], counters))
        if counters:
            with torch.no_grad():
                torch._foreach_add_(counters, 1)
        return torch.cat(states[-self.multiplier:], dim=1)


class SearchNetwork(RecomputedCells, nn.Module):
    """The DARTS supernet: stem, ``layers`` cells (reductions at layers//3 and 2*layers//3), head.

    ``num_outputs`` is the number of classes, or 1 for regression.  ``partial_channels=K > 1``
    switches on PC-DARTS (``channels`` must be divisible by K).  ``lean_batchnorm`` and
    ``fuse_node_sums`` are the speed switches of the cells and mixed ops (same math; see the
    module docstring): ``lean_batchnorm=False`` is needed only to differentiate twice through
    the network (``create_graph=True``); the DARTS second-order step does not (finite
    differences).  ``recompute``: cells' activations are recomputed in the backward pass
    instead of kept (training mode with gradients on; see the module docstring and
    :attr:`recompute_cells`): less memory, one more forward of those cells per backward, same
    results.
    """

    def __init__(self, in_channels: int, channels: int, num_outputs: int, layers: int,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3,
                 primitives: Iterable[str] = PRIMITIVES, partial_channels: int = 1, *,
                 lean_batchnorm: bool = True, fuse_node_sums: bool = True,
                 recompute: bool = False):
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
        self.reduction_layers = reduction_layers(layers)
        #: H and W are zero-padded to multiples of this (2 ** number of reduction cells).
        self.size_multiple = 2 ** len(self.reduction_layers)

        stack = build_cells(in_channels, channels, layers, stem_multiplier,
                            lambda *shape: SearchCell(steps, multiplier, *shape, primitives,
                                                      partial_channels,
                                                      lean_batchnorm=lean_batchnorm,
                                                      fuse_node_sums=fuse_node_sums))
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
        for cell in self.cells:  # registrations after the cells were built: none inside them
            cell._mark_planned()

    @property
    def lean_batchnorm(self) -> bool:
        """Whether the ops' final BatchNorms keep their output, not their input (constructor)."""
        return self._lean_batchnorm

    @property
    def fuse_node_sums(self) -> bool:
        """Whether plain-DARTS node sums are one graph node each (constructor)."""
        return self._fuse_node_sums

    def replan(self) -> None:
        """Decide every op's path anew (automatic after a submodule assignment; needed by hand
        only after changing a submodule's settings in place)."""
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
        e_normal, e_reduce = self._edge_mixing_weights()
        recompute = self._recompute_cells if recompute_active(self) else ()
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            args = ((s0, s1, w_reduce, e_reduce) if cell.reduction
                    else (s0, s1, w_normal, e_normal))
            s0, s1 = s1, checkpointed(cell, *args) if i in recompute else cell(*args)
        return self.classifier(self.global_pooling(s1).flatten(1))
