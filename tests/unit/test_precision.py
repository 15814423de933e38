"""`model.dtype: auto` on a CPU: bf16 only where the CPU has bf16 units, fp32 unchanged elsewhere; the bf16
training path keeps fp32 adapters (saved and reloaded exactly) and its speed-ups keep the values they replace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mdkif.models import ModelConfig
from mdkif.models.precision import (
    attention_kernel,
    cpu_bf16_reason,
    cpu_flags,
    resolve_dtype,
    storage_dtype,
)
from mdkif.skills.config import AdapterConfig, OptimConfig
from mdkif.skills.devices import autocast_dtype
from mdkif.skills.job import SkillData, TrainJob

CPU = torch.device("cpu")
ZEN4 = frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"})
SAPPHIRE_RAPIDS = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
SKYLAKE = frozenset({"fpu", "avx2", "avx512f", "avx512bw"})


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    os.environ.setdefault("MDKIF_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def flags(monkeypatch):
    """Pretend the CPU reports the given flags (no override in the environment)."""
    import mdkif.models.precision as precision

    monkeypatch.delenv("MDKIF_CPU_BF16", raising=False)

    def use(found: frozenset[str]) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda path=None: found)

    return use


def test_auto_is_bf16_only_where_the_cpu_reports_bf16_units(flags):
    for found, reason in ((SAPPHIRE_RAPIDS, "amx_bf16"), (ZEN4, "avx512_bf16")):
        flags(found)
        assert resolve_dtype("auto", CPU) == torch.bfloat16
        assert reason in cpu_bf16_reason()[1]
    flags(SKYLAKE)
    assert resolve_dtype("auto", CPU) == torch.float32
    assert "none of amx_bf16, avx512_bf16" in cpu_bf16_reason()[1]
    flags(frozenset())  # no /proc/cpuinfo (macOS): fp32
    assert resolve_dtype("auto", CPU) == torch.float32


def test_explicit_dtypes_and_the_override_are_taken_as_they_are(flags, monkeypatch):
    flags(SAPPHIRE_RAPIDS)
    assert resolve_dtype("float32", CPU) == torch.float32  # `precision: fp32` keeps today's behaviour
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    monkeypatch.setenv("MDKIF_CPU_BF16", "0")
    assert resolve_dtype("auto", CPU) == torch.float32
    flags(SKYLAKE)
    monkeypatch.setenv("MDKIF_CPU_BF16", "1")
    assert resolve_dtype("auto", CPU) == torch.bfloat16
    monkeypatch.setenv("MDKIF_CPU_BF16", "maybe")
    with pytest.raises(ValueError, match="MDKIF_CPU_BF16='maybe': expected auto, 0 or 1"):
        resolve_dtype("auto", CPU)


def test_cuda_auto_is_unchanged(flags, monkeypatch):
    flags(SKYLAKE)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n\n")
    assert cpu_flags(info) == {"fpu", "avx512f", "avx512_bf16", "amx_tile"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_saved_copies_stay_fp32_and_autocast_follows_the_base(flags):
    flags(ZEN4)
    assert storage_dtype("auto", CPU) == torch.float32  # merged bases between pipeline steps
    assert storage_dtype("bfloat16", CPU) == torch.bfloat16
    assert autocast_dtype(CPU, True, torch.bfloat16) == torch.bfloat16
    assert autocast_dtype(CPU, True, torch.float32) is None  # an fp32 base trains exactly as before
    assert autocast_dtype(CPU, False, torch.bfloat16) is None
    assert autocast_dtype(CPU, True) is None  # backends (DeepSpeed's own bf16) stay CUDA-only
    assert attention_kernel("auto", CPU, torch.bfloat16) == "eager"
    assert attention_kernel("auto", CPU, torch.float32) is None
    assert attention_kernel("sdpa", CPU, torch.bfloat16) == "sdpa"


def test_auto_loads_the_tiny_base_in_bf16_with_eager_attention(monkeypatch):
    from mdkif.models import load_model

    monkeypatch.setenv("MDKIF_CPU_BF16", "1")
    loaded = load_model(ModelConfig(name="tiny"))
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.model.config._attn_implementation == "eager"
    monkeypatch.setenv("MDKIF_CPU_BF16", "0")
    assert load_model(ModelConfig(name="tiny")).model.dtype == torch.float32


def _peft_adalora(dtype: torch.dtype) -> tuple[torch.nn.Module, torch.Tensor]:
    from mdkif.models import load_model
    from mdkif.skills.adapters import build_peft_model

    base = load_model(ModelConfig(name="tiny", dtype=str(dtype).removeprefix("torch."))).model
    model = build_peft_model(base, AdapterConfig(r=4, target_r=2), 10, seed=0, quantized=False)
    with torch.no_grad():  # non-zero B and E, so the adapter contributes
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    ids = torch.randint(5, 900, (2, 24), generator=torch.Generator().manual_seed(1))
    return model, ids


def test_rank_scaled_adalora_forward_equals_peft():
    """Same outputs and adapter gradients as peft's own SVDLinear (the class swap changes only the cost)."""
    from peft.tuners.adalora.layer import SVDLinear

    from mdkif.skills.adalora_layer import RankScaledSVDLinear

    model, ids = _peft_adalora(torch.float32)
    fast = [m for m in model.modules() if isinstance(m, SVDLinear)]
    assert fast and all(type(m) is RankScaledSVDLinear for m in fast)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logits = model(input_ids=ids).logits
        logits.float().square().mean().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    out_fast, grads_fast = run()
    for m in fast:
        m.__class__ = SVDLinear
    out_peft, grads_peft = run()
    torch.testing.assert_close(out_fast, out_peft, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_fast, grads_peft, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_batched_orth_penalty_equals_the_per_matrix_sum():
    from mdkif.skills.adapters import orth_penalty

    model, _ = _peft_adalora(torch.float32)
    terms = []
    for name, p in model.named_parameters():
        if p.requires_grad and ("lora_A" in name or "lora_B" in name):
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.linalg.norm(cov - torch.eye(cov.shape[0])))
    assert float(orth_penalty(model)) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-6)


