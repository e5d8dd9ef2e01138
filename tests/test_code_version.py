"""Which edits of nas_core rerun the workflow (nas_core.code_version)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from nas_core.code_version import (MODEL_CARD_MODULES, REPORT_MODULES, RESULT_NEUTRAL, ROOT,
                                   library_fingerprints, modules_fingerprint, source_files)

#: the modules the compute rules' scripts call into (workflow/scripts/*.py)
STAGES = ("nas_core.stages", "nas_core.data")


def test_every_result_neutral_module_exists() -> None:
    files = {rel for rel, _ in source_files()}
    assert RESULT_NEUTRAL - files == set()
    assert REPORT_MODULES <= RESULT_NEUTRAL


def _imported(modules: tuple[str, ...]) -> set[str]:
    """The package's modules (paths relative to it) that importing ``modules`` imports."""
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(getattr(m, '__file__', None) or '' for n, m in "
            "list(sys.modules.items()) if n == 'nas_core' or n.startswith('nas_core.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT.parent).stdout
    return {Path(f).resolve().relative_to(ROOT).as_posix() for f in json.loads(out) if f}


def test_no_module_the_stages_import_is_listed_as_result_neutral() -> None:
    """What a stage imports can change what it computes: such a module on the list would let
    an edit of the math rerun nothing."""
    imported = _imported(STAGES)
    assert "stages/search.py" in imported and "model_search.py" in imported
    assert imported & RESULT_NEUTRAL == set()


def test_the_model_card_fingerprints_every_result_neutral_module_it_imports() -> None:
    imported = _imported(("nas_core.stages.model_card",))
    assert set(MODEL_CARD_MODULES) <= imported
    assert imported & RESULT_NEUTRAL <= set(MODEL_CARD_MODULES)
    assert len(modules_fingerprint(MODEL_CARD_MODULES)) == 16


def _copy_package(tmp_path: Path) -> Path:
    root = tmp_path / "nas_core"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_an_edit_of_a_result_neutral_module_keeps_the_compute_fingerprint(tmp_path) -> None:
    root = _copy_package(tmp_path)
    compute, report = library_fingerprints(root)
    assert (compute, report) == library_fingerprints(ROOT)
    _append(root / "cli.py", "\n# a comment\n")
    assert library_fingerprints(root) == (compute, report)
    _append(root / "report.py", "\n# a comment\n")
    assert library_fingerprints(root)[0] == compute
    assert library_fingerprints(root)[1] != report


def test_an_edit_of_a_compute_module_changes_the_compute_fingerprint(tmp_path) -> None:
    root = _copy_package(tmp_path)
    compute, report = library_fingerprints(root)
    _append(root / "model_search.py", "\n# a comment\n")
    assert library_fingerprints(root) == (library_fingerprints(root)[0], report)
    assert library_fingerprints(root)[0] != compute
    (root / "new_module.py").write_text("X = 1\n")  # a new module counts too
    assert library_fingerprints(root)[0] != compute
