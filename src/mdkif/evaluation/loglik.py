"""Log-probabilities of continuations given contexts, batched, with left padding handled exactly.

A request is (context token ids, continuation token ids); its score is the sum of log p(continuation
token | everything before it). The model input for a request is `context + continuation[:-1]`: the
logits at its last `len(continuation)` positions predict the continuation. Requests whose inputs are
identical share one sequence, so scoring the option letters " A".." D" after one prompt costs a single
forward pass of that prompt (each letter is one token), not four.

Batches are left-padded so every sequence ends at the last column (the positions we read line up), with
position ids counted from each sequence's first real token, so a padded row computes exactly what it
would alone; `logits_to_keep` avoids projecting the whole prompt onto the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mdkif.models.scoring import continuation_logprobs, pad_left

__all__ = ["Request", "generate", "pad_left", "score_requests", "score_shared_continuations"]


@dataclass(frozen=True)
class Request:
    """Score `continuation` after `context` (both token id lists; the continuation is not empty)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@torch.no_grad()
def score_requests(
    model: Any, requests: Sequence[Request], *, pad_id: int, batch_size: int = 8
) -> list[tuple[float, int]]:
    """(sum log-prob, token count) of each request's continuation, in request order."""
    if any(not r.continuation for r in requests):
        raise ValueError("every continuation needs at least one token")
    # Requests with the same model input share one sequence; each reads its own tokens from it.
    inputs: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(requests):
        inputs.setdefault(r.context + r.continuation[:-1], []).append(i)
    # Longest first, so a batch holds similar lengths and little padding.
    order = sorted(inputs, key=len, reverse=True)
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = [(0.0, 0)] * len(requests)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask, positions = pad_left(batch, pad_id)
        keep = max(len(requests[i].continuation) for seq in batch for i in inputs[seq])
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            logits_to_keep=keep,
            use_cache=False,
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # [batch, keep, vocab]
        for row, seq in enumerate(batch):
            for i in inputs[seq]:
                cont = requests[i].continuation
                picked = logprobs[row, keep - len(cont) :, :].gather(
                    -1, torch.tensor(cont, device=logprobs.device).unsqueeze(-1)
                )
                results[i] = (float(picked.sum()), len(cont))
    return results


@torch.no_grad()
def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    batch_size: int = 8,
) -> list[list[int]]:
    """Greedy continuations (new token ids only, cut at the first EOS) of left-padded prompt batches."""
    device = next(model.parameters()).device
    outputs: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask, _ = pad_left([prompts[i] for i in idx], pad_id)
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=list(eos_ids),
        )
        for row, i in enumerate(idx):
            new = gen[row, ids.shape[1] :].tolist()
            cut = next((j for j, t in enumerate(new) if t in eos_ids), len(new))
            outputs[i] = new[:cut]
    return outputs


@torch.no_grad()
def score_shared_continuations(
    model: Any,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 8,
) -> list[list[float]]:
    """Sum log-prob of every continuation after every prompt, `[prompt][continuation]`.

    For a label set shared by all items (a classification task): each batch of prompts is encoded once,
    and each continuation runs on the prompts' KV cache, which is cropped back to the prompts afterwards.
    A 3-label task then costs one prompt pass plus a few label tokens instead of three prompt passes;
    the result equals `score_requests` (tested).
    """
    if any(not c for c in continuations):
        raise ValueError("every continuation needs at least one token")
    device = next(model.parameters()).device
    out: list[list[float]] = [[0.0] * len(continuations) for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask, positions = pad_left([prompts[i] for i in idx], pad_id)
        scores = continuation_logprobs(
            model, ids.to(device), mask.to(device), positions.to(device), continuations
        )
        for row, i in enumerate(idx):
            out[i] = [float(v) for v in scores[row]]
    return out
