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
"""

from __future__ import annotations

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
