"""Skills on local Ray Train with the tiny model: one shared trainer plus one data-parallel skill,
manifest and curves, skip-finished on re-run, and a worker killed mid-run that resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from mdkif.skills.config import load_stage
from mdkif.skills.runner import run_skills
from mdkif.testing.faults import KillAt

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("MDKIF_CACHE", os.environ.get("MDKIF_CACHE", str(tmp_path_factory.mktemp("cache"))))


def tiny_overrides(out: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={out}",
        "model.name=tiny",
        "optim.max_length=96",
        "optim.batch_size=2",
        "optim.lr=1.0e-2",
        "ray.cpus_per_worker=0.4",
        "checkpoint_every=2",
        *extra,
    ]


def test_skills_shared_and_data_parallel_then_skip_on_rerun(tmp_path):
    out = tmp_path / "run"
    cfg = load_stage(
        REPO / "train" / "skills_demo.yaml",
        tiny_overrides(
            out, "skills={qa: {workers: 2}, nli: {}, ner: {}, summarization: {}}", "ray.num_workers=2"
        ),
    )
    sigint = signal.getsignal(signal.SIGINT)
    manifest = run_skills(cfg)
    assert signal.getsignal(signal.SIGINT) is sigint  # Ray Train's abort handler does not outlive fit()
    names = [t["name"] for t in manifest["trainers"]]
    assert names == ["skills-shared", "skill-qa"]
    assert sorted(s for b in manifest["trainers"][0]["skills"] for s in b) == ["ner", "nli", "summarization"]
    for skill in ("qa", "nli", "ner", "summarization"):
        m = manifest["skills"][skill]
        assert m["status"] == "trained", skill
        assert (out / skill / "adapter_model.safetensors").is_file()
        assert m["val_loss_after"] < m["val_loss_before"], skill
        assert [h["step"] for h in m["history"]] == list(range(1, m["steps"] + 1))
    assert manifest["skills"]["qa"]["world_size"] == 2
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert json.loads((out / "skills.json").read_text())["skills"].keys() == manifest["skills"].keys()

    again = run_skills(cfg)  # every skill finished with the same data and settings: nothing to launch
    assert again["trainers"] == []
    assert again["skills"]["qa"]["val_loss_after"] == manifest["skills"]["qa"]["val_loss_after"]


def test_killed_worker_resumes_from_checkpoint(tmp_path):
    out = tmp_path / "run"
    marker = tmp_path / "killed.txt"
    cfg = load_stage(
        REPO / "train" / "skills_demo.yaml",
        tiny_overrides(
            out,
            "skills=[qa, nli]",
            "ray.num_workers=2",
            "ray.max_failures=1",
            "optim.epochs=2",  # 9 records / batch 2 = 5 steps an epoch -> 10 steps
        ),
    )
    manifest = run_skills(cfg, callbacks=[KillAt(step=5, marker=marker, rank=0)])
    assert marker.is_file(), "the fault was never injected"
    resumed = {s: m["resumed_from_step"] for s, m in manifest["skills"].items() if m["resumed_from_step"]}
    # The killed worker's skill restarts from its step-4 checkpoint (kill at step 5, checkpoints every 2).
    # The other worker passed the step-5 report barrier before the group was torn down, so it may have
    # saved step 6 first: the restarted group resumes each skill from its own last checkpoint.
    assert 4 in resumed.values() and set(resumed.values()) <= {4, 6}, resumed
    for m in manifest["skills"].values():
        assert [h["step"] for h in m["history"]] == list(range(1, 11))  # every step once, in order
        assert m["val_loss_after"] < m["val_loss_before"]
