"""Prompt text for every scoring method: one template, so variants differ only in what they add to it.

A prompt is a user message (instruction, optional retrieved documents, optional k-shot examples, the
question and its options) plus the start of the assistant's reply (`Answer:` or a reasoning cue). With a
chat template the user message is wrapped by the tokenizer and the reply prefix follows the generation
prompt; without one the two are joined by a newline. Log-likelihood and generation read the very same
prompt, so their accuracies are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mdkif.data.records import MCQRecord
from mdkif.rag.types import Passage

ANSWER_PREFIX = "Answer:"
COT_PREFIX = "Let's think step by step."


def is_lettered(record: MCQRecord) -> bool:
    """True when options are keyed A, B, ... (False for PubMedQA/BioASQ's yes/no/maybe words)."""
    return all(len(k) == 1 and k.isalpha() and k.isupper() for k in record.options)


def key_list(record: MCQRecord) -> str:
    """The answer keys in words: 'A, B, C or D' / 'yes, no or maybe'."""
    keys = list(record.options)
    return keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} or {keys[-1]}"


def instruction(record: MCQRecord, method: str) -> str:
    """The task sentence; CoT adds the strict final-line format the parser expects."""
    if is_lettered(record):
        task = "Answer the following multiple-choice question about medicine with the letter of the correct option."
    else:
        task = f"Answer the following question about medicine with {key_list(record)}."
    if method == "cot":
        task += f" Think step by step, then end with a final line of the form 'Answer: X' where X is {key_list(record)}."
    return task


def render_item(record: MCQRecord, *, show_options: bool = True) -> str:
    """Question (with its context when the record carries one) and the lettered or worded options."""
    parts = []
    if record.context:
        parts.append(f"Context: {record.context.strip()}")
    parts.append(f"Question: {record.question.strip()}")
    if show_options:
        if is_lettered(record):
            parts.append("Options:\n" + "\n".join(f"{k}. {v}" for k, v in record.options.items()))
        else:
            parts.append(f"Options: {', '.join(record.options)}")
    return "\n".join(parts)


def render_shot(record: MCQRecord, *, show_options: bool = True) -> str:
    """A solved example: the item followed by its gold answer in the format the model should copy."""
    answer = record.answer if show_options else record.options[record.answer]
    return f"{render_item(record, show_options=show_options)}\n{ANSWER_PREFIX} {answer}"


def render_passages(passages: Sequence[Passage], max_chars: int) -> str:
    """Numbered retrieved documents, each cut to `max_chars` so one long passage cannot crowd out the rest."""
    lines = ["Relevant documents:"]
    for i, p in enumerate(passages, start=1):
        body = " ".join(p.text.split())[:max_chars]
        title = f"{p.title.strip()}. " if p.title.strip() else ""
        lines.append(f"[{i}] {title}{body}")
    return "\n".join(lines)


def user_message(
    record: MCQRecord,
    *,
    method: str,
    shots: Sequence[MCQRecord] = (),
    passages: Sequence[Passage] = (),
    passage_chars: int = 800,
    show_options: bool = True,
) -> str:
    """The whole user turn: instruction, documents, examples, then the question being asked."""
    blocks = [instruction(record, method)]
    if passages:
        blocks.append(render_passages(passages, passage_chars))
    blocks.extend(render_shot(s, show_options=show_options) for s in shots)
    blocks.append(render_item(record, show_options=show_options))
    return "\n\n".join(blocks)


def use_chat(tokenizer: Any, setting: str) -> bool:
    """Whether to wrap prompts in the chat template: `auto` means when the tokenizer defines one."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if setting == "on" and not has:
        raise ValueError("scoring.chat_template=on but the tokenizer has no chat template")
    return has if setting == "auto" else setting == "on"


def wrap(tokenizer: Any, user: str, reply_prefix: str, chat: bool) -> str:
    """Full prompt text: the chat-templated user turn (or the bare text) and the start of the reply."""
    if not chat:
        return f"{user}\n{reply_prefix}"
    head = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
    )
    return head + reply_prefix


def verification_message(record: MCQRecord, key: str) -> str:
    """VoC step 1: ask whether one proposed option is correct, answered with yes or no."""
    proposed = f"{key}. {record.options[key]}" if is_lettered(record) else key
    return (
        "Check whether the proposed answer to this medical question is correct. Answer yes or no.\n\n"
        f"{render_item(record)}\nProposed answer: {proposed}\nIs the proposed answer correct?"
    )
