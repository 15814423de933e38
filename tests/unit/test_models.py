"""Model loading: tiny models from a config, caching, quantisation on CPU, and clear errors."""

from __future__ import annotations

import pytest
import torch

from mdkif.config import ConfigError, validate
from mdkif.models import ModelConfig, ModelError, load_model
from mdkif.models.loading import TINY_TOKENIZER_DIR, resolve_source


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MDKIF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tiny_model_is_deterministic_and_cached(cache):
    a = load_model(ModelConfig(name="tiny"))
    b = load_model(name="tiny")
    assert a.path == b.path and str(cache) in a.path
    ids = a.tokenizer("Metformin lowers blood glucose.", return_tensors="pt")
    with torch.no_grad():
        la, lb = a.model(**ids).logits, b.model(**ids).logits
    assert la.shape == (1, ids["input_ids"].shape[1], len(a.tokenizer))
    assert torch.equal(la, lb)
    assert a.tokenizer.pad_token is not None and a.tokenizer.chat_template
    other = load_model(ModelConfig(name="tiny", tiny={"seed": 1}))
    assert other.path != a.path


def test_tiny_tokenizer_round_trips_medical_text():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    text = "Acute lymphoblastic leukemia (ALL) — 5 mg/kg, IV q6h; ß-blockers."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok) == 1024


def test_local_directory_loads(cache):
    tiny = load_model(name="tiny")
    again = load_model(name=tiny.path)
    assert again.num_parameters == tiny.num_parameters


def test_missing_paths_give_clear_errors(tmp_path, cache):
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_source(ModelConfig(name=str(tmp_path / "m.gguf")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="holds no config.json"):
        resolve_source(ModelConfig(name=str(tmp_path / "empty")))
    with pytest.raises(ModelError, match="neither a model directory"):
        resolve_source(ModelConfig(name="./no/such/model"))


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match=r"field 'quantization': Input should be 'none', 'nf4' or 'int8'"):
        validate(ModelConfig, {"quantization": "4bit"}, "model")
    with pytest.raises(ConfigError, match="multiple of num_attention_heads"):
        validate(ModelConfig, {"tiny": {"hidden_size": 30, "num_attention_heads": 4}}, "model")


@pytest.mark.parametrize("quant, layer_type", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_bitsandbytes_quantisation_runs_on_cpu(cache, quant, layer_type):
    q = load_model(name="tiny", quantization=quant, tiny={"hidden_size": 128, "intermediate_size": 256})
    types = {type(m).__name__ for m in q.model.modules()}
    assert layer_type in types
    full = load_model(name="tiny", tiny={"hidden_size": 128, "intermediate_size": 256})
    ids = q.tokenizer("Chest pain radiating to the left arm", return_tensors="pt")
    with torch.no_grad():
        lq, lf = q.model(**ids).logits.float(), full.model(**ids).logits
    assert torch.isfinite(lq).all()
    # Quantisation perturbs but does not destroy the model: logits stay strongly correlated.
    corr = torch.corrcoef(torch.stack([lq.flatten(), lf.flatten()]))[0, 1]
    assert corr > 0.9


def _slow_writer(target: str, log: str) -> None:
    import time
    from pathlib import Path

    from mdkif.models.loading import _atomic_dir

    def write(tmp):
        with open(log, "a") as fh:
            fh.write("w\n")
        time.sleep(0.5)  # long enough that the other process asks while this one is still writing
        (tmp / "config.json").write_text('{"model_type": "llama"}')

    out = _atomic_dir(Path(target), write)
    assert (out / "config.json").is_file()


def test_cache_dir_is_built_once_when_processes_race(tmp_path):
    import multiprocessing as mp

    target, log = tmp_path / "models" / "m", tmp_path / "writes.log"
    procs = [
        mp.get_context("spawn").Process(target=_slow_writer, args=(str(target), str(log))) for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text() == "w\n"  # one conversion; the others waited and reused it
    assert sorted(x.name for x in target.iterdir()) == [".mdkif_complete", "config.json"]
    assert [x.name for x in target.parent.iterdir() if x.name.startswith(".m.") and x.is_dir()] == []


def test_incomplete_cache_dir_is_rebuilt_not_loaded(tmp_path):
    from mdkif.models.loading import _atomic_dir

    target = tmp_path / "m"
    target.mkdir()
    (target / "tokenizer.json").write_text("{}")  # a half-copied cache: no config.json, no marker
    out = _atomic_dir(target, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert sorted(x.name for x in out.iterdir()) == [".mdkif_complete", "config.json"]


def test_model_cache_is_written_by_a_non_zero_rank(cache, monkeypatch):
    # Inside a Ray Train worker torch.distributed is up; transformers then skips save_pretrained on every
    # rank but 0, which left rank 1's model cache without config.json or weights.
    import transformers.distributed.mixin as mixin

    monkeypatch.setattr(mixin, "_is_torch_distributed_initialized", lambda: True)
    monkeypatch.setattr(mixin, "_get_torch_distributed_rank", lambda: 1)
    loaded = load_model(name="tiny")
    names = {p.name for p in cache.glob("models/tiny-llama-*/*")}
    assert {"config.json", "model.safetensors", "tokenizer.json", ".mdkif_complete"} <= names
    assert loaded.num_parameters > 0
