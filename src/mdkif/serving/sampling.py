"""One request in the token loop: its tokens, sampling, end conditions and what a stream may send.

The token loops (`RoutedEngine.steps`, the continuous `DecodeLoop`) own the forward passes; what happens to
a row between two of them lives here: pick the next token from its logits (greedy, or temperature / top_p
with the row's own seeded generator), append it and decide whether the row is finished (an end token,
a stop string, `max_tokens`, or its caller gone), and cut the text a stream may already send.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mdkif.serving.protocol import SamplingParams


@dataclass
class GenRequest:
    """One tokenised request, ready for the token loop."""

    prompt_ids: list[int]
    profile: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    meta: dict[str, Any] = field(default_factory=dict)
    # Set by the caller when nobody waits for the answer any more: the row leaves the loop at the next step.
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


@dataclass
class Row:
    """A request being decoded: its generator (None when greedy), tokens and text so far, finish reason."""

    req: GenRequest
    generator: torch.Generator | None
    out: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None  # stop | length | cancelled | error


def new_row(req: GenRequest) -> Row:
    gen = None
    if req.params.temperature > 0:
        gen = torch.Generator(device="cpu")
        if req.params.seed is not None:
            gen.manual_seed(req.params.seed)
        else:
            gen.seed()
    return Row(req, gen)


def pick(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """The next token of every row from its last logits ([B, V])."""
    greedy = logits.argmax(-1).tolist()
    out = []
    for i, row in enumerate(rows):
        p = row.req.params
        if p.temperature <= 0:
            out.append(greedy[i])
            continue
        scaled = logits[i].float().cpu() / p.temperature
        if not torch.isfinite(scaled.max()):  # t so small that logits / t overflows: its limit, greedy
            out.append(greedy[i])
            continue
        probs = torch.softmax(scaled, -1)
        if p.top_p < 1.0:
            sorted_p, idx = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < p.top_p
            # The top token always stays, also when top_p rounds to 0 in float32 (below ~1e-45).
            keep[0] = True
            probs = torch.zeros_like(probs).scatter_(0, idx[keep], sorted_p[keep])
        out.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return out


def advance(
    row: Row, token: int, eos_ids: set[int] | frozenset[int], decode: Callable[[list[int]], str]
) -> None:
    """Append `token` to `row` (unless it ends the row) and set `row.finish` when the row is done."""
    p = row.req.params
    if token in eos_ids and not p.ignore_eos:
        row.finish = "stop"
        return
    row.out.append(token)
    row.text = decode(row.out)
    for s in p.stop:
        cut = row.text.find(s)
        if cut >= 0:
            row.text, row.finish = row.text[:cut], "stop"
            return
    if len(row.out) >= p.max_tokens:
        # Cut mid-character (a byte-level token holding part of a multi-byte character): drop the
        # replacement character the partial bytes decode to rather than return it.
        row.text, row.finish = row.text.rstrip("\ufffd"), "length"


def result(row: Row) -> dict[str, Any]:
    """A finished row's answer as the ingress renders it."""
    return {
        "text": row.text,
        "finish_reason": row.finish,
        "prompt_tokens": len(row.req.prompt_ids),
        "completion_tokens": len(row.out),
        "mdkif": dict(row.req.meta),
    }


class StreamCutter:
    """What a stream may send after each step of one row: the new text, less what could still become a stop
    sequence (or half a multi-byte character), which waits until the next step decides; the last chunk
    also carries the result (usage, finish reason). A client never sees a stop string it asked to cut."""

    def __init__(self, req: GenRequest) -> None:
        self.hold = max((len(s) for s in req.params.stop), default=1) - 1
        self.sent = 0

    def feed(self, row: Row) -> dict[str, Any] | None:
        done = row.finish is not None
        safe = len(row.text) if done else len(row.text) - self.hold
        while not done and safe > self.sent and row.text[safe - 1] == "\ufffd":
            safe -= 1
        if not (safe > self.sent or done):
            return None
        chunk: dict[str, Any] = {"delta": row.text[self.sent : safe], "finish_reason": row.finish}
        self.sent = max(self.sent, safe)
        if done:
            chunk.update(result(row))
        return chunk
