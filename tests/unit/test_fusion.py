"""Exact fusion: stacked and merged modes equal sum_i w_i * dW_i, and one-hot weights equal peft's model."""

from __future__ import annotations

import json

import pytest
import torch

from mdkif.fusion import FusionError, SkillBank, fuse, load_skill
from mdkif.models import ModelConfig, load_model
from mdkif.testing.synthetic import make_synthetic_skills


@pytest.fixture(scope="module")
def skills_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("skills")
    return make_synthetic_skills(root, tasks=("triage_yes", "triage_no", "organ_heart"))


@pytest.fixture()
def tiny():
    return load_model(ModelConfig(name="tiny"))


def _ids(tok):
    return tok(["Patient with fever and neck stiffness.", "A common cold"], return_tensors="pt", padding=True)


def test_adapters_carry_pruned_ranks_and_nonzero_weights(skills_root):
    cfg = json.loads((skills_root / "triage_yes" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "ADALORA" and cfg["rank_pattern"]
    skill = load_skill(skills_root / "triage_yes")
    assert skill.layers and all(d.rank <= cfg["init_r"] for d in skill.layers.values())
    assert any(d.rank < cfg["init_r"] for d in skill.layers.values())  # the allocator pruned something
    assert all(d.delta().abs().sum() > 0 for d in skill.layers.values())


def test_stacked_and_merged_equal_explicit_weighted_delta_sum(skills_root, tiny):
    bank = SkillBank.from_dir(skills_root)
    ref_model = load_model(ModelConfig(name="tiny")).model
    ids = _ids(tiny.tokenizer)
    fused = fuse(tiny.model, bank)
    for per_layer in (False, True):
        torch.manual_seed(1)
        w = torch.randn(fused.num_layers, len(bank)) if per_layer else torch.randn(len(bank))
        full = w.expand(fused.num_layers, len(bank))
        # Reference: dense W + sum_i w_i dW_i written into a fresh copy of the base model.
        ref_sd = {k: v.clone() for k, v in load_model(ModelConfig(name="tiny")).model.state_dict().items()}
        for name, layer in fused.layers.items():
            dw = sum(
                full[layer.group, i] * s.layers[name].delta()
                for i, s in enumerate(bank.skills)
                if name in s.layers
            )
            ref_sd[f"{name}.weight"] += dw
        ref_model.load_state_dict(ref_sd)
        with torch.no_grad():
            ref = ref_model(**ids).logits
            fused.set_weights(w)
            stacked = fused(**ids).logits
            fused.merge(w)
            merged = fused(**ids).logits
            fused.unmerge()
            after = fused(**ids).logits
        torch.testing.assert_close(stacked, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(after, stacked, atol=1e-5, rtol=1e-5)
        for name, layer in fused.layers.items():  # per-layer delta equals the explicit sum too
            dw = sum(
                full[layer.group, i] * s.layers[name].delta()
                for i, s in enumerate(bank.skills)
                if name in s.layers
            )
            torch.testing.assert_close(layer.delta(full[layer.group]), dw, atol=1e-6, rtol=1e-5)


def test_one_hot_equals_the_single_skill_peft_model(skills_root, tiny):
    from peft import PeftModel

    bank = SkillBank.from_dir(skills_root)
    ids = _ids(tiny.tokenizer)
    fused = fuse(tiny.model, bank)
    for i, name in enumerate(bank.names):
        peft_model = PeftModel.from_pretrained(
            load_model(ModelConfig(name="tiny")).model, str(skills_root / name)
        )
        peft_model.eval()
        with torch.no_grad():
            expected = peft_model(**ids).logits
            fused.set_weights(torch.nn.functional.one_hot(torch.tensor(i), len(bank)).float())
            got = fused(**ids).logits
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_per_example_weights_equal_separate_runs(skills_root, tiny):
    bank = SkillBank.from_dir(skills_root)
    ids = _ids(tiny.tokenizer)
    fused = fuse(tiny.model, bank)
    w = torch.softmax(torch.randn(2, len(bank)), -1)
    with torch.no_grad():
        fused.set_weights(w, per_example=True)
        mixed = fused(**ids).logits
        for b in range(2):
            fused.set_weights(w[b])
            alone = fused(**ids).logits[b]
            torch.testing.assert_close(mixed[b], alone, atol=1e-5, rtol=1e-5)


def test_gradient_reaches_the_weights_only(skills_root, tiny):
    bank = SkillBank.from_dir(skills_root)
    fused = fuse(tiny.model, bank)
    w = torch.full((len(bank),), 0.3, requires_grad=True)
    fused.set_weights(w)
    fused(**_ids(tiny.tokenizer)).logits.square().mean().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert all(p.grad is None for p in fused.parameters())


def test_bad_weights_and_foreign_adapters_fail_clearly(skills_root, tiny, tmp_path):
    bank = SkillBank.from_dir(skills_root)
    fused = fuse(tiny.model, bank)
    with pytest.raises(FusionError, match="skills"):
        fused.set_weights(torch.ones(len(bank) + 1))
    with pytest.raises(FusionError, match="not a peft adapter"):
        load_skill(tmp_path)
    with pytest.raises(FusionError, match="no adapter folder"):
        SkillBank.from_dir(skills_root, names=["nope"])
    other = load_model(ModelConfig(name="tiny", tiny={"hidden_size": 32})).model
    with pytest.raises(FusionError, match="do not fit"):
        fuse(other, bank)
