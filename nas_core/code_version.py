"""Which edits of nas_core rerun the figures: a fingerprint of the figure modules.

The compute rules rerun on results versions (:mod:`nas_core.versions`), not on source bytes.
The report rules draw figures, which nobody compares for results: they take
:func:`report_fingerprint` as a param (sha256 over :data:`REPORT_MODULES`, the modules that
draw them), so that an edit of a figure redraws it and nothing else.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["REPORT_MODULES", "report_fingerprint"]

#: the figure modules (paths relative to the package): an edit reruns the report rules only
REPORT_MODULES = ("report.py", "report_selection.py")

ROOT = Path(__file__).resolve().parent


def report_fingerprint(root: Path = ROOT) -> str:
    """sha256 (16 hex digits) over the figure modules."""
    h = hashlib.sha256()
    for rel in sorted(REPORT_MODULES):
        h.update(b"\0".join((rel.encode(), (root / rel).read_bytes(), b"")))
    return h.hexdigest()[:16]
