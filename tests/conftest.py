"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from darts_shared import DARTS_FIXTURES


@pytest.fixture(scope="session")
def darts_fixtures() -> Path:
    """Folder of the DARTS reference fixtures (state-dict layouts, published genotypes, logs)."""
    if not (DARTS_FIXTURES / "README.md").is_file():
        pytest.skip(f"DARTS fixtures not found at {DARTS_FIXTURES} "
                    f"(expected the shared/ folder beside the project root)")
    return DARTS_FIXTURES
