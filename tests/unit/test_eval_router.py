"""Routed variants: the harness merges a skill mixture (router artifact or fixed weights) into the base, or
routes every token with an Arrow artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from mdkif.config import ConfigError, validate
from mdkif.evaluation.config import VariantConfig
from mdkif.evaluation.worker import EvalError, load_variant_model
from mdkif.fusion import FusedLinear, SkillBank, fuse
from mdkif.models import ModelConfig, load_model
from mdkif.routing.router import GateRouter, SkillRouter, save_router
from mdkif.testing.synthetic import make_synthetic_skills

DEMO_MCQ = Path(__file__).resolve().parents[2] / "src" / "mdkif" / "assets" / "demo_mcq" / "demo_mcq.json"


@pytest.fixture(scope="module")
def skills(tmp_path_factory):
    return make_synthetic_skills(
        tmp_path_factory.mktemp("skills"), tasks=("triage_yes", "triage_no"), steps=6
    )


def logits(model, tokenizer):
    ids = tokenizer("Finding: fever and neck stiffness. Urgent?", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def variant(**router):
    return validate(VariantConfig, {"name": "routed", "model": {"name": "tiny"}, "router": router}, "test")


def test_one_hot_weights_equal_that_skill_alone(skills):
    model, tok = load_variant_model(
        variant(adapters=str(skills), weights={"triage_yes": 1.0, "triage_no": 0.0})
    )
    base = load_model(ModelConfig(name="tiny"))
    alone = PeftModel.from_pretrained(base.model, str(skills / "triage_yes")).eval()
    assert torch.allclose(logits(model, tok), logits(alone, tok), atol=1e-5)


def test_router_artifact_is_merged_with_its_weights(skills, tmp_path):
    loaded = load_model(ModelConfig(name="tiny"))
    bank = SkillBank.from_dir(skills, ["triage_yes", "triage_no"])
    fused = fuse(loaded.model, bank)
    router = SkillRouter(2, fused.num_layers, False, 1.0, "softmax")
    with torch.no_grad():
        router.logits.copy_(torch.tensor([0.3, -0.2]))
        weights = router()
    save_router(router, bank, fused, tmp_path / "router", {})
    routed, tok = load_variant_model(variant(adapters=str(skills), path=str(tmp_path / "router")))
    reference = load_variant_model(
        variant(adapters=str(skills), weights=dict(zip(bank.names, weights.tolist(), strict=True)))
    )[0]
    assert torch.allclose(logits(routed, tok), logits(reference, tok), atol=1e-6)
    # A different mixture changes the outputs: the router is really applied.
    other = load_variant_model(variant(adapters=str(skills), weights={"triage_yes": 0.0, "triage_no": 1.0}))[
        0
    ]
    assert not torch.allclose(logits(routed, tok), logits(other, tok), atol=1e-4)


def test_gate_router_and_bad_refs_are_clear_errors(skills, tmp_path):
    loaded = load_model(ModelConfig(name="tiny"))
    bank = SkillBank.from_dir(skills, ["triage_yes", "triage_no"])
    fused = fuse(loaded.model, bank)
    gate = GateRouter(loaded.model.config.hidden_size, 2, fused.num_layers, False, 1.0, 16)
    save_router(gate, bank, fused, tmp_path / "gate", {})
    with pytest.raises(EvalError, match="input-conditioned"):
        load_variant_model(variant(adapters=str(skills), path=str(tmp_path / "gate")))
    with pytest.raises(EvalError, match="router artifact .* not found"):
        load_variant_model(variant(adapters=str(skills), path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="exactly one of 'path'"):
        variant(adapters=str(skills))


def test_arrow_router_variant_routes_every_token_unmerged(skills, tmp_path):
    from mdkif.data.mcq import load_benchmark
    from mdkif.evaluation.worker import ShardTask, ShardWorker
    from mdkif.routing.router import ArrowRouter

    loaded = load_model(ModelConfig(name="tiny"))
    bank = SkillBank.from_dir(skills, ["triage_yes", "triage_no"])
    fused = fuse(loaded.model, bank)
    save_router(ArrowRouter(2, top_k=2, temperature=0.5), bank, fused, tmp_path / "arrow", {})
    routed, tok = load_variant_model(variant(adapters=str(skills), path=str(tmp_path / "arrow")))
    layers = [m for m in routed.modules() if isinstance(m, FusedLinear)]
    assert layers and all(m.merged_weights is None and m.state.arrow is not None for m in layers)
    # The same Arrow routing applied by hand to a freshly fused model gives the same outputs.
    ref = fuse(load_model(ModelConfig(name="tiny")).model, bank)
    ref.set_arrow(2, 0.5)
    assert torch.allclose(logits(routed, tok), logits(ref.model, tok), atol=1e-6)
    base = load_model(ModelConfig(name="tiny")).model
    assert not torch.allclose(logits(routed, tok), logits(base, tok), atol=1e-4)
    # And the harness scores with it like any variant.
    records = load_benchmark(str(DEMO_MCQ), split="pubmedqa")[:3]
    v = variant(adapters=str(skills), path=str(tmp_path / "arrow"))
    rows = ShardWorker().score(ShardTask(v, "pubmedqa", 0, records))
    assert len(rows) == 3 and all("correct" in r for r in rows)


def test_a_router_refitted_into_the_same_folder_is_scored_again(skills, tmp_path, capsys):
    """Shards are keyed by the variant's settings and by its artifacts' content: a re-run with the same
    router reuses every shard, a router saved again with other weights at the same path is re-scored (its
    old shards are moved to `<column>.stale`), and a record from before artifacts were recorded matches."""
    import json

    from mdkif.evaluation.config import EvalConfig
    from mdkif.evaluation.runner import run_eval

    loaded = load_model(ModelConfig(name="tiny"))
    bank = SkillBank.from_dir(skills, ["triage_yes", "triage_no"])
    fused = fuse(loaded.model, bank)
    router = SkillRouter(2, fused.num_layers, False, 1.0, "softmax")
    folder = tmp_path / "router"
    save_router(router, bank, fused, folder, {})
    cfg = EvalConfig.model_validate(
        {
            "out": str(tmp_path / "out"),
            "use_ray": False,
            "shard_size": 5,
            "variants": [
                {
                    "name": "routed",
                    "model": {"name": "tiny"},
                    "router": {"adapters": str(skills), "path": str(folder)},
                }
            ],
            "benchmarks": [{"source": str(DEMO_MCQ), "split": "pubmedqa", "limit": 5}],
        }
    )
    assert run_eval(cfg, progress=False)["shards"] == {"computed": 1, "reused": 0}
    assert run_eval(cfg, progress=False)["shards"] == {"computed": 0, "reused": 1}
    meta_path = next((tmp_path / "out" / "routed").glob("*/meta.json"))
    with torch.no_grad():
        router.logits.copy_(torch.tensor([2.0, -2.0]))
    save_router(router, bank, fused, folder, {})
    assert run_eval(cfg, progress=False)["shards"] == {"computed": 1, "reused": 0}
    assert "old shards ->" in capsys.readouterr().out
    assert (meta_path.parent.with_name(meta_path.parent.name + ".stale") / "meta.json").is_file()
    meta = json.loads(meta_path.read_text())
    meta.pop("artifacts")  # as written before artifacts were recorded
    meta_path.write_text(json.dumps(meta))
    assert run_eval(cfg, progress=False)["shards"] == {"computed": 0, "reused": 1}
    assert "artifacts" in json.loads(meta_path.read_text())
