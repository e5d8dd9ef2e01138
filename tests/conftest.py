"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ``../shared/fixtures/darts`` beside the project root (read in place, never copied).
DARTS_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "darts"


@pytest.fixture(scope="session")
def darts_fixtures() -> Path:
    """Folder of the DARTS reference fixtures (state-dict layouts, published genotypes, logs)."""
    if not (DARTS_FIXTURES / "README.md").is_file():
        pytest.skip(f"DARTS fixtures not found at {DARTS_FIXTURES} "
                    f"(expected the shared/ folder beside the project root)")
    return DARTS_FIXTURES