def _job(out: Path, dtype: str) -> TrainJob:
    return TrainJob(
        name="qa",
        model=ModelConfig(name="tiny", dtype=dtype),
        adapter=AdapterConfig(r=4, target_r=2),
        optim=OptimConfig(max_steps=6, batch_size=2, grad_accum=2, max_length=96, lr=1e-2),
        data=SkillData(dir="pkg:assets/demo_skills", skills=("qa",)),
        out_dir=out / "qa",
        ckpt_dir=out / ".checkpoints" / "qa",
        checkpoint_every=3,
        seed=0,
        job_key="test",
    )


RELOAD = textwrap.dedent(
    """
    import json, sys, torch
    from peft import PeftModel
    from mdkif.models import ModelConfig, load_model
    from mdkif.skills.adapters import use_rank_scaled_forward
    from mdkif.skills.datasets import job_examples
    from mdkif.skills.job import TrainJob
    from mdkif.skills.losses import evaluate

    job = TrainJob.model_validate_json(open(sys.argv[1]).read())
    loaded = load_model(job.model)
    model = PeftModel.from_pretrained(loaded.model, str(job.out_dir))
    use_rank_scaled_forward(model)
    _, val, _ = job_examples(job, loaded.tokenizer)
    auto = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    loss = evaluate(model, val, job.optim.batch_size, loaded.tokenizer.pad_token_id, torch.device("cpu"), auto)
    print(json.dumps({"dtype": str(loaded.model.dtype), "val_loss": loss}))
    """
)


