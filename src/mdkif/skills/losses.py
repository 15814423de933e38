"""The training objective and the validation loss: next-token cross-entropy on the labelled tokens only."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

from mdkif.skills.data import IGNORE, Example, collate


def _takes_logits_to_keep(model: Any) -> bool:
    """Whether the causal LM under `model` (DDP / DeepSpeed / peft wrappers peeled) takes `logits_to_keep`."""
    inner = model
    for _ in range(4):
        inner = getattr(inner, "module", inner)
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
    try:
        return "logits_to_keep" in inspect.signature(type(inner).forward).parameters
    except (TypeError, ValueError):
        return False


def token_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled tokens, and how many there were.

    Only the positions that predict a labelled token in some row go through the LM head (`logits_to_keep`
    with explicit positions, as the router's answer loss does): for instruction data the prompt's
    positions never reach the vocabulary projection, so the fp32 `[batch, positions, vocab]` buffer
    (128k-entry vocabularies on 8B bases) covers the answers only. Same loss as over full logits (tested).
    """
    labels = batch["labels"][:, 1:]
    keep = (labels != IGNORE).any(0).nonzero().flatten()
    if 0 < len(keep) < labels.shape[1] and _takes_logits_to_keep(model):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
        logits, labels = out.logits.float(), labels[:, keep]
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, :-1].float()
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((labels != IGNORE).sum())


@torch.no_grad()
def evaluate(
    model: Any, examples: list[Example], batch_size: int, pad_id: int, device: torch.device, autocast: Any
) -> float | None:
    """Token-weighted mean validation loss (no regulariser), or None without validation data."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        with autocast():
            loss, n = token_losses(model, batch)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)
