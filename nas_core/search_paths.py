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

Batched edges (``SearchNetwork(..., batched_edges=True)``; off by default): a cell's
:class:`BatchedCellPlan` runs, for each state, the 2-4 edges that read it as one computation
over their stacked channels (edge-major): one activation, the activated input repeated once
per edge into grouped depthwise convolutions (``groups`` = stacked channels), the pointwise
convolutions grouped by edge, one BatchNorm per block, FactorizedReduce's two offset
convolutions as one each, pooling + BN and identity shared, and one
:class:`~nas_core.search_kernels.GroupMix` for all the edges' weighted sums; each node adds its
incoming edges' sums.  Parameters stay per edge (stacked inside the forward, once per step's
weights: :class:`~nas_core.search_kernels.StackedWeights`), so the state dict is unchanged.
About 0.55x the ATen operators of the plain path per step (0.31x the reference's: a GPU's
kernel launches) and faster on the 2-core CPU of ``benchmarks/README.md``; off by default
(the stages run the plain path) until measured on a GPU.  It runs in training mode when the
BatchNorms of the batched ops share one ``momentum`` (not None); otherwise, and for ops it
does not know (planned as not batchable: ``plan.batched`` is False), the plain
:class:`CellPlan` runs.

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

from nas_core.ops import (DilatedConv2d, DilConv, FactorizedReduce, Identity, MaxPool2x2,
                          ReLUConvBN, SepConv, conv2d, strided_1x1_weight)
from nas_core.search_kernels import (GroupMix, StackedRunningStats, StackedWeights, WeightedSum,
                                     _channels_last, batch_norm, batch_norm_last, max_pool,
                                     repeat_channels, shared_batch_norm, stacked_batch_norm,
                                     tracks_running_stats)

__all__ = ["EdgeInputCache", "EdgePlan", "CellPlan", "BatchedCellPlan", "channel_shuffle"]


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


# -- batched edges: the edges that read one node, stacked ----------------------------------------
def _plain_conv(m: nn.Module, depthwise: bool) -> bool:
    """A bias-free zero-padded ``nn.Conv2d``: depthwise (groups = in = out channels) or 1x1
    with one group."""
    if type(m) not in (nn.Conv2d, DilatedConv2d) or m.bias is not None \
            or m.padding_mode != "zeros" or isinstance(m.padding, str):
        return False
    if depthwise:
        return m.groups == m.in_channels == m.out_channels
    return m.groups == 1 and m.kernel_size == (1, 1) and m.stride == (1, 1) \
        and m.padding == (0, 0)


def _plain_bn(m: nn.Module) -> bool:
    return type(m) is nn.BatchNorm2d and not m.affine and m.track_running_stats


def _conv_key(m: nn.Conv2d) -> tuple:
    return (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation)


class _StackedConvOp:
    """One op type (sep or dil conv, i.e. ``act, (dw, pw, BN)`` blocks with an activation
    between them) of the edges that read one node, as grouped convolutions over the edges'
    stacked channels (edge-major) and one batch normalisation per block."""

    def __init__(self, ops: Sequence[nn.Module], lean: bool):
        seqs = [op.op for op in ops]
        n = len(seqs[0])
        # each block's depthwise and pointwise weights over the edges, stacked at use
        self.blocks: list[tuple[StackedWeights, StackedWeights, int]] = []
        self.dw: list[nn.Conv2d] = []  # edge 0's depthwise convolution of each block
        self.bns: list[list[nn.BatchNorm2d]] = []
        self.mid: list[nn.Module] = []  # edge 0's activation between blocks
        for start in range(1, n, 4):
            dws = [s[start] for s in seqs]
            pws = [s[start + 1] for s in seqs]
            self.dw.append(dws[0])
            self.blocks.append((StackedWeights([m.weight for m in dws]),
                                StackedWeights([m.weight for m in pws]), start))
            self.bns.append([s[start + 2] for s in seqs])
            if start + 3 < n:
                self.mid.append(seqs[0][start + 3])
        self.lean = lean
        self.act = seqs[0][0]

    @staticmethod
    def check(ops: Sequence[nn.Module]) -> bool:
        """Whether ``ops`` (one op type over the edges) can run stacked."""
        seqs = []
        for op in ops:
            if type(op) not in (SepConv, DilConv):
                return False
            seqs.append(list(op.op))
        n = len(seqs[0])
        if n not in (4, 8) or any(len(s) != n for s in seqs):
            return False
        act_key = _activation_key(seqs[0][0]) if _shareable(seqs[0][0]) else None
        for s in seqs:
            if not _shareable(s[0]) or _activation_key(s[0]) != act_key:
                return False
            for start in range(1, n, 4):
                dw, pw, bn = s[start:start + 3]
                if not (_plain_conv(dw, True) and _plain_conv(pw, False) and _plain_bn(bn)):
                    return False
                if start > 1 and dw.stride != (1, 1):
                    return False
                if _conv_key(dw) != _conv_key(seqs[0][start]) or pw.in_channels != pw.out_channels:
                    return False
                if bn.eps != seqs[0][start + 2].eps:
                    return False
                if start + 3 < n:
                    mid = s[start + 3]
                    ref = seqs[0][start + 3]
                    if type(mid) is not type(ref) or not (_shareable(mid) or type(mid) is nn.ReLU):
                        return False
                    if type(mid) is not nn.ReLU and _activation_key(mid) != _activation_key(ref):
                        return False
        return True

    def __call__(self, rr: torch.Tensor, stats: list[tuple[torch.Tensor, torch.Tensor]],
                 momentum: float) -> torch.Tensor:
        """``rr``: the activated input repeated once per edge (edge-major); ``stats``: each
        block's stacked running mean and variance."""
        y = rr
        last = len(self.blocks) - 1
        for b, ((dws, pws, _), dw, bns, (mean, var)) in enumerate(
                zip(self.blocks, self.dw, self.bns, stats)):
            y = conv2d(y, dws(), None, dw.stride, dw.padding, dw.dilation, y.shape[1])
            y = F.conv2d(y, pws(), None, 1, 0, 1, len(dws.params))
            y = stacked_batch_norm(y, mean, var, momentum, bns[0].eps, self.lean and b == last)
            if b < last:
                mid = self.mid[b]
                y = F.relu(y, inplace=True) if type(mid) is nn.ReLU else mid(y)
        return y


