"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A 2-CPU local Ray instance for one test module, with the model cache in a temp folder."""
    import ray

    os.environ.setdefault("MDKIF_CACHE", str(tmp_path_factory.mktemp("cache")))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
