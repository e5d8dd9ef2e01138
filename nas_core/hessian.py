"""The dominant eigenvalue of the validation loss's Hessian with respect to the alphas.

Zela et al., "Understanding and Robustifying Differentiable Architecture Search" (ICLR 2020,
R-DARTS) show that DARTS' failing searches coincide with a growing dominant eigenvalue of
``d^2 L_valid / d alpha^2``; :mod:`nas_core.collapse` holds their early-stop rule over it.

:func:`dominant_eigenvalue` is plain power iteration on Hessian-vector products through
autograd (``v <- Hv / |Hv|``, ``lambda = v . Hv``, a fixed number of iterations from a seeded
start, so the same parameters give the same value).  :func:`supernet_eigenvalue` applies it to
a supernet's architecture parameters on a fixed list of batches, through a twin of the
network on the plain path (``lean_batchnorm=False``, ``fuse_node_sums=False``: the lean
kernels are once differentiable), in training mode as the alpha step sees the loss; the
supernet itself is left untouched (its BatchNorm statistics too).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["HESSIAN_ITERS", "hessian_vector_product", "dominant_eigenvalue",
           "supernet_eigenvalue", "plain_twin"]

#: power iterations per estimate (R-DARTS' own code uses 20 as well)
HESSIAN_ITERS = 20


def hessian_vector_product(loss_fn: Callable[[], torch.Tensor],
                           params: Sequence[torch.Tensor],
                           v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``H v`` of ``loss_fn()`` at ``params`` (double backward through autograd)."""
    params = list(params)
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True, allow_unused=True)
    used = [k for k, g in enumerate(grads) if g is not None and g.requires_grad]
    out = [torch.zeros_like(p) for p in params]  # a parameter the loss is linear in: 0
    if used:
        hv = torch.autograd.grad([grads[k] for k in used], params,
                                 grad_outputs=[v[k] for k in used], allow_unused=True)
        out = [o if h is None else h.detach() for o, h in zip(out, hv)]
    return out


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def dominant_eigenvalue(hvp: Callable[[list[torch.Tensor]], list[torch.Tensor]],
                        params: Sequence[torch.Tensor], *, iters: int = HESSIAN_ITERS,
                        seed: int = 0) -> float:
    """The eigenvalue of largest magnitude of the Hessian whose products ``hvp(v)`` gives,
    by ``iters`` power iterations from a start drawn under ``seed`` (``v . Hv`` of the last
    unit vector: the Rayleigh quotient)."""
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    gen = torch.Generator().manual_seed(int(seed))
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for p in params]
    norm = torch.sqrt(_dot(v, v))
    v = [x / norm for x in v]
    value = torch.zeros(())
    for _ in range(iters):
        hv = hvp(v)
        value = _dot(v, hv)
        norm = torch.sqrt(_dot(hv, hv))
        if float(norm) == 0.0:
            return 0.0
        v = [x / norm for x in hv]
    return float(value)


def plain_twin(model) -> torch.nn.Module:
    """A copy of the supernet ``model`` on the plain, twice differentiable path (same
    parameters and buffers, same device and dtype)."""
    from nas_core.model_search import SearchNetwork
    twin = SearchNetwork(model.in_channels, model.channels, model.num_outputs, model.layers,
                         model.steps, model.multiplier,
                         stem_multiplier=model.stem[0].out_channels // model.channels,
                         primitives=model.primitives, partial_channels=model.partial_channels,
                         lean_batchnorm=False, fuse_node_sums=False,
                         aux_skip=model.aux_skip is not None)
    ref = next(model.parameters())
    twin = twin.to(device=ref.device, dtype=ref.dtype)
    twin.load_state_dict(model.state_dict())
    if model.aux_skip is not None:  # a buffer outside the state dict
        twin.set_aux_skip(model.aux_skip)
    return twin.train()


def supernet_eigenvalue(model, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                        iters: int = HESSIAN_ITERS, seed: int = 0) -> float:
    """The dominant eigenvalue of the mean loss over ``batches`` (``(x, y)`` on the device)
    with respect to ``model.arch_parameters()`` (alphas, and betas under PC-DARTS)."""
    if not batches:
        raise ValueError("supernet_eigenvalue needs at least one batch")
    twin = plain_twin(model)
    params = twin.arch_parameters()

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        total = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            part = hessian_vector_product(lambda: loss(twin(x), y), params, v)
            total = [t + h / len(batches) for t, h in zip(total, part)]
        return total

    with torch.enable_grad():
        return dominant_eigenvalue(hvp, params, iters=iters, seed=seed)