class _StackedReduceOp:
    """``skip_connect`` at stride 2 (FactorizedReduce) of the edges that read one node: each of
    the two offset 1x1 convolutions as one convolution with the edges' stacked weights, their
    halves interleaved edge by edge, one batch normalisation."""

    def __init__(self, ops: Sequence[FactorizedReduce], lean: bool):
        self.w1 = StackedWeights([op.conv_1.weight for op in ops])
        self.w2 = StackedWeights([op.conv_2.weight for op in ops])
        self.bns = [[op.bn for op in ops]]
        self.act = ops[0].relu
        self.lean = lean

    @staticmethod
    def check(ops: Sequence[nn.Module]) -> bool:
        for op in ops:
            if type(op) is not FactorizedReduce or not _shareable(op.relu):
                return False
            if _activation_key(op.relu) != _activation_key(ops[0].relu):
                return False
            for conv in (op.conv_1, op.conv_2):
                if type(conv) is not nn.Conv2d or conv.bias is not None or conv.groups != 1 \
                        or conv.kernel_size != (1, 1) or conv.stride != (2, 2) \
                        or conv.padding != (0, 0) or conv.dilation != (1, 1):
                    return False
            if not _plain_bn(op.bn) or op.bn.eps != ops[0].bn.eps:
                return False
        return True

    def __call__(self, r: torch.Tensor, stats: list[tuple[torch.Tensor, torch.Tensor]],
                 momentum: float) -> torch.Tensor:
        e = len(self.w1.params)
        half = self.w1.params[0].shape[0]
        a = strided_1x1_weight(self.w1(), r, 0)
        b = strided_1x1_weight(self.w2(), r, 1)
        if e == 1:
            y = torch.cat([a, b], 1)
        else:
            y = torch.cat([a.unflatten(1, (e, half)), b.unflatten(1, (e, half))], 2).flatten(1, 2)
            if _channels_last(r) and not _channels_last(y):
                y = y.contiguous(memory_format=torch.channels_last)
        mean, var = stats[0]
        return stacked_batch_norm(y, mean, var, momentum, self.bns[0][0].eps, self.lean)


