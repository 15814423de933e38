"""AdaLoRA -> plain LoRA export: the LoRA adapter reproduces the AdaLoRA model's logits to 1e-5."""

from __future__ import annotations

import json
import os

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    os.environ.setdefault("MDKIF_CACHE", str(tmp_path_factory.mktemp("cache")))


def test_exported_lora_matches_adalora_logits(tmp_path):
    from peft import AdaLoraConfig, PeftModel, get_peft_model

    from mdkif.models import load_model
    from mdkif.skills.export import export_lora

    cfg = AdaLoraConfig(
        init_r=6,
        target_r=3,
        lora_alpha=12,
        total_step=10,
        tinit=1,
        tfinal=2,
        target_modules=["q_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(load_model(name="tiny").model, cfg)
    torch.manual_seed(1)
    pattern = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
            if "lora_E" in name:  # an allocation: some singular values pruned, one module pruned fully
                keep = torch.rand(p.shape[0]) > 0.4
                if "layers.1.self_attn.o_proj" in name:
                    keep[:] = False
                p.mul_(keep.unsqueeze(-1).float())
                pattern[name.removeprefix("base_model.model.")] = keep.tolist()
    model.peft_config["default"].rank_pattern = pattern
    model.save_pretrained(str(tmp_path / "ada"))

    out = export_lora(tmp_path / "ada", tmp_path / "lora")
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    ids = torch.randint(0, 200, (2, 16))
    ada = PeftModel.from_pretrained(load_model(name="tiny").model, str(tmp_path / "ada")).eval()
    lora = PeftModel.from_pretrained(load_model(name="tiny").model, str(out)).eval()
    base = load_model(name="tiny").model.eval()
    with torch.no_grad():
        a, b, c = ada(ids).logits, lora(ids).logits, base(ids).logits
    assert (a - c).abs().max() > 1e-3  # the adapter does change the outputs
    assert (a - b).abs().max() < 1e-5
    with torch.no_grad():
        merged = lora.merge_and_unload()(ids).logits  # plain LoRA merges like any LoRA adapter
    assert (merged - a).abs().max() < 1e-4


def test_export_refuses_a_lora_adapter(tmp_path):
    from mdkif.skills.export import export_lora

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(ValueError, match="not an AdaLoRA"):
        export_lora(tmp_path / "x", tmp_path / "y")
