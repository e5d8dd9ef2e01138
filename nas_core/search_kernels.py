"""Custom autograd kernels of the DARTS supernet (``nas_core.model_search``).

Each computes exactly what plain PyTorch modules compute (same values, same gradients, same
BatchNorm running statistics) with fewer kernels, fewer saved tensors or fewer graph nodes:

* :class:`BatchNormFromOutput` / :func:`batch_norm_last`: a BatchNorm without affine parameters
  whose backward reads its output instead of its input, so the op's tensor before it is freed
  (once differentiable: a second derivative raises);
* :func:`batch_norm`: a training-mode ``BatchNorm2d`` as one ``F.batch_norm`` call, its
  ``num_batches_tracked`` increment deferred to the caller (``counters``);
* :func:`shared_batch_norm`: one batch normalisation (no affine) of a tensor that several
  BatchNorm modules normalise alike, each module's running statistics updated as its own
  forward would (:func:`update_running_stats`);
* :class:`WeightedSum`: ``sum_i w[slot_i] * y_i`` over every op output that enters one node, as
  one graph node;
* :class:`MaxPoolFromInput` / :func:`max_pool`: max pooling whose backward finds the maxima
  again in its input (kept anyway: the node's average pooling keeps it too) instead of keeping
  int64 indices, twice the size of the pooled float32 output.

Batched edges (``SearchNetwork(..., batched_edges=True)``, :class:`nas_core.search_paths.
BatchedCellPlan`): the edges that read one node computed as one stack of channels, same math:

* :class:`StackParams`: the per-edge weights of one op type concatenated into the weight of
  one grouped convolution inside the forward (the parameters stay the edges' own; the backward
  hands each its slice with one ``split``); :class:`StackedWeights` keeps them stacked while
  the parameters are unchanged (the step's forwards at one ``w``);
* :class:`RepeatChannels` / :func:`repeat_channels`: the activated node once per edge
  (edge-major), the input of the grouped depthwise convolutions; the backward is one sum;
* :func:`stacked_batch_norm`: one batch normalisation (no affine, batch statistics: exact per
  channel) over the stacked channels, updating stacked running statistics in the kernel;
  :class:`StackedRunningStats` concatenates the modules' statistics once per cell forward and
  copies them back at its end;
* :class:`GroupMix`: every edge's weighted sum ``sum_k w[e, k] * y_k[e]`` of one node's
  readers as one graph node (one multiplication per op type over all edges).

``counters``: a list that collects the ``num_batches_tracked`` tensors of the BatchNorms that
ran; the caller adds 1 to all of them at once (``torch._foreach_add_``) after the forward.
``None``: each counter is incremented at once.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LEAN_DTYPES", "tracks_running_stats", "batch_norm_factor", "update_running_stats",
           "BatchNormFromOutput", "batch_norm", "batch_norm_last", "shared_batch_norm",
           "WeightedSum", "MaxPoolFromInput", "max_pool", "StackParams", "StackedWeights",
           "RepeatChannels", "repeat_channels", "GroupMix", "StackedRunningStats",
           "stacked_batch_norm"]

#: dtypes of the lean BatchNorm; reduced precision (bf16/fp16 under autocast) takes the plain path
LEAN_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)


def tracks_running_stats(bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn`` keeps running statistics (``track_running_stats`` and buffers present)."""
    return bn.track_running_stats and bn.running_mean is not None


def batch_norm_factor(bn: nn.BatchNorm2d, counters: list[torch.Tensor] | None) -> float:
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
def update_running_stats(bns: Sequence[nn.BatchNorm2d], mean: torch.Tensor,
                         var: torch.Tensor, counters: list[torch.Tensor] | None = None) -> None:
    """Update each module's running statistics as its own train-mode forward would, from the
    batch ``mean`` and unbiased ``var`` (factor and counter: :func:`batch_norm_factor`).
    Modules with the same factor are updated together (``_foreach`` kernels)."""
    by_factor: dict[float, list[nn.BatchNorm2d]] = {}
    for bn in bns:
        by_factor.setdefault(float(batch_norm_factor(bn, counters)), []).append(bn)
    for factor, group in by_factor.items():
        means = [bn.running_mean for bn in group]
        variances = [bn.running_var for bn in group]
        torch._foreach_mul_(means, 1.0 - factor)
        torch._foreach_add_(means, [mean] * len(group), alpha=factor)
        torch._foreach_mul_(variances, 1.0 - factor)
        torch._foreach_add_(variances, [var] * len(group), alpha=factor)


