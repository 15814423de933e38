"""The `mdkif route` config: which skills, which task data, which fitting method and its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mdkif.config import StrictModel
from mdkif.models import ModelConfig
from mdkif.tracking import TrackingConfig


class SkillsSource(StrictModel):
    """Trained skill adapters: `root/<skill>/` peft folders (and the skills stage's `skills.json`)."""

    root: Path = Field(description="folder holding one adapter folder per skill")
    names: list[str] | None = Field(
        None, description="skills to fuse, in this order (default: all, manifest order)"
    )


class TaskSource(StrictModel):
    """The downstream task's examples: a {prompt, target} JSONL or any benchmark `load_benchmark` reads."""

    source: str = Field(
        description="JSONL of {prompt, target}, or a benchmark name / file for load_benchmark"
    )
    split: str | None = None
    data_root: str | None = Field(None, description="load_benchmark's root for benchmark names")
    limit: int | None = Field(None, ge=2, description="read at most this many items")
    k: int = Field(20, ge=1, description="examples the router is fitted on (few-shot size)")
    n_val: int = Field(40, ge=1, description="held-out examples the fitted router is scored on")
    seed: int = 0
    max_length: int = Field(384, ge=16, description="tokens per example; long prompts are cut from the left")


class RouterSettings(StrictModel):
    """Shape of the weights: one vector per task or per layer, softmax mixture or free (LoraHub) weights."""

    per_layer: bool = Field(
        False, description="one weight vector per transformer block instead of one per task"
    )
    temperature: float = Field(1.0, gt=0, description="softmax temperature over the logits")
    normalize: Literal["softmax", "linear"] = Field(
        "softmax", description="softmax: convex mixture; linear: free weights (use with the l1 regulariser)"
    )


class Regularizer(StrictModel):
    kind: Literal["none", "entropy", "l1"] = Field(
        "entropy", description="entropy: favour few skills under softmax; l1: sparsify linear weights"
    )
    strength: float = Field(0.0, ge=0)


class GradientSettings(StrictModel):
    steps: int = Field(40, ge=1)
    lr: float = Field(0.1, gt=0)
    batch_size: int = Field(8, ge=1)


class CmaesSettings(StrictModel):
    max_evals: int = Field(
        60,
        ge=2,
        description="budget of candidate evaluations (each one forward over the k examples); CMA-ES stops "
        "after the generation that reaches it, so up to max_evals + popsize - 1 run",
    )
    popsize: int | None = Field(None, ge=2, description="default: cma's 4 + 3 ln(d)")
    sigma0: float = Field(0.5, gt=0, description="initial step size on the logits")


class ArrowSettings(StrictModel):
    """Arrow routing (peft's `ArrowConfig`, same defaults): zero-shot, per token and per fused layer."""

    top_k: int = Field(
        3, ge=1, description="skills mixed per token (peft's top_k); at most the number of skills"
    )
    temperature: float = Field(
        1.0, gt=0, description="softmax temperature over the kept skills' |<x, v_i>| (router_temperature)"
    )


def count_skills(skills: SkillsSource) -> int | None:
    """How many skills a `SkillsSource` names or its folder holds; None when that is not known yet."""
    if skills.names is not None:
        return len(skills.names)
    if skills.root.is_dir():
        return sum(1 for p in skills.root.iterdir() if (p / "adapter_config.json").is_file()) or None
    return None


def check_arrow_top_k(arrow: ArrowSettings, num_skills: int | None, field: str = "arrow.top_k") -> None:
    """Refuse a `top_k` above the number of skills (peft's torch.topk would fail), naming the field."""
    if num_skills is not None and arrow.top_k > num_skills:
        raise ValueError(
            f"field '{field}': {arrow.top_k} is more than the number of skills ({num_skills}); "
            f"set {field} to at most {num_skills}"
        )


class RouteConfig(StrictModel):
    """Fit one router for one task and save it as an artifact."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    skills: SkillsSource
    task: TaskSource | None = Field(
        None, description="the task's examples (needed to fit; for arrow, only to score it on n_val)"
    )
    method: Literal["gradient", "cmaes", "gate", "arrow"] = Field(
        "gradient",
        description="gradient: Adam on the logits; cmaes: few-shot black-box; gate: input-conditioned; "
        "arrow: zero-shot per-token routing from the skills' singular directions (nothing fitted)",
    )
    router: RouterSettings = Field(default_factory=RouterSettings)
    arrow: ArrowSettings = Field(default_factory=ArrowSettings, description="used by method: arrow")
    regularizer: Regularizer = Field(default_factory=Regularizer)
    gradient: GradientSettings = Field(
        default_factory=GradientSettings, description="also used by method: gate"
    )
    cmaes: CmaesSettings = Field(default_factory=CmaesSettings)
    output: Path = Field(Path("runs/router"), description="artifact folder: router.json + router.safetensors")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RouteConfig:
        if (
            self.regularizer.kind == "l1"
            and self.router.normalize == "softmax"
            and self.regularizer.strength > 0
        ):
            raise ValueError(
                "regularizer l1 is constant under softmax weights (they sum to 1): use entropy, or normalize: linear"
            )
        if self.method == "gate" and self.router.normalize != "softmax":
            raise ValueError("the gate always produces a softmax mixture: normalize must be softmax")
        if self.task is None and self.method != "arrow":
            raise ValueError(f"field 'task' is required: method {self.method} fits the router on task data")
        if self.method == "arrow":
            check_arrow_top_k(self.arrow, count_skills(self.skills))
        return self
