"""The DARTS search step as an object: eager (:class:`EagerSearchStep`) or captured once as a
CUDA graph and replayed (:class:`GraphedSearchStep`, opt-in); both are called as
``step(batch_train, batch_val, lr) -> (loss, logits)``, so the search loop has one call.

At the paper's batch of 64 a search step on a modern GPU is bound by the CPU: tens of
thousands of small kernels, each launched by Python and the autograd engine.  Replaying the
whole step (alpha step, weight forward and backward, clipping, SGD and Adam) as one CUDA graph
launches it with one call.  The math is the eager step's (the same kernels on the same
tensors), except that Adam runs its ``capturable`` variant, which computes the bias corrections
on the GPU in float32 instead of in Python doubles: a difference in rounding only, which is why
``search.cuda_graphs`` is part of the checkpoint fingerprint.

Constraints (checked when the object is built, with a one-line error):

* CUDA only, every BatchNorm with a numeric momentum (``momentum=None`` reads its counter on
  the host); first or second order (the second-order step keeps its finite-difference epsilon
  on the device);
* the arch optimizer is switched to ``capturable=True`` (Adam keeps its step count on the GPU);
* every optimizer hyperparameter, the ``lr`` argument and the clip norm are baked into the
  graph: when one changes (the next epoch's learning rate of the cosine schedule) the step is
  captured again;
* a batch of another layout or a smaller one than the captured batch (an epoch's last batch)
  runs eagerly, a larger one is captured; the first ``warmup`` calls run eagerly on a side
  stream (cuDNN picks its algorithms, the optimizers create their state);
* the capture is ``thread_local``: DataLoader pin-memory threads may go on meanwhile.

The returned loss and logits are the graph's static outputs: read them before the next call.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from nas_core.architect import Architect, search_step

__all__ = ["EagerSearchStep", "GraphedSearchStep", "make_search_step"]

Batch = tuple[torch.Tensor, torch.Tensor]


class EagerSearchStep:
    """``step(batch_train, batch_val, lr) -> (loss, logits)``: :func:`nas_core.architect.search_step`
    under autocast to ``amp_dtype`` (None: full precision), with this object's ``grad_clip``."""

    def __init__(self, model: nn.Module, architect: Architect,
                 w_optimizer: torch.optim.Optimizer, grad_clip: float | None,
                 amp_dtype: torch.dtype | None = None, perturbation=None):
        self.model = model
        self.architect = architect
        self.w_optimizer = w_optimizer
        self.grad_clip = grad_clip
        self.amp_dtype = amp_dtype
        self.perturbation = perturbation
        self.device = next(model.parameters()).device

    def __call__(self, batch_train: Batch, batch_val: Batch,
                 lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = (contextlib.nullcontext() if self.amp_dtype is None
               else torch.autocast(device_type=self.device.type, dtype=self.amp_dtype))
        with ctx:
            return search_step(self.model, self.architect, self.w_optimizer, batch_train,
                               batch_val, lr, self.grad_clip, self.perturbation)


def make_search_step(model: nn.Module, architect: Architect, w_optimizer: torch.optim.Optimizer,
                     grad_clip: float | None, amp_dtype: torch.dtype | None = None, *,
                     cuda_graphs: bool = False,
                     perturbation=None) -> "EagerSearchStep | GraphedSearchStep":
    """The search step object: graphed when ``cuda_graphs``, else eager.  Build it after a
    checkpoint is restored (the graphed step switches the arch optimizer's state).
    ``perturbation``: that of the weight step (:func:`nas_core.architect.search_step`; eager
    only: its noise is drawn on the host)."""
    if cuda_graphs:
        if perturbation is not None:
            raise ValueError("sdarts_epsilon: not with cuda_graphs (the weight step's noise is "
                             "drawn on the host every step)")
        return GraphedSearchStep(model, architect, w_optimizer, grad_clip, amp_dtype)
    return EagerSearchStep(model, architect, w_optimizer, grad_clip, amp_dtype, perturbation)


def _signature(*tensors: torch.Tensor) -> tuple:
    return tuple((t.shape, t.dtype, t.device, t.stride()) for t in tensors)


def _graph_key(signature: tuple, optimizers: tuple[torch.optim.Optimizer, ...],
               grad_clip: float | None, lr: float, penalty_weight: float = 0.0) -> tuple:
    """What a captured step bakes in: the batch layout, every plain hyperparameter of every
    optimizer group (the epoch's learning rates, momentum, weight decay, ...), the clip, the
    ``lr`` of the second-order virtual step and the weight of the alphas' penalty."""
    hyper = tuple(tuple((k, v) for k, v in sorted(g.items())
                        if k != "params" and isinstance(v, (bool, int, float, str, tuple)))
                  for opt in optimizers for g in opt.param_groups)
    return signature, hyper, grad_clip, float(lr), float(penalty_weight)


class GraphedSearchStep:
    """``step(batch_train, batch_val, lr) -> (loss, logits)`` (the object is called), like
    :class:`EagerSearchStep`, replayed from a CUDA graph.

    ``graph_steps`` / ``eager_steps`` count how the calls ran.
    """

    def __init__(self, model: nn.Module, architect: Architect,
                 w_optimizer: torch.optim.Optimizer, grad_clip: float | None,
                 amp_dtype: torch.dtype | None = None, warmup: int = 3):
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is None:
                raise ValueError(f"cuda_graphs: BatchNorm {name!r} has momentum=None (its "
                                 f"cumulative average is computed on the host)")
        if warmup < 1:
            raise ValueError(f"cuda_graphs: warmup must be >= 1, got {warmup}")
        params = list(model.parameters())
        if not params or not all(p.is_cuda for p in params):
            device = params[0].device if params else None
            raise ValueError(f"cuda_graphs: needs the model on a CUDA device, got {device}")
        self.model = model
        self.architect = architect
        self.w_optimizer = w_optimizer
        self.grad_clip = grad_clip
        self.amp_dtype = amp_dtype
        self.warmup = warmup
        _make_capturable(architect.arch_optimizer)
        self.device = params[0].device
        self._params = params
        self._graph: torch.cuda.CUDAGraph | None = None
        self._key: tuple | None = None
        self._inputs: list[torch.Tensor] = []
        self._outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._grads: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._side = torch.cuda.Stream(device=self.device)  # warm-up
        self._capture_stream = torch.cuda.Stream(device=self.device)  # on the model's device
        self.graph_steps = 0
        self.eager_steps = 0

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # cached casts of the weights would be baked into the graph stale: no cache
        return torch.autocast("cuda", dtype=self.amp_dtype, cache_enabled=False)

    def _eager(self, batch_train: Batch, batch_val: Batch, lr: float):
        self.eager_steps += 1
        with self._autocast():
            out = search_step(self.model, self.architect, self.w_optimizer, batch_train,
                              batch_val, lr, self.grad_clip)
        # the eager step set new .grad tensors: hand its values to the graph's, keep those
        for p, g in self._grads:
            if p.grad is not g:
                if p.grad is None:
                    g.zero_()
                else:
                    g.copy_(p.grad)
                p.grad = g
        return out

    def _capture(self, batch_train: Batch, batch_val: Batch, lr: float) -> None:
        self._graph = self._outputs = None  # the old graph's memory goes back first
        self._grads = []
        self._inputs = [t.detach().clone() for t in (*batch_train, *batch_val)]
        xt, yt, xv, yv = self._inputs
        # the gradients the graph writes are allocated inside it (static addresses)
        self.w_optimizer.zero_grad(set_to_none=True)
        self.architect.arch_optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the DataLoader's pin-memory thread keeps working during the capture
        with torch.cuda.graph(graph, stream=self._capture_stream,
                              capture_error_mode="thread_local"):
            with self._autocast():
                self._outputs = search_step(self.model, self.architect, self.w_optimizer,
                                            (xt, yt), (xv, yv), lr, self.grad_clip)
        self._graph = graph
        self._grads = [(p, p.grad) for p in self._params if p.grad is not None]

    def __call__(self, batch_train: Batch, batch_val: Batch,
                 lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.cuda.device(self.device):
            return self._call(batch_train, batch_val, lr)

    def _call(self, batch_train: Batch, batch_val: Batch,
              lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = (*batch_train, *batch_val)
        if self.eager_steps + self.graph_steps < self.warmup:
            # warm-up on a side stream (no lazy initialisation may happen during capture)
            self._side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side):
                out = self._eager(batch_train, batch_val, lr)
            torch.cuda.current_stream().wait_stream(self._side)
            return out
        key = _graph_key(_signature(*tensors),
                         (self.w_optimizer, self.architect.arch_optimizer), self.grad_clip, lr,
                         self.architect.penalty_weight)
        if self._graph is not None and key[0] != self._key[0] \
                and tensors[0].shape[0] <= self._inputs[0].shape[0]:
            return self._eager(batch_train, batch_val, lr)  # an epoch's last, smaller batch
        if self._graph is None or key != self._key:  # first, larger batch or new hyperparams
            self._capture(batch_train, batch_val, lr)
            self._key = key
        for static, t in zip(self._inputs, tensors):
            static.copy_(t, non_blocking=True)
        self._graph.replay()
        self.graph_steps += 1
        return self._outputs


def _make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Switch ``capturable`` on in every group (Adam: the step count lives on the parameters'
    device) and move existing step counts there (a restored checkpoint keeps them on the CPU)."""
    for group in optimizer.param_groups:
        if "capturable" not in group:
            raise ValueError(f"cuda_graphs: {type(optimizer).__name__} has no capturable mode")
        group["capturable"] = True
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state and state["step"].device != p.device:
                state["step"] = state["step"].to(p.device, torch.float32)
    optimizer._warned_capturable_if_run_uncaptured = True  # the warm-up steps run uncaptured

