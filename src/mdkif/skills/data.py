"""Examples as token ids, and the deterministic micro-batch stream the loop (and its resume) relies on.

Instruction records become `prompt + output + EOS` with labels -100 over the prompt, so the loss covers
the output only. Raw text is packed: documents joined by EOS and cut into fixed blocks, loss on all.
The stream is a pure function of (seed, epoch, rank): epoch `e` is a seeded permutation, each rank takes
its stride of it, so step `s` of a resumed run sees exactly the micro-batches of the uninterrupted run.
By default the micro-batches are length-grouped (see `MicroBatchStream`), so right-padding stays small.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mdkif.data.records import SkillRecord
from mdkif.models.prompting import encode_text, end_token_id, render_prompt

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids and labels (-100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]


def encode_record(tokenizer: Any, record: SkillRecord, max_length: int, fmt: str = "alpaca") -> Example:
    """`prompt + output + end`, labels only on output and end; long prompts lose their middle.

    The prompt and the end token follow the stage's prompt format (`mdkif.models.prompting`): EOS after
    an Alpaca prompt, the end-of-turn token after a chat-templated user turn.
    """
    prompt = encode_text(tokenizer, render_prompt(tokenizer, record.instruction, record.input, fmt))
    output = tokenizer(record.output, add_special_tokens=False)["input_ids"] + [end_token_id(tokenizer, fmt)]
    output = output[: max(1, max_length // 2)] if len(prompt) + len(output) > max_length else output
    budget = max_length - len(output)
    if len(prompt) > budget:
        # Keep the instruction's head and the "### Response:" (or assistant header) tail; the input's middle goes.
        head = budget // 2
        prompt = prompt[:head] + prompt[len(prompt) - (budget - head) :]
    return Example(prompt + output, [IGNORE] * len(prompt) + output)


def pack_texts(tokenizer: Any, texts: Sequence[str], block: int) -> list[Example]:
    """Concatenate documents separated by EOS and cut into `block`-token sequences (the tail is dropped)."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return [Example(ids[i : i + block], ids[i : i + block]) for i in range(0, len(ids) - block + 1, block)]


def read_corpus(sources: Sequence[Any]) -> list[str]:
    """Documents from `CorpusSource`s: text files (blank-line separated), jsonl fields, PubMedQA contexts."""
    docs: list[str] = []
    for src in sources:
        path = Path(src.path)
        files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
        found: list[str] = []
        for file in files:
            if src.format == "text":
                found += [p.strip() for p in file.read_text(encoding="utf-8").split("\n\n") if p.strip()]
            elif src.format == "jsonl":
                with file.open(encoding="utf-8") as fh:
                    for line in fh:
                        if line.strip():
                            value = json.loads(line).get(src.field)
                            if isinstance(value, str) and value.strip():
                                found.append(" ".join(value.split()))
            else:
                data = json.loads(file.read_text(encoding="utf-8"))
                found += [" ".join(item["CONTEXTS"]) for item in data.values() if item.get("CONTEXTS")]
            if src.max_docs and len(found) >= src.max_docs:
                break
        docs += found[: src.max_docs] if src.max_docs else found
    return docs


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


MEGA_BATCH = 50
"""Micro-batches per length-sorted group: the cap on how far grouping moves an example from its random place."""


class MicroBatchStream:
    """Micro-batches of one rank as a function of their index: epoch permutation by seed, rank stride.

    Every rank gets the same number of micro-batches per epoch (the permutation's tail that does not divide
    evenly is left out for that epoch), so data-parallel workers step together.

    With `group_by_length` (the default), each epoch's order of this rank is cut into mega-batches of
    `batch_size * m` consecutive examples, each sorted by length (longest first) and cut into micro-batches,
    whose order over the whole epoch is then shuffled (seeded by seed, epoch and rank) so that consecutive
    steps still mix lengths; the micro-batch holding the most tokens after padding goes first, so a
    too-large batch fails at step 1, not hours in. `m` is `mega_batch` (50), lowered for small data to
    keep at least about four mega-batches per epoch (as transformers' `LengthGroupedSampler` does), or
    small data would give the same micro-batches every epoch. A rank still sees exactly the examples of
    the ungrouped epoch and the same number of micro-batches; only their grouping changes. Without
    grouping the micro-batches are consecutive slices of the rank's order (the stream before grouping).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        *,
        group_by_length: bool = True,
        mega_batch: int = MEGA_BATCH,
    ):
        if not examples:
            raise ValueError("no training examples")
        if batch_size < 1 or mega_batch < 1:
            raise ValueError(f"batch_size and mega_batch must be >= 1, got {batch_size}, {mega_batch}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.group_by_length = group_by_length
        per_rank = max(1, len(self.examples) // world)
        self.per_epoch = -(-per_rank // batch_size)
        self._per_rank = per_rank
        self.mega_batch = max(1, min(mega_batch, per_rank // (4 * batch_size)))
        self._lengths = [len(e.input_ids) for e in self.examples]
        self._cached: tuple[int, list[list[int]]] | None = None  # (epoch, its micro-batches)

    def order(self, epoch: int) -> list[int]:
        """This rank's example indices in `epoch` (the same on every call and every machine)."""
        perm = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(perm)
        if len(perm) < self.world:  # fewer examples than ranks: every rank reuses the permutation
            perm = perm * self.world
        return perm[self.rank :: self.world][: self._per_rank]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches of `epoch` as example indices, in step order (`per_epoch` of them)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        order, size = self.order(epoch), self.batch_size
        if not self.group_by_length:
            batches = [order[i : i + size] for i in range(0, len(order), size)]
        else:
            mega = size * self.mega_batch
            batches = []
            for start in range(0, len(order), mega):
                # Stable sort: equal lengths keep their random order, so ties stay shuffled.
                group = sorted(order[start : start + mega], key=lambda i: -self._lengths[i])
                batches += [group[i : i + size] for i in range(0, len(group), size)]
            random.Random(f"group-by-length/{self.seed}/{epoch}/{self.rank}").shuffle(batches)
            widest = max(range(len(batches)), key=lambda b: self._padded(batches[b]))
            batches[0], batches[widest] = batches[widest], batches[0]
        self._cached = (epoch, batches)
        return batches

    def _padded(self, batch: list[int]) -> int:
        return len(batch) * max(self._lengths[i] for i in batch)

    def batch(self, index: int) -> list[Example]:
        epoch, k = divmod(index, self.per_epoch)
        return [self.examples[i] for i in self.epoch_batches(epoch)[k]]

    def iterate(self, start: int) -> Iterator[list[Example]]:
        index = start
        while True:
            yield self.batch(index)
            index += 1


def total_steps(
    n_examples: int, batch_size: int, grad_accum: int, world: int, epochs: float, max_steps: int | None
) -> int:
    """Optimizer steps of a run: `max_steps`, else `epochs` passes of this rank's micro-batches."""
    if max_steps:
        return max_steps
    per_epoch = -(-max(1, n_examples // world) // batch_size)
    return max(1, round(per_epoch * epochs / grad_accum))


def records_hash(records: Sequence[SkillRecord]) -> str:
    """sha256 over record ids and contents, to tell whether a finished skill saw the same data."""
    h = hashlib.sha256()
    for r in records:
        h.update(r.model_dump_json().encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]
