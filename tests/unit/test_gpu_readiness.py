"""GPU / 8B readiness checked on the CPU: devices, dtypes and quantized bases, as a CUDA run would meet them.

The `meta` device stands in for a GPU: a tensor there is on another device than the CPU, so any batch,
weight or router left on the CPU fails exactly as it would against `cuda:0`.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mdkif.fusion import FusionError, SkillBank, fuse
from mdkif.fusion.bank import LayerDelta
from mdkif.fusion.fused import FusedLinear, FusionState
from mdkif.models import ModelConfig, load_model
from mdkif.testing.synthetic import make_synthetic_skills


@pytest.fixture(scope="module")
def skills_root(tmp_path_factory):
    return make_synthetic_skills(
        tmp_path_factory.mktemp("skills"), tasks=("triage_yes", "triage_no"), steps=6
    )


def _delta(rank: int = 2, n: int = 8, seed: int = 0) -> LayerDelta:
    g = torch.Generator().manual_seed(seed)
    return LayerDelta(
        torch.randn(rank, n, generator=g),
        torch.rand(rank, generator=g),
        torch.randn(n, rank, generator=g),
        0.5,
    )


def test_fused_linear_moves_cpu_weights_to_the_activations_device():
    base = nn.Linear(8, 8).to("meta")
    state = FusionState(1, 2)
    state.set(torch.tensor([0.5, 0.5]))  # a router's weights, on the CPU
    layer = FusedLinear(base, [_delta(seed=0), _delta(seed=1)], 0, state)
    y = layer(torch.randn(3, 8, device="meta"))
    assert y.device.type == "meta" and y.shape == (3, 8)


class _Recorder(nn.Module):
    """A model on the meta device that records where its inputs are, then stops the call."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, device="meta"))
        self.devices: dict[str, torch.device] = {}

    def forward(self, **kwargs):
        self.devices = {k: v.device for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        raise StopIteration


def test_router_batches_go_to_the_model_device():
    from mdkif.data.tasks import TaskRecord
    from mdkif.routing.data import TaskExample, answer_loss, encode, encode_labels, label_scores

    tok = load_model(ModelConfig(name="tiny")).tokenizer
    batch = encode(tok, [TaskExample("Question: fever?\nAnswer:", " yes")])
    rec = _Recorder()
    with pytest.raises(StopIteration):
        answer_loss(rec, batch)
    assert rec.devices and all(d.type == "meta" for d in rec.devices.values()), rec.devices
    item = TaskRecord(
        id="a", task="t", kind="classification", instruction="yes or no?", output="yes", labels=("yes", "no")
    )
    rec = _Recorder()
    with pytest.raises(StopIteration):
        label_scores(rec, encode_labels(tok, [item]))
    assert rec.devices and all(d.type == "meta" for d in rec.devices.values()), rec.devices


def test_fit_router_creates_the_router_on_the_model_device(skills_root, monkeypatch):
    import mdkif.routing.pipeline as pipeline
    import mdkif.routing.registry as registry
    from mdkif.config import validate
    from mdkif.routing.config import RouteConfig

    fused = fuse(load_model(ModelConfig(name="tiny")).model, SkillBank.from_dir(skills_root)).to("meta")
    seen = {}

    def fake_fit(fused, router, batch, **kw):
        seen["device"] = next(router.parameters()).device
        return "fit"

    monkeypatch.setattr(registry, "fit_gradient", fake_fit)  # the methods' fit functions live in the registry
    monkeypatch.setattr(registry, "fit_gate", fake_fit)
    for method in ("gradient", "gate"):
        cfg = validate(
            RouteConfig,
            {
                "model": {"name": "tiny"},
                "skills": {"root": str(skills_root)},
                "task": {"source": "-", "k": 1},
                "method": method,
            },
            "test",
        )
        router, res = pipeline.fit_router(cfg, fused, None)
        assert res == "fit" and seen["device"].type == "meta", method


class Linear8bitLt(nn.Linear):
    """Stands in for bitsandbytes' int8 layer: an `nn.Linear` subclass whose weight is packed int8 storage."""

    def __init__(self, dense: nn.Linear) -> None:
        super().__init__(dense.in_features, dense.out_features, bias=False)
        scale = dense.weight.detach().abs().max() / 127
        self.weight = nn.Parameter(
            (dense.weight.detach() / scale).round().to(torch.int8), requires_grad=False
        )
        self.scale = scale
        self.compute_dtype = torch.float32

    def forward(self, x):
        return x @ (self.weight.float() * self.scale).T


def test_quantized_base_keeps_factors_in_compute_dtype_and_refuses_merging():
    dense = nn.Linear(8, 8, bias=False)
    q = Linear8bitLt(dense)
    state = FusionState(1, 1)
    state.set(torch.tensor([1.0]))
    d = _delta()
    layer = FusedLinear(q, [d], 0, state)
    assert layer.quantized == "Linear8bitLt"
    assert layer.down.dtype == layer.up.dtype == torch.float32  # not truncated to int8
    torch.testing.assert_close(layer.down, d.A * d.E[:, None])
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), q(x) + x @ d.delta().T, atol=1e-5, rtol=1e-5)
    with pytest.raises(FusionError, match=r"quantized \(Linear8bitLt\).*stacked path"):
        layer.merge(torch.tensor([1.0]))


