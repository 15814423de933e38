"""Score downstream-task items (classification, multi-label, NER, relations, generation) with one variant.

The prompt is the skills' own training prompt in `scoring.prompt_format` (`mdkif.models.prompting`: Alpaca
by default, or the chat template for skills trained with `prompt_format: chat`), so a skill sees a task
exactly as it was trained, and the base model sees the very same text.

- classification: the log-likelihood of each label followed by EOS (the training target's shape) after
  the prompt; the highest wins. No generation, so never unparsable. The prompt is encoded once and every
  label runs on its KV cache (`score_shared_continuations`).
- multi-label, NER, relations, generation: greedy generation up to the task's token budget, then the
  strict parsers of `task_metrics` (labels outside the label set are counted, NER mentions are projected
  onto the sentence's tokens and compared as spans with the gold IOB tags).

Each row carries `stats`, the item's sufficient statistics for its task's metrics, so summaries, bootstrap
intervals and paired tests recompute corpus-level F1 exactly on any resample of items.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mdkif.data.tasks import TASKS, TaskRecord
from mdkif.evaluation import task_metrics as tm
from mdkif.evaluation.config import ScoringConfig
from mdkif.evaluation.loglik import generate, score_shared_continuations
from mdkif.models.prompting import encode_text, end_token_id, render_prompt
from mdkif.models.tokens import end_of_turn_ids


def prompt_ids(
    tokenizer: Any, record: TaskRecord, max_tokens: int, fmt: str = "alpaca"
) -> tuple[list[int], bool]:
    """The prompt's token ids; a too-long prompt loses its middle (instruction head and `### Response:`, or
    the assistant header, stay)."""
    ids = encode_text(tokenizer, render_prompt(tokenizer, record.instruction, record.input, fmt))
    if len(ids) <= max_tokens:
        return ids, False
    head = max_tokens // 2
    return ids[:head] + ids[len(ids) - (max_tokens - head) :], True


def _eos_ids(tokenizer: Any) -> list[int]:
    return end_of_turn_ids(tokenizer)


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def score_task_records(
    model: Any, tokenizer: Any, records: Sequence[TaskRecord], scoring: ScoringConfig
) -> list[dict[str, Any]]:
    """One prediction row per record, in record order (see the module docstring for the methods)."""
    if not records:
        return []
    kinds = {r.kind for r in records}
    if len(kinds) != 1:
        raise ValueError(f"a shard mixes task kinds {sorted(kinds)}")
    kind = kinds.pop()
    prompts, rows = [], []
    for r in records:
        ids, cut = prompt_ids(tokenizer, r, scoring.max_prompt_tokens, scoring.prompt_format)
        prompts.append(ids)
        row: dict[str, Any] = {
            "id": r.id,
            "benchmark": r.task,
            "kind": kind,
            "gold": r.output,
            "status": "ok",
        }
        if cut:
            row["truncated"] = True
        rows.append(row)
    if kind == "classification":
        _classify(model, tokenizer, records, rows, prompts, scoring)
    else:
        budget = scoring.max_new_tokens or TASKS[records[0].task].max_new_tokens
        outs = generate(
            model,
            prompts,
            pad_id=_pad_id(tokenizer),
            eos_ids=_eos_ids(tokenizer),
            max_new_tokens=budget,
            batch_size=scoring.batch_size,
        )
        for r, row, out in zip(records, rows, outs, strict=True):
            text = tokenizer.decode(out, skip_special_tokens=True).strip()
            row["generation"] = text
            _score_generation(r, row, text)
    return rows


def _classify(model, tokenizer, records, rows, prompts, scoring) -> None:
    # A task's items share one label set: each prompt is encoded once, the labels reuse its KV cache.
    labels = records[0].labels
    if not labels or any(r.labels != labels for r in records):
        raise ValueError(f"classification items of {records[0].task} need one shared label set")
    end = end_token_id(tokenizer, scoring.prompt_format)  # what a trained skill ends its answer with
    conts = [tokenizer(label, add_special_tokens=False)["input_ids"] + [end] for label in labels]
    totals = score_shared_continuations(
        model, prompts, conts, pad_id=_pad_id(tokenizer), batch_size=scoring.batch_size
    )
    for r, row, t in zip(records, rows, totals, strict=True):
        s = {
            label: (v / len(c) if scoring.normalize == "tokens" else v)
            for label, v, c in zip(labels, t, conts, strict=True)
        }
        pred = max(s, key=s.__getitem__)
        row.update(
            prediction=pred,
            correct=pred == r.output,
            scores={k: round(v, 5) for k, v in s.items()},
            stats=tm.item_stats("classification", r.output, pred, r.labels),
        )


def _score_generation(r: TaskRecord, row: dict[str, Any], text: str) -> None:
    """Parse one generation strictly and attach the prediction and the item's metric statistics."""
    if r.kind == "multilabel":
        gold, _ = tm.parse_labels(r.output, r.labels)
        pred, outside = tm.parse_labels(text, r.labels)
        row.update(
            prediction=pred,
            gold_labels=gold,
            outside_label_set=outside,
            stats=tm.item_stats("multilabel", gold, pred, r.labels),
        )
    elif r.kind == "ner":
        if r.tokens is None or r.tags is None:
            raise ValueError(f"NER item {r.id} has no gold tokens/tags: score the task's test split")
        from mdkif.data.builders._iob import detokenize

        mentions = tm.parse_entities(text, r.types or ())
        tags = tm.mentions_to_iob(r.tokens, mentions, detokenize)
        row.update(
            prediction=mentions,
            gold_tags=list(r.tags),
            pred_tags=tags,
            stats=tm.item_stats("ner", list(r.tags), tags),
        )
    elif r.kind == "relation":
        gold, pred = tm.parse_relations(r.output), tm.parse_relations(text)
        row.update(
            prediction=sorted(" -> ".join(p) for p in pred), stats=tm.item_stats("relation", gold, pred)
        )
    else:
        row.update(prediction=text, stats=tm.item_stats("generation", r.output, text))
