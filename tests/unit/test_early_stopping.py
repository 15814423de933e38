"""Early stopping in the training loop: it stops on the validation loss, saves the best weights, resumes to
the same decision, and reports the deciding-label accuracy of classification tasks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mdkif.data.records import SkillRecord
from mdkif.models import ModelConfig
from mdkif.skills.config import AdapterConfig, EarlyStopping, OptimConfig
from mdkif.skills.job import SkillData, TrainJob
from mdkif.skills.labels import LabelProbe, label_sets
from mdkif.skills.loop import train_loop_per_worker

DEMO = "pkg:assets/demo_skills"


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    os.environ.setdefault("MDKIF_CACHE", str(tmp_path_factory.mktemp("cache")))


def job(out: Path, skill: str = "nli", steps: int = 12, lr: float = 5e-2, **stopping) -> TrainJob:
    es = EarlyStopping(**{"every": 2, "patience": 2, **stopping}) if stopping is not None else None
    return TrainJob(
        name=skill,
        model=ModelConfig(name="tiny"),
        adapter=AdapterConfig(r=4, target_r=2),
        optim=OptimConfig(max_steps=steps, batch_size=3, max_length=96, lr=lr, early_stopping=es),
        data=SkillData(dir=DEMO, skills=(skill,)),
        out_dir=out / skill,
        ckpt_dir=out / ".checkpoints" / skill,
        checkpoint_every=2,
        seed=0,
        job_key="test",
    )


def record(task: str, output: str, i: int) -> SkillRecord:
    return SkillRecord(
        id=f"r{i}",
        skill="nli",
        task=task,
        instruction="Decide.",
        input=f"case {i}",
        output=output,
        source="s",
    )


def test_label_sets_keep_only_few_valued_tasks():
    recs = [record("yn", "yes" if i % 2 else "no", i) for i in range(10)]
    recs += [record("free", f"answer number {i}", 10 + i) for i in range(40)]
    recs += [record("one", "always", 60 + i) for i in range(5)]
    assert label_sets(recs) == {"yn": ("no", "yes")}


def test_label_probe_scores_the_gold_label_among_the_task_labels():
    """A model that always prefers 'yes' is right exactly on the items whose gold label is 'yes'."""
    from mdkif.models import load_model

    loaded = load_model(ModelConfig(name="tiny"))
    tok = loaded.tokenizer
    val = [record("yn", "yes" if i < 3 else "no", i) for i in range(8)]
    probe = LabelProbe.build(val, val, tok, 96)
    assert probe is not None and probe.describe() == {"yn": {"items": 8, "labels": 2}}
    yes = tok("yes", add_special_tokens=False)["input_ids"][0]

    class PrefersYes(torch.nn.Module):
        """Wraps the tiny model and lifts the 'yes' logit far above the rest."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            out = self.inner(**kw)
            out.logits[..., yes] += 100.0
            return out

    acc = probe.accuracy(PrefersYes(loaded.model), torch.device("cpu"), torch.no_grad, batch_size=3)
    assert acc == pytest.approx(3 / 8)


def test_stops_when_validation_stops_improving_and_saves_the_best(tmp_path):
    """lr 5 overshoots: the loop stops before its 12 planned steps and the adapter it saves is the best one."""
    from mdkif.skills.losses import evaluate

    j = job(tmp_path, lr=5.0)
    (summary,) = train_loop_per_worker({"job": j})
    es = summary["early_stopping"]
    losses = {v["step"]: v["val_loss"] for v in es["validations"]}
    assert es["stopped_at"] is not None and es["stopped_at"] < 12
    assert es["best_val_loss"] == min(losses.values()) and losses[es["best_step"]] == es["best_val_loss"]
    assert summary["val_loss_after"] == pytest.approx(es["best_val_loss"], rel=1e-6)
    # the nli demo task is a classification task: its deciding-label accuracy is reported
    assert summary["label_tasks"] == {"demo_nli": {"items": 3, "labels": 3}}
    assert all(v["label_accuracy"] is not None for v in es["validations"])
    # the saved adapter reloads to the best validation loss
    from peft import PeftModel

    from mdkif.models import load_model
    from mdkif.skills.adapters import use_rank_scaled_forward
    from mdkif.skills.datasets import job_examples

    loaded = load_model(ModelConfig(name="tiny"))
    model = PeftModel.from_pretrained(loaded.model, str(tmp_path / "nli"))
    use_rank_scaled_forward(model)
    _, val, _ = job_examples(j, loaded.tokenizer)
    reloaded = evaluate(model, val, 3, loaded.tokenizer.pad_token_id, torch.device("cpu"), torch.no_grad)
    assert reloaded == pytest.approx(es["best_val_loss"], abs=1e-5)
    meta = json.loads((tmp_path / "nli" / "metrics.json").read_text())
    assert meta["early_stopping"]["stopped_at"] == es["stopped_at"]
    assert any("val_loss" in h for h in meta["history"])


def test_an_improving_run_trains_every_planned_step(tmp_path):
    (summary,) = train_loop_per_worker({"job": job(tmp_path, steps=6, lr=1e-2, patience=5)})
    assert summary["early_stopping"]["stopped_at"] is None
    assert [v["step"] for v in summary["early_stopping"]["validations"]] == [0, 2, 4, 6]


def test_resumed_run_reaches_the_same_stop(tmp_path):
    class Stop(Exception):
        pass

    def stop_after_2(job, rank, step):
        if step == 2:
            raise Stop

    (whole,) = train_loop_per_worker({"job": job(tmp_path / "whole", lr=5.0)})
    split = job(tmp_path / "split", lr=5.0)
    with pytest.raises(Stop):
        train_loop_per_worker({"job": split, "callbacks": [stop_after_2]})
    (resumed,) = train_loop_per_worker({"job": split})
    assert resumed["resumed_from_step"] == 2
    for key in ("stopped_at", "best_step"):
        assert resumed["early_stopping"][key] == whole["early_stopping"][key]
    assert resumed["val_loss_after"] == pytest.approx(whole["val_loss_after"], rel=1e-6)