def test_an_adapter_trained_in_bf16_saves_fp32_and_reloads_to_the_same_loss(tmp_path, monkeypatch):
    """Trained with a bf16 base under autocast: the saved adapter is fp32, and a fresh process that loads it
    onto the same bf16 base gets the validation loss the run reported."""
    from mdkif.skills.loop import train_loop_per_worker

    monkeypatch.setenv("MDKIF_CPU_BF16", "1")
    job = _job(tmp_path, "auto")
    (summary,) = train_loop_per_worker({"job": job})
    assert summary["val_loss_after"] < summary["val_loss_before"]
    weights = load_file(str(tmp_path / "qa" / "adapter_model.safetensors"))
    assert weights and {v.dtype for v in weights.values()} == {torch.float32}
    assert all(v.abs().sum() > 0 for k, v in weights.items() if k.endswith(("lora_A", "lora_B")))
    (tmp_path / "job.json").write_text(job.model_dump_json())
    out = subprocess.run(
        [sys.executable, "-c", RELOAD, str(tmp_path / "job.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "MDKIF_CPU_BF16": "1"},
        check=True,
    )
    reloaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert reloaded["dtype"] == "torch.bfloat16"
    # peft reloads AdaLoRA matrices cut to their allocated ranks, so the products are summed in another order:
    # in bf16 that moves the loss by ~1e-5 relative (bf16 vs fp32 compute differ by ~1e-3).
    assert reloaded["val_loss"] == pytest.approx(summary["val_loss_after"], rel=1e-4)


def test_bf16_checkpoints_resume_to_the_uninterrupted_run(tmp_path, monkeypatch):
    """A bf16 run stopped after its step-3 checkpoint and resumed ends where the uninterrupted one does."""
    from mdkif.skills.loop import train_loop_per_worker

    class Stop(Exception):
        pass

    def stop_after_3(job, rank, step):
        if step == 3:
            raise Stop

    monkeypatch.setenv("MDKIF_CPU_BF16", "1")
    (whole,) = train_loop_per_worker({"job": _job(tmp_path / "whole", "auto")})
    job = _job(tmp_path / "split", "auto")
    with pytest.raises(Stop):
        train_loop_per_worker({"job": job, "callbacks": [stop_after_3]})
    (resumed,) = train_loop_per_worker({"job": job})
    assert resumed["resumed_from_step"] == 3
    assert resumed["val_loss_after"] == pytest.approx(whole["val_loss_after"], rel=1e-6)


def test_keep_freed_memory_is_set_once_and_can_be_turned_off(monkeypatch):
    import mdkif.allocator as allocator

    monkeypatch.setattr(allocator, "_done", {})
    monkeypatch.setenv("MDKIF_MALLOC_TUNING", "0")
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator, "_done", {})
    monkeypatch.delenv("MDKIF_MALLOC_TUNING")
    assert allocator.keep_freed_memory() is (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


def test_loglik_predictions_under_bf16_match_fp32_on_the_tiny_model():
    """Evaluation scoring on a bf16 base gives the fp32 scores to bf16's precision and the same answer
    wherever fp32's best option leads by more than that error (ties within the error may flip; the
    benchmark measures the agreement on a real model: bench/results/eval_scoring.md)."""
    from mdkif.data.mcq import load_benchmark
    from mdkif.evaluation.config import ScoringConfig
    from mdkif.evaluation.scorers import score_records
    from mdkif.models import load_model

    records = load_benchmark(Path(__file__).resolve().parents[2] / "src/mdkif/assets/demo_mcq/demo_mcq.json")
    assert len(records) >= 20
    rows = {}
    for dtype in ("float32", "bfloat16"):
        loaded = load_model(ModelConfig(name="tiny", dtype=dtype))
        assert loaded.model.dtype == getattr(torch, dtype)
        rows[dtype] = score_records(loaded.model, loaded.tokenizer, records, ScoringConfig(method="loglik"))
    worst, decided, agree = 0.0, 0, 0
    for a, b in zip(rows["float32"], rows["bfloat16"], strict=True):
        worst = max(worst, *(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]))
    for a, b in zip(rows["float32"], rows["bfloat16"], strict=True):
        top = sorted(a["scores"].values(), reverse=True)
        if top[0] - top[1] > 2 * worst:
            decided += 1
            agree += a["prediction"] == b["prediction"]
    assert worst < 0.05  # nats, on scores of several nats
    assert decided >= len(records) // 2 and agree == decided
