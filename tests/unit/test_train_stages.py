"""CPT (packing), SFT (LoRA), task adaptation and the multi-step pipeline, QLoRA,
each for a few steps on CPU with the tiny model and without Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mdkif.skills.config import load_stage
from mdkif.skills.runner import run

REPO = Path(__file__).resolve().parents[2]
MEDQUAD = REPO.parent / "shared" / "data" / "skills" / "medquad" / "medquad_answered.jsonl"


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    os.environ.setdefault("MDKIF_CACHE", str(tmp_path_factory.mktemp("cache")))


def corpus_file(tmp_path: Path) -> Path:
    text = "\n\n".join(
        f"Document {i}: hypertension raises the risk of stroke and heart failure; treatment lowers it."
        for i in range(40)
    )
    (tmp_path / "corpus.txt").write_text(text)
    return tmp_path / "corpus.txt"


def tiny(out: Path, *extra: str) -> list[str]:
    return [f"output_dir={out}", "model.name=tiny", "ray.enabled=false", "optim.max_length=64", *extra]


def test_cpt_with_packing(tmp_path):
    cfg = load_stage(
        REPO / "train" / "cpt.yaml",
        tiny(
            tmp_path / "cpt",
            f"corpus=[{{path: {corpus_file(tmp_path)}, format: text}}]",
            "optim.max_steps=3",
            "optim.lr=1e-2",
        ),
    )
    meta = run(cfg)
    assert meta["steps"] == 3 and meta["val_loss_after"] < meta["val_loss_before"]
    assert (
        json.loads((tmp_path / "cpt" / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    )
    assert (tmp_path / "cpt" / "adapter" / "loss_curve.png").is_file()


def test_sft_lora_on_skill_data(tmp_path):
    cfg = load_stage(
        REPO / "train" / "sft.yaml", tiny(tmp_path / "sft", "optim.max_steps=4", "optim.lr=1e-2")
    )
    meta = run(cfg)
    assert meta["adapter_kind"] == "lora" and meta["train_examples"] == 12 * 9
    assert meta["val_loss_after"] < meta["val_loss_before"]


def test_multi_step_pipeline_end_to_end(tmp_path):
    cfg = load_stage(REPO / "train" / "msft.yaml", tiny(tmp_path / "msft", "optim.max_steps=2"))
    cfg.steps[0].corpus[0].path = corpus_file(tmp_path)  # a list item: not reachable by a key=value override
    cfg.steps[0].corpus[0].format = "text"
    report = run(cfg)
    assert [s["name"] for s in report["steps"]] == ["cpt", "sft", "task"]
    # each step trains on the previous step's merged model
    assert report["steps"][1]["base"] == report["steps"][0]["merged_dir"]
    assert report["steps"][2]["base"] == report["steps"][1]["merged_dir"]
    assert (Path(report["final_model"]) / "config.json").is_file()
    assert (tmp_path / "msft" / "pipeline.json").is_file()


def test_qlora_nf4_on_cpu(tmp_path):
    cfg = load_stage(
        REPO / "train" / "sft.yaml",
        tiny(tmp_path / "q", "model.quantization=nf4", "optim.max_steps=2", "data.skills=[qa]"),
    )
    meta = run(cfg)
    assert meta["steps"] == 2 and meta["val_loss_after"] is not None
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "q" / "adapter" / "adapter_model.safetensors"))
    assert all(v.abs().sum() > 0 for k, v in weights.items() if "lora_A" in k)


def test_configs_reject_bad_settings(tmp_path):
    from mdkif.config import ConfigError

    with pytest.raises(ConfigError, match="optim.lrr"):
        load_stage(REPO / "train" / "sft.yaml", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="deepspeed supports adapter.kind 'lora' only"):
        load_stage(REPO / "train" / "skills_demo.yaml", ["deepspeed={stage: 3}"])
    with pytest.raises(ConfigError, match="unknown skill"):
        load_stage(REPO / "train" / "skills_demo.yaml", ["skills=[qa, cooking]"])
    with pytest.raises(ConfigError, match="stage"):
        load_stage(REPO / "train" / "skills_demo.yaml", ["stage=dance"])


@pytest.mark.parametrize("path", sorted((REPO / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_its_command(path):
    cfg = load_stage(path)
    assert cfg.stage in ("skills", "cpt", "sft", "task", "pipeline")
    assert path.read_text().splitlines()[0].startswith("# ") and "mdkif " in path.read_text().split("\n\n")[0]
