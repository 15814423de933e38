"""The one Ray starter: sizes only a Ray it starts, stops only what it started (ray.init is recorded, not run)."""

from __future__ import annotations

import pytest


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    calls: dict = {"init": [], "shutdown": 0, "up": False}

    def init(**kwargs):
        calls["init"].append(kwargs)
        calls["up"] = True

    def shutdown():
        calls["shutdown"] += 1
        calls["up"] = False

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", shutdown)
    monkeypatch.setattr(ray, "is_initialized", lambda: calls["up"])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    return calls


def test_starts_sizes_and_stops_a_local_ray(fake_ray):
    import os

    from mdkif.ray_session import ray_session

    with ray_session(num_cpus=3, train=True) as started:
        assert started and fake_ray["up"]
        assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.1"
    assert fake_ray["init"] == [
        {"address": None, "include_dashboard": False, "log_to_driver": False, "num_cpus": 3}
    ]
    assert fake_ray["shutdown"] == 1


def test_joining_a_cluster_drops_num_cpus_and_a_callers_ray_is_left_alone(fake_ray, monkeypatch):
    from mdkif.ray_session import ray_session

    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")  # inside `ray job submit`
    with ray_session(num_cpus=3):
        pass
    assert "num_cpus" not in fake_ray["init"][0]
    fake_ray["up"] = True  # somebody else's Ray is running
    with pytest.raises(RuntimeError), ray_session() as started:
        assert not started
        raise RuntimeError
    assert len(fake_ray["init"]) == 1 and fake_ray["up"] and fake_ray["shutdown"] == 1
