"""A routed mixture exported as one plain LoRA: PeftModel's logits equal the fused merged model's."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mdkif.fusion import SkillBank, fuse
from mdkif.fusion.export import (
    EXPORT_MANIFEST,
    ExportError,
    check_vllm,
    export_lora,
    stacked_factors,
    vllm_problems,
)
from mdkif.models import ModelConfig, load_model
from mdkif.testing.synthetic import make_synthetic_skills


@pytest.fixture(scope="module")
def skills_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("skills")
    return make_synthetic_skills(root, tasks=("triage_yes", "triage_no", "organ_heart"))


@pytest.fixture(scope="module")
def bank(skills_root):
    return SkillBank.from_dir(skills_root)


def _ids(tok):
    return tok(
        ["Patient with fever and neck stiffness.", "A common cold in a child"],
        return_tensors="pt",
        padding=True,
    )


def _peft_logits(folder, ids):
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(ModelConfig(name="tiny")).model, str(folder))
    model.eval()
    with torch.no_grad():
        return model(**ids).logits


def _merged_logits(bank, weights, ids):
    fused = fuse(load_model(ModelConfig(name="tiny")).model, bank)
    fused.merge(weights)
    with torch.no_grad():
        return fused(**ids).logits, fused


def test_the_bank_has_mixed_ranks(bank):
    ranks = {d.rank for s in bank.skills for d in s.layers.values()}
    assert len(ranks) > 1, ranks  # the rank allocator pruned modules differently


@pytest.mark.parametrize("per_layer", [False, True])
def test_exported_lora_equals_the_merged_mixture(bank, tmp_path, per_layer):
    tok = load_model(ModelConfig(name="tiny")).tokenizer
    ids = _ids(tok)
    K = len(bank)
    if per_layer:
        _, fused = _merged_logits(bank, torch.full((K,), 1.0 / K), ids)
        groups = fused.groups
        weights = torch.rand(len(groups), K, generator=torch.Generator().manual_seed(0)) * 1.5 - 0.25
    else:
        groups, weights = None, torch.tensor([0.7, -0.2, 0.45])
    expected, fused = _merged_logits(bank, weights, ids)
    report = export_lora(bank, weights, tmp_path / "lora", groups=fused.groups if per_layer else groups)
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"] == report.rank
    # Exact export: the rank is the largest stacked rank, every skill's triplets side by side.
    stacked = max(sum(s.layers[m].rank for s in bank.skills if m in s.layers) for m in bank.modules())
    assert report.rank == report.stacked_rank == stacked and report.svd_rank is None
    got = _peft_logits(tmp_path / "lora", ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The base alone differs, so the equality is not vacuous.
    with torch.no_grad():
        base = load_model(ModelConfig(name="tiny")).model(**ids).logits
    assert (got - base).abs().max() > 1e-3
    manifest = json.loads((tmp_path / "lora" / EXPORT_MANIFEST).read_text())
    assert manifest["skills"] == bank.names and manifest["report"]["per_layer"] is per_layer
    check_vllm(tmp_path / "lora")  # the rules pass for the tiny Llama's projections


def test_zero_weight_skills_are_left_out_and_all_zero_is_refused(bank, tmp_path):
    full = stacked_factors(bank, torch.tensor([0.5, 0.5, 0.5]))
    one = stacked_factors(bank, torch.tensor([0.5, 0.0, 0.0]))
    m = next(iter(bank.skills[0].layers))
    assert one[m][0].shape[0] == bank.skills[0].layers[m].rank < full[m][0].shape[0]
    with pytest.raises(ExportError, match="every weight is zero"):
        export_lora(bank, torch.zeros(3), tmp_path / "zero")
    with pytest.raises(ExportError, match=r"need the router's layer groups"):
        export_lora(bank, torch.ones(2, 3), tmp_path / "x")
    with pytest.raises(ExportError, match="NaN"):
        export_lora(bank, torch.tensor([0.5, float("nan"), 0.1]), tmp_path / "x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "zero").exists()


def test_svd_recompression_reports_the_error_it_makes(bank, tmp_path):
    weights = torch.tensor([0.6, 0.3, 0.4])
    exact = stacked_factors(bank, weights)
    report = export_lora(bank, weights, tmp_path / "r2", rank=2)
    assert report.rank == 2 and report.svd_rank == 2 and 0 < report.dropped_energy < 1
    tensors = load_file(str(tmp_path / "r2" / "adapter_model.safetensors"))
    dropped = total = 0.0
    for m, (A, B) in exact.items():
        dW = B @ A
        approx = (
            tensors[f"base_model.model.{m}.lora_B.weight"] @ tensors[f"base_model.model.{m}.lora_A.weight"]
        )
        err = float((dW - approx).norm() / dW.norm())
        assert err == pytest.approx(report.module_errors[m], abs=1e-4)
        dropped += float((dW - approx).norm() ** 2)
        total += float(dW.norm() ** 2)
    assert dropped / total == pytest.approx(report.dropped_energy, rel=1e-3)
    # At the stacked rank the SVD drops nothing: the recompressed adapter is the exact one.
    full = export_lora(bank, weights, tmp_path / "full", rank=report.stacked_rank)
    assert full.dropped_energy < 1e-10 and full.max_module_error < 1e-5


def test_vllm_rules_refuse_clearly():
    ok = {
        "peft_type": "LORA",
        "r": 16,
        "lora_alpha": 16,
        "target_modules": ["model.layers.0.self_attn.q_proj"],
    }
    names = ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert vllm_problems(ok, names) == []
    (msg,) = vllm_problems({**ok, "r": 640}, names)
    assert "LoRA rank 640 is greater than max_lora_rank 512" in msg and "--rank" in msg
    (msg,) = vllm_problems({**ok, "target_modules": ["lm_head", "model.layers.0.self_attn.q_proj"]}, names)
    assert "['lm_head'] cannot take LoRA in vLLM" in msg
    problems = vllm_problems({**ok, "use_dora": True, "modules_to_save": ["lm_head"]}, [*names, "x.lora_E"])
    assert any("DoRA" in p for p in problems) and any("modules_to_save" in p for p in problems)
    assert any("lora_A/lora_B" in p for p in problems)
    assert "max_lora_rank 64" in vllm_problems({**ok, "r": 128}, names, max_lora_rank=64)[0]


def test_export_refuses_a_rank_vllm_cannot_serve(bank, tmp_path, monkeypatch):
    import mdkif.fusion.export as export

    monkeypatch.setattr(export, "VLLM_MAX_RANK", 2)
    with pytest.raises(ExportError, match="greater than max_lora_rank 2"):
        export.export_lora(bank, torch.tensor([0.5, 0.5, 0.5]), tmp_path / "big")
    assert not (tmp_path / "big").exists()
    export.export_lora(bank, torch.tensor([0.5, 0.5, 0.5]), tmp_path / "small", rank=2)


def test_route_export_command(skills_root, bank, tmp_path):
    from mdkif.cli import app
    from mdkif.routing.router import GateRouter, SkillRouter, save_router

    tok = load_model(ModelConfig(name="tiny")).tokenizer
    ids = _ids(tok)
    fused = fuse(load_model(ModelConfig(name="tiny")).model, bank)
    router = SkillRouter(len(bank), fused.num_layers, per_layer=True)
    with torch.no_grad():
        router.logits.copy_(torch.randn(router.logits.shape, generator=torch.Generator().manual_seed(1)))
    save_router(router, bank, fused, tmp_path / "router", {})
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "route",
            "export",
            str(tmp_path / "router"),
            "--out",
            str(tmp_path / "lora"),
            "--skills",
            str(skills_root),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["per_layer"] is True
    with torch.no_grad():
        expected, _ = _merged_logits(bank, router(), ids)
    torch.testing.assert_close(_peft_logits(tmp_path / "lora", ids), expected, atol=1e-5, rtol=1e-5)
    res = runner.invoke(
        app,
        [
            "route",
            "export",
            "triage_yes=0.8,organ_heart=0.2",
            "--out",
            str(tmp_path / "w"),
            "--skills",
            str(skills_root),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "w" / EXPORT_MANIFEST).read_text())["skills"] == [
        "triage_yes",
        "organ_heart",
    ]
    res = runner.invoke(
        app, ["route", "export", "triage_yes", "--out", str(tmp_path / "bad"), "--skills", str(skills_root)]
    )
    assert res.exit_code == 2 and "is not skill=weight" in res.output
    gate = GateRouter(fused.model.config.hidden_size, len(bank))
    save_router(gate, bank, fused, tmp_path / "gate", {})
    res = runner.invoke(
        app,
        [
            "route",
            "export",
            str(tmp_path / "gate"),
            "--out",
            str(tmp_path / "g"),
            "--skills",
            str(skills_root),
        ],
    )
    assert res.exit_code == 2 and "input-conditioned" in res.output
    assert not (tmp_path / "g").exists()
