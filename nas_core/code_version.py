"""Which edits of nas_core rerun the workflow: fingerprints of the library's source.

The compute rules (search, genotype, select, train, test, model card) take
:func:`library_fingerprints`' first value as a param, so that an edit of a module that can
change their results reruns them; the report rules take the second, over the figure modules
alone.  :data:`RESULT_NEUTRAL` names the modules whose code cannot change a stage's result (the
CLI, job plumbing, the GPU pool, the schema, the summary, the use and export of a trained model,
the memory command, the workflow's own helpers): an edit of one of them reruns nothing, but for
the model card's own modules (:data:`MODEL_CARD_MODULES`), which the ``model_card`` rule
fingerprints on their own (:func:`modules_fingerprint`).  ``tests/test_code_version.py`` keeps
the lists honest: no module the stages import may be result-neutral, and every result-neutral
module the model card imports is one of its own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["RESULT_NEUTRAL", "REPORT_MODULES", "MODEL_CARD_MODULES", "library_fingerprints",
           "modules_fingerprint", "source_files"]

#: the figure modules: an edit reruns the report rules only
REPORT_MODULES = frozenset({"report.py", "report_selection.py"})

#: what shapes ``model.json`` besides the compute modules: the ``model_card`` rule's own param
MODEL_CARD_MODULES = ("inference.py", "stages/model_card.py")

#: modules (paths relative to the package) whose edits change no stage's result
RESULT_NEUTRAL = frozenset({
    "__main__.py",
    "cli.py",
    "code_version.py",
    "export.py",
    "gpu.py",
    "inference.py",
    "jobs.py",
    "pipeline.py",
    "schema.py",
    "stages/estimate.py",
    "summary.py",
}) | REPORT_MODULES | frozenset(MODEL_CARD_MODULES)

ROOT = Path(__file__).resolve().parent


def source_files(root: Path = ROOT) -> list[tuple[str, Path]]:
    """Every ``.py`` file of the package as ``(path relative to root, path)``, sorted."""
    return sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*.py")
                  if "__pycache__" not in p.parts)


def _digest(files: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256()
    for rel, path in sorted(files):
        h.update(b"\0".join((rel.encode(), path.read_bytes(), b"")))
    return h.hexdigest()[:16]


def modules_fingerprint(modules: tuple[str, ...], root: Path = ROOT) -> str:
    """sha256 (16 hex digits) over the named modules (paths relative to the package)."""
    return _digest([(rel, root / rel) for rel in modules])


def library_fingerprints(root: Path = ROOT) -> tuple[str, str]:
    """sha256 (16 hex digits) over the sources that shape results, and over the figure
    modules alone."""
    files = source_files(root)
    return (_digest([f for f in files if f[0] not in RESULT_NEUTRAL]),
            _digest([f for f in files if f[0] in REPORT_MODULES]))
