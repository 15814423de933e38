"""What runs on a worker: load a variant (model, adapter, retriever) once, then score shard after shard.

`ShardWorker` is a plain class: the in-process runner uses it directly and the Ray runner wraps it as an
actor, so both paths run the very same code. It keeps one model loaded (keyed by model + adapter) and
reuses it for every variant sharing it, e.g. `base` and `base+rag`; a different model replaces it, which
bounds a worker's memory to one model.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mdkif.allocator import release_freed_memory
from mdkif.data.records import MCQRecord
from mdkif.data.tasks import TaskRecord
from mdkif.evaluation.config import RetrieverConfig, VariantConfig
from mdkif.evaluation.scorers import score_records
from mdkif.evaluation.task_scoring import score_task_records
from mdkif.rag.types import Retriever


class EvalError(RuntimeError):
    """An evaluation run cannot go on; the message says what to change."""


@dataclass
class ShardTask:
    """One unit of work: score these records with this variant, writing to this shard path."""

    variant: VariantConfig
    benchmark: str
    index: int
    records: list[MCQRecord] | list[TaskRecord]
    shots: list[MCQRecord] = field(default_factory=list)


def import_factory(spec: str) -> Callable[..., Any]:
    """Resolve 'package.module:name[.attr]' to the callable, with a message naming what is missing."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise EvalError(f"retriever factory {spec!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EvalError(f"retriever factory {spec!r}: cannot import {module_name}: {exc}") from exc
    fn: Any = module
    for part in attr.split("."):  # 'ChromaRetriever.open' names a classmethod
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise EvalError(
            f"retriever factory {spec!r}: {module_name} has no function {attr!r} "
            "(RAG variants need the RAG index package; see mdkif.rag)"
        )
    return fn


def build_retriever(cfg: RetrieverConfig) -> Retriever:
    """Open the retriever a variant names, and check it speaks the Retriever protocol."""
    retriever = import_factory(cfg.factory)(cfg.index, **cfg.options)
    if not isinstance(retriever, Retriever):
        raise EvalError(
            f"retriever factory {cfg.factory!r} returned {type(retriever).__name__}, not a Retriever"
        )
    return retriever


def load_variant_model(variant: VariantConfig) -> tuple[Any, Any]:
    """The variant's base model with its peft adapter applied (LoRA or AdaLoRA), in eval mode."""
    from mdkif.models import load_model

    loaded = load_model(variant.model)
    model = loaded.model
    if variant.adapter is not None:
        from peft import PeftModel

        if not variant.adapter.is_dir():
            raise EvalError(f"variant {variant.name}: adapter directory {variant.adapter} not found")
        model = PeftModel.from_pretrained(model, str(variant.adapter))
        model.eval()
    if variant.router is not None:
        model = fuse_router(model, variant)
    return model, loaded.tokenizer


def fuse_router(model: Any, variant: VariantConfig) -> Any:
    """Merge the variant's skill mixture into `model` once (stacked on a quantized base; an Arrow router
    always stacked, routing every token); returns the (same) model, now routed."""
    import torch

    from mdkif.fusion import FusionError, SkillBank, fuse
    from mdkif.routing.artifact import is_router, read_router_info
    from mdkif.routing.router import MODULES, load_router, router_weights

    ref = variant.router
    arrow = None
    try:
        if ref.path is not None:
            if not is_router(ref.path):
                raise EvalError(f"variant {variant.name}: router artifact {ref.path} not found")
            info = read_router_info(ref.path)
            bank = SkillBank.from_dir(ref.adapters, info["skills"])
            module = MODULES.get(info.get("kind"))
            if module is not None and module.serve == "per_token":  # Arrow: routed inside the layers
                arrow, _ = load_router(ref.path, bank)
            else:
                weights, _ = router_weights(ref.path, bank)
        else:
            bank = SkillBank.from_dir(ref.adapters, list(ref.weights))
            weights = torch.tensor([ref.weights[n] for n in bank.names], dtype=torch.float32)
        if bank.prompt_format != variant.scoring.prompt_format:
            raise EvalError(
                f"variant {variant.name}: the skills in {ref.adapters} were trained on "
                f"{bank.prompt_format!r} prompts but scoring.prompt_format is "
                f"{variant.scoring.prompt_format!r}; set scoring.prompt_format: {bank.prompt_format} "
                "(on every variant of the comparison, so the base sees the same prompts)"
            )
        fused = fuse(model, bank)
        if arrow is not None:
            arrow.route(fused)  # per-token weights, computed in the fused layers: never merged
        elif fused.quantized:
            fused.set_weights(weights)  # a 4/8-bit base cannot take a merged delta: the stacked path
        else:
            fused.merge(weights)
    except FusionError as exc:
        raise EvalError(f"variant {variant.name}: {exc}") from exc
    return fused.model


class ShardWorker:
    """Scores shards; loads each model (and retriever) once and keeps it for the following shards."""

    def __init__(self) -> None:
        self._model_key: str | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._retrievers: dict[str, Retriever] = {}
        self.model_loads = 0
        self.shards_scored = 0

    def _ensure_model(self, variant: VariantConfig) -> None:
        key = variant.model_key()
        if key != self._model_key:
            self._model = self._tokenizer = None  # free the old model before loading the next one
            gc.collect()
            release_freed_memory()
            self._model, self._tokenizer = load_variant_model(variant)
            self._model_key = key
            self.model_loads += 1

    def _retriever(self, cfg: RetrieverConfig | None) -> Retriever | None:
        if cfg is None:
            return None
        key = cfg.model_dump_json()
        if key not in self._retrievers:
            self._retrievers[key] = build_retriever(cfg)
        return self._retrievers[key]

    def score(self, task: ShardTask) -> list[dict[str, Any]]:
        """Prediction rows for one shard."""
        self._ensure_model(task.variant)
        if task.records and isinstance(task.records[0], TaskRecord):
            rows = score_task_records(self._model, self._tokenizer, task.records, task.variant.scoring)
            self.shards_scored += 1
            return rows
        rows = score_records(
            self._model,
            self._tokenizer,
            task.records,
            task.variant.scoring,
            shots=task.shots,
            retriever=self._retriever(task.variant.retriever),
            retriever_cfg=task.variant.retriever,
        )
        self.shards_scored += 1
        return rows