_WILL_EXECUTE = getattr(torch._C, "_will_engine_execute_node", None)


def _wanted(ctx) -> tuple[bool, ...]:
    """``ctx.needs_input_grad`` narrowed to the gradients that the running backward uses: an
    input whose producer the engine will not run gets None without being computed
    (``autograd.grad`` for other inputs: the weight step wants no alpha gradients, the
    architecture step none for the first cell's op outputs).  Where the engine cannot tell (a
    leaf among ``autograd.grad``'s inputs, a torch without the query): as requested.  The
    forward sets ``ctx.tensor_inputs`` (which of its inputs are tensors)."""
    out = []
    nodes = iter(ctx.next_functions)  # one per tensor input, in order
    for need, is_tensor in zip(ctx.needs_input_grad, ctx.tensor_inputs):
        node = next(nodes)[0] if is_tensor else None
        if need and node is not None and _WILL_EXECUTE is not None:
            try:
                need = _WILL_EXECUTE(node)
            except RuntimeError:
                need = True
        out.append(bool(need))
    return tuple(out)


#: (channels, dtype, device) -> (zeros, ones): constants of the lean BatchNorm's backward
_ZERO_ONE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _zero_one(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached ``(zeros_like(like), ones_like(like))`` for a 1-D per-channel tensor."""
    key = (like.shape[0], like.dtype, like.device)
    pair = _ZERO_ONE.get(key)
    if pair is None:
        pair = _ZERO_ONE[key] = (torch.zeros_like(like), torch.ones_like(like))
    return pair


class BatchNormFromOutput(torch.autograd.Function):
    """Batch-statistics normalisation without affine parameters whose backward reads only its
    output ``y`` and ``invstd`` (``dx = invstd * (dy - mean(dy) - y * mean(dy * y))``), so its
    input need not be kept: the weighted sum keeps ``y`` anyway.  Forward and backward are
    ATen's own batch-norm kernels; the forward also updates the running statistics when they
    are given (in the same kernel, as ``F.batch_norm``), and returns the batch mean and
    ``invstd`` too (not differentiable).  Once differentiable (a second derivative raises):
    code that needs second derivatives through the supernet (``create_graph=True``) builds it
    with ``SearchNetwork(..., lean_batchnorm=False)``.

    ``apply(x, running_mean, running_var, momentum, eps) -> (y, mean, invstd)``.
    """

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
                "nas_core.search_kernels: cannot differentiate twice through the lean batch "
                "normalisation of the supernet; build it with "
                "SearchNetwork(..., lean_batchnorm=False) first")
        y, invstd = ctx.saved_tensors
        # ATen's fused kernel on x_hat = y (mean 0, invstd 1) with invstd as the affine weight:
        # (dy - mean(dy) - y * mean(dy * y)) * invstd, accumulated as ATen does
        zero, one = _zero_one(invstd)
        dx = torch.ops.aten.native_batch_norm_backward(
            dy, y, invstd, None, None, zero, one, True, 0.0, [True, False, False])[0]
        return dx, None, None, None, None


def batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor,
               counters: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``bn(x)``; for a training-mode BatchNorm that tracks statistics one ``F.batch_norm``
    kernel (its counter goes to ``counters`` when given, see :func:`batch_norm_factor`)."""
    if not (bn.training and tracks_running_stats(bn)):
        return bn(x)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True,
                        batch_norm_factor(bn, counters), bn.eps)


