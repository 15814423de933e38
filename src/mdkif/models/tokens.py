"""The tokens that end a model's turn: EOS, the generation config's EOS list, and known chat end tokens.

Chat models end an assistant turn with their own token, which may differ from the tokenizer's EOS:
`<|im_end|>` (ChatML: SmolLM2, Qwen), `<|eot_id|>` (Llama 3), `<end_of_turn>` (Gemma), `<|end|>` (Phi-3).
Generation and scoring stop at any of them; hard-coding one family's token makes another family's model
run on past its answer.
"""

from __future__ import annotations

from typing import Any

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def end_of_turn_ids(tokenizer: Any, model: Any | None = None) -> list[int]:
    """Sorted ids that end a turn for this tokenizer (and model's generation config, when given)."""
    ids = {tokenizer.eos_token_id}
    config = getattr(model, "generation_config", None)
    gen = getattr(config, "eos_token_id", None)
    ids.update(gen if isinstance(gen, list | tuple) else [gen])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return sorted(i for i in ids if i is not None)
