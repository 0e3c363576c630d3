from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample rows beside the checkout (never copied into the repo)."""
    if not (SHARED_DATA / "criteo_sample.tsv").exists():
        pytest.skip(f"real sample rows not found at {SHARED_DATA}")
    return SHARED_DATA
