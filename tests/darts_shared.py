"""The ``shared/`` folder beside the project root, as the tests read it in place: the DARTS
fixtures (state-dict layouts, genotypes, logs) and the reference search step."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DARTS_FIXTURES = SHARED / "fixtures" / "darts"
#: the plain DARTS step; ``NAS_REFERENCE_DARTS`` points elsewhere (the device check carries a copy)
REFERENCE = Path(os.environ.get("NAS_REFERENCE_DARTS", SHARED / "bench" / "reference_darts.py"))

Layout = list[tuple[str, tuple[int, ...]]]


def read_layout(name: str) -> Layout:
    """Rows ``key<TAB>AxBxC`` of a state-dict fixture (``scalar`` = shape ()); a key is cut at
    its first space (the alphas rows carry a remark).  Skips when the fixture is missing."""
    path = DARTS_FIXTURES / name
    if not path.is_file():
        pytest.skip(f"fixture {path} is missing (the shared folder beside the project root)")
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
            rows.append((key.split(" ")[0], dims))
    return rows


def state_dict_layout(model: torch.nn.Module) -> Layout:
    """``(key, shape)`` of every state-dict entry, in order."""
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def load_reference() -> ModuleType:
    """``reference_darts.py`` as a module; skips when it is missing."""
    if not REFERENCE.is_file():
        pytest.skip(f"reference implementation {REFERENCE} is missing (the shared folder beside "
                    f"the project root)")
    spec = importlib.util.spec_from_file_location("reference_darts", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
