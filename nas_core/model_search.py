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
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas_core.ops import (PRIMITIVES, DilConv, FactorizedReduce, Identity, MaxPool2x2, ReLUConvBN,
                          SepConv, create_op)

__all__ = ["SearchNetwork", "SearchCell", "MixedOp", "pad_to_multiple", "channel_shuffle",
           "num_edges", "reduction_layers", "make_stem"]


def num_edges(steps: int) -> int:
    """Number of mixed-op edges in a cell with ``steps`` intermediate nodes."""
    return sum(2 + i for i in range(steps))


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


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, MaxPool2x2)


#: Elementwise activations without state whose output on a node can be shared by the edges.
_SHAREABLE_ACTIVATIONS = (nn.ReLU, nn.Softplus, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Tanh,
                          nn.Sigmoid)


def _activation_tail(op: nn.Module) -> tuple[nn.Module, list[nn.Module]] | None:
    """``(activation, rest)`` of an op that starts with a stateless, not in-place activation
    (sep/dil conv, ReLUConvBN, a ``Sequential`` such as conv_7x1_1x7), else None."""
    if isinstance(op, (ReLUConvBN, SepConv, DilConv)):
        op = op.op
    if isinstance(op, nn.Sequential) and len(op) > 1:
        mods = list(op._modules.values())
        act = mods[0]
        if type(act) in _SHAREABLE_ACTIVATIONS and not getattr(act, "inplace", False):
            return act, mods[1:]
    return None


def _shared_activation(act: nn.Module, x: torch.Tensor, cache: dict) -> torch.Tensor:
    """``act(x)``, computed once per node and activation (type and settings)."""
    key = ("act", type(act), act.extra_repr())
    y = cache.get(key)
    if y is None:
        y = cache[key] = act(x)
    return y


def _pool_bn(op: nn.Module) -> tuple[nn.Module, nn.BatchNorm2d] | None:
    """``(pool, bn)`` of a ``Sequential(pool, BatchNorm2d(affine=False))`` op, else None."""
    if isinstance(op, nn.Sequential) and len(op) == 2:
        pool, bn = op._modules.values()
        if isinstance(pool, _POOLS) and type(bn) is nn.BatchNorm2d and not bn.affine:
            return pool, bn
    return None


def _tracks(bn: nn.BatchNorm2d) -> bool:
    return bn.track_running_stats and bn.running_mean is not None


def _momentum(bn: nn.BatchNorm2d, counters: list | None) -> float:
    """The running-average factor of a train-mode forward of ``bn``, counting the batch: its
    momentum (the counter goes to ``counters`` when given, else is incremented now), or
    ``1 / num_batches_tracked`` after the increment when the momentum is None (as the module)."""
    if bn.num_batches_tracked is not None:
        if bn.momentum is not None and counters is not None:
            counters.append(bn.num_batches_tracked)
        else:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
    if bn.momentum is None:
        return 1.0 / float(bn.num_batches_tracked)
    return bn.momentum


@torch.no_grad()
def _update_running_stats(bns: Sequence[nn.BatchNorm2d], mean: torch.Tensor,
                          var: torch.Tensor, counters: list | None = None) -> None:
    """Update each module's running statistics as its own train-mode forward would, from the
    batch ``mean`` and unbiased ``var`` (factor and counter: ``_momentum``).  Modules with the
    same factor are updated together (``_foreach`` kernels)."""
    by_factor: dict[float, list[nn.BatchNorm2d]] = {}
    for bn in bns:
        by_factor.setdefault(float(_momentum(bn, counters)), []).append(bn)
    for factor, group in by_factor.items():
        means = [bn.running_mean for bn in group]
        variances = [bn.running_var for bn in group]
        torch._foreach_mul_(means, 1.0 - factor)
        torch._foreach_add_(means, [mean] * len(group), alpha=factor)
        torch._foreach_mul_(variances, 1.0 - factor)
        torch._foreach_add_(variances, [var] * len(group), alpha=factor)


