"""Shared fixtures: where the real data is, and skipping cleanly when it is absent."""

from __future__ import annotations

import os
import tempfile
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


def pytest_configure(config):
    # `model.dtype: auto` means bf16 on a CPU with AMX / AVX-512 BF16: pin the suite to fp32 so its numbers do
    # not depend on the machine CI lands on (tests of the bf16 path set MDKIF_CPU_BF16=1 themselves). Ray
    # workers and CLI subprocesses started by tests inherit it.
    os.environ.setdefault("MDKIF_CPU_BF16", "0")
    # Stage runs record to MLflow by default (runs/mlruns); tests (and the CLI and cluster subprocesses they
    # start) write to a throwaway store instead. A test that reads runs back sets its own.
    store = Path(tempfile.mkdtemp(prefix="mdkif-mlruns-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"


def pytest_collection_modifyitems(config, items):
    # Every test under tests/integration or tests/e2e carries its marker, so `-m "not integration"` is fast.
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
