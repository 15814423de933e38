"""Task data for fitting a router: prompt/target pairs, tokenised with the loss on the target tokens only.

The masking is the skills stage's: the prompt is context, only the answer tokens are scored. A
multiple-choice item becomes a prompt listing its options and ending in `Answer:`, with target ` X`.

A classification task can instead be fitted on the scorer's own quantity (`LabelBatch`, `label_loss`):
the cross-entropy of the gold label among the task's labels, each scored as label + EOS after the prompt.
The answer loss spends most of its signal on format (the whole-vocabulary softmax puts mass on tokens
that are no label at all, which the scorer's label-set argmax ignores); the label loss only rewards
moving mass between the labels, which is what flips a prediction.
"""

from __future__ import annotations

import functools
import inspect
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mdkif.data.records import MCQRecord
from mdkif.models.prompting import encode_text, end_token_id, render_prompt
from mdkif.models.scoring import continuation_logprobs, pad_left


@dataclass(frozen=True)
class TaskExample:
    """One example of the downstream task: the model reads `prompt` and should continue with `target`."""

    prompt: str
    target: str


@dataclass
class Batch:
    """Right-padded token ids, attention mask, labels (-100 outside the target) and prompt mask."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, idx: torch.Tensor | list[int]) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.input_ids.device)
        return Batch(self.input_ids[idx], self.attention_mask[idx], self.labels[idx], self.prompt_mask[idx])

    def to(self, device: torch.device | str) -> Batch:
        if self.input_ids.device == torch.device(device):
            return self
        return Batch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels, self.prompt_mask))
        )


@dataclass
class LabelBatch:
    """Left-padded prompts of a classification task, its shared label continuations and the gold indices."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    continuations: tuple[tuple[int, ...], ...]
    gold: torch.Tensor
    labels: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def prompt_mask(self) -> torch.Tensor:
        return self.attention_mask

    def to(self, device: torch.device | str) -> LabelBatch:
        if self.input_ids.device == torch.device(device):
            return self
        return LabelBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.continuations,
            self.gold.to(device),
            self.labels,
        )

    def select(self, idx: torch.Tensor | list[int]) -> LabelBatch:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.input_ids.device)
        mask = self.attention_mask[idx]
        # Re-trim the shared left padding so a small selection does not carry a long batch's width.
        keep = int(mask.sum(1).max())
        cols = slice(mask.shape[1] - keep, None)
        return LabelBatch(
            self.input_ids[idx][:, cols],
            mask[:, cols],
            self.position_ids[idx][:, cols],
            self.continuations,
            self.gold[idx],
            self.labels,
        )


def mcq_example(record: MCQRecord, tokenizer: Any = None, fmt: str = "alpaca") -> TaskExample:
    """An MCQ item as a prompt ending in 'Answer:' and the target ' <key>' (the evaluation's letter protocol),
    in the skills' prompt format (a tokenizer is needed for `chat`)."""
    options = "\n".join(f"{k}. {v}" for k, v in record.options.items())
    keys = ", ".join(record.options)
    body = f"{record.context.strip()}\n\n" if record.context else ""
    body += f"Question: {record.question.strip()}\nOptions:\n{options}"
    instruction = f"Answer the medical multiple-choice question with one of: {keys}."
    prompt = render_prompt(tokenizer, instruction, body, fmt)
    return TaskExample(prompt + "Answer:", f" {record.answer}")


def task_examples(
    records: list[Any], eos_token: str = "", tokenizer: Any = None, fmt: str = "alpaca"
) -> list[TaskExample]:
    """Downstream-task items (`mdkif.data.tasks.TaskRecord`) in the skills' own format: the training prompt
    in `fmt`, target the gold output followed by `eos_token` (the end token the skills learned to produce
    and the harness scores: EOS, or the end of turn for `chat`)."""
    return [
        TaskExample(render_prompt(tokenizer, r.instruction, r.input, fmt), r.output + eos_token)
        for r in records
    ]


def end_token(tokenizer: Any, fmt: str) -> str:
    """The end token's text for `fmt` (`task_examples`' `eos_token`)."""
    return tokenizer.convert_ids_to_tokens(end_token_id(tokenizer, fmt))


def load_examples(
    source: str,
    split: str | None = None,
    limit: int | None = None,
    root: str | None = None,
    tokenizer: Any = None,
    fmt: str = "alpaca",
) -> list[TaskExample]:
    """A JSONL of {prompt, target} rows (used as written), or any benchmark `load_benchmark` reads (as MCQ
    examples in `fmt`)."""
    path = Path(source)
    if path.suffix == ".jsonl" and path.is_file():
        first = json.loads(path.read_text().splitlines()[0])
        if "prompt" in first and "target" in first:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            return [TaskExample(r["prompt"], r["target"]) for r in rows][:limit]
    from mdkif.data.mcq import load_benchmark

    kwargs: dict[str, Any] = {"split": split, "limit": limit}
    if root is not None:
        kwargs["root"] = root
    return [mcq_example(r, tokenizer, fmt) for r in load_benchmark(source, **kwargs)]