def test_quantized_model_merge_is_refused_before_touching_any_layer_and_eval_stacks(skills_root):
    from mdkif.evaluation.worker import fuse_router

    model = load_model(ModelConfig(name="tiny")).model
    bank = SkillBank.from_dir(skills_root)
    first = bank.modules()[0]
    parent, _, child = first.rpartition(".")
    dense = model.get_submodule(first)
    setattr(model.get_submodule(parent), child, Linear8bitLt(dense))
    fused = fuse(model, bank)
    assert fused.quantized
    before = {n: layer.base.weight.detach().clone() for n, layer in fused.layers.items()}
    with pytest.raises(FusionError, match="quantized base"):
        fused.merge(torch.tensor([0.5, 0.5]))
    assert all(torch.equal(before[n], layer.base.weight) for n, layer in fused.layers.items())
    fused.unfuse()

    class Variant:
        name = "routed"

        class router:
            path = None
            adapters = skills_root
            weights = {"triage_yes": 0.5, "triage_no": 0.5}

        class scoring:
            prompt_format = "alpaca"

    routed = fuse_router(model, Variant)
    layers = [m for m in routed.modules() if isinstance(m, FusedLinear)]
    assert layers and all(m.merged_weights is None for m in layers)  # stacked, not merged
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.isfinite(routed(input_ids=ids).logits).all()


def test_merge_rounds_an_fp32_delta_once_into_bf16():
    dense = nn.Linear(64, 64, bias=False).to(torch.bfloat16)
    original = dense.weight.detach().clone()
    state = FusionState(1, 2)
    deltas = [_delta(4, 64, seed=0), _delta(4, 64, seed=1)]
    layer = FusedLinear(dense, deltas, 0, state)
    w = torch.tensor([0.3, 0.7])
    delta = layer.delta(w)  # from the stored (bf16) factors, accumulated in fp32
    assert delta.dtype == torch.float32
    once = (original.float() + delta).to(torch.bfloat16)
    twice = original + delta.to(torch.bfloat16)  # what an in-place add into bf16 computes
    assert not torch.equal(once, twice)  # the two differ on this layer, so the check below means something
    layer.merge(w)
    torch.testing.assert_close(dense.weight, once, atol=0, rtol=0)


def test_end_of_turn_ids_cover_llama3_and_the_generation_config():
    from mdkif.models.tokens import end_of_turn_ids

    tok = load_model(ModelConfig(name="tiny")).tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert eot in end_of_turn_ids(tok) and tok.eos_token_id in end_of_turn_ids(tok)

    class Model:
        class generation_config:
            eos_token_id = [5, 7]

    assert {5, 7, eot} <= set(end_of_turn_ids(tok, Model))


def test_auto_device_respects_rays_gpu_assignment(monkeypatch):
    import mdkif.models.loading as loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loading, "ray_gpu_ids", lambda: [])  # a zero-GPU actor that still sees the GPU
    assert loading.resolve_device("auto").type == "cpu"
    monkeypatch.setattr(loading, "ray_gpu_ids", lambda: [0])
    assert loading.resolve_device("auto").type == "cuda"
    monkeypatch.setattr(loading, "ray_gpu_ids", lambda: None)  # a driver or a plain process
    assert loading.resolve_device("auto").type == "cuda"
    assert loading.resolve_device("cpu").type == "cpu"


def test_auto_dtype_falls_back_to_fp16_without_bf16(monkeypatch):
    from mdkif.models.loading import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


def test_a_gpu_load_goes_straight_to_the_device(monkeypatch, tmp_path):
    """An unquantized base on CUDA used to load into host RAM first and then move (`model.to`)."""
    from transformers import AutoModelForCausalLM

    seen = {}

    class Stop(Exception):
        pass

    def fake(source, **kwargs):
        seen.update(kwargs)
        raise Stop

    load_model(ModelConfig(name="tiny"))  # build the tiny model's folder first
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    with pytest.raises(Stop):
        load_model(ModelConfig(name="tiny", device="cuda:1"))
    assert seen["device_map"] == {"": 1} and seen["dtype"] == torch.bfloat16
    seen.clear()
    with pytest.raises(Stop):
        load_model(ModelConfig(name="tiny", device="cpu"))
    assert "device_map" not in seen and seen["dtype"] == torch.float32  # the CPU path: load, then `.to`
