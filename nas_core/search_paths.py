"""How the supernet's edges and nodes run (``nas_core.model_search``): plans, same math.

Each :class:`~nas_core.model_search.MixedOp` holds an :class:`EdgePlan` (how each of its
candidate ops runs) and each :class:`~nas_core.model_search.SearchCell` a :class:`CellPlan`
(which edges read each node, how each node sum runs).  Every path computes what the plain
modules compute (same values, same gradients, same BatchNorm running statistics and
``num_batches_tracked``), with fewer kernels, saved tensors or graph nodes (the kernels are in
:mod:`nas_core.search_kernels`):

* ``skip_connect`` at stride 1: ``x`` itself;
* an op that starts with a stateless activation (sep/dil conv, ReLUConvBN, a ``Sequential``
  such as conv_7x1_1x7): the activation output shared by the edges that read the same node,
  then the op's other modules (:class:`_ActivationTailPath`);
* ``skip_connect`` at stride 2 (FactorizedReduce): the shared ReLU, the convolutions, the BN;
* ``Sequential(pool, BatchNorm2d(affine=False))``: the pooled, batch-normalised tensor shared
  by the edges of the node that use the same primitive (:class:`_PoolBatchNormPath`);
* anything else: ``op(x)``.

``none`` is an exact zero and never evaluated (its alpha still gets its gradient through the
softmax).  An edge's weighted sum is accumulated in place (``addcmul_``); in plain DARTS mode
with ``fuse_node_sums`` each node's sum over every op output of its incoming edges is one
:class:`~nas_core.search_kernels.WeightedSum`.  PC-DARTS: the max-pooled bypass of a node is
computed once for its stride-2 edges.  Work shared by the edges that read one node lives in
that node's :class:`EdgeInputCache` for one cell forward.  ``lean``: the BatchNorm that ends
an op keeps its output, not its input (once differentiable).

Plans are made when the modules are built and on ``replan()``; they hold the ops' submodules
and the settings read when planning (module types, an activation's ``inplace`` and other
settings, a BatchNorm's ``affine`` and ``eps``).  Whoever assigns a submodule or changes such a
setting in place afterwards calls ``replan()`` (of the network, the cell or the mixed op);
until then the old plan runs.  What is read at each forward (training mode, ``momentum``,
running statistics present) needs no re-planning.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas_core.ops import DilConv, FactorizedReduce, Identity, MaxPool2x2, ReLUConvBN, SepConv
from nas_core.search_kernels import (WeightedSum, batch_norm, batch_norm_last, max_pool,
                                     shared_batch_norm, tracks_running_stats)

__all__ = ["EdgeInputCache", "EdgePlan", "CellPlan", "channel_shuffle"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS channel shuffle: view channels as (groups, C/groups), transpose, flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class EdgeInputCache:
    """The work shared by the edges that read one tensor (one node) during one cell forward.

    Filled by the first edge that needs an entry; every later edge reads it (same math):

    * :meth:`activation`: the output of a stateless activation (``relu(x)`` for sep/dil conv,
      FactorizedReduce, ReLUConvBN), one per activation type and settings; autograd sums the
      edges' gradients before one activation backward;
    * :attr:`pooled`: pooling + ``BatchNorm2d(affine=False)`` results (training mode, or no
      running statistics), keyed by (primitive, stride, eps);
    * :attr:`bypass`: the PC-DARTS bypass (max-pooled channels) of stride-2 edges.

    ``readers``: the :class:`EdgePlan` of each edge that reads this tensor (their pooling
    BatchNorms get their running-statistics updates together); ``counters``: the cell's list
    of ``num_batches_tracked`` tensors, incremented after the forward (None: at once).
    """

    __slots__ = ("readers", "counters", "activations", "pooled", "bypass")

    def __init__(self, readers: Sequence["EdgePlan"] = (),
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
                    other_bn = other.paths[self.index].pool_bn
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


# -- the plans of an edge and of a cell -----------------------------------------------------------
class EdgePlan:
    """How one mixed op runs: ``sum_k weights[k] * op_k(x)`` over the ops but ``none``, each
    along its path (:attr:`paths`, made by :meth:`replan`); PC-DARTS (``partial_channels = K >
    1``): on the first ``C/K`` channels, the rest bypassing (max-pooled at stride 2), then the
    channel shuffle.  One object per mixed op: :meth:`replan` renews its paths in place, so
    the cell's plan that holds it stays valid."""

    def __init__(self, primitives: Sequence[str], stride: int, partial_channels: int,
                 lean: bool):
        self.primitives = tuple(primitives)
        self.stride = stride
        self.partial_channels = partial_channels
        self.lean = lean
        #: the ops evaluated: every one but `none` (an exact zero)
        self.active = [k for k, name in enumerate(self.primitives) if name != "none"]
        self.zero_index = next((k for k, name in enumerate(self.primitives) if name == "none"),
                               None)
        self.paths: list[_OpPath] = []

    def replan(self, ops: Sequence[nn.Module]) -> None:
        """Decide each op's path anew from ``ops`` (the mixed op's candidate ops, in order)."""
        self.paths = [_plan_op(op, k, name, self.stride, self.lean)
                      for k, (name, op) in enumerate(zip(self.primitives, ops))]

    def output(self, k: int, x: torch.Tensor, cache: EdgeInputCache) -> torch.Tensor:
        """``op_k(x)`` along its planned path."""
        return self.paths[k](x, cache)

    def mix(self, x: torch.Tensor, weights: Sequence[torch.Tensor], cache: EdgeInputCache,
            out: torch.Tensor | None = None) -> torch.Tensor:
        """``out + sum_k weights[k] * op_k(x)`` (``out`` is updated in place when given)."""
        if not self.active:  # only `none`: keep the graph and the output shape
            y = weights[self.zero_index] * self.output(self.zero_index, x, cache)
            return y if out is None else out.add_(y)
        for k in self.active:
            y = self.output(k, x, cache)
            out = weights[k] * y if out is None else out.addcmul_(weights[k], y)
        return out

    def __call__(self, x: torch.Tensor, weights: Sequence[torch.Tensor],
                 cache: EdgeInputCache | None = None) -> torch.Tensor:
        """The edge's output; ``weights``: one per primitive (softmaxed alphas)."""
        if cache is None:
            cache = EdgeInputCache()
        k = self.partial_channels
        if k == 1:
            return self.mix(x, weights, cache)
        c = x.shape[1] // k
        mixed = self.mix(x[:, :c], weights, cache)
        if self.stride == 2:
            rest = cache.bypass
            if rest is None:
                rest = cache.bypass = (max_pool(None, x[:, c:], 2, 2) if self.lean
                                       else F.max_pool2d(x[:, c:], 2, 2))
        else:
            rest = x[:, c:]
        return channel_shuffle(torch.cat([mixed, rest], dim=1), k)


