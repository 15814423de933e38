"""One training job, typed: what the loop trains (model, adapter, optimiser, data) and where it writes.

A stage config (`skills/config.py`) says what a user wants; the runner turns it into `TrainJob`s, one per
adapter, and the loop (`skills/loop.py`) reads nothing else. Jobs are frozen: the runner derives a job's
step count and key once, and every Ray worker sees the same values (they travel pickled in the trainer's
`train_loop_config`). A bad job (a hand-built one, or a dict from an older caller) fails here with the field
named, not as a `KeyError` inside a worker.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from mdkif.config import StrictModel
from mdkif.models.config import ModelConfig
from mdkif.skills.config import AdapterConfig, CorpusSource, DeepSpeedConfig, OptimConfig

# Settings that change memory or disk use, not the weights a run ends with: left out of the key, so
# switching them on does not retrain finished skills (and keys from before they existed still match).
KEY_NEUTRAL = {
    "model": ("attn_implementation",),
    "optim": ("gradient_checkpointing",),
    "deepspeed": ("keep_checkpoints",),
}
# Settings added later that do change the weights, left out of the key while unset, so a job that does not
# use them keeps the key it had before they existed.
KEY_WHEN_SET = {"optim": ("early_stopping",)}


class FrozenModel(StrictModel):
    """A strict model that cannot be changed after validation (`model_copy(update=...)` makes a new one)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class SkillData(FrozenModel):
    """Instruction records of some skills from a skill-data folder, capped by a seeded sample."""

    kind: Literal["skill"] = "skill"
    dir: str = Field(description="skill-data folder (absolute: Ray workers run elsewhere), or pkg:...")
    skills: tuple[str, ...] = Field(min_length=1)
    max_train: int | None = Field(None, ge=1)
    max_val: int | None = Field(None, ge=1)
    sample_seed: int = 0


class CorpusData(FrozenModel):
    """Raw text for continual pretraining, packed into blocks; the first `val_fraction` docs validate."""

    kind: Literal["corpus"] = "corpus"
    sources: tuple[CorpusSource, ...] = Field(min_length=1)
    val_fraction: float = Field(0.05, gt=0.0, lt=0.5)


JobData = Annotated[SkillData | CorpusData, Field(discriminator="kind")]


class TrainJob(FrozenModel):
    """One adapter to train: the loop's only input besides where it runs."""

    name: str
    model: ModelConfig
    adapter: AdapterConfig
    optim: OptimConfig
    data: JobData
    out_dir: Path = Field(description="the adapter folder (peft format + metrics.json)")
    ckpt_dir: Path = Field(description="the resumable checkpoint of this job")
    checkpoint_every: int = Field(20, ge=1)
    seed: int = 0
    prompt_format: Literal["alpaca", "chat"] = "alpaca"
    deepspeed: DeepSpeedConfig | None = None
    workers: int = Field(1, ge=1, description="data-parallel workers of its own trainer (1 = shared trainer)")
    total_steps: int | None = Field(None, ge=1, description="planned optimizer steps (checked by the loop)")
    job_key: str = Field("", description="what makes two runs the same (see `job_key`)")

    @property
    def zero3(self) -> bool:
        return self.deepspeed is not None and self.deepspeed.stage == 3


def job_key(job: TrainJob, data_hash: str) -> str:
    """What makes two runs the same: model, adapter, optimiser, data and seed (not paths or memory settings).

    Built from the JSON the dict-based jobs of earlier versions hashed, so finished skills keep their keys.
    """

    def part(name: str, mode: Any = "json") -> Any:
        value = getattr(job, name)
        if value is None:
            return None
        dumped = value.model_dump(mode=mode)
        unset = [k for k in KEY_WHEN_SET.get(name, ()) if dumped.get(k) is None]
        return {k: v for k, v in dumped.items() if k not in (*KEY_NEUTRAL.get(name, ()), *unset)}

    parts = [part("model"), part("adapter"), part("optim"), job.seed, part("deepspeed", "python"), data_hash]
    if job.prompt_format != "alpaca":
        parts.append(job.prompt_format)  # alpaca jobs keep the keys they had before formats existed
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
