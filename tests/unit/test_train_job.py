"""The typed training job, the loop's backends and its test-only fault seam (issue 17.1)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from mdkif.config import ConfigError
from mdkif.models import ModelConfig
from mdkif.skills.config import AdapterConfig, OptimConfig, load_stage
from mdkif.skills.job import CorpusData, SkillData, TrainJob

REPO = Path(__file__).resolve().parents[2]


def job(tmp_path: Path, **update) -> TrainJob:
    fields = {
        "name": "qa",
        "model": ModelConfig(name="tiny"),
        "adapter": AdapterConfig(r=4, target_r=2),
        "optim": OptimConfig(max_steps=2, batch_size=2, max_length=64),
        "data": SkillData(dir="pkg:assets/demo_skills", skills=("qa",)),
        "out_dir": tmp_path / "qa",
        "ckpt_dir": tmp_path / ".checkpoints" / "qa",
    }
    return TrainJob(**{**fields, **update})


def test_a_job_is_frozen_and_its_data_kind_picks_the_schema(tmp_path):
    j = job(tmp_path)
    with pytest.raises(Exception, match="frozen"):
        j.seed = 3
    assert j.model_copy(update={"seed": 3}).seed == 3 and j.seed == 0
    corpus = TrainJob.model_validate(
        {**j.model_dump(), "data": {"kind": "corpus", "sources": [{"path": "/c.txt"}], "val_fraction": 0.1}}
    )
    assert isinstance(corpus.data, CorpusData) and corpus.data.sources[0].format == "text"
    # a job survives the trip to a Ray worker (pickled) and to a subprocess (JSON) unchanged
    import pickle

    assert pickle.loads(pickle.dumps(j)) == j
    assert TrainJob.model_validate_json(j.model_dump_json()) == j


def test_a_dict_job_with_a_bad_field_is_refused_with_the_field_named(tmp_path):
    from mdkif.skills.loop import as_job, run_job

    good = job(tmp_path).model_dump(mode="json")
    assert as_job(good) == job(tmp_path)  # a plain mapping (older callers, JSON) is validated into a job
    bad = {**good, "optim": {**good["optim"], "batch_size": 0}}
    with pytest.raises(ConfigError, match=r"training job 'qa'.*optim\.batch_size"):
        run_job(bad, ctx=None, data_parallel=False)  # type: ignore[arg-type]  # refused before any work
    with pytest.raises(ConfigError, match="data"):
        as_job({**good, "data": {"kind": "video"}})


def test_the_fault_hook_is_not_a_stage_setting_any_more():
    with pytest.raises(ConfigError, match="fault"):
        load_stage(REPO / "train" / "skills_demo.yaml", ["fault={kill_at_step: 1, marker: /tmp/m}"])


def test_kill_at_fires_once_on_its_step_and_rank(tmp_path):
    from mdkif.testing.faults import KillAt

    kill = KillAt(step=3, marker=tmp_path / "killed.txt", rank=1)
    j = job(tmp_path)
    kill(j, rank=1, step=2)  # other step
    kill(j, rank=0, step=3)  # other rank
    assert not kill.marker.exists()
    pid = os.fork()
    if pid == 0:  # child: dies here, or exits 0 if the hook did not fire
        kill(j, rank=1, step=3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert "killed qa rank 1" in kill.marker.read_text()
    kill(j, rank=1, step=3)  # the marker remembers: the restarted worker trains on


def test_backend_is_plain_torch_unless_the_job_asks_for_deepspeed(tmp_path):
    from mdkif.skills.backends import TorchBackend, make_backend

    model = torch.nn.Linear(4, 2)
    j = job(tmp_path, optim=OptimConfig(max_steps=4, warmup_ratio=0.0))  # lr 0 in a warm-up step
    backend = make_backend(model, j, 4, torch.device("cpu"), world=1, data_parallel=False)
    assert isinstance(backend, TorchBackend) and backend.module is model  # no DDP wrapper for one rank
    loss = model(torch.ones(3, 4)).pow(2).sum()
    with backend.accumulating(last=True):
        backend.backward(loss)
    before = model.weight.detach().clone()
    norm = backend.step()
    assert norm > 0 and not torch.equal(before, model.weight)
    backend.zero_grad()
    assert model.weight.grad is None
    state = backend.state(1)
    assert set(state) == {"optimizer", "scheduler", "scaler"} and state["scaler"] is None  # no fp16 on CPU
    other = make_backend(torch.nn.Linear(4, 2), j, 4, torch.device("cpu"), 1, False)
    other.load(state)
    assert other.lr() == backend.lr()
