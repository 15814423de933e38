"""Log-probabilities of label continuations after prompts, differentiable: the classification scorer's
quantity, shared by the evaluation harness (no grad) and the router's label objective (grad on weights).

Prompts are left-padded so every row ends at the last column, with position ids counted from each row's
first real token (a padded row computes what it would alone). The prompts are encoded once; each
continuation runs on their KV cache, which is cropped back to the prompts afterwards, so a 3-label task
costs one prompt pass plus a few label tokens instead of three prompt passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


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


def continuation_logprobs(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    continuations: Sequence[Sequence[int]],
) -> torch.Tensor:
    """`[rows, continuations]` sum log-prob of each continuation after each left-padded prompt row.

    Differentiable in whatever the model's forward reads (a fused model's skill weights): the cache
    tensors keep their graph, and cropping is a slice.
    """
    if any(not c for c in continuations):
        raise ValueError("every continuation needs at least one token")
    device = ids.device
    res = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache, rows = res.cache, ids.shape[0]
    first = torch.log_softmax(res.logits[:, -1].float(), dim=-1)
    lengths = mask.sum(1, keepdim=True)
    columns = []
    for cont in continuations:
        total = first[:, cont[0]]
        if len(cont) > 1:
            step = torch.tensor(list(cont[:-1]), device=device).expand(rows, -1)
            ext = torch.cat([mask, torch.ones_like(step)], dim=1)
            pos = lengths + torch.arange(len(cont) - 1, device=device)
            r = model(input_ids=step, attention_mask=ext, position_ids=pos, cache=cache, use_cache=True)
            lp = torch.log_softmax(r.logits.float(), dim=-1)
            target = torch.tensor(list(cont[1:]), device=device).expand(rows, -1).unsqueeze(-1)
            total = total + lp.gather(-1, target).squeeze(-1).sum(1)
            cache.crop(-(len(cont) - 1))  # back to the prompts alone
        columns.append(total)
    return torch.stack(columns, dim=1)