class _SharedPoolOp:
    """Pooling + ``BatchNorm2d(affine=False)`` of the edges that read one node: pooled and
    normalised once; the batch mean and unbiased variance come out of the kernel (given zero
    running statistics and momentum 1), and every edge's module gets its own update from them
    at the end of the cell (``_foreach`` kernels)."""

    def __init__(self, pool: nn.Module, bns: Sequence[nn.BatchNorm2d], lean: bool):
        self.pool = pool
        self.bns = list(bns)
        self.eps = bns[0].eps
        self.lean = lean

    def __call__(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        pooled = max_pool(self.pool, x) if self.lean else self.pool(x)
        return stacked_batch_norm(pooled, mean, var, 1.0, self.eps, self.lean)


class _Group:
    """The edges that read one state of a batched cell: their op types, stacked or shared."""

    def __init__(self, state: int, edges: Sequence[EdgePlan], targets: Sequence[int],
                 ops: Sequence[Sequence[nn.Module]], lean: bool):
        self.state = state
        self.edges = list(edges)
        self.targets = list(targets)  # the node each edge enters
        first = self.edges[0]
        self.stride = first.stride
        self.partial_channels = first.partial_channels
        #: (op index k, kind, runner): kind "identity" | "pool" (shared) | "stacked"
        self.items: list[tuple[int, str, object]] = []
        self.act = None
        for k in first.active:
            column = [o[k] for o in ops]
            path = first.paths[k]
            if type(path) is _IdentityPath:
                self.items.append((k, "identity", None))
            elif type(path) is _PoolBatchNormPath:
                bns = [o.paths[k].pool_bn for o in self.edges]
                if not all(_plain_bn(bn) and bn.eps == bns[0].eps for bn in bns):
                    raise _NotBatchable("pooling BatchNorms differ")
                self.items.append((k, "pool", _SharedPoolOp(path.pool, bns, lean)))
            elif _StackedConvOp.check(column):
                self.items.append((k, "stacked", _StackedConvOp(column, lean)))
            elif _StackedReduceOp.check(column):
                self.items.append((k, "stacked", _StackedReduceOp(column, lean)))
            else:
                raise _NotBatchable(f"op {first.primitives[k]!r}")
        acts = {_activation_key(run.act) for _, kind, run in self.items if kind == "stacked"}
        if len(acts) > 1:
            raise _NotBatchable("different activations")
        self.act = next((run.act for _, kind, run in self.items if kind == "stacked"), None)
        self.slots = tuple(k for k, _, _ in self.items)
        self.shared = tuple(kind != "stacked" for _, kind, _ in self.items)
        #: BatchNorm groups of the stacked ops, in order (for the cell's stacked statistics)
        self.bn_groups = [g for _, kind, run in self.items if kind == "stacked" for g in run.bns]
        self.pools = [run for _, kind, run in self.items if kind == "pool"]


class _NotBatchable(Exception):
    pass


class BatchedCellPlan:
    """How one cell's nodes run with its edges batched (``SearchNetwork(...,
    batched_edges=True)``): for each state, the edges that read it (2-4, of the nodes after
    it) run each op type once over their stacked channels (edge-major): the activation once,
    the input repeated once per edge for the depthwise convolutions (``groups`` = the stacked
    channels), the pointwise convolutions grouped by edge, one BatchNorm per block over the
    stacked channels (affine-free, batch statistics: exact per channel), FactorizedReduce's
    offset convolutions as one convolution each; pooling + BN and identity are shared as in
    :class:`CellPlan`; then one :class:`~nas_core.search_kernels.GroupMix` gives every edge's
    weighted sum at once, and each node adds its incoming edges' sums.  The weights stay the
    edges' own parameters (stacked inside the forward: :class:`StackParams`); the running
    statistics of the stacked BatchNorms are concatenated once per cell forward and copied
    back at its end (:class:`StackedRunningStats`).

    Used in training mode when every BatchNorm of the batched ops is training with the same
    ``momentum`` (not None); otherwise (eval mode, ``momentum=None``, ops it does not know:
    planned as not batchable) the plain :class:`CellPlan` runs.  Same math as the plain
    path (other summation order)."""

    def __init__(self, mixed_ops: Sequence[nn.Module], steps: int, fuse_node_sums: bool):
        self.plain = CellPlan(mixed_ops, steps, fuse_node_sums)
        self.steps = steps
        self.groups: list[_Group] | None = None
        self.reason = ""
        try:
            self.groups = self._plan(mixed_ops)
        except _NotBatchable as exc:
            self.reason = str(exc)
        if self.groups is not None:
            bn_groups = [g for grp in self.groups for g in grp.bn_groups]
            self.stats = StackedRunningStats(bn_groups)
            self.pools = [p for grp in self.groups for p in grp.pools]
            self.pool_sizes = [p.bns[0].num_features for p in self.pools]
            self.modules = self.stats.modules + [bn for p in self.pools for bn in p.bns]
            self.group_rows = [[self._edge_index(i, grp.state) for i in grp.targets]
                               for grp in self.groups]
            self.perm = [r for rows in self.group_rows for r in rows]
            self._perm_cache: dict[torch.device, torch.Tensor] = {}

    @property
    def batched(self) -> bool:
        """Whether the cell was planned batched (else always the plain plan)."""
        return self.groups is not None

    @staticmethod
    def _edge_index(node: int, state: int) -> int:
        return sum(2 + t for t in range(node)) + state

    def _plan(self, mixed_ops: Sequence[nn.Module]) -> list[_Group]:
        edges = self.plain.edges
        if not all(e.active for e in edges):
            raise _NotBatchable("an edge without ops")
        groups = []
        for j in range(self.steps + 1):
            targets = [i for i in range(self.steps) if j < 2 + i]
            idx = [self._edge_index(i, j) for i in targets]
            group_edges = [edges[t] for t in idx]
            if len({(e.stride, e.partial_channels, e.primitives) for e in group_edges}) != 1:
                raise _NotBatchable("edges of one state differ")
            groups.append(_Group(j, group_edges, targets, [mixed_ops[t]._ops for t in idx],
                                 group_edges[0].lean))
        return groups

    def _momentum(self) -> float | None:
        """The common momentum of the stacked BatchNorms when this forward can run batched."""
        momentum = None
        for bn in self.modules:
            if not bn.training or bn.momentum is None or bn.running_mean is None:
                return None
            if momentum is None:
                momentum = bn.momentum
            elif bn.momentum != momentum:
                return None
        return 0.1 if momentum is None else momentum

    def __call__(self, states: list[torch.Tensor], weights: torch.Tensor,
                 edge_weights: torch.Tensor | None = None) -> list[torch.Tensor]:
        momentum = self._momentum() if self.groups is not None else None
        if momentum is None:
            return self.plain(states, weights, edge_weights)
        counters: list[torch.Tensor] = []
        dev = weights.device
        perm = self._perm_cache.get(dev)
        if perm is None:
            perm = self._perm_cache[dev] = torch.tensor(self.perm, device=dev)
        rows = weights.index_select(0, perm).split([len(r) for r in self.group_rows])
        beta = None
        if edge_weights is not None:
            beta = edge_weights.index_select(0, perm).split([len(r) for r in self.group_rows])
        means, variances = self.stats.begin()
        stat_iter = iter(zip(means, variances))
        pool_stats = None
        if self.pools:  # the pools' batch statistics, written by their kernels
            like = self.pools[0].bns[0].running_mean
            zeros = like.new_zeros(2 * sum(self.pool_sizes)).split(self.pool_sizes * 2)
            pool_stats = iter(zip(zeros[:len(self.pools)], zeros[len(self.pools):]))
        incoming: list[list[torch.Tensor]] = [[] for _ in range(self.steps)]
        for g, grp in enumerate(self.groups):
            if g >= 2:  # state g is node g - 2: every edge entering it has run
                parts = incoming[g - 2]
                s = parts[0] + parts[1]
                for p in parts[2:]:
                    s.add_(p)
                states.append(s)
            x = states[grp.state]
            k = grp.partial_channels
            c = x.shape[1] // k
            xs = x if k == 1 else x[:, :c]
            cache = EdgeInputCache(grp.edges, counters)
            ys = []
            rr = None
            for _, kind, run in grp.items:
                if kind == "identity":
                    ys.append(xs)
                elif kind == "pool":
                    mean, var = next(pool_stats)
                    ys.append(run(xs, mean, var))
                else:
                    stats = [next(stat_iter) for _ in run.bns]
                    r = cache.activation(_activation_key(run.act), run.act, xs)
                    if isinstance(run, _StackedReduceOp):
                        ys.append(run(r, stats, momentum))
                    else:
                        if rr is None:
                            rr = repeat_channels(r, len(grp.edges))
                        ys.append(run(rr, stats, momentum))
            outs = GroupMix.apply(rows[g], grp.slots, grp.shared, *ys)
            if k > 1:  # PC-DARTS: the bypassed channels, the shuffle, the edge weight
                if grp.stride == 2:
                    rest = (max_pool(None, x[:, c:], 2, 2) if grp.edges[0].lean
                            else F.max_pool2d(x[:, c:], 2, 2))
                else:
                    rest = x[:, c:]
                bw = beta[g].unbind(0)
                outs = [channel_shuffle(torch.cat([o, rest], dim=1), k) * b
                        for o, b in zip(outs, bw)]
            for i, o in zip(grp.targets, outs):
                incoming[i].append(o)
        parts = incoming[self.steps - 1]
        s = parts[0] + parts[1]
        for p in parts[2:]:
            s.add_(p)
        states.append(s)
        self.stats.end()
        if self.pools:
            with torch.no_grad():
                dst = [bn.running_mean for p in self.pools for bn in p.bns]
                dst += [bn.running_var for p in self.pools for bn in p.bns]
                src = [m for p, m in zip(self.pools, zeros) for _ in p.bns]
                src += [v for p, v in zip(self.pools, zeros[len(self.pools):]) for _ in p.bns]
                torch._foreach_mul_(dst, 1.0 - momentum)
                torch._foreach_add_(dst, src, alpha=momentum)
        for bn in self.modules:
            if bn.num_batches_tracked is not None:
                counters.append(bn.num_batches_tracked)
        if counters:
            with torch.no_grad():
                torch._foreach_add_(counters, 1)
        return states
