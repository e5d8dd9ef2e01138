"""The architect: second-order math against exact autograd, and agreement with the reference."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from darts_shared import load_reference
from nas_core.architect import Architect, frozen_batchnorm_stats, search_step
from nas_core.model_search import SearchNetwork


def batches(n: int, in_channels: int = 3, classes: int = 3, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, in_channels, size, size, generator=g),
             torch.randint(0, classes, (4,), generator=g)) for _ in range(n)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- (a) second order against the exact Hessian-vector product ----------------------------------
SMOOTH_PRIMITIVES = ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def smooth_network(lean_batchnorm: bool = True) -> SearchNetwork:
    """A tiny float64 supernet without kinks (ReLU -> Softplus, no max pooling).

    With ReLU / max pooling a tiny network has kinks within the finite-difference radius
    (eps * ||v|| = 0.01): the alpha gradient jumps there, and the central difference measures
    the jump, not the Hessian.  The architect's math is what is tested here, so the network is
    made smooth; agreement on the real primitives is checked against the reference below.
    """
    model = SearchNetwork(1, 4, 3, 3, steps=2, multiplier=2, primitives=SMOOTH_PRIMITIVES,
                          lean_batchnorm=lean_batchnorm)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Softplus())
    model.replan()
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    return model.double()


def test_second_order_matches_exact_hessian_vector_product() -> None:
    # the exact Hessian-vector product differentiates twice: plain BatchNorm (the lean one is
    # once differentiable by design and refuses)
    torch.manual_seed(0)
    model = smooth_network(lean_batchnorm=False)
    lr, momentum, wd = 0.1, 0.9, 3e-4
    w_opt = torch.optim.SGD(model.weight_parameters(), lr, momentum=momentum, weight_decay=wd)
    (xt, yt), (xv, yv), (x0, y0) = [(x.double(), y) for x, y in batches(3, in_channels=1)]
    # one weight step first, so that momentum buffers exist
    F.cross_entropy(model(x0), y0).backward()
    w_opt.step()
    w_opt.zero_grad()

    names = [n for n, p in model.named_parameters() if not n.startswith("alphas")]
    params = dict(model.named_parameters())
    alphas = model.arch_parameters()
    with frozen_batchnorm_stats(model):
        weights = [params[n] for n in names]
        g = torch.autograd.grad(F.cross_entropy(model(xt), yt), weights, create_graph=True)
        unrolled = {n: w - lr * (momentum * w_opt.state[w]["momentum_buffer"] + gw + wd * w)
                    for n, w, gw in zip(names, weights, g)}
        val = F.cross_entropy(functional_call(model, {**params, **unrolled}, (xv,)), yv)
        exact = torch.autograd.grad(val, alphas)  # d/d alpha through w'(alpha): exact
        detached = {n: w.detach() for n, w in unrolled.items()}
        val_partial = F.cross_entropy(functional_call(model, {**params, **detached}, (xv,)), yv)
        partial = torch.autograd.grad(val_partial, alphas)  # grad_alpha L_val(w', alpha) only

    before = {k: v.clone() for k, v in model.state_dict().items()}
    architect = Architect(model, F.cross_entropy, w_opt, order=2)
    architect.step(xt, yt, xv, yv, lr)
    ours = [a.grad for a in alphas]

    for o, e, p in zip(ours, exact, partial):
        hessian_term_exact = e - p
        assert hessian_term_exact.norm() > 1e-3 * p.norm()  # the test is not vacuous
        assert rel_err(o - p, hessian_term_exact) < 1e-2
        assert rel_err(o, e) < 1e-2
    # weights restored exactly, BN statistics untouched; only the alphas moved
    after = model.state_dict()
    for k, v in before.items():
        if k.startswith("alphas"):
            assert not torch.equal(after[k], v)
        else:
            assert torch.equal(after[k], v), k


def test_first_order_gradient_is_validation_gradient() -> None:
    torch.manual_seed(0)
    model = SearchNetwork(1, 4, 3, 3, steps=2, multiplier=2)
    (xt, yt), (xv, yv) = batches(2, in_channels=1)
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.1)
    expected = torch.autograd.grad(F.cross_entropy(model(xv), yv), model.arch_parameters())
    architect = Architect(model, F.cross_entropy, w_opt, order=1)
    architect.step(xt, yt, xv, yv, 0.1)
    for a, e in zip(model.arch_parameters(), expected):
        torch.testing.assert_close(a.grad, e)
    assert all(p.grad is None for p in model.weight_parameters())  # weights left alone


# -- (b) agreement with the reference implementation --------------------------------------------
def twins(ref_mod: ModuleType, order: int, steps: int = 3):
    torch.manual_seed(0)
    ref = ref_mod.SearchNetwork(3, 4, 3, 3, steps=steps, multiplier=steps)
    ours = SearchNetwork(3, 4, 3, 3, steps=steps, multiplier=steps)
    ours.load_state_dict(ref.state_dict(), strict=True)
    lr, momentum, wd = 0.025, 0.9, 3e-4
    searcher = ref_mod.Searcher(ref, order=order, lr=lr, momentum=momentum, wd=wd,
                                arch_lr=3e-4, arch_wd=1e-3)
    # the reference applies weight decay inside SGD: so do we
    w_opt = torch.optim.SGD(ours.weight_parameters(), lr, momentum=momentum, weight_decay=wd)
    architect = Architect(ours, F.cross_entropy, w_opt, order=order, arch_lr=3e-4,
                          arch_betas=(0.5, 0.999), arch_weight_decay=1e-3)
    return ref, searcher, ours, w_opt, architect, lr


def test_first_order_step_matches_reference() -> None:
    ref_mod = load_reference()
    ref, searcher, ours, w_opt, architect, lr = twins(ref_mod, order=1)
    data = batches(6)
    initial_alphas = ours.alphas_normal.detach().clone()
    for i in range(3):
        (xt, yt), (xv, yv) = data[2 * i], data[2 * i + 1]
        ref_loss = searcher.step(xt, yt, xv, yv)
        loss, logits = search_step(ours, architect, w_opt, (xt, yt), (xv, yv), lr, 5.0)
        assert logits.shape == (4, 3)
        assert abs(loss.item() - ref_loss) <= 1e-6 * abs(ref_loss)
    ref_state = ref.state_dict()
    for k, v in ours.state_dict().items():  # weights, alphas and BN running statistics
        torch.testing.assert_close(v, ref_state[k], rtol=1e-5, atol=1e-7, msg=k)
    # the alphas did move: 3 Adam steps of up to arch_lr (3e-4) each
    assert (ours.alphas_normal.detach() - initial_alphas).abs().max() > 5e-4


def test_second_order_matches_reference() -> None:
    ref_mod = load_reference()
    ref, searcher, ours, w_opt, architect, lr = twins(ref_mod, order=2)
    (xt, yt), (xv, yv), (xt2, yt2), (xv2, yv2) = batches(4)
    # a full step (the reference's first unrolled step has no momentum buffer yet)
    ref_loss = searcher.step(xt, yt, xv, yv)
    loss, _ = search_step(ours, architect, w_opt, (xt, yt), (xv, yv), lr, 5.0)
    assert abs(loss.item() - ref_loss) <= 1e-6 * abs(ref_loss)
    ref_params = dict(ref.named_parameters())
    for k, v in ours.named_parameters():
        torch.testing.assert_close(v, ref_params[k], rtol=1e-5, atol=1e-7, msg=k)
    # the alpha gradients of a second unrolled step, with momentum buffers in play
    searcher.a_opt.zero_grad()
    searcher._unrolled_arch_grad(xt2, yt2, xv2, yv2)
    architect.step(xt2, yt2, xv2, yv2, lr)
    for a, r in zip(ours.arch_parameters(), ref.arch_parameters()):
        assert rel_err(a.grad, r.grad) < 1e-4


# -- behaviour ----------------------------------------------------------------------------------
def test_search_step_clips_only_weights() -> None:
    torch.manual_seed(0)
    model = SearchNetwork(1, 4, 3, 3, steps=2, multiplier=2)
    lr, clip = 0.5, 1e-3
    w_opt = torch.optim.SGD(model.weight_parameters(), lr)  # plain SGD: dw = -lr * g
    architect = Architect(model, F.cross_entropy, w_opt, order=1)
    (xt, yt), (xv, yv) = batches(2, in_channels=1)
    expected_alpha_grad = torch.autograd.grad(F.cross_entropy(model(xv), yv),
                                              model.arch_parameters())
    before = [p.detach().clone() for p in model.weight_parameters()]
    search_step(model, architect, w_opt, (xt, yt), (xv, yv), lr, clip)
    step = torch.cat([(p.detach() - b).flatten()
                      for p, b in zip(model.weight_parameters(), before)])
    assert abs(step.norm().item() - lr * clip) < 1e-3 * lr * clip
    # the alphas keep their own (unclipped, validation) gradient; the weight step adds nothing
    for a, e in zip(model.arch_parameters(), expected_alpha_grad):
        torch.testing.assert_close(a.grad, e)
        assert a.grad.norm() > clip


def test_architect_on_regression_and_partial_channels() -> None:
    torch.manual_seed(0)
    model = SearchNetwork(1, 8, 1, 3, steps=2, multiplier=2, partial_channels=2)
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.1, momentum=0.9)
    architect = Architect(model, lambda out, y: F.mse_loss(out.squeeze(1), y), w_opt, order=2)
    assert len(architect.arch_optimizer.param_groups[0]["params"]) == 4  # alphas and betas
    x, y = torch.randn(4, 1, 12, 20), torch.randn(4)
    betas = model.betas_normal.detach().clone()
    loss, logits = search_step(model, architect, w_opt, (x, y), (x, y), 0.1, 5.0)
    assert logits.shape == (4, 1) and torch.isfinite(loss)
    assert not torch.equal(model.betas_normal.detach(), betas)


def test_first_order_updates_bn_statistics_like_one_forward() -> None:
    torch.manual_seed(0)
    model = SearchNetwork(1, 4, 3, 3, steps=2, multiplier=2)
    twin = SearchNetwork(1, 4, 3, 3, steps=2, multiplier=2)
    twin.load_state_dict(model.state_dict())
    (xt, yt), (xv, yv) = batches(2, in_channels=1)
    Architect(model, F.cross_entropy, torch.optim.SGD(model.weight_parameters(), 0.1)).step(
        xt, yt, xv, yv, 0.1)
    with torch.no_grad():
        twin(xv)
    torch.testing.assert_close(model.stem[1].running_mean, twin.stem[1].running_mean)
    assert int(model.stem[1].num_batches_tracked) == 1


def test_arch_optimizer_settings_and_bad_order() -> None:
    model = SearchNetwork(1, 4, 3, 3, steps=2, multiplier=2)
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.1)
    architect = Architect(model, F.cross_entropy, w_opt, arch_lr=1e-2, arch_betas=(0.1, 0.2),
                          arch_weight_decay=0.5)
    group = architect.arch_optimizer.param_groups[0]
    assert isinstance(architect.arch_optimizer, torch.optim.Adam)
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-2, (0.1, 0.2), 0.5)
    with pytest.raises(ValueError, match="order must be 1 or 2, got 3"):
        Architect(model, F.cross_entropy, w_opt, order=3)