def split_examples(
    examples: list[TaskExample], k: int, n_val: int, seed: int = 0
) -> tuple[list[TaskExample], list[TaskExample]]:
    """A seeded draw of `k` fitting examples and up to `n_val` disjoint validation examples.

    Validation items come from the far end of the shuffled order, so they stay the same whatever `k` is
    (a search over k then compares like with like).
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(n_val, len(order) - k)
    if n_val < 1:
        raise ValueError(f"k={k} needs more than {len(order)} task examples (some must stay for validation)")
    train = [examples[i] for i in order[:k]]
    val = [examples[i] for i in order[len(order) - n_val :]]
    return train, val


def encode(tokenizer: Any, examples: list[TaskExample], max_length: int = 512) -> Batch:
    """Tokenise prompt+target per example (prompt cut from the left if too long), right-pad, mask the prompt."""
    seqs, n_prompt = [], []
    for ex in examples:
        p = encode_text(tokenizer, ex.prompt)
        t = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
        if not t:
            raise ValueError(f"target {ex.target!r} tokenises to nothing")
        p = p[-max(1, max_length - len(t)) :]
        seqs.append(p + t)
        n_prompt.append(len(p))
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    att = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    pmask = torch.zeros_like(ids)
    for i, (s, n) in enumerate(zip(seqs, n_prompt, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        labels[i, n : len(s)] = torch.tensor(s[n:])
        pmask[i, :n] = 1
    return Batch(ids, att, labels, pmask)


def encode_labels(
    tokenizer: Any, records: list[Any], max_length: int = 512, fmt: str = "alpaca"
) -> LabelBatch:
    """Classification task items (`TaskRecord`s sharing one label set) as a `LabelBatch`.

    The prompt is the harness's: the training prompt in `fmt`, with its middle cut when it is longer than
    `max_length` tokens minus the longest label; each label is scored as its tokens + the end token.
    """
    if not records:
        raise ValueError("no task items to encode")
    labels = records[0].labels
    if not labels or any(r.labels != labels for r in records):
        raise ValueError(f"the label loss needs items of one label set (task {records[0].task})")
    unknown = sorted({r.output for r in records if r.output not in labels})
    if unknown:
        raise ValueError(f"task {records[0].task}: gold output(s) {unknown} outside the label set {labels}")
    eos = [end_token_id(tokenizer, fmt)]
    conts = tuple(tuple(tokenizer(label, add_special_tokens=False)["input_ids"] + eos) for label in labels)
    budget = max(1, max_length - max(len(c) for c in conts))
    rows = []
    for r in records:
        ids = encode_text(tokenizer, render_prompt(tokenizer, r.instruction, r.input, fmt))
        if len(ids) > budget:
            head = budget // 2
            ids = ids[:head] + ids[len(ids) - (budget - head) :]
        rows.append(ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids, mask, positions = pad_left(rows, pad)
    gold = torch.tensor([labels.index(r.output) for r in records], dtype=torch.long)
    return LabelBatch(ids, mask, positions, conts, gold, tuple(labels))


def label_scores(model: Any, batch: LabelBatch) -> torch.Tensor:
    """`[items, labels]` sum log-prob of each label + EOS after each prompt (the scorer's numbers)."""
    batch = batch.to(model_device(model))
    return continuation_logprobs(
        model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.continuations
    )


def label_loss(model: Any, batch: LabelBatch, per_example: bool = False) -> torch.Tensor:
    """Cross-entropy of the gold label among the task's labels (softmax over their sequence scores)."""
    batch = batch.to(model_device(model))
    scores = label_scores(model, batch)
    loss = torch.nn.functional.cross_entropy(scores, batch.gold, reduction="none")
    return loss if per_example else loss.mean()


def model_device(model: Any) -> torch.device:
    """Where `model`'s weights are (batches are built on the CPU and moved there before a forward)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def objective(model: Any, batch: Batch | LabelBatch, per_example: bool = False) -> torch.Tensor:
    """The router's loss for `batch`: `label_loss` for a `LabelBatch`, else `answer_loss`."""
    if isinstance(batch, LabelBatch):
        return label_loss(model, batch, per_example)
    return answer_loss(model, batch, per_example)


@functools.cache
def _forward_takes_logits_to_keep(cls: type) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def _accepts_logits_to_keep(model: Any) -> bool:
    """Whether the causal LM behind `model` takes `logits_to_keep` (looked up once per class)."""
    inner = model
    while not hasattr(inner, "get_output_embeddings") and isinstance(
        getattr(inner, "model", None), torch.nn.Module
    ):
        inner = inner.model  # a FusedModel forwards **kwargs to the causal LM it wraps
    return _forward_takes_logits_to_keep(type(inner))


def answer_loss(model: Any, batch: Batch, per_example: bool = False) -> torch.Tensor:
    """Mean causal-LM cross-entropy over the target tokens (per example with `per_example`).

    Only the positions that predict a target token in some row go through the LM head (transformers'
    `logits_to_keep` with explicit positions), so the vocabulary projection and the softmax cost a few
    positions instead of the whole prompt: for a 1-token answer after a 300-token prompt that is most
    of a 135M model's head FLOPs and the [B, T, vocab] float buffer. The loss is the same as over full
    logits (tested to 1e-5).
    """
    # The kept positions come from the batch as built (on the CPU: no device sync), then it moves.
    keep = (batch.labels[:, 1:] != -100).any(0).nonzero().flatten()
    batch = batch.to(model_device(model))
    labels = batch.labels[:, 1:]
    keep = keep.to(labels.device)
    if _accepts_logits_to_keep(model) and len(keep) < labels.shape[1]:
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep
        ).logits.float()
        labels = labels[:, keep]
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logits = logits[:, :-1].float()
    tok = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(labels.shape)
    mask = (labels != -100).float()
    if per_example:
        return (tok * mask).sum(1) / mask.sum(1).clamp(min=1)
    return (tok * mask).sum() / mask.sum().clamp(min=1)
