"""The serving engine's merged-weight cache: bounded in bytes, keyed by the weights, evicting before it builds.

Tiny random Llama + two synthetic skills, as in `test_serving_engine.py`. Every merged copy of the tiny
model's adapted layers is ~0.14 MiB, so byte bounds here are fractions of a MiB.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mdkif.serving.config import check_artifacts, load_app_config
from mdkif.serving.engine import GenRequest, MergedCache, RoutedEngine, weights_key
from mdkif.serving.protocol import SamplingParams
from mdkif.testing.serving import build_tiny_artifacts

PROMPT = "Answer yes or no: crushing chest pain"
# Six distinct fixed mixtures, then two names for weights another profile already has.
MIXES = {f"mix{i}": {"triage_yes": 1.0 - 0.15 * i, "triage_no": 0.15 * i} for i in range(6)}


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MDKIF_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield build_tiny_artifacts(tmp_path_factory.mktemp("serve_art"))
    mp.undo()


def _engine(art, profiles=None, **args) -> RoutedEngine:
    profiles = profiles if profiles is not None else {n: {"weights": w} for n, w in MIXES.items()}
    cfg = load_app_config(
        {"model": {"name": "tiny"}, "adapters_dir": str(art["adapters"]), "profiles": profiles, **args}
    )
    return RoutedEngine(check_artifacts(cfg))


def _serve(engine: RoutedEngine, profile: str | None, max_tokens: int = 2) -> str:
    ids = engine.render(prompt=PROMPT)
    req = GenRequest(ids, profile, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    return engine.generate_batch([req])[0]["text"]


@pytest.fixture(scope="module")
def entry_bytes(art) -> int:
    return _engine(art).cache.entry_bytes


def _merged_copies(engine: RoutedEngine, *extra: dict[str, torch.Tensor]) -> int:
    """Distinct merged copies alive: buffers reachable from the entries, the layers and `extra`, by storage."""
    cache = engine.cache
    original = {t.data_ptr() for t in cache.original.values()}
    held = [t for e in cache.entries.values() for t in e.values()]
    held += [layer.base.weight.data for layer in engine.fused.layers.values()]
    held += [t for e in extra if e is not None for t in e.values()]
    ptrs = {t.data_ptr() for t in held} - original
    return len(ptrs) // len(cache.original)


def test_cache_is_bounded_by_bytes(art, entry_bytes):
    mb = 2.5 * entry_bytes / 2**20  # room for two copies, not three
    engine = _engine(art, merged_cache_size=10, merged_cache_mb=mb)
    cache = engine.cache
    assert cache.capacity == 2
    for _ in range(2):
        for name in MIXES:
            _serve(engine, name)
            assert len(cache.entries) <= 2 and cache.bytes <= mb * 2**20
            assert _merged_copies(engine) <= 2
    assert len(cache.entries) == 2 and cache.builds == 2 * len(MIXES)  # round robin over 6 > 2: no hits
    stats = engine.stats()["merged_cache"]
    assert stats["bytes"] == 2 * entry_bytes <= stats["max_bytes"]


def test_the_count_bound_still_applies(art):
    engine = _engine(art, merged_cache_size=3, merged_cache_mb=1024)
    for name in MIXES:
        _serve(engine, name)
    assert engine.cache.capacity == 3 and list(engine.cache.entries) == [
        engine.profile(n).key for n in ("mix3", "mix4", "mix5")
    ]


def test_profiles_with_identical_weights_share_one_entry(art):
    profiles = {
        "yes": {"weights": {"triage_yes": 1.0}},
        "yes_again": {"weights": {"triage_yes": 1.0, "triage_no": 0.0}},
        "static": {"router": str(art["router_static"])},
        "static_again": {"router": str(art["router_static"])},
        "zero": {"weights": {"triage_yes": 0.0}},  # the base model: no copy at all
    }
    engine = _engine(art, profiles)
    texts = {name: _serve(engine, name, max_tokens=4) for name in profiles}
    cache = engine.cache
    assert cache.builds == 2 and len(cache.entries) == 2
    assert texts["yes"] == texts["yes_again"] and texts["static"] == texts["static_again"]
    assert texts["zero"] == _serve(engine, None, max_tokens=4)
    assert sorted(map(sorted, engine.stats()["merged_cached"])) == [
        ["static", "static_again"],
        ["yes", "yes_again"],
    ]
    # Requests of two profiles with one mixture share a merged batch.
    ids = engine.render(prompt=PROMPT)
    assert engine._plan([GenRequest(ids, "yes"), GenRequest(ids, "yes_again")])[0] == "merged"


def test_eviction_happens_before_the_build(art, monkeypatch):
    engine = _engine(art, merged_cache_size=2)
    peak = []
    build = MergedCache._build

    def spy(self, weights, *args, **kwargs):
        slots = [a for a in (*args, *kwargs.values()) if isinstance(a, dict)]
        out = build(self, weights, *args, **kwargs)
        peak.append(_merged_copies(engine, *slots, out))  # everything alive once the new copy exists
        return out

    monkeypatch.setattr(MergedCache, "_build", spy)
    for name in [*MIXES, "mix0", "mix1"]:
        _serve(engine, name)
    assert len(peak) == engine.cache.builds == len(MIXES) + 2
    assert max(peak) <= 2, peak  # never capacity + 1 copies, also while building


def test_one_working_copy_is_re_merged_in_place(art):
    engine = _engine(art, merged_cache_size=1)
    fresh = _engine(art)
    _serve(engine, "mix0")
    buffers = {n: t.data_ptr() for n, t in next(iter(engine.cache.entries.values())).items()}
    for name in ("mix3", "mix1", "mix0"):
        assert _serve(engine, name, max_tokens=4) == _serve(fresh, name, max_tokens=4)
        (entry,) = engine.cache.entries.values()
        assert {n: t.data_ptr() for n, t in entry.items()} == buffers  # the same buffers, rewritten
    assert engine.cache.builds == 4


def test_a_bound_below_one_copy_serves_stacked_with_no_copy(art, entry_bytes):
    engine = _engine(art, merged_cache_mb=0.5 * entry_bytes / 2**20)
    merged = _engine(art)
    assert engine.cache.capacity == 0
    ids = engine.render(prompt=PROMPT)
    assert engine._plan([GenRequest(ids, "mix1")])[0] == "stacked"
    assert engine._plan([GenRequest(ids, None)])[0] == "merged"  # the base needs no copy
    for name in ("mix1", "mix4"):
        assert _serve(engine, name, max_tokens=6) == _serve(merged, name, max_tokens=6)
    assert engine.cache.builds == 0 and not engine.cache.entries


class _Int8Linear(nn.Linear):
    """Stands in for bitsandbytes' int8 layer: an `nn.Linear` subclass whose weight is packed int8 storage."""

    def __init__(self, dense: nn.Linear) -> None:
        super().__init__(dense.in_features, dense.out_features, bias=False)
        self.scale = float(dense.weight.detach().abs().max() / 127)
        self.weight = nn.Parameter((dense.weight.detach() / self.scale).round().to(torch.int8), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight.float() * self.scale).T


