"""`mdkif models ...`: load a base model offline and show that it answers."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from mdkif.config import apply_overrides, validate
from mdkif.models.config import DEFAULT_MODEL, ModelConfig

app = typer.Typer(no_args_is_help=True)

DEFAULT_QUESTION = "What are the common symptoms of type 2 diabetes?"


def generate_answer(loaded, question: str, max_new_tokens: int) -> tuple[str, int, float]:
    """Greedy chat-style answer to `question`; returns (text, new tokens, seconds spent generating)."""
    import torch

    tok, model = loaded.tokenizer, loaded.model
    if tok.chat_template:
        enc = tok.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
    else:
        enc = tok(question, return_tensors="pt")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    new = out[0, enc["input_ids"].shape[1] :]
    return tok.decode(new, skip_special_tokens=True).strip(), int(new.numel()), seconds


@app.command("check")
def check(
    name: Annotated[
        str, typer.Option(help="model: alias, local dir, .gguf file, hub name or 'tiny'")
    ] = DEFAULT_MODEL,
    question: Annotated[str, typer.Option(help="medical question to answer")] = DEFAULT_QUESTION,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=512)] = 48,
    overrides: Annotated[list[str] | None, typer.Argument(help="model config overrides, key=value")] = None,
) -> None:
    """Load a model offline, answer a medical question greedily and print load time and tokens/s."""
    data: dict = {"name": name}
    apply_overrides(data, overrides or [], origin="models check: ")
    cfg = validate(ModelConfig, data, "models check")

    from mdkif.models.loading import load_model

    loaded = load_model(cfg)
    typer.echo(f"model: {cfg.name}  ({loaded.num_parameters / 1e6:.1f} M parameters, from {loaded.path})")
    typer.echo(f"loaded in {loaded.load_seconds:.1f} s on {loaded.model.device}")
    text, n_tokens, seconds = generate_answer(loaded, question, max_new_tokens)
    typer.echo(f"Q: {question}")
    typer.echo(f"A: {text}")
    typer.echo(
        f"generated {n_tokens} tokens in {seconds:.2f} s: {n_tokens / max(seconds, 1e-9):.1f} tokens/s"
    )
