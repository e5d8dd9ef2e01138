"""How far a search's architecture weights moved, in one place for the console and the report.

DARTS starts every edge's softmax(alpha) at the uniform ``1 / K`` (K operations) and derives
the cell from the largest weights.  While the weights of the normal cell stay within
:data:`MOVED` of uniform (``max |w - 1/K| < MOVED``), the kept operations are decided by
differences smaller than the search's own noise: close to a random pick.  The band is absolute
(0.05: for the eight DARTS operations 40 % of the uniform 0.125); the search's last console
line and the report's alpha heatmaps both use it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MOVED", "movement", "moved_line", "weight_rows"]

#: the "moved" band: max |softmax(alpha) - 1/K| below it is close to a random pick
MOVED = 0.05


def movement(weights: Any) -> float:
    """``max |w - 1/K|`` over the edges x K operations of ``weights`` (a tensor or nested
    lists; torch-free, for the report)."""
    rows = weight_rows(weights)
    return max(abs(float(v) - 1.0 / len(rows[0])) for row in rows for v in row)


def weight_rows(weights: Any) -> list[list[float]]:
    """``weights`` (a tensor or nested lists, edges x operations) as lists of floats."""
    rows = weights.tolist() if hasattr(weights, "tolist") else weights
    if not rows or not all(isinstance(r, (list, tuple)) and len(r) == len(rows[0]) and r
                           for r in rows):
        raise ValueError("architecture weights must be a non-empty edges x operations matrix")
    return [list(r) for r in rows]


def moved_line(normal: Any, reduce: Any) -> str:
    """The console's words on the movement of the normal and reduction cell's weights."""
    n, r = movement(normal), movement(reduce)
    k = len(weight_rows(normal)[0])
    text = f"alphas moved from uniform: max |w - 1/{k}| normal {n:.3f}, reduce {r:.3f}"
    if n < MOVED:
        text += (f" (normal cell below {MOVED}: its operations are close to a random pick; "
                 f"raise search.arch_lr or search.epochs)")
    return text
