"""The `mdkif eval` config: a matrix of variants (model + adapter + retriever + prompting) x benchmarks.

Every block is a strict schema, so a typo in a stage YAML stops the run before Ray starts, naming the
field. A variant's `fingerprint` decides whether finished shards from an earlier run may be reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mdkif.config import StrictModel
from mdkif.models import ModelConfig
from mdkif.rag.config import RetrievalSettings
from mdkif.tracking import TrackingConfig

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ScoringConfig(StrictModel):
    """How a variant answers: the scoring method, the prompt it sees and the batch it runs in."""

    method: Literal["loglik", "generate", "cot", "voc"] = Field(
        "loglik",
        description="loglik: compare option log-likelihoods (no generation, never unparsable); "
        "generate: greedy 'Answer: X' then strict parse; cot: think step by step, then strict parse; "
        "voc: Verification-of-Choice (see mdkif.evaluation.voc)",
    )
    target: Literal["letter", "text"] = Field(
        "letter",
        description="loglik/voc: score the option key (' A', ' yes') after a prompt listing every option "
        "(the usual MCQ protocol), or the option's text",
    )
    normalize: Literal["none", "tokens", "chars"] = Field(
        "none",
        description="divide a continuation's log-prob by its token or character count; matters only "
        "for target=text, where long options would otherwise lose",
    )
    shots: int = Field(
        0, ge=0, le=16, description="k-shot examples drawn from each benchmark's fewshot source"
    )
    chat_template: Literal["auto", "on", "off"] = Field(
        "auto",
        description="MCQ benchmarks: wrap the prompt in the tokenizer's chat template (auto: when it has one)",
    )
    prompt_format: Literal["alpaca", "chat"] = Field(
        "alpaca",
        description="downstream tasks: the prompt format of the skills (their stage's `prompt_format`); a "
        "routed variant whose skills were trained on another format is refused",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="generation budget; default 8 for generate, 256 for cot"
    )
    batch_size: int = Field(8, ge=1, description="sequences per forward pass / generate call")
    max_prompt_tokens: int = Field(
        1536, ge=64, description="prompts longer than this are cut from the left (shots and passages first)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ScoringConfig:
        if self.method in ("generate", "cot") and self.target == "text":
            raise ValueError("target=text applies to loglik/voc only; generative methods answer with the key")
        return self

    def new_tokens(self) -> int:
        """The generation budget: a short answer for `generate`, room for reasoning for `cot`."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return 256 if self.method == "cot" else 8


class RetrieverConfig(RetrievalSettings):
    """Where RAG passages come from. Retrieval is always by the question alone (MIRAGE's rule)."""

    index: str = Field(
        description="what the factory opens: the RAG index's persist directory (or its config)"
    )
    factory: str = Field(
        "mdkif.rag.retriever:ChromaRetriever.open",
        description="'module:callable' called as callable(index, **options) and returning a Retriever",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for the factory, e.g. {mode: hybrid}"
    )
    exclude_gold: bool = Field(
        True,
        description="PubMedQA items: keep their own abstract (same pmid) out of the results, MIRAGE's "
        "PubMedQA* rule; otherwise a corpus that holds PubMedQA hands the model the gold context",
    )


class RouterRef(StrictModel):
    """Skills fused into the base for a variant: a fitted router artifact, or fixed weights per skill.

    The mixture is merged into the base weights once per worker (exact `sum_i w_i dW_i`), so a routed
    variant scores at the base model's speed; an Arrow router (zero-shot, per token) runs in the stacked
    path instead. Fixed `weights` give the comparison rows of the unseen-task protocol: uniform mixture,
    or one-hot for the best single skill.
    """

    adapters: Path = Field(
        description="folder of trained skill adapters, ADAPTERS/<skill>/ (skills stage output)"
    )
    path: Path | None = Field(
        None, description="router artifact folder (router.json + router.safetensors): static or arrow"
    )
    weights: dict[str, float] | None = Field(None, description="fixed skill weights instead of a router")

    @model_validator(mode="after")
    def _one_source(self) -> RouterRef:
        if (self.path is None) == (self.weights is None):
            raise ValueError("give exactly one of 'path' (a fitted router) or 'weights' (fixed mixture)")
        return self


