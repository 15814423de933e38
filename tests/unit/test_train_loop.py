"""The core adapter loop on the tiny model, in-process (no Ray): masking, packing, data order, AdaLoRA,
checkpoint/resume to the same weights, and adapters that reload in peft format with their real weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mdkif.data.records import SkillRecord
from mdkif.models import ModelConfig
from mdkif.skills.config import AdapterConfig, OptimConfig
from mdkif.skills.data import IGNORE, MicroBatchStream, encode_record, pack_texts
from mdkif.skills.job import SkillData, TrainJob
from mdkif.skills.loop import WorkerContext, run_job, train_loop_per_worker
from mdkif.skills.losses import evaluate

DEMO = "pkg:assets/demo_skills"


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    import os

    os.environ.setdefault("MDKIF_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def tokenizer():
    from mdkif.models import load_model

    return load_model(name="tiny").tokenizer


def make_job(out: Path, name: str = "qa", **optim) -> TrainJob:
    o = {"max_steps": 6, "batch_size": 2, "grad_accum": 2, "max_length": 96, "lr": 1e-2, **optim}
    return TrainJob(
        name=name,
        model=ModelConfig(name="tiny"),
        adapter=AdapterConfig(r=4, target_r=2),
        optim=OptimConfig(**o),
        data=SkillData(dir=DEMO, skills=(name,)),
        out_dir=out / name,
        ckpt_dir=out / ".checkpoints" / name,
        checkpoint_every=3,
        seed=0,
        job_key="test",
    )


def test_loss_only_on_output_and_eos(tokenizer):
    rec = SkillRecord(
        id="x",
        skill="qa",
        task="t",
        instruction="Answer.",
        input="What is flu?",
        output="A virus.",
        source="s",
    )
    ex = encode_record(tokenizer, rec, 64)
    prompt_len = len(tokenizer(rec.prompt())["input_ids"])
    assert all(t == IGNORE for t in ex.labels[:prompt_len])
    assert ex.labels[prompt_len:] == ex.input_ids[prompt_len:]
    assert ex.labels[-1] == tokenizer.eos_token_id
    long = rec.model_copy(update={"input": "word " * 500})
    ex = encode_record(tokenizer, long, 64)
    assert len(ex.input_ids) <= 64 and ex.labels[-1] == tokenizer.eos_token_id


def test_packing_fixed_blocks_with_eos(tokenizer):
    blocks = pack_texts(tokenizer, ["first document " * 20, "second one " * 30], 32)
    assert blocks and all(len(b.input_ids) == 32 and b.labels == b.input_ids for b in blocks)
    assert any(tokenizer.eos_token_id in b.input_ids for b in blocks)


def test_stream_is_a_function_of_index_and_ranks_are_disjoint():
    from mdkif.skills.data import Example

    exs = [Example([i], [i]) for i in range(10)]
    s = MicroBatchStream(exs, 2, seed=3)
    assert [s.batch(i) for i in range(7)] == [s.batch(i) for i in range(7)]
    assert sorted(e.input_ids[0] for i in range(5) for e in s.batch(i)) == list(range(10))
    assert s.order(0) != s.order(1)  # a new permutation each epoch
    r0, r1 = MicroBatchStream(exs, 2, 3, 0, 2), MicroBatchStream(exs, 2, 3, 1, 2)
    assert not set(r0.order(0)) & set(r1.order(0))


def test_train_saves_peft_adapter_with_real_weights_and_allocated_ranks(tmp_path, tokenizer):
    from peft import PeftModel

    from mdkif.models import load_model
    from mdkif.skills.datasets import job_examples

    job = make_job(tmp_path, max_steps=8)
    seen = []
    (summary,) = train_loop_per_worker({"job": job, "report": seen.append})
    assert [m["step"] for m in seen] == list(range(1, 9))
    assert summary["val_loss_after"] < summary["val_loss_before"]
    # AdaLoRA allocated: 8 matrices x target_r 2 = 16 of the initial 32 ranks remain
    assert 0 < summary["total_rank"] <= 16
    weights = load_file(str(tmp_path / "qa" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_E") for k in weights)
    assert all(v.abs().sum() > 0 for k, v in weights.items() if k.endswith(("lora_A", "lora_B")))
    model = PeftModel.from_pretrained(load_model(name="tiny").model, str(tmp_path / "qa"))
    _, val, _ = job_examples(job, tokenizer)
    reloaded = evaluate(model, val, 2, tokenizer.pad_token_id, torch.device("cpu"), torch.no_grad)
    assert reloaded == pytest.approx(summary["val_loss_after"], abs=1e-5)
    meta = json.loads((tmp_path / "qa" / "metrics.json").read_text())
    assert meta["history"][-1]["step"] == 8


class Crash(RuntimeError):
    pass


def test_resume_after_crash_gives_the_same_weights(tmp_path):
    straight = make_job(tmp_path / "a")
    train_loop_per_worker({"job": straight})

    crashed = make_job(tmp_path / "b")

    def crash_at_5(metrics):
        if metrics.get("step") == 5:
            raise Crash  # after the step-3 checkpoint; step 4 and 5 are redone on resume

    with pytest.raises(Crash):
        run_job(crashed, WorkerContext(report=crash_at_5), data_parallel=False)
    assert not (tmp_path / "b" / "qa" / "metrics.json").exists()
    seen = []
    (summary,) = train_loop_per_worker({"job": crashed, "report": seen.append})
    assert summary["resumed_from_step"] == 3
    assert [m["step"] for m in seen if "step" in m] == [4, 5, 6]
    assert [h["step"] for h in summary["history"]] == [1, 2, 3, 4, 5, 6]
    a = load_file(str(tmp_path / "a" / "qa" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "qa" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_finished_job_is_skipped(tmp_path):
    job = make_job(tmp_path, max_steps=2)
    train_loop_per_worker({"job": job})
    before = (tmp_path / "qa" / "metrics.json").stat().st_mtime_ns
    seen = []
    train_loop_per_worker({"job": job.model_copy(update={"total_steps": 2}), "report": seen.append})
    assert (tmp_path / "qa" / "metrics.json").stat().st_mtime_ns == before
    assert seen == []  # no reports for work not done (a shared trainer pads at the end instead)


def test_a_shared_worker_reports_only_real_steps(tmp_path):
    """A finished skill sends nothing, the next one its steps (in Ray the shared workers never wait for
    each other: a report is a barrier there, and they train different skills)."""
    done = make_job(tmp_path, "qa", max_steps=2)
    train_loop_per_worker({"job": done})
    todo = make_job(tmp_path, "nli", max_steps=3)
    seen = []
    train_loop_per_worker({"jobs_by_rank": [[done, todo]], "report": seen.append})
    assert [(m["skill"], m["step"]) for m in seen] == [("nli", 1), ("nli", 2), ("nli", 3)]


def test_shared_worker_trains_its_skills_in_turn(tmp_path):
    jobs = [make_job(tmp_path, "qa", max_steps=2), make_job(tmp_path, "nli", max_steps=1)]
    seen = []
    results = train_loop_per_worker({"jobs_by_rank": [jobs], "report": seen.append})
    assert [r["name"] for r in results] == ["qa", "nli"]
    assert [(m["skill"], m["step"]) for m in seen] == [("qa", 1), ("qa", 2), ("nli", 1)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bf16 autocast, fused AdamW)")
@pytest.mark.gpu
def test_bf16_autocast_on_gpu(tmp_path):
    job = make_job(tmp_path, max_steps=2)
    summary = run_job(job, WorkerContext(device=torch.device("cuda")), data_parallel=False)
    assert summary["val_loss_after"] < summary["val_loss_before"]


def test_changed_settings_retrain_from_scratch(tmp_path):
    job = make_job(tmp_path, max_steps=2)
    train_loop_per_worker({"job": job})
    (summary,) = train_loop_per_worker({"job": job.model_copy(update={"job_key": "other-data"})})
    assert summary["resumed_from_step"] is None  # neither skipped nor resumed from the old checkpoint
    assert [h["step"] for h in summary["history"]] == [1, 2]