class CellPlan:
    """How one cell's nodes run, given its mixed ops (edge order: node 0's two inputs, node
    1's three, ...; each with its :class:`EdgePlan` as ``.plan``): one :class:`EdgeInputCache`
    per state, read by the edges of every later node; in plain DARTS mode with
    ``fuse_node_sums`` each node is one ``WeightedSum``, else edge by edge (PC-DARTS: scaled by
    the edge weights).  The BatchNorms run in training mode put their ``num_batches_tracked``
    in one list, incremented together at the end (``momentum=None`` ones at once)."""

    def __init__(self, mixed_ops: Sequence[nn.Module], steps: int, fuse_node_sums: bool):
        self.mixed_ops = list(mixed_ops)
        self.edges: list[EdgePlan] = [m.plan for m in self.mixed_ops]
        self.steps = steps
        self.fused = fuse_node_sums and all(e.partial_channels == 1 and e.active
                                            for e in self.edges)
        #: per state j, the plans of the edges that read it (every later node)
        self.readers = [[self.edges[sum(range(2, 2 + i)) + j] for i in range(steps) if j < 2 + i]
                        for j in range(steps + 2)]

    def _fused_node(self, states: list[torch.Tensor], caches: list[EdgeInputCache],
                    weights: torch.Tensor, offset: int) -> torch.Tensor:
        """Every op output of every incoming edge, summed by one ``WeightedSum``."""
        n_ops = weights.shape[1]
        ys, slots = [], []
        for j, h in enumerate(states):
            edge = self.edges[offset + j]
            for k in edge.active:
                ys.append(edge.output(k, h, caches[j]))
                slots.append(j * n_ops + k)
        return WeightedSum.apply(weights[offset:offset + len(states)], tuple(slots), *ys)

    def _plain_node(self, states: list[torch.Tensor], caches: list[EdgeInputCache],
                    rows: Sequence[torch.Tensor], edge: Sequence[torch.Tensor] | None,
                    offset: int) -> torch.Tensor:
        """The node summed edge by edge (PC-DARTS edge weights, or ``fuse_node_sums`` off)."""
        s = None
        for j, h in enumerate(states):
            w = rows[offset + j].unbind(0)
            if edge is None and self.edges[offset + j].partial_channels == 1:
                s = self.edges[offset + j].mix(h, w, caches[j], s)  # accumulates into s
                continue
            y = self.mixed_ops[offset + j](h, w, caches[j])
            if edge is not None:
                s = edge[offset + j] * y if s is None else s.addcmul_(edge[offset + j], y)
            else:
                s = y if s is None else s + y
        return s

    def __call__(self, states: list[torch.Tensor], weights: torch.Tensor,
                 edge_weights: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``states``: the two preprocessed cell inputs; appends every node and returns the
        list.  ``weights``: edges x ops (softmaxed); ``edge_weights``: one per edge or None."""
        counters: list[torch.Tensor] = []
        caches = [EdgeInputCache(self.readers[j], counters) for j in range(2)]
        fused = self.fused and edge_weights is None
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
            caches.append(EdgeInputCache(self.readers[len(states) - 1], counters))
        if counters:
            with torch.no_grad():
                torch._foreach_add_(counters, 1)
        return states
