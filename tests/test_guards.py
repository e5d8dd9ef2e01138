"""The training-time collapse guards: beta-DARTS' term, DARTS-'s auxiliary skip, SDARTS-RS'
perturbation, their schedules, the robust preset and the search that runs them."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from nas_core import guards
from nas_core.architect import Architect, search_step
from nas_core.config import ROBUST_PRESET, ConfigError, validate_stage_cfg
from nas_core.model_search import SearchNetwork, clip_to_simplex
from nas_core.ops import PRIMITIVES
from nas_core.stages import run_search

SKIP = PRIMITIVES.index("skip_connect")


def _net(**kw) -> SearchNetwork:
    torch.manual_seed(0)
    model = SearchNetwork(2, 4, 3, 3, steps=2, multiplier=2, **kw).double().train()
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_(0, 0.7)
    return model


def test_beta_decay_term_and_gradient_by_hand():
    """L_beta = mean over the edges of both cells of log(sum_k exp(alpha_k)); its gradient is
    softmax(alpha_e) / (number of edges)."""
    a = torch.tensor([[0.0, 1.0, -1.0], [2.0, 2.0, 2.0]], dtype=torch.float64,
                     requires_grad=True)
    b = torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    by_hand = (math.log(1 + math.e + math.exp(-1)) + (2 + math.log(3))
               + math.log(math.exp(0.5) + 2)) / 3
    term = guards.beta_decay_term([a, b])
    assert term.item() == pytest.approx(by_hand, rel=1e-12)
    ga, gb = torch.autograd.grad(term, [a, b])
    e = [1, math.e, math.exp(-1)]
    assert ga[0].tolist() == pytest.approx([v / sum(e) / 3 for v in e], rel=1e-12)
    assert ga[1].tolist() == pytest.approx([1 / 9] * 3, rel=1e-12)
    d = math.exp(0.5) + 2
    assert gb[0].tolist() == pytest.approx([math.exp(0.5) / d / 3, 1 / d / 3, 1 / d / 3],
                                           rel=1e-12)


@pytest.mark.parametrize("order", [1, 2])
def test_the_penalty_adds_its_weighted_gradient_to_the_alpha_step(order):
    """With beta-DARTS' term at weight 3, the alpha gradient of either order is the plain
    one plus 3 * softmax(alpha) / edges on the operation alphas (PC-DARTS' betas untouched)."""
    grads = []
    for weight in (None, 3.0):
        model = _net(partial_channels=2)
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9)
        arch = Architect(model, F.cross_entropy, w_opt, order=order)
        if weight is not None:
            arch.penalty, arch.penalty_weight = guards.beta_decay_term, weight
        torch.manual_seed(1)
        batch = [torch.randn(4, 2, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,))]
        arch.step(*batch, *batch, lr=0.1)
        grads.append([p.grad.clone() for p in model.arch_parameters()])
        alphas = [p.detach() for p in model.arch_parameters()[:2]]
    edges = sum(a.shape[0] for a in alphas)
    for plain, guarded, alpha in zip(grads[0][:2], grads[1][:2], alphas):
        torch.testing.assert_close(guarded - plain, 3.0 * alpha.softmax(-1) / edges,
                                   rtol=1e-9, atol=1e-12)
    for plain, guarded in zip(grads[0][2:], grads[1][2:]):
        torch.testing.assert_close(guarded, plain, rtol=0, atol=0)


def test_aux_skip_edge_at_weight_one_is_the_mixed_op_plus_identity():
    """DARTS-: at weight 1 each stride-1 edge computes mixed_op(x) + x; a normal cell of the
    auxiliary supernet equals a hand-written cell whose every edge adds its input; at weight 0
    the supernet is the plain one; the batched path agrees."""
    plain, aux = _net(), _net(aux_skip=True)
    aux.load_state_dict(plain.state_dict())
    assert aux.aux_skip == 1.0 and set(aux.state_dict()) == set(plain.state_dict())
    cell = plain.cells[0]
    assert not cell.reduction
    torch.manual_seed(2)
    s0 = s1 = plain.stem(torch.randn(3, 2, 8, 8, dtype=torch.float64))
    w = plain.alphas_normal.softmax(-1).detach()
    mixed = cell._ops[0]
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(mixed(x, w[0] + F.one_hot(torch.tensor(SKIP), w.shape[1])),
                               mixed(x, w[0]) + x)
    # the cell by hand: node i = sum over its edges j of mixed_j(h_j) + h_j
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    e = 0
    for _ in range(cell.steps):
        node = sum(cell._ops[e + j](h, w[e + j]) + h for j, h in enumerate(states))
        e += len(states)
        states.append(node)
    by_hand = torch.cat(states[-cell.multiplier:], dim=1)
    onehot = aux.aux_skip_weight
    torch.testing.assert_close(cell(s0, s1, w + onehot), by_hand)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    assert not torch.allclose(aux(x), plain(x))
    aux.set_aux_skip(0.0)
    assert aux.aux_skip == 0.0
    torch.testing.assert_close(aux(x), plain(x), rtol=0, atol=0)
    aux.set_aux_skip(0.4)
    batched = _net(aux_skip=True, batched_edges=True)
    batched.load_state_dict(plain.state_dict())
    batched.set_aux_skip(0.4)
    torch.testing.assert_close(batched(x), aux(x), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="skip_connect"):
        SearchNetwork(2, 4, 3, 3, primitives=("none", "sep_conv_3x3"), aux_skip=True)