#: (channels, dtype, device) -> (zeros, ones): constants of the lean BatchNorm's backward
_ZERO_ONE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _zero_one(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    key = (like.shape[0], like.dtype, like.device)
    pair = _ZERO_ONE.get(key)
    if pair is None:
        pair = _ZERO_ONE[key] = (torch.zeros_like(like), torch.ones_like(like))
    return pair


class _BatchNormFromOutput(torch.autograd.Function):
    """Batch-statistics normalisation without affine parameters whose backward reads only its
    output ``y`` and ``invstd`` (``dx = invstd * (dy - mean(dy) - y * mean(dy * y))``), so its
    input need not be kept: the weighted sum keeps ``y`` anyway.  Forward and backward are
    ATen's own batch-norm kernels; the forward also updates the running statistics when they
    are given (in the same kernel, as ``F.batch_norm``), and returns the batch mean and
    ``invstd`` too (not differentiable).  Once differentiable (a second
    derivative raises): code that needs second derivatives through the supernet
    (``create_graph=True``) sets ``MixedOp.lean_batchnorm = False``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, running_mean: torch.Tensor | None,  # type: ignore[override]
                running_var: torch.Tensor | None, momentum: float, eps: float):
        y, mean, invstd = torch.native_batch_norm(x, None, None, running_mean, running_var,
                                                  True, momentum, eps)
        ctx.save_for_backward(y, invstd)
        ctx.mark_non_differentiable(mean, invstd)
        ctx.set_materialize_grads(False)
        return y, mean, invstd

    @staticmethod
    def backward(ctx, dy: torch.Tensor | None, _dmean, _dinvstd):  # type: ignore[override]
        if dy is None:
            return None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True: x is not kept, so refuse loudly
            raise RuntimeError(
                "nas_core.model_search: cannot differentiate twice through the lean batch "
                "normalisation of the supernet; set MixedOp.lean_batchnorm = False first")
        y, invstd = ctx.saved_tensors
        # ATen's fused kernel on x_hat = y (mean 0, invstd 1) with invstd as the affine weight:
        # (dy - mean(dy) - y * mean(dy * y)) * invstd, accumulated as ATen does
        zero, one = _zero_one(invstd)
        dx = torch.ops.aten.native_batch_norm_backward(
            dy, y, invstd, None, None, zero, one, True, 0.0, [True, False, False])[0]
        return dx, None, None, None, None


_LEAN_DTYPES = (torch.float32, torch.float64)


def _batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, counters: list | None = None) -> torch.Tensor:
    """``bn(x)`` for a training-mode BatchNorm of the supernet: one kernel (its counter goes to
    ``counters`` when given, see ``_momentum``)."""
    if not (bn.training and _tracks(bn)):
        return bn(x)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True,
                        _momentum(bn, counters), bn.eps)


def _batch_norm_last(bn: nn.BatchNorm2d, x: torch.Tensor,
                     counters: list | None = None) -> torch.Tensor:
    """``bn(x)`` for a training-mode ``BatchNorm2d(affine=False)`` whose output feeds only the
    weighted sum: same values and running-statistics update, without keeping ``x``.  Reduced
    precision (bf16/fp16 under autocast) takes the plain path: checked in float32/64 only."""
    if x.dtype not in _LEAN_DTYPES:
        return _batch_norm(bn, x, counters)
    if not _tracks(bn):
        return _BatchNormFromOutput.apply(x, None, None, 0.0, bn.eps)[0]
    return _BatchNormFromOutput.apply(x, bn.running_mean, bn.running_var,
                                      _momentum(bn, counters), bn.eps)[0]


def _flat(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of a dense tensor in memory order (contiguous or channels_last), else None."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t.as_strided((t.numel(),), (1,))
    return None


def _dot(a: torch.Tensor, flat_a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum()``; one kernel and no temporary when ``a`` (flattened: ``flat_a``) and
    ``b`` have the same dense layout."""
    if (flat_a is not None and a.dtype == b.dtype and a.shape == b.shape
            and a.stride() == b.stride()):
        flat_b = _flat(b)
        if flat_b is not None:
            return torch.dot(flat_a, flat_b)
    return (a * b).sum()


class _WeightedSum(torch.autograd.Function):
    """``sum_i w.flatten()[slots[i]] * ys[i]`` over the op outputs of every edge entering one
    node (``w``: those edges' rows of softmax(alpha)).  One graph node instead of one
    ``addcmul`` per term: the forward accumulates in place; the backward is ``grad * w`` per
    output and one dot product per weight (autograd's ``addcmul`` backward would spend four
    multiplications and a sum, with temporaries, per term)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, slots: tuple[int, ...],  # type: ignore[override]
                *ys: torch.Tensor) -> torch.Tensor:
        ws = w.reshape(-1).unbind(0)
        out = ys[0] * ws[slots[0]]
        for slot, y in zip(slots[1:], ys[1:]):
            out.addcmul_(ws[slot], y)
        ctx.slots = slots
        ctx.save_for_backward(w, *ys)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        w, *ys = ctx.saved_tensors
        slots = ctx.slots
        # the cell's concatenation hands a strided slice: one copy in the outputs' layout lets
        # every dot product below read both operands as flat vectors
        fmt = (torch.channels_last if grad.dim() == 4 and not ys[0].is_contiguous()
               and ys[0].is_contiguous(memory_format=torch.channels_last)
               else torch.contiguous_format)
        grad = grad.contiguous(memory_format=fmt)
        grad_ys: list[torch.Tensor | None] = [None] * len(ys)
        grad_w = None
        if ctx.needs_input_grad[0]:
            dots: list[torch.Tensor | None] = [None] * w.numel()
            flat = _flat(grad)
            for slot, y in zip(slots, ys):
                dots[slot] = _dot(grad, flat, y)
            zero = None
            for i, d in enumerate(dots):  # `none` ops and absent terms: exactly zero
                if d is None:
                    if zero is None:
                        zero = grad.new_zeros(())
                    dots[i] = zero
            grad_w = torch.stack(dots).to(w.dtype).view(w.shape)
        ws = w.reshape(-1).unbind(0)
        for i, (slot, y) in enumerate(zip(slots, ys)):
            if ctx.needs_input_grad[2 + i]:
                grad_ys[i] = grad * ws[slot].to(grad.dtype)
        return (grad_w, None, *grad_ys)


class MixedOp(nn.Module):
    """All candidate operations of one edge; ``_ops.{k}`` follows the ``primitives`` order.

    Work shared between the edges that read the same node (``cache``, one dict per node, filled
    by the first edge that needs an entry; the math is unchanged):

    * ``relu(x)``: every op that starts with a ReLU (sep/dil conv, FactorizedReduce) reads the
      same rectified tensor; autograd sums the edges' gradients before one ReLU backward.  (Any
      stateless activation of ``_SHAREABLE_ACTIVATIONS``, keyed by type and settings.)
    * pooling + ``BatchNorm2d(affine=False)`` in training mode: the pooled, batch-normalised
      tensor is computed once per (node, primitive, stride); each edge's BatchNorm module still
      gets its own running-statistics update (its own momentum and ``num_batches_tracked``)
      from the shared batch mean and unbiased variance.  In eval mode (running statistics of
      each module) nothing is shared.
    * the PC-DARTS bypass (max-pooled channels) of stride-2 edges.

    The weighted sum is accumulated in place with ``addcmul_`` (one kernel per op, no
    temporaries; in plain DARTS mode the cell sums each node with one ``_WeightedSum``
    instead); ``none`` is an exact zero and never evaluated (its alpha still gets its
    gradient through the softmax).
    * the batch normalisation that ends an op (sep/dil conv, pooling, FactorizedReduce) keeps
      its output instead of its input (``_BatchNormFromOutput``), so the tensor before it is
      freed; ``lean_batchnorm = False`` restores plain BatchNorm (needed for second derivatives).
    """

    #: keep the output, not the input, of an op's final batch normalisation (training mode)
    lean_batchnorm: bool = True

    def __init__(self, channels: int, stride: int, primitives: Sequence[str],
                 partial_channels: int = 1):
        super().__init__()
        self.stride = stride
        self.partial_channels = partial_channels
        self.primitives = tuple(primitives)
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

    def _op_output(self, k: int, x: torch.Tensor, cache: dict) -> torch.Tensor:
        op = self._ops[k]
        if isinstance(op, Identity):
            return x
        counters = cache.get("counters")
        split = _activation_tail(op)
        if split is not None:
            y = _shared_activation(split[0], x, cache)
            prev = None
            last = split[1][-1]
            for m in split[1]:
                if type(m) is nn.ReLU and type(prev) is nn.BatchNorm2d:
                    # BatchNorm's backward reads its input, not its output: rectify in place
                    # (one activation fewer kept per sep_conv; autograd checks the versions)
                    y = F.relu(y, inplace=True)
                elif (m is last and self.lean_batchnorm and type(m) is nn.BatchNorm2d
                      and m.training and not m.affine):
                    y = _batch_norm_last(m, y, counters)  # the conv output is not kept
                elif type(m) is nn.BatchNorm2d:
                    y = _batch_norm(m, y, counters)
                else:
                    y = m(y)
                prev = m
            return y
        if (isinstance(op, FactorizedReduce) and type(op.relu) in _SHAREABLE_ACTIVATIONS
                and not getattr(op.relu, "inplace", False)):
            r = _shared_activation(op.relu, x, cache)
            y = op.convolve(r)
            if self.lean_batchnorm and op.bn.training and not op.bn.affine:
                return _batch_norm_last(op.bn, y, counters)
            return _batch_norm(op.bn, y, counters)
        pb = _pool_bn(op)
        if pb is not None:
            pool, bn = pb
            track = _tracks(bn)
            if bn.training or not track:
                key = ("pool", self.primitives[k], self.stride, bn.eps)
                y = cache.get(key)
                if y is None:
                    p = pool(x)
                    n = p.numel() // p.shape[1]
                    stats = None
                    if self.lean_batchnorm and p.dtype in _LEAN_DTYPES:  # p is not kept
                        y, *stats = _BatchNormFromOutput.apply(p, None, None, 0.0, bn.eps)
                    else:
                        y = F.batch_norm(p, None, None, None, None, True, 0.0, bn.eps)
                    if bn.training and track:
                        # the BN modules of this primitive on every edge that reads x (the
                        # cell lists them in cache["readers"]); each gets its own update
                        group = [bn]
                        for other in cache.get("readers", ()):
                            if other is not self and other.stride == self.stride:
                                pb2 = _pool_bn(other._ops[k])
                                if pb2 is not None and pb2[1].training and _tracks(pb2[1]):
                                    group.append(pb2[1])
                        with torch.no_grad():
                            dtype = bn.running_mean.dtype
                            if stats is not None:  # the kernel's batch mean and 1/std
                                mean, invstd = stats
                                var = invstd.double().pow(-2).sub(bn.eps).mul(n / max(n - 1, 1))
                            else:
                                var, mean = torch.var_mean(p.detach().to(dtype), dim=(0, 2, 3),
                                                           correction=1)
                        _update_running_stats(group, mean.to(dtype), var.to(dtype), counters)
                    cache[key] = y
                return y
        return op(x)

    def _mix(self, x: torch.Tensor, weights: Sequence[torch.Tensor], cache: dict | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """``out + sum_k weights[k] * op_k(x)`` (``out`` is updated in place when given)."""
        if not self._active:  # only `none`: keep the graph and the output shape
            y = weights[self._zero_index] * self._ops[self._zero_index](x)
            return y if out is None else out.add_(y)
        if cache is None:
            cache = {}
        for k in self._active:
            y = self._op_output(k, x, cache)
            if out is None:
                out = weights[k] * y
            else:
                out = out.addcmul_(weights[k], y)
        return out

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor],
                cache: dict | None = None) -> torch.Tensor:
        """``weights``: the softmaxed alphas of this edge (one per primitive).

        ``cache``: a dict shared by the edges that read the same ``x`` (see the class doc).
        """
        if cache is None:
            cache = {}
        k = self.partial_channels
        if k == 1:
            return self._mix(x, weights, cache)
        c = x.shape[1] // k
        mixed = self._mix(x[:, :c], weights, cache)
        if self.stride == 2:
            rest = cache.get("bypass")
            if rest is None:
                rest = cache["bypass"] = F.max_pool2d(x[:, c:], 2, 2)
        else:
            rest = x[:, c:]
        return channel_shuffle(torch.cat([mixed, rest], dim=1), k)


class SearchCell(nn.Module):
    """A normal or reduction cell of the supernet (original ``model_search.Cell``).

    In plain DARTS mode each node's weighted sum over all op outputs of its incoming edges is
    one ``_WeightedSum`` (``fuse_node_sums``; off: one in-place ``addcmul_`` per term), and the
    ``num_batches_tracked`` counters of the BatchNorms that ran are incremented together at the
    end of the forward (modules with ``momentum=None`` at once, as their average needs them).
    """

    #: sum each node with one _WeightedSum (plain DARTS mode)
    fuse_node_sums: bool = True

    def __init__(self, steps: int, multiplier: int, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool, primitives: Sequence[str],
                 partial_channels: int = 1):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(c_prev_prev, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(MixedOp(c, stride, primitives, partial_channels))
        # plain DARTS: the node sums go through one _WeightedSum each
        self._fused = all(m.partial_channels == 1 and m._active for m in self._ops)
        #: per state j, the mixed ops of the edges that read it (every later node)
        self._readers = [[self._ops[sum(range(2, 2 + i)) + j] for i in range(steps) if j < 2 + i]
                         for j in range(steps + 2)]

    def _fused_node(self, states: list[torch.Tensor], caches: list[dict],
                    weights: torch.Tensor, offset: int) -> torch.Tensor:
        """Every op output of every incoming edge, summed by one ``_WeightedSum``."""
        n_ops = weights.shape[1]
        ys, slots = [], []
        for j, h in enumerate(states):
            mixed = self._ops[offset + j]
            for k in mixed._active:
                ys.append(mixed._op_output(k, h, caches[j]))
                slots.append(j * n_ops + k)
        return _WeightedSum.apply(weights[offset:offset + len(states)], tuple(slots), *ys)

    def _plain_node(self, states: list[torch.Tensor], caches: list[dict],
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
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        # one cache per state, shared by the edges that read it (ReLU, pooling + BN, bypass);
        # "readers": the mixed ops of those edges (their pooling BNs are updated together)
        # "counters": num_batches_tracked of the BatchNorms run in training mode, + 1 at the end
        counters: list[torch.Tensor] = []
        caches: list[dict] = [{"readers": self._readers[j], "counters": counters}
                              for j in range(2)]
        fused = self.fuse_node_sums and edge_weights is None and self._fused
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
            caches.append({"readers": self._readers[len(states) - 1], "counters": counters})
        if counters:
            with torch.no_grad():
                torch._foreach_add_(counters, 1)
        return torch.cat(states[-self.multiplier:], dim=1)


class SearchNetwork(nn.Module):
    """The DARTS supernet: stem, ``layers`` cells (reductions at layers//3 and 2*layers//3), head.

    ``num_outputs`` is the number of classes, or 1 for regression.  ``partial_channels=K > 1``
    switches on PC-DARTS (``channels`` must be divisible by K).
    """

    def __init__(self, in_channels: int, channels: int, num_outputs: int, layers: int,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3,
                 primitives: Iterable[str] = PRIMITIVES, partial_channels: int = 1):
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
        self.reduction_layers = reduction_layers(layers)
        #: H and W are zero-padded to multiples of this (2 ** number of reduction cells).
        self.size_multiple = 2 ** len(self.reduction_layers)

        c_curr = stem_multiplier * channels
        self.stem = make_stem(in_channels, c_curr)
        c_pp, c_p, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in self.reduction_layers
            if reduction:
                c_curr *= 2
            self.cells.append(SearchCell(steps, multiplier, c_pp, c_p, c_curr, reduction,
                                         reduction_prev, primitives, partial_channels))
            reduction_prev = reduction
            c_pp, c_p = c_p, multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_outputs)

        n_edges, n_ops = num_edges(steps), len(primitives)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        if partial_channels > 1:
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(n_edges))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(n_edges))
        else:
            self.betas_normal = None
            self.betas_reduce = None

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

    def genotype(self):
        """The genotype by the original DARTS rule (PC-DARTS: on softmax(alphas) * edge weights)."""
        from nas_core.genotypes import derive_genotype  # lazy: keeps this module importable alone

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
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, w_reduce, e_reduce)
            else:
                s0, s1 = s1, cell(s0, s1, w_normal, e_normal)
        return self.classifier(self.global_pooling(s1).flatten(1))