class VariantConfig(StrictModel):
    """One thing we compare: a base model, optionally an adapter and a retriever, and a way of answering."""

    name: str = Field(pattern=SLUG, description="row label and output folder name")
    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: Path | None = Field(None, description="a peft adapter directory (LoRA or AdaLoRA)")
    router: RouterRef | None = Field(None, description="skills + router fused into the base (SA-MDKIF)")
    retriever: RetrieverConfig | None = None
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    def fingerprint(self) -> str:
        """Hash of everything that changes a prediction; finished shards are reused only when it matches."""
        # The default format is left out, so fingerprints from before formats existed still match.
        default = self.scoring.prompt_format == "alpaca"
        blob = self.model_dump_json(exclude={"scoring": {"prompt_format"}} if default else None)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def artifacts_digest(self) -> str | None:
        """Digest of the files this variant's predictions come from (the skills' `skills.json`, the router
        artifact, the adapter), by content (size and mtime for files over 64 MiB); None without any.

        The fingerprint names paths only; a router refitted or skills retrained into the same folder change
        this digest, so their old predictions are never reused."""
        files: list[Path] = []
        if self.router is not None:
            files.append(self.router.adapters / "skills.json")
            if self.router.path is not None:
                files += [self.router.path / "router.json", self.router.path / "router.safetensors"]
        if self.adapter is not None:
            files += [self.adapter / "adapter_config.json", *sorted(self.adapter.glob("adapter_model.*"))]
        if not files:
            return None
        h = hashlib.sha1()
        for f in files:
            if not f.is_file():
                continue
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:".encode())
            h.update(f.read_bytes() if st.st_size <= 64 * 2**20 else str(st.st_mtime_ns).encode())
        return h.hexdigest()[:16]

    def model_key(self) -> str:
        """Variants sharing this key share one loaded model inside a worker."""
        router = self.router.model_dump(mode="json") if self.router else None
        blob = json.dumps([self.model.model_dump(mode="json"), str(self.adapter), router], sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


class FewshotSource(StrictModel):
    """Where k-shot examples come from: a different split (or file) than the one evaluated."""

    source: str = Field(description="benchmark name, file or folder for load_benchmark")
    split: str | None = None
    seed: int = 0


class BenchmarkConfig(StrictModel):
    """A benchmark to score: anything `load_benchmark` reads. A MIRAGE file yields one column per source."""

    source: str = Field(description="benchmark name (medqa, pubmedqa, ...), file/folder path, or hub:<repo>")
    split: str | None = Field(None, description="split, or MIRAGE source (medqa, medmcqa, mmlu, pubmedqa)")
    name: str | None = Field(
        None, pattern=SLUG, description="column label; default: each record's own benchmark name"
    )
    limit: int | None = Field(None, ge=1, description="first N items of each benchmark in the source")
    with_context: bool = Field(
        False, description="include gold contexts (PubMedQA); off for MIRAGE's fair setting"
    )
    fewshot: FewshotSource | None = Field(None, description="needed when a variant uses shots > 0")

    @model_validator(mode="after")
    def _fewshot_elsewhere(self) -> BenchmarkConfig:
        fs = self.fewshot
        if fs is not None and fs.source == self.source and fs.split == self.split:
            raise ValueError("fewshot examples must come from another split or file than the one evaluated")
        return self


class TaskBenchmarkConfig(StrictModel):
    """A downstream task to score (a name in `mdkif.data.tasks.TASKS`): classification, multi-label, NER,
    relations or generation, each with its own metrics, from the skill builders' native files."""

    task: str = Field(description="task name (healthver, mediqa_rqe, pubmedqa, hoc, bc5cdr_ner, meqsum, ...)")
    split: Literal["train", "dev", "test"] = Field(
        "test", description="test for reported numbers; train/dev for tuning"
    )
    name: str | None = Field(None, pattern=SLUG, description="column label; default: the task name")
    limit: int | None = Field(None, ge=1, description="first N items of the split")

    @model_validator(mode="after")
    def _known(self) -> TaskBenchmarkConfig:
        from mdkif.data.tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        return self

    @property
    def column(self) -> str:
        return self.name or self.task


class EvalConfig(StrictModel):
    """The whole `mdkif eval` run: variants x benchmarks, how it is sharded, and where results go."""

    out: Path = Field(Path("runs/eval"), description="output folder (per-item predictions, summary, report)")
    variants: list[VariantConfig] = Field(min_length=1)
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list, description="MCQ benchmarks")
    tasks: list[TaskBenchmarkConfig] = Field(
        default_factory=list, description="downstream tasks beyond MCQ, scored with their own metrics"
    )
    compare_to: list[str] | None = Field(
        None,
        description="variants every other variant is compared with by paired tests "
        "(default: `base` when there is one, else the first variant)",
    )
    data_root: Path | None = Field(
        None, description="where benchmark names resolve (default $MDKIF_DATA_ROOT)"
    )
    shard_size: int = Field(25, ge=1, description="items per shard (the unit of work and of resuming)")
    num_workers: int = Field(2, ge=1, description="Ray actors; each loads a model once and takes many shards")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    use_ray: bool = Field(True, description="false: score in this process (debugging, fast tests)")
    bootstrap_resamples: int = Field(1000, ge=100)
    seed: int = Field(0, description="bootstrap seed")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _unique_and_fewshot(self) -> EvalConfig:
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(dupes)}")
        if not self.benchmarks and not self.tasks:
            raise ValueError("give at least one entry in `benchmarks` (MCQ) or `tasks`")
        unknown = [n for n in self.compare_to or [] if n not in names]
        if unknown:
            raise ValueError(f"compare_to names unknown variants {unknown}; variants are {names}")
        rag = [v.name for v in self.variants if v.retriever is not None]
        if rag and self.tasks:
            raise ValueError(
                f"variants {rag} use a retriever, which applies to MCQ benchmarks only; "
                "score `tasks` in a matrix without RAG variants"
            )
        needs_shots = [v.name for v in self.variants if v.scoring.shots > 0]
        if needs_shots and self.tasks:
            raise ValueError(f"variants {needs_shots} use k-shot prompts, which `tasks` do not support")
        missing = [b.name or b.source for b in self.benchmarks if b.fewshot is None]
        if needs_shots and missing:
            raise ValueError(
                f"variants {needs_shots} use k-shot prompts but benchmarks {missing} have no `fewshot` source"
            )
        return self

    def references(self) -> list[str]:
        """The variants the others are compared with by paired tests."""
        if self.compare_to:
            return list(self.compare_to)
        names = [v.name for v in self.variants]
        return ["base"] if "base" in names else names[:1]