def test_clip_to_simplex():
    w = torch.tensor([[0.5, -0.2, 0.9], [-0.1, -0.3, -0.05], [0.2, 0.3, 0.5]])
    out = clip_to_simplex(w)
    torch.testing.assert_close(out[0], torch.tensor([0.5, 0.0, 0.9]) / 1.4)
    assert out[1].tolist() == [0.0, 0.0, 1.0]  # all clamped: one-hot at the largest
    torch.testing.assert_close(out[2], w[2])


def test_perturbed_forward_runs_on_the_noisy_weights_and_leaves_the_alphas():
    """Inside ``perturbed`` the supernet computes with clip(softmax(alpha) + noise), i.e. as a
    supernet whose alphas are the log of those weights; the alphas get no gradient from the
    weight step; outside it the forward is the plain one again."""
    model, twin = _net(), _net()
    noise = [torch.empty_like(a).uniform_(-0.1, 0.1) for a in model.arch_parameters()]
    p = [clip_to_simplex(a.softmax(-1).detach() + n)
         for a, n in zip(model.arch_parameters(), noise)]
    with torch.no_grad():
        twin.alphas_normal.copy_(p[0].log())
        twin.alphas_reduce.copy_(p[1].log())
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    plain = model(x)
    with model.perturbed(noise):
        noisy = model(x)
    torch.testing.assert_close(noisy, twin(x), rtol=1e-9, atol=1e-12)
    assert torch.autograd.grad(noisy.sum(), model.alphas_normal, allow_unused=True)[0] is None
    torch.testing.assert_close(model(x), plain, rtol=0, atol=0)


def test_random_smoothing_in_the_weight_step():
    """search_step with SDARTS-RS' perturbation: the weight step's loss is that of the
    perturbed forward; the noise is bounded by epsilon, reproducible from the seed and its
    state, and differs step to step."""
    smooth = guards.RandomSmoothing(seed=5)
    smooth.epsilon = 0.2
    model = _net()
    draws = []
    for _ in range(2):
        state = smooth.state()
        with smooth(model):
            draws.append([n.clone() for n in model._noise])
        again = guards.RandomSmoothing(seed=0)
        again.epsilon = 0.2
        again.load(state)
        with again(model):
            assert all(torch.equal(a, b) for a, b in zip(model._noise, draws[-1]))
    assert all(float(n.abs().max()) <= 0.2 for n in draws[0])
    assert not torch.equal(draws[0][0], draws[1][0])
    fresh = guards.RandomSmoothing(seed=5)
    fresh.epsilon = 0.2
    with fresh(model):
        assert torch.equal(model._noise[0], draws[0][0])

    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.0)
    arch = Architect(model, F.cross_entropy, w_opt, arch_lr=1e-12)
    batch = (torch.randn(4, 2, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,)))
    smooth.load(state)
    loss, _ = search_step(model, arch, w_opt, batch, batch, 0.0, None, perturbation=smooth)
    smooth.load(state)
    with smooth(model):
        expected = F.cross_entropy(model(batch[0]), batch[1])
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_schedules():
    assert [guards.beta_decay_weight(25.0, e, 50) for e in (0, 1, 49)] == [0.0, 0.5, 24.5]
    assert [guards.aux_skip_weight(e, 4) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert guards.sdarts_epsilon(0.3, 0, 10) == pytest.approx(0.03)
    assert guards.sdarts_epsilon(0.3, 5, 10) == pytest.approx(0.165)


def test_robust_preset_and_guard_keys():
    cfg = validate_stage_cfg("search", {"robust": True})
    for key, value in ROBUST_PRESET.items():
        assert cfg[key] == value
    assert validate_stage_cfg("search", {})["beta_decay"] == 0.0
    key, value = next(iter(ROBUST_PRESET.items()))
    own = {"robust": True, key: value / 2 if isinstance(value, float) else value}
    assert validate_stage_cfg("search", own)[key] == own[key]  # the block's own value wins
    with pytest.raises(ConfigError, match=r"^search\.beta_decay: .*random_ws"):
        validate_stage_cfg("search", {"method": "random_ws", "beta_decay": 1.0})
    with pytest.raises(ConfigError, match=r"^search\.sdarts_epsilon"):
        validate_stage_cfg("search", {"sdarts_epsilon": 2.0})


def test_a_guarded_search_records_the_epochs_weights(tmp_path):
    """history.json's epochs carry the guards' weights of that epoch, by their schedules."""
    cfg = {"epochs": 2, "layers": 2, "init_channels": 4, "steps": 2, "multiplier": 2,
           "batch_size": 16, "max_steps_per_epoch": 2, "num_workers": 0, "beta_decay": 10.0,
           "aux_skip": True, "sdarts_epsilon": 0.3}
    run_search({"name": "digits"}, cfg, tmp_path, device="cpu")
    epochs = json.loads((tmp_path / "history.json").read_text())["epochs"]
    assert [r["guards"] for r in epochs] == [
        {"beta_decay": 0.0, "aux_skip": 1.0, "sdarts_epsilon": pytest.approx(0.03)},
        {"beta_decay": 5.0, "aux_skip": 0.5, "sdarts_epsilon": pytest.approx(0.165)}]
