"""Accuracy of the deciding label on a validation slice, for the classification tasks inside a skill.

A classification answer is a short label plus the end token ("Supports</s>", "yes</s>", "Answer: B</s>"):
the token-mean validation loss over those few tokens can fall while the decision stays at chance (the
model learns the label vocabulary, the end token and the label prior, not which label). So for every task
of a skill whose outputs take few distinct values, the loop also scores each validation item's label set
the way the evaluation harness does (sum log-probability of `label + end` after the prompt, argmax) and
reports the share decided right.

A task counts as classification when its train + validation outputs take at most `MAX_LABELS` distinct
values and at least two; free-text tasks (QA, summaries, NER spans) are left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mdkif.models.prompting import end_token_id
from mdkif.models.scoring import continuation_logprobs, pad_left
from mdkif.skills.data import IGNORE, encode_record

MAX_LABELS = 32


def label_sets(records: Sequence[Any], max_labels: int = MAX_LABELS) -> dict[str, tuple[str, ...]]:
    """Per task, its sorted label set when the task is a classification task (see the module docstring)."""
    outputs: dict[str, set[str]] = defaultdict(set)
    for r in records:
        outputs[r.task].add(r.output)
    return {task: tuple(sorted(o)) for task, o in outputs.items() if 2 <= len(o) <= max_labels}


@dataclass
class LabelProbe:
    """The validation items of a job's classification tasks, encoded once: prompt ids, gold index, labels."""

    items: list[tuple[str, list[int], int]]  # (task, prompt ids, index of the gold label)
    labels: dict[str, list[list[int]]]  # task -> each label's tokens + the end token
    names: dict[str, tuple[str, ...]]
    pad_id: int

    @classmethod
    def build(
        cls,
        train: Sequence[Any],
        val: Sequence[Any],
        tokenizer: Any,
        max_length: int,
        prompt_format: str = "alpaca",
    ) -> LabelProbe | None:
        """The probe for these records, or None when no validation item belongs to a classification task."""
        sets = label_sets([*train, *val])
        end = end_token_id(tokenizer, prompt_format)
        items = []
        for r in val:
            if r.task not in sets or r.output not in sets[r.task]:
                continue
            ex = encode_record(tokenizer, r, max_length, prompt_format)
            cut = next(i for i, t in enumerate(ex.labels) if t != IGNORE)
            items.append((r.task, ex.input_ids[:cut], sets[r.task].index(r.output)))
        if not items:
            return None
        tasks = {t for t, _, _ in items}
        labels = {
            t: [tokenizer(label, add_special_tokens=False)["input_ids"] + [end] for label in sets[t]]
            for t in tasks
        }
        return cls(items, labels, {t: sets[t] for t in tasks}, tokenizer.pad_token_id)

    @torch.no_grad()
    def accuracy(
        self, model: Any, device: torch.device, autocast: Callable[[], Any], batch_size: int
    ) -> float:
        """Share of the items whose highest-scoring label is the gold one (the model is left as it was)."""
        was_training = model.training
        model.eval()
        right = 0
        by_task: dict[str, list[tuple[list[int], int]]] = defaultdict(list)
        for task, prompt, gold in self.items:
            by_task[task].append((prompt, gold))
        for task, rows in by_task.items():
            for i in range(0, len(rows), batch_size):
                chunk = rows[i : i + batch_size]
                ids, mask, positions = pad_left([p for p, _ in chunk], self.pad_id)
                with autocast():
                    scores = continuation_logprobs(
                        model, ids.to(device), mask.to(device), positions.to(device), self.labels[task]
                    )
                picked = scores.float().argmax(1).tolist()
                right += sum(p == g for p, (_, g) in zip(picked, chunk, strict=True))
        model.train(was_training)
        return right / len(self.items)

    def describe(self) -> dict[str, Any]:
        """What the probe scores: items and label count per task."""
        counts: dict[str, int] = defaultdict(int)
        for task, _, _ in self.items:
            counts[task] += 1
        return {t: {"items": counts[t], "labels": len(self.names[t])} for t in sorted(counts)}
