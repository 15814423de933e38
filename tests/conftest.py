"""Shared fixtures: where the real data is, and skipping cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; MDKIF_SHARED_DATA points elsewhere (CI clones sit beside it too).
SHARED_DATA = Path(os.environ.get("MDKIF_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the real data sets; skips the test when they are not on this machine."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set MDKIF_SHARED_DATA)")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    # Every test under tests/integration or tests/e2e carries its marker, so `-m "not integration"` is fast.
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
