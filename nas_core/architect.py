"""The DARTS bilevel architecture step (first and second order) and one full search step.

Second order (Liu et al. 2019, eq. 7-8): with the virtual step
``w' = w - lr * (momentum * buf + grad_w L_train(w) + wd * w)`` (the weight optimizer's momentum
buffer and weight decay), the alpha gradient is
``grad_a L_val(w', a) - lr * (grad_a L_train(w+) - grad_a L_train(w-)) / (2 * eps)`` with
``w+- = w +- eps * grad_w' L_val(w', a)`` and ``eps = 0.01 / ||grad_w' L_val||``.  The weights
are restored exactly (copied back from a backup).

BatchNorm running statistics: the first-order step runs one train-mode forward on the validation
batch, which updates them exactly as the original does.  The second-order step runs four
train-mode forwards, three of them at perturbed weights (the original updates the real model's
statistics three times); here every BatchNorm buffer is saved before and restored after, so the
second-order arch step leaves the running statistics untouched.

A penalty on the alphas (``Architect.penalty``, e.g. beta-DARTS' term of
:mod:`nas_core.guards`) adds ``penalty_weight * grad penalty(alphas)`` to the alpha gradient of
either order: the outer objective is ``L_val + penalty_weight * penalty``, whose second term
depends on the alphas only (``alphas_normal``, ``alphas_reduce``; not PC-DARTS' betas).

Both orders differentiate each loss once (the Hessian-vector product is a finite difference),
so they run on the supernet's lean BatchNorm (``SearchNetwork(..., lean_batchnorm=True)``, the
default); only code that differentiates twice (``create_graph=True``) needs
``lean_batchnorm=False``, and the lean BatchNorm raises a clear error there.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["Architect", "search_step", "frozen_batchnorm_stats", "LossFn"]


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm running statistic (mean, var, num_batches_tracked) on exit."""
    bufs = [buf for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for buf in m.buffers(recurse=False)]
    # one _foreach kernel instead of a detach and a clone per buffer (x * 1 is exact)
    with torch.no_grad():
        copies = torch._foreach_mul(bufs, 1) if bufs else []
    try:
        yield
    finally:
        with torch.no_grad():
            if bufs:
                torch._foreach_copy_(bufs, copies)


