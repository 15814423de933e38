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


@dataclass(frozen=True)
class Request:
    """Score `continuation` after `context` (both token id lists; the continuation is not empty)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token rows into input ids, attention mask and position ids (0 at each first real token)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


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
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        res = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        cache, rows = res.past_key_values, len(idx)
        first = torch.log_softmax(res.logits[:, -1].float(), dim=-1)
        lengths = mask.sum(1, keepdim=True)
        for j, cont in enumerate(continuations):
            total = first[:, cont[0]].clone()
            if len(cont) > 1:
                step = torch.tensor(list(cont[:-1]), device=device).expand(rows, -1)
                ext = torch.cat([mask, torch.ones_like(step)], dim=1)
                pos = lengths + torch.arange(len(cont) - 1, device=device)
                r = model(
                    input_ids=step,
                    attention_mask=ext,
                    position_ids=pos,
                    past_key_values=cache,
                    use_cache=True,
                )
                lp = torch.log_softmax(r.logits.float(), dim=-1)
                target = torch.tensor(list(cont[1:]), device=device).expand(rows, -1).unsqueeze(-1)
                total += lp.gather(-1, target).squeeze(-1).sum(1)
                cache.crop(-(len(cont) - 1))  # back to the prompts alone
            for row, i in enumerate(idx):
                out[i][j] = float(total[row])
    return out