def batch_norm_last(bn: nn.BatchNorm2d, x: torch.Tensor,
                    counters: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``bn(x)`` for a training-mode ``BatchNorm2d(affine=False)`` whose output feeds only the
    weighted sum: same values and running-statistics update, without keeping ``x``.  Reduced
    precision (bf16/fp16 under autocast) takes the plain path: checked in float32/64 only."""
    if x.dtype not in LEAN_DTYPES:
        return batch_norm(bn, x, counters)
    if not tracks_running_stats(bn):
        return BatchNormFromOutput.apply(x, None, None, 0.0, bn.eps)[0]
    return BatchNormFromOutput.apply(x, bn.running_mean, bn.running_var,
                                     batch_norm_factor(bn, counters), bn.eps)[0]


def shared_batch_norm(p: torch.Tensor, eps: float, bns: Sequence[nn.BatchNorm2d], lean: bool,
                      counters: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Batch-statistics normalisation of ``p`` without affine parameters (``eps``), as every
    training-mode ``BatchNorm2d(affine=False, eps=eps)`` in ``bns`` computes it; each of them
    gets its own running-statistics update (own momentum and counter) from the batch mean and
    unbiased variance.  ``bns`` may be empty (eval mode without running statistics).

    ``lean``: :class:`BatchNormFromOutput` (``p`` is not kept) in float32/64."""
    n = p.numel() // p.shape[1]
    stats = None
    if lean and p.dtype in LEAN_DTYPES:  # p is not kept
        y, *stats = BatchNormFromOutput.apply(p, None, None, 0.0, eps)
    else:
        y = F.batch_norm(p, None, None, None, None, True, 0.0, eps)
    if bns:
        with torch.no_grad():
            dtype = bns[0].running_mean.dtype
            if stats is not None:  # the kernel's batch mean and 1/std
                mean, invstd = stats
                var = invstd.double().pow(-2).sub(eps).mul(n / max(n - 1, 1))
            else:
                var, mean = torch.var_mean(p.detach().to(dtype), dim=(0, 2, 3), correction=1)
        update_running_stats(bns, mean.to(dtype), var.to(dtype), counters)
    return y


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


class WeightedSum(torch.autograd.Function):
    """``sum_i w.flatten()[slots[i]] * ys[i]`` over the op outputs of every edge entering one
    node (``w``: those edges' rows of softmax(alpha)).  One graph node instead of one
    ``addcmul`` per term: the forward accumulates in place; the backward is ``grad * w`` per
    output and one dot product per weight (autograd's ``addcmul`` backward would spend four
    multiplications and a sum, with temporaries, per term).  Twice differentiable.

    ``apply(w, slots, *ys) -> out``.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, slots: tuple[int, ...],  # type: ignore[override]
                *ys: torch.Tensor) -> torch.Tensor:
        ctx.tensor_inputs = (True, False) + (True,) * len(ys)
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
        wanted = _wanted(ctx)
        if wanted[0]:
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
            if wanted[2 + i]:
                grad_ys[i] = grad * ws[slot].to(grad.dtype)
        return (grad_w, None, *grad_ys)


class MaxPoolFromInput(torch.autograd.Function):
    """``F.max_pool2d(x, kernel, stride, padding)`` that keeps ``x`` for its backward and finds
    the maxima again there (``max_pool2d_with_indices``: the same indices, ties included, as
    autograd's own max pooling keeps), instead of keeping the int64 indices.  Not twice
    differentiable."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.window = ([kernel, kernel], [stride, stride], [padding, padding])
        return F.max_pool2d(x, kernel, stride, padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, = ctx.saved_tensors
        kernel, stride, padding = ctx.window
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding)
        gx = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, kernel, stride, padding,
                                                             [1, 1], False, indices)
        return gx, None, None, None


def max_pool(pool: nn.Module | None, x: torch.Tensor, kernel: int = 2, stride: int = 2,
             padding: int = 0) -> torch.Tensor:
    """``pool(x)`` for an ``nn.MaxPool2d`` (or ``F.max_pool2d(x, kernel, stride, padding)`` when
    ``pool`` is None) through :class:`MaxPoolFromInput` where it applies (float32/64, gradients
    wanted, square window, no dilation or ceil mode); plainly otherwise."""
    if pool is not None:
        if type(pool) is not nn.MaxPool2d:
            return pool(x)
        k, s, p = pool.kernel_size, pool.stride, pool.padding
        if (pool.dilation not in (1, (1, 1)) or pool.ceil_mode or pool.return_indices
                or not all(isinstance(v, int) for v in (k, s, p))):
            return pool(x)
        kernel, stride, padding = k, s, p
    if (x.dtype in LEAN_DTYPES and torch.is_grad_enabled() and x.requires_grad):
        return MaxPoolFromInput.apply(x, kernel, stride, padding)
    return F.max_pool2d(x, kernel, stride, padding) if pool is None else pool(x)


# -- batched edges: the edges that read one node as one computation ------------------------------
def _channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` (4-D) is dense in channels_last and not in the contiguous format."""
    return (t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))


class StackParams(torch.autograd.Function):
    """``torch.cat(params)`` along dim 0 (the per-edge weights of one op type stacked into the
    weight of one grouped convolution); the backward hands each parameter its slice as one
    ``unbind`` (autograd's own ``cat`` backward is one ``slice`` per input).

    ``apply(*params) -> stacked``; all ``params`` of one shape."""

    @staticmethod
    def forward(ctx, *params: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.count = len(params)
        return torch.cat(params, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad.split(grad.shape[0] // ctx.count, 0)


class StackedWeights:
    """The stacked weight of fixed parameters (:class:`StackParams`; one parameter: itself),
    kept while none of them changed: the forwards of one step at the same weights (first
    order: the architecture step's and the weight step's) stack them once, and the weight
    step's backward hands each its gradient as before.
    Stacked again when grad mode, a parameter's version counter (every in-place update: the
    optimizer, ``load_state_dict``, the second-order step's backups) or its storage (``.to()``)
    changed, and always while a CUDA graph is being captured.  (A write through ``.data``
    bypasses the version counter: nothing in nas_core does that.)"""

    __slots__ = ("params", "key", "value")

    def __init__(self, params: Sequence[torch.Tensor]):
        self.params = tuple(params)
        self.key: tuple | None = None
        self.value: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        params = self.params
        if len(params) == 1:
            return params[0]
        if params[0].is_cuda and torch.cuda.is_current_stream_capturing():
            self.key = self.value = None
            return StackParams.apply(*params)
        key = (torch.is_grad_enabled(), *[(p._version, p.data_ptr()) for p in params])
        if key != self.key:
            self.value = StackParams.apply(*params)
            self.key = key
        return self.value


class RepeatChannels(torch.autograd.Function):
    """``torch.cat([x] * copies, dim=1)`` (the input of the edge-major grouped depthwise
    convolutions of ``copies`` edges), keeping ``x``'s memory format; the backward is one sum
    over the copies (autograd's would be one slice and one addition per copy)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, copies: int) -> torch.Tensor:  # type: ignore[override]
        ctx.copies = copies
        return torch.cat([x] * copies, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        n, ec, h, w = grad.shape
        e = ctx.copies
        return grad.view(n, e, ec // e, h, w).sum(1), None


def repeat_channels(x: torch.Tensor, copies: int) -> torch.Tensor:
    """:class:`RepeatChannels` (``x`` itself for one copy)."""
    return x if copies == 1 else RepeatChannels.apply(x, copies)


def _edge_major_empty(like: torch.Tensor, edges: int, channels: int) -> torch.Tensor:
    """An uninitialised N x edges x channels x H x W tensor laid out as ``like`` (N x C x H x W)
    would be with ``edges * channels`` channels: its flatten(1, 2) is a view in that format."""
    n, _, h, w = like.shape
    if _channels_last(like):
        return like.new_empty((n, h, w, edges, channels)).permute(0, 3, 4, 1, 2)
    return like.new_empty((n, edges, channels, h, w))


class GroupMix(torch.autograd.Function):
    """The weighted sums of the ``E`` edges that read one node, at once:
    ``out_e = sum_i w[e, slots[i]] * y_i[e]`` for each edge ``e``, where ``y_i`` is either the
    stacked output of one op type over the edges (N x E*C x H x W, edge-major) or, when
    ``shared[i]``, one output that every edge shares (pooling + BN, identity: N x C x H x W).
    ``w``: the edges' rows of softmax(alpha) (E x ops).  One graph node; returns the E outputs
    (views of one tensor; not to be modified in place).  Once differentiable.

    Two layouts of the same sums.  In channels_last the stacked channels are innermost, so the
    sums run on P x E*C matrices (P = N*H*W pixels): a stacked output times its per-channel
    weight row (``w[:, slot]`` repeated C times), a shared output times the C x E*C matrix
    ``kron(w[:, slot]^T, I_C)`` (one ``addmm``; its other terms are exact zeros), and in the
    backward the transposed products (``mm``) and per-channel sums; broadcasting a weight per
    edge over the C innermost channels instead ran about ten times slower on the CPU.  In the
    contiguous format H*W is innermost and the weights broadcast over 5-D views.

    ``apply(w, slots, shared, *ys) -> (out_0, ..., out_{E-1})``.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, slots: tuple[int, ...],  # type: ignore[override]
                shared: tuple[bool, ...], *ys: torch.Tensor):
        e, k = w.shape
        ref = next((y for y, s in zip(ys, shared) if not s), None)
        if ref is None:  # only shared outputs
            ref = ys[0]
            c = ref.shape[1]
        else:
            c = ref.shape[1] // e
        ctx.slots, ctx.shared, ctx.edges, ctx.channels = slots, shared, e, c
        ctx.tensor_inputs = (True, False, False) + (True,) * len(ys)
        ctx.dtype = w.dtype
        ctx.matrices = _channels_last(ref) and all(y.dtype == ref.dtype for y in ys)
        if ctx.matrices:
            with torch.autocast(ref.device.type, enabled=False):
                return GroupMix._forward_matrices(ctx, w.to(ref.dtype), ref, ys)
        cols = w.t().reshape(k, 1, e, 1, 1, 1).unbind(0)
        acc = _edge_major_empty(ref, e, c)
        yvs = []
        for i, (slot, y, s) in enumerate(zip(slots, ys, shared)):
            yv = y.unsqueeze(1) if s else y.unflatten(1, (e, c))
            yvs.append(yv)
            if i == 0:
                torch.mul(yv, cols[slot], out=acc)
            else:
                acc.addcmul_(yv, cols[slot])
        ctx.channels_last = _channels_last(ref)
        # the views the backward reads (5-D outputs, the weights' columns): saved as they are
        ctx.save_for_backward(*cols, *yvs)
        return acc.unbind(1)

    @staticmethod
    def _forward_matrices(ctx, w: torch.Tensor, ref: torch.Tensor,
                          ys: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        e, c = ctx.edges, ctx.channels
        n, _, h, wd = ref.shape
        p = n * h * wd
        k = w.shape[1]
        # ops x E*C x C: kron(w[:, k], I_C) (the transposed matrix of a shared output), and
        # ops x E*C: each stacked channel's weight (the row sums of the former, exactly)
        mats = w.new_empty((k, e, c, c))
        torch.mul(_eye(c, w), w.t().view(k, e, 1, 1), out=mats)
        mats = mats.view(k, e * c, c)
        rows = mats.sum(2).view(k, 1, e * c, 1, 1).unbind(0)  # 1 x E*C x 1 x 1 each
        mats = mats.unbind(0)
        acc = ref.new_empty((p, e * c))
        acc4 = acc.as_strided(ref.shape, ref.stride())  # N x E*C x H x W, channels_last
        saved = []
        for i, (slot, y, s) in enumerate(zip(ctx.slots, ys, ctx.shared)):
            if s:  # P x C times C x E*C
                y = _pixels(y)
                if i == 0:
                    torch.mm(y, mats[slot].t(), out=acc)
                else:
                    acc.addmm_(y, mats[slot].t())
            elif i == 0:  # channels innermost: the weight row broadcasts over the pixels
                torch.mul(y, rows[slot], out=acc4)
            else:
                acc4.addcmul_(y, rows[slot])
            saved.append(y)
        ctx.shape = (n, h, wd)
        ctx.save_for_backward(*rows, *mats, *saved)
        # the E outputs: N x C x H x W views of the P x E*C sums
        ec = e * c
        return acc.as_strided((e, n, c, h, wd), (c, h * wd * ec, 1, wd * ec, ec)).unbind(0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        wanted = _wanted(ctx)
        if ctx.matrices:
            return GroupMix._backward_matrices(ctx, grads, wanted)
        slots, shared, e = ctx.slots, ctx.shared, ctx.edges
        saved = ctx.saved_tensors
        k = len(saved) - len(slots)
        cols, yvs = saved[:k], saved[k:]
        if ctx.channels_last:  # the edge-major layout of the outputs (channels innermost)
            g = torch.stack([t.permute(0, 2, 3, 1) for t in grads], 3).permute(0, 3, 4, 1, 2)
        else:
            g = torch.stack(grads, 1)
        grad_cols: list[torch.Tensor | None] = [None] * k
        grad_ys: list[torch.Tensor | None] = [None] * len(yvs)
        for i, (slot, yv, s) in enumerate(zip(slots, yvs, shared)):
            if wanted[0]:
                grad_cols[slot] = (g * yv).sum((0, 2, 3, 4))
            if wanted[3 + i]:
                gy = g * cols[slot].to(g.dtype)
                if not s:
                    grad_ys[i] = gy.flatten(1, 2)
                elif ctx.channels_last:  # summed over the edges in channels_last
                    grad_ys[i] = gy.permute(0, 3, 4, 1, 2).sum(3).permute(0, 3, 1, 2)
                else:
                    grad_ys[i] = gy.sum(1)
        grad_w = GroupMix._columns(grad_cols, (e,), g).to(ctx.dtype) if wanted[0] else None
        return (grad_w, None, None, *grad_ys)

    @staticmethod
    def _backward_matrices(ctx, grads: Sequence[torch.Tensor], wanted: tuple[bool, ...]):
        slots, shared, e, c = ctx.slots, ctx.shared, ctx.edges, ctx.channels
        n, h, wd = ctx.shape
        saved = ctx.saved_tensors
        k = (len(saved) - len(slots)) // 2
        rows, mats, ys = saved[:k], saved[k:2 * k], saved[2 * k:]
        ec = e * c
        g = grads[0].new_empty((n * h * wd, ec))
        torch._foreach_copy_(
            g.as_strided((e, n, c, h, wd), (c, h * wd * ec, 1, wd * ec, ec)).unbind(0),
            list(grads))
        g4 = g.as_strided((n, ec, h, wd), (h * wd * ec, 1, wd * ec, ec))
        g_t = g.t()
        grad_cols: list[torch.Tensor | None] = [None] * k
        grad_ys: list[torch.Tensor | None] = [None] * len(ys)
        for i, (slot, y, s) in enumerate(zip(slots, ys, shared)):
            if wanted[0]:
                # each channel's sum_p g * y: a stacked output's own channels; a shared one's
                # channel c against every edge's channel c (diagonals of g^T y)
                grad_cols[slot] = (torch.mm(g_t, y).view(e, c, c).diagonal(0, 1, 2) if s
                                   else (g4 * y).sum((0, 2, 3)).view(e, c))
            if wanted[3 + i]:
                if s:
                    grad_ys[i] = torch.mm(g, mats[slot]).as_strided(
                        (n, c, h, wd), (h * wd * c, 1, wd * c, c))
                else:
                    grad_ys[i] = g4 * rows[slot]
        grad_w = (GroupMix._columns(grad_cols, (e, c), g).sum(2).to(ctx.dtype) if wanted[0]
                  else None)
        return (grad_w, None, None, *grad_ys)

    @staticmethod
    def _columns(cols: list[torch.Tensor | None], shape: tuple[int, ...],
                 like: torch.Tensor) -> torch.Tensor:
        """The columns of ``w``'s gradient (one per op, each of ``shape``) stacked at dim 1;
        absent ones (``none``, ops not in the sums) exact zeros."""
        zero = None
        for j, col in enumerate(cols):
            if col is None:
                if zero is None:
                    zero = like.new_zeros(shape)
                cols[j] = zero
        return torch.stack(cols, 1)


def _pixels(y: torch.Tensor) -> torch.Tensor:
    """The P x C matrix (pixels x channels) of a channels_last N x C x H x W tensor: one view
    (a copy when ``y`` is not dense in channels_last)."""
    n, ch, h, w = y.shape
    if not _channels_last(y):
        return y.permute(0, 2, 3, 1).reshape(n * h * w, ch)
    return y.as_strided((n * h * w, ch), (ch, 1))


#: (size, dtype, device) -> the identity matrix of :class:`GroupMix`'s shared-output blocks
_EYES: dict[tuple, torch.Tensor] = {}


def _eye(size: int, like: torch.Tensor) -> torch.Tensor:
    key = (size, like.dtype, like.device)
    eye = _EYES.get(key)
    if eye is None:
        eye = _EYES[key] = torch.eye(size, dtype=like.dtype, device=like.device)
    return eye


class StackedRunningStats:
    """The running statistics of the BatchNorm modules of one batched cell, stacked for one
    forward: :meth:`begin` concatenates every module's ``running_mean`` / ``running_var`` (in
    the given order; two kernels), :meth:`slices` hands each group of modules its part (one
    ``split`` each), which ``native_batch_norm`` updates in place; :meth:`end` copies the parts
    back into the modules (one ``_foreach_copy_``).  Same values as each module's own update
    (the update is per channel)."""

    def __init__(self, groups: Sequence[Sequence[nn.BatchNorm2d]]):
        self.groups = [list(g) for g in groups]
        self.modules = [bn for g in self.groups for bn in g]
        self.group_sizes = [sum(bn.num_features for bn in g) for g in self.groups]
        self.module_sizes = [bn.num_features for bn in self.modules]
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None

    @torch.no_grad()
    def begin(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        self.mean = torch.cat([bn.running_mean for bn in self.modules])
        self.var = torch.cat([bn.running_var for bn in self.modules])
        return list(self.mean.split(self.group_sizes)), list(self.var.split(self.group_sizes))

    @torch.no_grad()
    def end(self) -> None:
        dst = [bn.running_mean for bn in self.modules] + [bn.running_var for bn in self.modules]
        src = (list(self.mean.split(self.module_sizes))
               + list(self.var.split(self.module_sizes)))
        torch._foreach_copy_(dst, src)
        self.mean = self.var = None


def stacked_batch_norm(y: torch.Tensor, running_mean: torch.Tensor | None,
                       running_var: torch.Tensor | None, momentum: float, eps: float,
                       lean: bool) -> torch.Tensor:
    """Training-mode batch normalisation without affine parameters of the stacked channels of
    several edges (each channel's statistics are its own: the same as each edge's BatchNorm
    module), the stacked running statistics updated in the kernel.  ``lean``: the backward
    reads the output (:class:`BatchNormFromOutput`, float32/64)."""
    if lean and y.dtype in LEAN_DTYPES:
        return BatchNormFromOutput.apply(y, running_mean, running_var, momentum, eps)[0]
    return F.batch_norm(y, running_mean, running_var, None, None, True, momentum, eps)