def _grad(loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Gradients of ``loss`` w.r.t. ``inputs``; zeros for inputs that do not affect it."""
    return torch.autograd.grad(loss, list(inputs), allow_unused=True, materialize_grads=True)


class Architect:
    """Updates the architecture parameters of ``model`` with Adam (``.arch_optimizer``).

    ``loss_fn(model(x), y)`` must return a scalar.  ``w_optimizer`` is the weight optimizer (SGD):
    the second-order step reads its momentum buffers and each parameter group's ``momentum`` and
    ``weight_decay`` (missing keys count as 0).  After ``step`` the alpha gradients stay in
    ``.grad`` of ``model.arch_parameters()``.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, w_optimizer: torch.optim.Optimizer,
                 order: int = 1, arch_lr: float = 3e-4,
                 arch_betas: tuple[float, float] = (0.5, 0.999),
                 arch_weight_decay: float = 1e-3):
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order!r}")
        if not arch_lr > 0:
            raise ValueError(f"arch_lr must be positive, got {arch_lr!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.w_optimizer = w_optimizer
        self.order = order
        #: data-parallel runs: ``grad_reduce(grads, "train" | "val")`` turns the gradients of
        #: this rank's part of a batch into those of the global batch, in place (called after
        #: every differentiation, before any use; None: one process)
        self.grad_reduce: Callable[[list[torch.Tensor], str], None] | None = None
        #: a differentiable function of the operation alphas (normal, reduce) added to the
        #: validation loss with ``penalty_weight`` (module docstring); None: none
        self.penalty: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None
        self.penalty_weight = 0.0
        self.arch_optimizer = torch.optim.Adam(model.arch_parameters(), lr=arch_lr,
                                               betas=arch_betas, weight_decay=arch_weight_decay)

    def _grad(self, loss: torch.Tensor, inputs: Sequence[torch.Tensor],
              batch: str) -> list[torch.Tensor]:
        grads = list(_grad(loss, inputs))
        if self.grad_reduce is not None:
            self.grad_reduce(grads, batch)
        return grads

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model(x), y)

    def step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
             y_val: torch.Tensor, lr: float) -> torch.Tensor:
        """One alpha update; ``lr`` is the weight learning rate of this step (second order).

        Returns the (detached) validation loss: at ``w`` (first order) or at ``w'`` (second).
        """
        alphas = list(self.model.arch_parameters())
        if self.order == 1:
            val_loss = self.loss(x_val, y_val)
            grads = self._grad(val_loss, alphas, "val")
        else:
            with frozen_batchnorm_stats(self.model):
                val_loss, grads = self._unrolled_grads(x_train, y_train, x_val, y_val, lr)
        if self.penalty is not None:  # the same on every rank: after the reduction
            ops = alphas[:2]
            with torch.enable_grad():
                extra = _grad(self.penalty(ops), ops)
            grads[:2] = [g + self.penalty_weight * e for g, e in zip(grads[:2], extra)]
        self.arch_optimizer.zero_grad(set_to_none=True)
        for a, g in zip(alphas, grads):
            a.grad = g
        self.arch_optimizer.step()
        return val_loss.detach()

    def _weights(self) -> list[nn.Parameter]:
        return [p for p in self.model.weight_parameters() if p.requires_grad]

    def _hyper(self, weights: Sequence[nn.Parameter]) -> list[tuple[float, float]]:
        """(momentum, weight_decay) of each weight, from its group in the weight optimizer."""
        group_of = {id(p): g for g in self.w_optimizer.param_groups for p in g["params"]}
        out = []
        for p in weights:
            g = group_of.get(id(p), {})
            out.append((float(g.get("momentum", 0.0)), float(g.get("weight_decay", 0.0))))
        return out

    def _unrolled_grads(self, x_train: torch.Tensor, y_train: torch.Tensor,
                        x_val: torch.Tensor, y_val: torch.Tensor,
                        lr: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
        weights = self._weights()
        alphas = list(self.model.arch_parameters())
        with torch.no_grad():  # one _foreach kernel (x * 1 is exact)
            backup = torch._foreach_mul(weights, 1)
        try:
            # virtual step w' = w - lr * (momentum * buf + g + wd * w), with _foreach kernels
            # over the weights that share (momentum, weight decay, has a buffer)
            grads = self._grad(self.loss(x_train, y_train), weights, "train")
            groups: dict[tuple[float, float, bool], list[tuple]] = {}
            for w, g, (momentum, wd) in zip(weights, grads, self._hyper(weights)):
                buf = self.w_optimizer.state.get(w, {}).get("momentum_buffer")
                groups.setdefault((momentum, wd, buf is not None), []).append((w, g, buf))
            with torch.no_grad():
                for (momentum, wd, has_buf), items in groups.items():
                    ws, gs, bufs = (list(t) for t in zip(*items))
                    step = torch._foreach_add(gs, ws, alpha=wd) if wd else list(gs)
                    if has_buf:
                        step = torch._foreach_add(step, bufs, alpha=momentum)
                    torch._foreach_add_(ws, step, alpha=-lr)
            del grads, groups
            val_loss = self.loss(x_val, y_val)
            g_all = self._grad(val_loss, alphas + weights, "val")
            d_alpha, v = list(g_all[:len(alphas)]), list(g_all[len(alphas):])
            # finite-difference Hessian-vector product around the original weights; eps stays
            # a device tensor (no host synchronisation: the step can be a CUDA graph)
            eps = 0.01 / torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v)))
            with torch.no_grad():
                torch._foreach_mul_(v, eps)  # v := eps * v
                torch._foreach_copy_(weights, torch._foreach_add(backup, v))
            g_pos = self._grad(self.loss(x_train, y_train), alphas, "train")
            with torch.no_grad():
                torch._foreach_copy_(weights, torch._foreach_sub(backup, v))
            g_neg = self._grad(self.loss(x_train, y_train), alphas, "train")
        finally:
            with torch.no_grad():
                torch._foreach_copy_(weights, backup)
        result = [da - lr * (gp - gn) / (2 * eps) for da, gp, gn in zip(d_alpha, g_pos, g_neg)]
        return val_loss, result


def search_step(model: nn.Module, architect: Architect, w_optimizer: torch.optim.Optimizer,
                batch_train: tuple[torch.Tensor, torch.Tensor],
                batch_val: tuple[torch.Tensor, torch.Tensor], lr: float,
                grad_clip: float | None,
                perturbation: Callable[[nn.Module], contextlib.AbstractContextManager] | None
                = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Arch step on ``batch_val``, then a weight step on ``batch_train``.

    Weight gradients are clipped to norm ``grad_clip`` (weights only; None or <= 0: no clipping);
    ``lr`` should be ``w_optimizer``'s current learning rate.  ``perturbation(model)``: the
    context the weight step's forward runs in (SDARTS-RS, :class:`nas_core.guards.
    RandomSmoothing`; None: the plain forward).  Returns the detached train loss and logits.
    """
    x_train, y_train = batch_train
    x_val, y_val = batch_val
    architect.step(x_train, y_train, x_val, y_val, lr)
    weights = [p for p in model.weight_parameters() if p.requires_grad]
    w_optimizer.zero_grad(set_to_none=True)
    with perturbation(model) if perturbation is not None else contextlib.nullcontext():
        logits = model(x_train)
    loss = architect.loss_fn(logits, y_train)
    # autograd.grad and assigning .grad: the same gradients as loss.backward(inputs=weights)
    # without one AccumulateGrad (and its detach) per weight tensor
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    for p, g in zip(weights, grads):
        p.grad = g
    if architect.grad_reduce is not None:
        architect.grad_reduce([p.grad for p in weights if p.grad is not None], "train")
    if grad_clip is not None and grad_clip > 0:
        nn.utils.clip_grad_norm_(weights, grad_clip)
    w_optimizer.step()
    return loss.detach(), logits.detach()
