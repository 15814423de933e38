"""The prompt format a skill bank is trained in, and the one function that renders it everywhere.

A format is a property of the trained adapters: skills, routers, the task harness and the Serve engine
must all show the model the text it was trained on, or "what is evaluated is what is served" fails.

- `alpaca` (the default): `### Instruction: ... ### Input: ... ### Response:` (`format_prompt`), the target
  followed by EOS. Works on any base, chat template or not.
- `chat`: the instruction (and input) as one user turn through the tokenizer's chat template, the target
  as the assistant's reply followed by the end-of-turn token (`<|im_end|>`, `<|eot_id|>`, ...). What a
  chat base (SmolLM2-Instruct, Llama-3-Instruct) is used with, so the served API needs no special prompt.

Rendered text already holds the template's special tokens, so `encode_text` adds a BOS only when the text
does not begin with one (a Llama-3 template writes `<|begin_of_text|>` itself; a second BOS shifts every
position the adapters were trained on).

Text a client sends (chat messages, completion prompts) goes through `encode_user_text` /
`encode_messages` instead: its content is tokenized as text, so `<|im_end|>` or `<|endoftext|>` typed by a
user is a few ordinary tokens and can neither end the prompt nor forge a turn; only the template (and the
tokenizer's own BOS) adds control tokens.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from mdkif.data.records import format_prompt
from mdkif.models.tokens import END_OF_TURN_TOKENS

PromptFormat = Literal["alpaca", "chat"]
PROMPT_FORMATS: tuple[str, ...] = ("alpaca", "chat")


class PromptFormatError(ValueError):
    """A format the tokenizer cannot render (chat without a template) or an unknown format name."""


def check_format(tokenizer: Any, fmt: str) -> None:
    """Raise `PromptFormatError` unless `tokenizer` can render `fmt`."""
    if fmt not in PROMPT_FORMATS:
        raise PromptFormatError(f"unknown prompt format {fmt!r}; expected one of {list(PROMPT_FORMATS)}")
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise PromptFormatError(
            "prompt format 'chat' needs a tokenizer with a chat template; this one has none "
            "(use prompt_format: alpaca, or a chat model)"
        )


def user_content(instruction: str, input: str = "") -> str:
    """The user turn of an instruction record: the instruction, then its input after a blank line."""
    return f"{instruction.strip()}\n\n{input.strip()}" if input.strip() else instruction.strip()


def render_prompt(tokenizer: Any, instruction: str, input: str = "", fmt: str = "alpaca") -> str:
    """The text a model reads before its answer, for an instruction (and optional input) in `fmt`."""
    if fmt == "alpaca":
        return format_prompt(instruction, input)
    check_format(tokenizer, fmt)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_content(instruction, input)}],
        add_generation_prompt=True,
        tokenize=False,
    )


def render_messages(tokenizer: Any, messages: list[dict[str, str]], fmt: str) -> str:
    """A chat request in `fmt`: through the template (`chat`), or as one Alpaca prompt whose instruction
    is the last user message and whose input is the conversation before it (`alpaca`)."""
    check_format(tokenizer, fmt)
    if fmt == "chat":
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    last = users[-1] if users else len(messages) - 1
    system = [m["content"] for m in messages[:last] if m["role"] == "system"]
    earlier = [f"{m['role']}: {m['content']}" for m in messages[:last] if m["role"] != "system"]
    instruction = "\n\n".join([*system, messages[last]["content"]])
    return format_prompt(instruction, "\n".join(earlier))


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered prompt text, with the tokenizer's BOS unless the text already starts with it."""
    bos = getattr(tokenizer, "bos_token", None)
    special = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def end_token_id(tokenizer: Any, fmt: str) -> int:
    """The token a target ends with: EOS (`alpaca`), or the chat template's end of turn (`chat`)."""
    if fmt == "chat":
        vocab = tokenizer.get_vocab()
        for token in END_OF_TURN_TOKENS:
            if token in vocab:
                return vocab[token]
    if tokenizer.eos_token_id is None:
        raise PromptFormatError("the tokenizer has no EOS token to end a target with")
    return tokenizer.eos_token_id


def encode_user_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of text a client wrote, control-token strings in it tokenized as plain text; the
    tokenizer's own special tokens (its BOS) are added as usual."""
    return list(tokenizer(text, split_special_tokens=True)["input_ids"])


def encode_messages(tokenizer: Any, messages: list[dict[str, str]], fmt: str) -> list[int]:
    """Token ids of a client's chat in `fmt`, every message's content tokenized as text.

    `alpaca` renders the messages into one Alpaca prompt, which holds no control tokens of its own. `chat`
    renders the tokenizer's template once with a marker in place of each content, tokenizes the template's
    pieces as usual (its control tokens stay control tokens) and each content as text, and joins them; the
    pieces are cut where the template's own text meets the content (a newline or a control token in
    ChatML and Llama-3), so ordinary messages get exactly the ids of the whole rendered text (tested).
    """
    check_format(tokenizer, fmt)
    if fmt == "alpaca":
        return encode_user_text(tokenizer, render_messages(tokenizer, messages, "alpaca"))
    # Markers no template trims or escapes (letters and digits), unique per call.
    nonce = secrets.token_hex(6)
    markers = [f"MDKIFCONTENT{i}X{nonce}" for i in range(len(messages))]
    marked = [{**m, "content": markers[i]} for i, m in enumerate(messages)]
    template = tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False)
    contents = _as_rendered(tokenizer, messages, template, markers)
    ids: list[int] = []
    rest = template
    for marker, content in zip(markers, contents, strict=True):
        head, found, rest = rest.partition(marker)
        if not found:  # the template dropped this message (e.g. a system prompt it ignores)
            rest = head
            continue
        ids += _template_ids(tokenizer, head, first=not ids)
        ids += tokenizer(content, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids + _template_ids(tokenizer, rest, first=not ids)


def _template_ids(tokenizer: Any, text: str, first: bool) -> list[int]:
    if not text:
        return []
    return (
        encode_text(tokenizer, text)
        if first
        else list(tokenizer(text, add_special_tokens=False)["input_ids"])
    )


def _as_rendered(
    tokenizer: Any, messages: list[dict[str, str]], template: str, markers: list[str]
) -> list[str]:
    """Each content as the template writes it: as given, or stripped (templates that `| trim` it)."""
    full = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    for variant in ([m["content"] for m in messages], [m["content"].strip() for m in messages]):
        rebuilt = template
        for marker, content in zip(markers, variant, strict=True):
            rebuilt = rebuilt.replace(marker, content)
        if rebuilt == full:
            return variant
    raise PromptFormatError(
        "the chat template changes message contents in a way that cannot be split from its control tokens"
    )
