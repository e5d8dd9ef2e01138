"""Guards against collapse that act while the supernet trains: each a config key of the search
block, off by default (DARTS as published), with the paper's rule and schedule.

* ``beta_decay: L`` -- beta-DARTS (Ye et al., "beta-DARTS: Beta-Decay Regularization for
  Differentiable Architecture Search", CVPR 2022): the alpha step minimises
  ``L_val + lambda_e * L_beta`` with ``L_beta`` the mean over the edges of both cells of
  ``logsumexp_k alpha_{e,k}`` (the smoothmax, :func:`beta_decay_term`; its gradient is
  ``softmax(alpha_e) / edges``, which decays large alphas and keeps them close together) and
  ``lambda_e = L * e / epochs`` ramped linearly from 0 over the epochs ``e`` (0-based); the
  paper's code uses ``50 * e / 100`` over 50 epochs, i.e. ``L = 25``.
* ``aux_skip: true`` -- DARTS- (Chu et al., "DARTS-: Robustly Stepping out of Performance
  Collapse Without Indicators", ICLR 2021): an auxiliary skip connection on every edge with
  the weight ``beta_e = 1 - e / epochs`` (linear decay from 1 towards 0, the paper's default
  schedule), which takes over the skip connections' advantage in training so that the alphas
  of ``skip_connect`` no longer need to grow; the genotype is derived from the alphas alone.
  Mechanics: :class:`nas_core.model_search.SearchNetwork` (``aux_skip``).
* ``sdarts_epsilon: E`` -- SDARTS-RS (Chen & Hsieh, "Stabilizing Differentiable Architecture
  Search via Perturbation-based Regularization", ICML 2020, random smoothing): each weight
  step runs on ``softmax(alpha) + u``, ``u ~ U[-eps_e, eps_e]`` per entry, clipped back to the
  simplex, with ``eps_e = 0.03 + (E - 0.03) * e / epochs`` (the paper's ramp; E = 0.3): the
  weights are trained to work for a neighbourhood of the alphas, which flattens the
  validation loss there (the Hessian's dominant eigenvalue stays small).  The noise comes from
  a generator of its own (``noise_seed``: the same on every data-parallel rank; its state is
  kept in checkpoints).

:class:`Guards` applies them to one search: the epoch's weights (``begin_epoch``, whose
values go into the epoch's history record) and the checkpointed state.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["Guards", "beta_decay_term", "beta_decay_weight", "aux_skip_weight",
           "sdarts_epsilon", "RandomSmoothing"]

#: SDARTS-RS' epsilon at the first epoch (the paper's code)
SDARTS_EPS0 = 0.03


def beta_decay_term(alphas: Sequence[torch.Tensor]) -> torch.Tensor:
    """beta-DARTS' ``L_beta``: the mean over every edge (rows of every tensor of ``alphas``,
    edges x ops) of ``logsumexp`` of the edge's alphas."""
    return torch.cat([a.logsumexp(dim=-1) for a in alphas]).mean()


def beta_decay_weight(final: float, epoch: int, epochs: int) -> float:
    """``lambda`` of epoch ``epoch`` (0-based): ``final * epoch / epochs``."""
    return final * epoch / epochs


def aux_skip_weight(epoch: int, epochs: int) -> float:
    """DARTS-'s auxiliary skip weight of epoch ``epoch``: ``1 - epoch / epochs``."""
    return 1.0 - epoch / epochs


def sdarts_epsilon(final: float, epoch: int, epochs: int) -> float:
    """SDARTS-RS' noise bound of epoch ``epoch``: ``0.03 + (final - 0.03) * epoch / epochs``."""
    return SDARTS_EPS0 + (final - SDARTS_EPS0) * epoch / epochs


class RandomSmoothing:
    """SDARTS-RS' perturbation of the weight step: ``perturbation(model)`` is the context the
    weight step's forward runs in (:meth:`SearchNetwork.perturbed` with fresh noise)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(int(seed))
        self.epsilon = SDARTS_EPS0

    def __call__(self, model):
        eps = self.epsilon
        noise = [torch.empty(a.shape, dtype=torch.float32).uniform_(-eps, eps,
                                                                     generator=self.generator)
                 for a in (model.alphas_normal, model.alphas_reduce)]
        return model.perturbed(noise)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load(self, state: torch.Tensor | None) -> None:
        if state is not None:
            self.generator.set_state(state)


class Guards:
    """The training-time guards of one search block ``cfg`` on ``model`` and its
    ``architect`` (module docstring); inactive ones cost nothing.  ``noise_seed`` seeds
    SDARTS-RS' generator."""

    def __init__(self, cfg: dict, model, architect, noise_seed: int = 0):
        self.epochs = int(cfg["epochs"])
        self.beta_decay = float(cfg.get("beta_decay") or 0.0)
        self.aux_skip = bool(cfg.get("aux_skip"))
        self.sdarts = float(cfg.get("sdarts_epsilon") or 0.0)
        self.model, self.architect = model, architect
        if self.beta_decay:
            architect.penalty = beta_decay_term
        self.smoothing = RandomSmoothing(noise_seed) if self.sdarts else None

    @property
    def perturbation(self) -> RandomSmoothing | None:
        """What the weight step runs in (:func:`nas_core.architect.search_step`), or None."""
        return self.smoothing

    def begin_epoch(self, epoch: int) -> dict[str, Any]:
        """Set the epoch's weights; returns them for the epoch's record (``guards``)."""
        out: dict[str, Any] = {}
        if self.beta_decay:
            out["beta_decay"] = self.architect.penalty_weight = beta_decay_weight(
                self.beta_decay, epoch, self.epochs)
        if self.aux_skip:
            out["aux_skip"] = aux_skip_weight(epoch, self.epochs)
            self.model.set_aux_skip(out["aux_skip"])
        if self.smoothing is not None:
            out["sdarts_epsilon"] = self.smoothing.epsilon = sdarts_epsilon(
                self.sdarts, epoch, self.epochs)
        return {"guards": out} if out else {}

    def state(self) -> dict[str, Any]:
        return {"sdarts_rng": self.smoothing.state()} if self.smoothing is not None else {}

    def load(self, ckpt: dict[str, Any]) -> None:
        if self.smoothing is not None:
            self.smoothing.load(ckpt.get("sdarts_rng"))
