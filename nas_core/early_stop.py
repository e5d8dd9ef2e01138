"""Early stopping of a DARTS search: the guards against collapse that end it in time.

Each rule is a config key of the search block, off by default (DARTS as published):

* ``early_stop_skips: N`` -- DARTS+ (Liang et al., "DARTS+: Improved Differentiable
  Architecture Search with Early Stopping", 2019, criterion 1): stop after the first epoch
  whose derived normal cell holds at least N skip connections (the paper: 2).  The cell of
  that epoch is the search's result.
* ``early_stop_stable: K`` -- DARTS+ criterion 2: stop once the derived cells (normal and
  reduction) have stayed the same for K epochs (the paper: 10); the cell is the stable one.
* ``early_stop_hessian: true`` -- R-DARTS (Zela et al., ICLR 2020, "DARTS-ES"): stop when the
  dominant Hessian eigenvalue grew past :func:`nas_core.collapse.rdarts_rule`'s threshold;
  the result is the architecture of the measurement k back, before the growth (the search
  keeps those alphas and writes them).

:class:`EarlyStop` sees each epoch's figures and says whether and why to stop; its state is
plain values that the search keeps in its checkpoints, so a resumed run stops where the
uninterrupted one did.
"""

from __future__ import annotations

from typing import Any, Sequence

from nas_core.collapse import RDARTS_K, rdarts_rule

__all__ = ["EarlyStop"]


class EarlyStop:
    """The early-stop rules of one search (module docstring)."""

    def __init__(self, cfg: dict):
        self.skips = cfg.get("early_stop_skips")
        self.stable = cfg.get("early_stop_stable")
        self.hessian = bool(cfg.get("early_stop_hessian"))
        self.last: Any = None  # the previous epoch's cells
        self.unchanged = 0  # epochs the cells have stayed the same
        #: ``{"epoch", "reason", "keep"}`` once stopped (``keep``: the epoch whose alphas
        #: are the result), else None
        self.decision: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return bool(self.skips or self.stable or self.hessian)

    def update(self, epoch: int, genotype: dict, eigenvalues: Sequence[tuple[int, float]] = (),
               measured: bool = False) -> dict[str, Any] | None:
        """After epoch ``epoch`` (0-based) with its derived ``genotype`` (dict) and the
        eigenvalue measurements so far as ``(epoch, value)`` (``measured``: one was taken
        this epoch): the decision, or None to go on."""
        if self.decision is not None:
            return self.decision
        cells = (genotype["normal"], genotype["reduce"])
        self.unchanged = self.unchanged + 1 if cells == self.last else 0
        self.last = cells
        skips = sum(op == "skip_connect" for op, _ in genotype["normal"])
        if self.skips and skips >= self.skips:
            self.decision = {"epoch": epoch, "keep": epoch, "reason": (
                f"DARTS+: the normal cell holds {skips} skip connections "
                f"(early_stop_skips {self.skips})")}
        elif self.stable and self.unchanged >= self.stable:
            self.decision = {"epoch": epoch, "keep": epoch, "reason": (
                f"DARTS+: the derived cells have not changed for {self.unchanged} epochs "
                f"(early_stop_stable {self.stable})")}
        elif self.hessian and measured:
            ratio = rdarts_rule([v for _, v in eigenvalues])
            if ratio is not None:
                keep = int(eigenvalues[-1 - RDARTS_K][0])
                self.decision = {"epoch": epoch, "keep": keep, "reason": (
                    f"R-DARTS: the Hessian's dominant eigenvalue grew {1 / ratio:.2f}x over "
                    f"{RDARTS_K} measurements; the alphas of epoch {keep + 1} are kept")}
        return self.decision

    @classmethod
    def replay(cls, history: dict, rules: dict) -> tuple[dict | None, dict]:
        """The decision of ``rules`` (early-stop keys) over the epochs of an unstopped
        search's ``history.json`` and the genotype the stopped search would have written (the
        kept epoch's; the last epoch's when it never stops).  A search that stops is the
        unstopped one cut short, so this is what it computes, without running it."""
        stopper, eigenvalues = cls(rules), []
        epochs = history["epochs"]
        for rec in epochs:
            value = rec.get("collapse", {}).get("hessian_eigenvalue")
            if value is not None:
                eigenvalues.append([int(rec["epoch"]), float(value)])
            decision = stopper.update(int(rec["epoch"]), rec["genotype"], eigenvalues,
                                      measured=value is not None)
            if decision is not None:
                return decision, epochs[decision["keep"]]["genotype"]
        return None, epochs[-1]["genotype"]

    def state(self) -> dict[str, Any]:
        return {"unchanged": self.unchanged, "last": self.last, "decision": self.decision}

    def load(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.unchanged = int(state.get("unchanged", 0))
        last = state.get("last")
        self.last = None if last is None else tuple(last)
        self.decision = state.get("decision")
