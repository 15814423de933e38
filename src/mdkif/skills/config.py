"""Typed configs for every training stage: skills (AdaLoRA x 12), CPT, SFT, task adaptation, multi-step.

One YAML file is one stage (or one pipeline of stages). `stage:` picks the schema, so `mdkif train FILE`
needs no sub-command, and a typo fails on load, before Ray starts, with the file and field named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, model_validator

from mdkif.config import ConfigError, StrictModel, apply_overrides, load_yaml, validate
from mdkif.data.records import SKILLS
from mdkif.models.config import ModelConfig
from mdkif.tracking import TrackingConfig

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path) -> Path:
    """`pkg:assets/demo_skills` is a folder inside the installed package; anything else a normal path."""
    text = str(path)
    if text.startswith("pkg:"):
        return PACKAGE_ROOT / text[4:]
    return Path(text).expanduser()


class AdapterConfig(StrictModel):
    """The trainable adapter on the frozen base: AdaLoRA (skills) or plain LoRA (CPT/SFT/task)."""

    kind: Literal["adalora", "lora"] = Field("adalora", description="adalora: SVD form with rank allocation")
    r: int = Field(8, ge=1, description="LoRA rank (lora) / initial rank per matrix (adalora init_r)")
    target_r: int = Field(4, ge=0, description="adalora: average rank per matrix after allocation")
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="module name suffixes"
    )
    tinit: float = Field(
        0.1, ge=0.0, lt=1.0, description="adalora: share of steps before rank pruning starts"
    )
    tfinal: float = Field(
        0.2, ge=0.0, lt=1.0, description="adalora: share of steps with frozen ranks at the end"
    )
    delta_t: int = Field(1, ge=1, description="adalora: steps between two budget allocations")
    beta1: float = Field(0.85, gt=0.0, lt=1.0)
    beta2: float = Field(0.85, gt=0.0, lt=1.0)
    orth_reg_weight: float = Field(0.5, ge=0.0, description="adalora: weight of the orthogonality penalty")

    @model_validator(mode="after")
    def _ranks(self) -> AdapterConfig:
        if self.kind == "adalora" and self.target_r > self.r:
            raise ValueError("target_r must not exceed r (the initial rank)")
        if self.tinit + self.tfinal >= 1.0:
            raise ValueError("tinit + tfinal must leave a rank-allocation phase (sum < 1)")
        return self


class EarlyStopping(StrictModel):
    """Stop a job when its validation loss on the answers stops improving; the best adapter is saved.

    Every `every` optimizer steps the loop measures the validation loss (and, for classification tasks, the
    accuracy of the deciding label: `mdkif.skills.labels`); after `patience` measurements without a drop of
    more than `min_delta` below the best so far, it stops and restores the best weights. The planned steps
    (`epochs` / `max_steps` over the capped records) are the safety cap; AdaLoRA's rank schedule still runs
    on them, so a job stopped early keeps more rank than its `target_r`.
    """

    every: int = Field(20, ge=1, description="optimizer steps between two validations")
    patience: int = Field(3, ge=1, description="validations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0, description="smallest drop of the validation loss that counts")


class OptimConfig(StrictModel):
    """AdamW with cosine decay after linear warm-up; steps are optimizer steps (after accumulation)."""

    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="share of steps with linear warm-up")
    batch_size: int = Field(4, ge=1, description="micro-batch per worker")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    epochs: float = Field(1.0, gt=0.0, description="passes over the data (ignored when max_steps is set)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    max_grad_norm: float = Field(1.0, gt=0.0)
    max_length: int = Field(256, ge=16, description="tokens per example (prompt+output) or per packed block")
    bf16: bool = Field(
        True,
        description="mixed precision: bf16 autocast on CUDA (fp16 with loss scaling on a GPU without bf16: "
        "V100, T4) and on a CPU whose base computes in bf16 (model.dtype auto on AMX / AVX-512 BF16); "
        "adapters stay fp32",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in backward (non-reentrant): less memory for long sequences on a "
        "big base (8B), about a third more compute",
    )
    early_stopping: EarlyStopping | None = Field(
        None,
        description="stop on the validation loss (needs validation data); null: train every planned step",
    )
    group_by_length: bool = Field(
        True,
        description="micro-batches of similar length (seeded, resumable), so compute goes to real tokens "
        "instead of right-padding; false = random micro-batches",
    )


class DeepSpeedConfig(StrictModel):
    """DeepSpeed ZeRO with a torch optimizer (gloo on CPU, nccl on CUDA); LoRA adapters only."""

    stage: Literal[2, 3] = 2
    keep_checkpoints: int = Field(
        2, ge=1, description="DeepSpeed checkpoint tags kept on disk (the newest N; older ones are deleted)"
    )


class RayConfig(StrictModel):
    """How the stage runs on Ray Train; `enabled: false` runs the same loop in this process."""

    enabled: bool = True
    address: str | None = Field(None, description="Ray address; None starts or joins a local instance")
    num_workers: int = Field(2, ge=1, description="workers of the shared trainer (skills) or the stage")
    cpus_per_worker: float = Field(1.0, gt=0.0)
    use_gpu: bool = Field(False, description="one or more GPUs per worker; Ray Train then uses nccl")
    gpus_per_worker: float = Field(1.0, gt=0.0, description="GPUs each worker reserves (with use_gpu)")
    accelerator_type: str | None = Field(
        None, description="with use_gpu: only nodes with this accelerator (Ray's name, e.g. 'A100', 'H100')"
    )
    max_failures: int = Field(2, ge=0, description="worker-group restarts before the run fails")
    storage_path: Path | None = Field(None, description="Ray Train storage (default: OUTPUT/.ray)")


class SkillSpec(StrictModel):
    """Per-skill overrides: `workers: N > 1` gives the skill its own data-parallel trainer."""

    workers: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0.0)


class CommonStage(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    output_dir: Path = Field(description="where adapters, manifests and curves go")
    checkpoint_every: int = Field(20, ge=1, description="optimizer steps between checkpoints")
    seed: int = 0
    prompt_format: Literal["alpaca", "chat"] = Field(
        "alpaca",
        description="how instruction records are shown in training (and, read from skills.json, by routers, "
        "the task harness and Serve): alpaca = '### Instruction/Input/Response', any base; chat = one user "
        "turn through the tokenizer's chat template, ended by its end-of-turn token (chat bases)",
    )
    deepspeed: DeepSpeedConfig | None = None
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _deepspeed_lora(self) -> CommonStage:
        if self.deepspeed is not None and self.adapter.kind == "adalora":
            # AdaLoRA's rank allocator reads p.grad, which ZeRO partitions away (p.grad is None).
            raise ValueError("deepspeed supports adapter.kind 'lora' only (AdaLoRA reads full gradients)")
        if self.deepspeed is not None and self.model.quantization != "none":
            # ZeRO casts and partitions the parameters; bitsandbytes' packed 4-/8-bit weights cannot be.
            raise ValueError(
                f"deepspeed cannot train a quantized base (model.quantization={self.model.quantization!r}): "
                "set model.quantization: none to shard the base with ZeRO, or drop deepspeed for QLoRA"
            )
        return self


class SkillsStage(CommonStage):
    """`stage: skills`: one AdaLoRA adapter per skill, all skills at once on Ray Train."""

    stage: Literal["skills"]
    data_dir: str = Field(description="skill-data folder (`mdkif data build`), or pkg:assets/demo_skills")
    skills: dict[str, SkillSpec] | list[str] | None = Field(None, description="None = all 12 skills")
    max_train_records: int | None = Field(None, ge=1, description="cap per skill (first N in file order)")
    max_val_records: int | None = Field(64, ge=1)

    @model_validator(mode="after")
    def _known(self) -> SkillsStage:
        names = list(self.skills) if self.skills is not None else []
        unknown = [s for s in names if s not in SKILLS]
        if unknown:
            raise ValueError(f"unknown skill(s) {unknown}; expected some of {list(SKILLS)}")
        return self

    def skill_specs(self) -> dict[str, SkillSpec]:
        if self.skills is None:
            return {s: SkillSpec() for s in SKILLS}
        if isinstance(self.skills, list):
            return {s: SkillSpec() for s in self.skills}
        return dict(self.skills)


class CorpusSource(StrictModel):
    """Raw text for continual pretraining: plain text, a jsonl field, or PubMedQA contexts."""

    path: Path
    format: Literal["text", "jsonl", "pubmedqa"] = "text"
    field: str = Field("text", description="jsonl: the field holding the text (MedQuAD: answer)")
    max_docs: int | None = Field(None, ge=1)


class SftData(StrictModel):
    """Instruction data from a skill-data folder: the listed skills mixed (None = all)."""

    dir: str
    skills: list[str] | None = None
    max_records: int | None = Field(None, ge=1, description="cap on training records (seeded sample)")
    max_val_records: int | None = Field(64, ge=1)


class CptStage(CommonStage):
    """`stage: cpt`: continual pretraining on raw text with sequence packing (loss on every token)."""

    stage: Literal["cpt"]
    corpus: list[CorpusSource] = Field(min_length=1)
    val_fraction: float = Field(0.05, gt=0.0, lt=0.5)


class SftStage(CommonStage):
    """`stage: sft` or `stage: task`: instruction tuning / task adaptation, loss on outputs only."""

    stage: Literal["sft", "task"]
    data: SftData


class PipelineStep(StrictModel):
    """One step of the multi-step pipeline: a stage file's body, minus model and output_dir."""

    name: str
    stage: Literal["cpt", "sft", "task"]
    corpus: list[CorpusSource] | None = None
    data: SftData | None = None
    adapter: AdapterConfig | None = None
    optim: OptimConfig | None = None

    @model_validator(mode="after")
    def _has_data(self) -> PipelineStep:
        if self.stage == "cpt" and not self.corpus:
            raise ValueError(f"step {self.name!r}: a cpt step needs corpus")
        if self.stage != "cpt" and self.data is None:
            raise ValueError(f"step {self.name!r}: an {self.stage} step needs data")
        return self


class PipelineStage(CommonStage):
    """`stage: pipeline`: CPT -> SFT -> task adaptation; each step's adapter is merged before the next."""

    stage: Literal["pipeline"]
    steps: list[PipelineStep] = Field(min_length=1)


StageConfig = Annotated[SkillsStage | CptStage | SftStage | PipelineStage, Field(discriminator="stage")]


def load_stage(path: Path, overrides: list[str] | None = None):
    """Load a stage YAML (skills, cpt, sft, task or pipeline) as its typed config; ConfigError if wrong."""
    data = load_yaml(path)
    apply_overrides(data, list(overrides or []), origin=f"{path}: ")
    if data.get("stage") not in ("skills", "cpt", "sft", "task", "pipeline"):
        raise ConfigError(
            f"{path}: field 'stage': expected one of skills, cpt, sft, task, pipeline (got {data.get('stage')!r})"
        )

    class _Wrap:  # validate() wants a model class; a TypeAdapter does the discriminated union
        @staticmethod
        def model_validate(d):
            return TypeAdapter(StageConfig).validate_python(d)

    return validate(_Wrap, data, str(path))  # type: ignore[arg-type]