def test_a_quantized_base_is_never_merged(art):
    from mdkif.fusion import SkillBank
    from mdkif.models import ModelConfig, load_model

    loaded = load_model(ModelConfig(name="tiny"))
    bank = SkillBank.from_dir(art["adapters"], ["triage_yes", "triage_no"])
    first = bank.modules()[0]
    parent, _, child = first.rpartition(".")
    setattr(loaded.model.get_submodule(parent), child, _Int8Linear(loaded.model.get_submodule(first)))
    cfg = load_app_config(
        {
            "model": {"name": "tiny"},
            "adapters_dir": str(art["adapters"]),
            "profiles": {"yes": {"weights": {"triage_yes": 1.0}}},
        }
    )
    engine = RoutedEngine(check_artifacts(cfg), loaded=loaded, bank=bank)
    assert engine.cache.capacity == 0
    ids = engine.render(prompt=PROMPT)
    assert engine._plan([GenRequest(ids, "yes")])[0] == "stacked"
    served = engine.generate_batch([GenRequest(ids, "yes", SamplingParams(max_tokens=3, ignore_eos=True))])[0]
    assert served["completion_tokens"] == 3 and served["finish_reason"] == "length"
    assert engine.fused.layers[first].base.weight.dtype == torch.int8


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-5), ("bfloat16", 0.02)])
def test_merged_logits_equal_stacked_logits(art, dtype, atol):
    profiles = {"static": {"router": str(art["router_static"])}, "mix2": {"weights": MIXES["mix2"]}}
    engine = _engine(art, profiles, model={"name": "tiny", "dtype": dtype})
    torch_dtype = getattr(torch, dtype)
    assert engine.model.dtype == torch_dtype
    ids = torch.tensor([engine.render(prompt=PROMPT)])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    L, K = engine.fused.num_layers, engine.fused.num_skills
    for name in profiles:
        w = engine.profile(name).weights
        merged = engine._forward(("merged", (engine.profile(name).key, w)), **inputs).logits.float()
        stacked = engine._forward(("stacked", w.expand(1, L, K)), **inputs).logits.float()
        base = engine._forward(("merged", (None, None)), **inputs).logits.float()
        assert (
            stacked - base
        ).abs().max() > 10 * atol  # the skills move the logits: the check means something
        torch.testing.assert_close(merged, stacked, atol=atol, rtol=0)
        # Merged weights are the fp32 sum rounded once into the weight dtype, as FusedLinear.merge rounds.
        full = w.float().expand(L, K) if w.dim() == 1 else w.float()
        entry = engine.cache.entries[engine.profile(name).key]
        for layer_name, layer in engine.fused.layers.items():
            once = (engine.cache.original[layer_name].float() + layer.delta(full[layer.group])).to(
                torch_dtype
            )
            torch.testing.assert_close(entry[layer_name], once, atol=0, rtol=0)


def test_weights_key_is_a_digest_of_the_values():
    a = weights_key(torch.tensor([0.5, 0.5]), 3)
    assert a == weights_key(torch.tensor([[0.5, 0.5]] * 3), 3)  # [K] is every layer's [L, K] row
    assert a == weights_key(torch.tensor([0.5, 0.5], dtype=torch.float64), 3)
    assert a != weights_key(torch.tensor([0.5, 0.25]), 3)
    assert weights_key(torch.tensor([0.0, -0.0]), 3) is None  # all zero: the base model


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "lots"])
def test_merged_cache_mb_is_validated(bad):
    from mdkif.config import ConfigError

    with pytest.raises(ConfigError, match="merged_cache_mb"):
        load_app_config({"merged_cache_mb": bad})
