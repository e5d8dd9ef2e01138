"""Collapse diagnostics of a DARTS search, every epoch (plain lists in and out: the report
reads them too).

DARTS' best-known failure: with longer searches the normal cell fills with parameter-free
operations, skip connections first, and the trained cell is worse than a random one (Zela et
al., ICLR 2020; P-DARTS; DARTS+; DARTS-; beta-DARTS).  Per epoch the search records, for the
derived normal and reduction cells, :func:`cell_diagnostics`: ``parameter_free`` (of the
cell's kept operations, :data:`nas_core.ops.PARAMETER_FREE`), ``skip`` (``skip_connect``),
``movement`` (max |softmax(alpha) - 1/K|, :mod:`nas_core.alpha_stats`) and ``entropy`` (the
mean over edges of the entropy of softmax(alpha), in nats: ``log K`` at uniform, 0 at one-hot);
with ``search.hessian_every`` the dominant eigenvalue of the validation loss's Hessian with
respect to the alphas (:mod:`nas_core.hessian`).

Warnings (:func:`warnings`): the normal cell holds more than :data:`SKIP_LIMIT` skip
connections (P-DARTS and DARTS+ keep at most 2), or the eigenvalue grew past R-DARTS' rule
(:func:`rdarts_rule`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from nas_core.alpha_stats import movement, weight_rows
from nas_core.ops import PARAMETER_FREE

__all__ = ["SKIP", "SKIP_LIMIT", "RDARTS_K", "RDARTS_WINDOW", "RDARTS_THRESHOLD", "entropy",
           "cell_diagnostics", "diagnostics", "epoch_note", "rdarts_rule", "warnings"]

SKIP = "skip_connect"
#: skip connections in a normal cell above which the search warns (P-DARTS, DARTS+: 2)
SKIP_LIMIT = 2
#: R-DARTS' early-stop rule (Zela et al. 2020, DARTS-ES): the local mean of the dominant
#: eigenvalue over RDARTS_WINDOW measurements, k = RDARTS_K measurements back, divided by
#: today's, below RDARTS_THRESHOLD (the eigenvalue grew by more than 1/0.75 = 1.33x)
RDARTS_K = 5
RDARTS_WINDOW = 5
RDARTS_THRESHOLD = 0.75


def entropy(weights: Any) -> float:
    """The mean over edges of ``-sum_k w_k log w_k`` (nats) of softmaxed ``weights``."""
    rows = weight_rows(weights)
    return sum(-sum(w * math.log(w) for w in row if w > 0) for row in rows) / len(rows)


def cell_diagnostics(weights: Any, ops: Sequence[str]) -> dict[str, Any]:
    """A cell's diagnostics from its softmaxed ``weights`` (edges x K) and the derived cell's
    kept ``ops``."""
    return {"parameter_free": sum(op in PARAMETER_FREE for op in ops),
            "skip": sum(op == SKIP for op in ops), "ops": len(ops),
            "movement": movement(weights), "entropy": entropy(weights)}


def diagnostics(normal: Any, reduce: Any, genotype: dict) -> dict[str, Any]:
    """``{"normal": ..., "reduce": ...}`` of one epoch (``genotype``: the derived cell as
    ``Genotype.to_dict()``)."""
    return {cell: cell_diagnostics(w, [op for op, _ in genotype[cell]])
            for cell, w in (("normal", normal), ("reduce", reduce))}


def epoch_note(diag: dict[str, Any], eigenvalue: float | None = None) -> str:
    """The short words of the epoch's console line."""
    n = diag["normal"]
    text = (f" | normal cell {n['parameter_free']}/{n['ops']} parameter-free "
            f"({n['skip']} skip), moved {n['movement']:.3f}, entropy {n['entropy']:.3f}")
    if eigenvalue is not None:
        text += f" | Hessian eigenvalue {eigenvalue:.4g}"
    return text


def rdarts_rule(eigenvalues: Sequence[float], k: int = RDARTS_K, window: int = RDARTS_WINDOW,
                threshold: float = RDARTS_THRESHOLD) -> float | None:
    """R-DARTS' criterion on the measured eigenvalues so far: the ratio
    ``mean(lambda[i-k-w+1 .. i-k]) / mean(lambda[i-w+1 .. i])`` (i the last measurement,
    local means over ``window``) when it is below ``threshold`` (the search should have
    stopped, and returned the architecture of measurement ``i - k``), else None.  Needs
    ``k + window`` measurements."""
    if len(eigenvalues) < k + window:
        return None
    now = sum(eigenvalues[-window:]) / window
    before = sum(eigenvalues[-k - window:len(eigenvalues) - k]) / window
    if now <= 0:
        return None
    ratio = before / now
    return ratio if ratio < threshold else None


def warnings(diag: dict[str, Any], eigenvalues: Sequence[float] = ()) -> list[str]:
    """The epoch's collapse warnings, one line each (none when all is well)."""
    out = []
    skips = diag["normal"]["skip"]
    if skips > SKIP_LIMIT:
        out.append(f"the normal cell holds {skips} skip connections (more than {SKIP_LIMIT}): "
                   f"DARTS' collapse to parameter-free operations; a longer search makes it "
                   f"worse")
    ratio = rdarts_rule(eigenvalues)
    if ratio is not None:
        out.append(f"the Hessian's dominant eigenvalue grew {1 / ratio:.2f}x over the last "
                   f"{RDARTS_K} measurements (R-DARTS stops the search at a growth past "
                   f"{1 / RDARTS_THRESHOLD:.2f}x and keeps the cell of {RDARTS_K} measurements "
                   f"before)")
    return out
