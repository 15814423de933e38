"""Arrow routing: prototypes are the skills' top singular directions, tokens route to the skill they lie
along, the fused forward is the hand-computed mixture, and the outputs equal peft's `ArrowConfig` model."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mdkif.config import ConfigError, validate
from mdkif.fusion import FusionError, SkillBank, arrow_prototypes, arrow_weights, fuse
from mdkif.fusion.export import stacked_factors
from mdkif.models import ModelConfig, load_model
from mdkif.routing.config import RouteConfig
from mdkif.routing.router import ArrowRouter, load_router, router_weights, save_router
from mdkif.testing.synthetic import make_synthetic_skills

SKILLS = ("triage_yes", "triage_no")


@pytest.fixture(scope="module")
def skills_root(tmp_path_factory):
    # 12 steps: the allocator has pruned no module to rank 0 yet, so every skill adapts every module, as
    # peft's Arrow requires of its experts (longer runs zero some modules of one skill; arrow.py handles that).
    return make_synthetic_skills(tmp_path_factory.mktemp("skills"), tasks=SKILLS, steps=12)


@pytest.fixture(scope="module")
def bank(skills_root):
    return SkillBank.from_dir(skills_root, list(SKILLS))


def tiny_model():
    return load_model(ModelConfig(name="tiny"))


def _inputs(tok):
    return tok(["Patient with fever and neck stiffness.", "A common cold"], return_tensors="pt", padding=True)


def test_prototypes_are_the_top_right_singular_vectors(bank):
    protos = arrow_prototypes(bank)
    assert set(protos) == set(bank.modules())
    for module, P in protos.items():
        assert P.shape == (len(bank), bank.skills[0].layers[module].A.shape[1])
        for i, skill in enumerate(bank.skills):
            _, _, Vh = torch.linalg.svd(skill.layers[module].delta().double())
            # Unit norm, and equal to the dense SVD's vector up to sign (Arrow is sign-free).
            assert float(P[i].norm()) == pytest.approx(1.0, abs=1e-5)
            assert abs(float(P[i].double() @ Vh[0])) == pytest.approx(1.0, abs=1e-5)


def test_inputs_along_a_skills_prototype_route_to_that_skill(bank):
    # The synthetic two-skill bank: a token lying along skill A's prototype at a layer gets most of that
    # layer's Arrow weight on A, one along B's on B, at every adapted layer.
    protos = arrow_prototypes(bank)
    torch.manual_seed(0)
    for module, P in protos.items():
        cos = abs(float(P[0] @ P[1]))
        assert cos < 0.9, f"{module}: the skills' prototypes nearly coincide ({cos:.3f})"
        for i in range(len(bank)):
            x = 10.0 * P[i] + 0.1 * torch.randn(P.shape[1])
            w = arrow_weights(x[None], P, top_k=2, temperature=1.0)[0]
            assert int(w.argmax()) == i and float(w[i]) > 0.6, (module, i, w)
            assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
            one = arrow_weights(x[None], P, top_k=1, temperature=1.0)[0]
            assert one.tolist() == [1.0 if j == i else 0.0 for j in range(len(bank))]


def test_fused_forward_equals_the_hand_computed_arrow_mixture(bank):
    loaded = tiny_model()
    fused = fuse(loaded.model, bank)
    name, layer = next(iter(fused.layers.items()))
    deltas = [s.layers[name].delta() for s in bank.skills]
    protos = torch.stack([torch.linalg.svd(d.double())[2][0].float() for d in deltas])  # [K, in]
    torch.manual_seed(1)
    x = torch.randn(2, 5, layer.base.in_features)
    for top_k, temperature in ((1, 1.0), (2, 1.0), (2, 0.3)):
        fused.set_arrow(top_k, temperature)
        with torch.no_grad():
            got = layer(x)
        # By hand: logits |<x, v_i>|, keep the top k, softmax(. / T) over them, base + sum_i w_i dW_i x.
        logits = (x @ protos.T).abs()
        kept = logits.topk(top_k, -1).indices
        masked = torch.full_like(logits, float("-inf")).scatter(-1, kept, logits.gather(-1, kept))
        w = torch.softmax(masked / temperature, -1)
        want = layer.base(x) + sum(w[..., i : i + 1] * (x @ deltas[i].T) for i in range(len(bank)))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_mixed_rows_route_arrow_rows_only_and_fixed_weights_end_arrow(bank):
    loaded = tiny_model()
    fused = fuse(loaded.model, bank)
    ids = _inputs(loaded.tokenizer)
    fixed = torch.tensor([[0.7, 0.3], [0.0, 1.0]])
    with torch.no_grad():
        fused.set_arrow(2, 0.5)
        arrow = fused(**ids).logits
        fused.set_weights(fixed, per_example=True)
        static = fused(**ids).logits
        fused.set_arrow(
            torch.tensor([2, 1]), torch.tensor([0.5, 1.0]), rows=torch.tensor([True, False]), weights=fixed
        )
        mixed = fused(**ids).logits
    torch.testing.assert_close(mixed[0], arrow[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], static[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(arrow[1], static[1], atol=1e-4)
    fused.set_weights(torch.zeros(2))  # fixed weights end Arrow routing: all-zero is the base again
    with torch.no_grad(), fused.adapters_off():
        base = fused(**ids).logits
    with torch.no_grad():
        torch.testing.assert_close(fused(**ids).logits, base)
    fused.merge(torch.tensor([0.5, 0.5]))
    with pytest.raises(FusionError, match="merged"):
        fused.set_arrow(2, 1.0)
    fused.unmerge()
    with pytest.raises(FusionError, match="top_k"):
        fused.set_arrow(3, 1.0)


def _plain_lora(folder: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int) -> str:
    """A peft LoRA folder with scale 1 (alpha = r) holding exactly `B @ A` per module, zero-padded to `rank`
    (peft's Arrow wants every expert at one rank)."""
    from peft import LoraConfig

    tensors = {}
    for m, (A, B) in factors.items():
        pad = rank - A.shape[0]
        tensors[f"base_model.model.{m}.lora_A.weight"] = torch.cat(
            [A, A.new_zeros(pad, A.shape[1])]
        ).contiguous()
        tensors[f"base_model.model.{m}.lora_B.weight"] = torch.cat(
            [B, B.new_zeros(B.shape[0], pad)], 1
        ).contiguous()
    LoraConfig(
        r=rank, lora_alpha=rank, target_modules=sorted(factors), task_type="CAUSAL_LM"
    ).save_pretrained(str(folder))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return str(folder)


def _peft_arrow_logits(paths: list[str], top_k: int, temperature: float, ids) -> torch.Tensor:
    from peft import ArrowConfig, create_arrow_model

    model = create_arrow_model(
        tiny_model().model, paths, ArrowConfig(top_k=top_k, router_temperature=temperature, rng_seed=0)
    ).eval()
    with torch.no_grad():
        return model(**ids).logits


def _our_arrow_logits(bank: SkillBank, top_k: int, temperature: float, ids) -> torch.Tensor:
    fused = fuse(tiny_model().model, bank)
    ArrowRouter(len(bank), top_k, temperature).route(fused)
    with torch.no_grad():
        return fused(**ids).logits


def test_equals_peft_arrow_on_plain_loras(tmp_path):
    # Three plain LoRAs with a clear gap between their first and second singular values, so peft's 15
    # power-iteration steps reach the top singular vector our SVD computes: then the models agree.
    model = tiny_model().model
    # Every block's q/v/down projections: peft's router sits on every module with a targeted name.
    modules = [
        f"model.layers.{b}.{m}"
        for b in range(model.config.num_hidden_layers)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    ]
    gen = torch.Generator().manual_seed(0)
    paths = []
    for e in range(3):
        factors = {}
        for m in modules:
            lin = model.get_submodule(m)
            A = torch.linalg.qr(torch.randn(lin.in_features, 4, generator=gen))[0].T  # orthonormal rows
            U = torch.linalg.qr(torch.randn(lin.out_features, 4, generator=gen))[0]
            factors[m] = (A.contiguous(), (U * torch.tensor([2.0, 0.5, 0.2, 0.1])).contiguous())
        paths.append(_plain_lora(tmp_path / f"expert{e}", factors, 4))
    bank = SkillBank.from_paths(paths)
    assert [s.peft_type for s in bank.skills] == ["LORA"] * 3
    ids = _inputs(tiny_model().tokenizer)
    base = tiny_model().model(**ids).logits.detach()
    for top_k, temperature in ((3, 1.0), (2, 1.0), (1, 1.0), (2, 0.5)):  # peft's defaults first
        ours = _our_arrow_logits(bank, top_k, temperature, ids)
        theirs = _peft_arrow_logits(paths, top_k, temperature, ids)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        assert (ours - base).abs().max() > 1e-2  # the experts do change the output


def test_equals_peft_arrow_on_the_adalora_skills_exported_as_loras(bank, tmp_path, monkeypatch):
    # The AdaLoRA skills, each exported as the plain LoRA holding its exact dW_i (AdaLoRA's E and scale
    # folded in). Their top two singular values are close (ratio ~0.8-0.96), where peft's fixed 15 power-
    # iteration steps stop short of the top singular vector (outputs then differ by ~1e-2): run peft's own
    # power iteration to convergence, and the two agree.
    from peft.tuners.lora.arrow import ArrowLoraLinearLayer

    monkeypatch.setattr(
        ArrowLoraLinearLayer,
        "top_right_singular_vec_from_BA",
        functools.partialmethod(ArrowLoraLinearLayer.top_right_singular_vec_from_BA, iters=3000),
    )
    K = len(bank)
    factors = [stacked_factors(bank, torch.eye(K)[i]) for i in range(K)]
    assert all(set(f) == set(bank.modules()) for f in factors)  # peft wants every expert on every module
    rank = max(A.shape[0] for f in factors for A, _ in f.values())
    paths = [_plain_lora(tmp_path / bank.names[i], f, rank) for i, f in enumerate(factors)]
    ids = _inputs(tiny_model().tokenizer)
    for top_k, temperature in ((2, 1.0), (1, 1.0), (2, 0.5)):
        ours = _our_arrow_logits(bank, top_k, temperature, ids)
        theirs = _peft_arrow_logits(paths, top_k, temperature, ids)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_arrow_artifact_round_trips_and_has_no_single_mixture(bank, tmp_path):
    fused = fuse(tiny_model().model, bank)
    path = save_router(ArrowRouter(2, top_k=1, temperature=0.5), bank, fused, tmp_path / "a", {"m": 1})
    info = json.loads(path.read_text())
    assert info["kind"] == "arrow" and info["top_k"] == 1 and info["temperature"] == 0.5
    router, _ = load_router(tmp_path / "a", bank)
    assert isinstance(router, ArrowRouter) and (router.top_k, router.temperature) == (1, 0.5)
    with pytest.raises(FusionError, match="Arrow"):
        router_weights(tmp_path / "a", bank)
    info["top_k"] = 5
    path.write_text(json.dumps(info))
    with pytest.raises(FusionError, match="top_k"):
        load_router(tmp_path / "a", bank)


def _route(skills_root: Path, **extra) -> RouteConfig:
    data = {"model": {"name": "tiny"}, "skills": {"root": str(skills_root)}, "method": "arrow", **extra}
    return validate(RouteConfig, data, "route config")


def test_route_config_errors_name_the_field(skills_root):
    with pytest.raises(ConfigError, match=r"arrow\.top_k.*3 is more than the number of skills \(2\)"):
        _route(skills_root)  # peft's default top_k 3, but the folder holds 2 skills
    with pytest.raises(ConfigError, match=r"arrow\.top_k.*more than the number of skills \(1\)"):
        _route(Path("nowhere"), skills={"root": "nowhere", "names": ["triage_yes"]}, arrow={"top_k": 2})
    with pytest.raises(ConfigError, match=r"field 'arrow\.temperature'.*greater than 0"):
        _route(skills_root, arrow={"top_k": 2, "temperature": 0})
    with pytest.raises(ConfigError, match=r"field 'arrow\.top_k'.*greater than or equal to 1"):
        _route(skills_root, arrow={"top_k": 0})
    with pytest.raises(ConfigError, match=r"field 'arrow\.oops'"):
        _route(skills_root, arrow={"oops": 1})
    with pytest.raises(ConfigError, match="field 'task' is required: method gradient"):
        _route(skills_root, method="gradient")
    assert _route(skills_root, arrow={"top_k": 2}).task is None


def test_route_command_writes_the_arrow_artifact_without_fitting(skills_root, tmp_path):
    from typer.testing import CliRunner

    from mdkif.cli import app

    cfg = tmp_path / "route.yaml"
    task = skills_root / "tasks" / "triage_yes.jsonl"
    cfg.write_text(
        f"model: {{name: tiny}}\nskills: {{root: {skills_root}}}\nmethod: arrow\n"
        f"arrow: {{top_k: 2, temperature: 0.5}}\noutput: {tmp_path / 'bare'}\n"
    )
    result = CliRunner().invoke(app, ["route", str(cfg)])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "bare" / "router.json").read_text())
    assert info["kind"] == "arrow" and info["fit"]["method"] == "arrow" and info["fit"]["task"] is None
    assert (info["top_k"], info["temperature"]) == (2, 0.5)
    # With a task, the artifact is scored on the held-out items like the fitted routers.
    scored = CliRunner().invoke(
        app,
        ["route", str(cfg), f"task.source={task}", "task.k=4", "task.n_val=8", f"output={tmp_path / 's'}"],
    )
    assert scored.exit_code == 0, scored.output
    fit = json.loads((tmp_path / "s" / "router.json").read_text())["fit"]
    assert fit["evaluations"] == 0 and fit["n_val"] == 8
    assert fit["val_loss"] != fit["val_loss_base"]  # the skills were applied
    bad = CliRunner().invoke(app, ["route", str(cfg), "arrow.top_k=3"])
    # `mdkif` turns the ConfigError into one line and exit code 2 (`cli.main`); here it is the exception.
    assert isinstance(bad.exception, ConfigError) and "field 'arrow.top_k'" in str(bad.exception)


def test_defaults_are_peft_arrowconfigs():
    from peft import ArrowConfig

    from mdkif.fusion.arrow import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
    from mdkif.routing.config import ArrowSettings

    peft_cfg, ours = ArrowConfig(), ArrowSettings()
    assert (ours.top_k, ours.temperature) == (peft_cfg.top_k, peft_cfg.router_temperature)
    assert (peft_cfg.top_k, peft_cfg.router_temperature) == (DEFAULT_TOP_K, DEFAULT_TEMPERATURE)
    assert not peft_cfg.use_gks  # GenKnowSub is off by default in peft too (and not implemented here)
