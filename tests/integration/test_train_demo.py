"""`train/skills_demo.yaml` as shipped (the real SmolLM2-135M, all 12 demo skills) on local Ray:
every skill's adapter is written, and its validation loss after training is below its value before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mdkif.data.records import SKILLS
from mdkif.skills.config import load_stage
from mdkif.skills.runner import run_skills

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.real_model
def test_skills_demo_trains_all_12_and_lowers_validation_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("MDKIF_CACHE", os.environ.get("MDKIF_CACHE", str(Path.home() / ".cache" / "mdkif")))
    cfg = load_stage(REPO / "train" / "skills_demo.yaml", [f"output_dir={tmp_path}"])
    manifest = run_skills(cfg)
    assert set(manifest["skills"]) == set(SKILLS)
    for skill, m in manifest["skills"].items():
        assert m["status"] == "trained", skill
        assert (tmp_path / skill / "adapter_model.safetensors").is_file()
        assert m["val_loss_after"] < m["val_loss_before"], (skill, m["val_loss_before"], m["val_loss_after"])
        assert 0 < m["total_rank"] < 8 * 30 * 4  # allocation pruned from init_r 8 towards target_r 4
    assert (tmp_path / "skills.json").is_file() and (tmp_path / "loss_curves.png").is_file()
