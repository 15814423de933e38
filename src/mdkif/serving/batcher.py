"""Continuous (iteration-level) batching: one decode loop per replica, requests join and leave between steps.

`DecodeLoop` owns a thread that runs the routed model one token at a time over every running request.
Between two decode steps it admits what has arrived: the new prompts are prefilled together (left-padded,
with their own weights), their KV cache is joined to the running one (padded on the left to a common
length), and from the next step on they decode with the others. A request that finishes (end token, stop
string, `max_tokens`, or its caller gone) leaves at once, its rows are cut out of the cache, and columns
that only padding still holds are trimmed. Streaming and non-streaming requests share the loop; each keeps
its own `max_tokens`, temperature / top_p, seed and stop strings.

Every step plans its forward from the rows it holds (`RoutedEngine._plan`): all rows on one fixed
mixture -> that mixture's merged weights; otherwise the stacked path with one weight vector per row
(profiles, gates and the base mixed in one batch), Arrow rows routed per token. A gate's weights are
computed once per request, at admission. Greedy rows give the same tokens as decoded alone (tested).

Isolation: a prefill that fails is retried one request at a time, so only the bad request fails; a decode
step that fails puts its rows back at the front of the queue as *solo* rows, each re-prefilled from its
prompt plus the tokens it already has and decoded alone, so again only the row that fails gets an error.

Why not transformers' `ContinuousBatchingManager`: it packs every request into one flattened sequence
over a paged KV cache (`sdpa_paged`), so a per-request skill mixture would have to become a per-token
weight in every fused layer and every request's merged/stacked choice would be lost; it also owns its
sampler (no per-request seeds, stop strings or cancellation here). The layout here (one row per request,
a left-padded `DynamicCache`) keeps the fused layers' per-row weights exact; the price is recomputing
nothing but copying the cache when requests join (see bench/results/serve_*.md).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mdkif.serving.engine import GenRequest, RoutedEngine
from mdkif.serving.protocol import APIError, Failure
from mdkif.serving.sampling import Row, new_row, pick

log = logging.getLogger(__name__)

# Called from the loop's thread after every step a row takes part in (row, None), or once with a Failure
# (row, failure) when the row fails; the row's `finish` is set on its last call.
Notify = Callable[[Row, Failure | None], None]


@dataclass
class _Entry:
    row: Row
    notify: Notify
    weights: torch.Tensor | None = None  # a gate's weights, computed once at admission
    solo: bool = False  # decoded alone (a row put back after a failed step)
    admitted: bool = False


@dataclass
class _Batch:
    """The running rows and their decode state: KV cache, mask, last positions and last tokens."""

    entries: list[_Entry] = field(default_factory=list)
    cache: Any = None
    mask: torch.Tensor | None = None  # [B, T] 1 = real token
    pos: torch.Tensor | None = None  # [B, 1] position of each row's last token
    tokens: list[int] = field(default_factory=list)  # each row's last picked token (fed next step)


def _layers(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None)
    if layers is None or any(not hasattr(layer, "keys") or layer.keys is None for layer in layers):
        raise TypeError(
            f"continuous batching needs a DynamicCache of dense layers, got {type(cache).__name__}"
        )
    return layers


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def join(a: _Batch, b: _Batch) -> _Batch:
    """`a`'s rows then `b`'s, left-padded to one cache length (padding is masked out)."""
    if not a.entries:
        return b
    assert a.mask is not None and b.mask is not None and a.pos is not None and b.pos is not None
    width = max(a.mask.shape[1], b.mask.shape[1])
    for la, lb in zip(_layers(a.cache), _layers(b.cache), strict=True):
        la.keys = torch.cat([_pad_left(la.keys, width, 2), _pad_left(lb.keys, width, 2)])
        la.values = torch.cat([_pad_left(la.values, width, 2), _pad_left(lb.values, width, 2)])
    mask = torch.cat([_pad_left(a.mask, width, 1), _pad_left(b.mask, width, 1)])
    return _Batch(a.entries + b.entries, a.cache, mask, torch.cat([a.pos, b.pos]), a.tokens + b.tokens)


def keep(batch: _Batch, rows: list[int]) -> _Batch:
    """Only `rows` of `batch`, with the leading columns that now hold padding only cut away."""
    if not rows:
        return _Batch()
    assert batch.mask is not None and batch.pos is not None
    idx = torch.tensor(rows, device=batch.mask.device)
    mask = batch.mask[idx]
    used = (mask.sum(0) > 0).nonzero()
    cut = int(used[0]) if len(used) else 0
    if len(rows) == len(batch.entries) and cut == 0:
        return batch
    for layer in _layers(batch.cache):
        layer.keys = layer.keys[idx, :, cut:]
        layer.values = layer.values[idx, :, cut:]
    return _Batch(
        [batch.entries[i] for i in rows],
        batch.cache,
        mask[:, cut:],
        batch.pos[idx],
        [batch.tokens[i] for i in rows],
    )


class DecodeLoop:
    """The replica's one token loop (see the module docstring); `submit` is thread-safe."""

    def __init__(self, engine: RoutedEngine, max_rows: int = 16) -> None:
        self.engine = engine
        self.max_rows = max_rows
        self._pending: deque[_Entry] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batch = _Batch()
        # What /v1/stats shows: rows per decode step, admissions that joined a running batch, prefills.
        self.step_rows: Counter[int] = Counter()
        self.joined_running = 0
        self.admitted = 0
        self.prefills = 0
        self.failed_rows = 0

    # ---- the caller's side ----------------------------------------------------------------------
    def submit(self, req: GenRequest, notify: Notify) -> None:
        """Queue `req`; `notify` is called from the loop's thread (see `Notify`)."""
        entry = _Entry(new_row(req), notify)
        with self._wake:
            if self._closed:
                raise RuntimeError("the decode loop is closed")
            self._pending.append(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mdkif-decode", daemon=True)
                self._thread.start()
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def stats(self) -> dict[str, Any]:
        steps = sum(self.step_rows.values())
        return {
            "running": len(self.batch.entries),
            "waiting": len(self._pending),
            "decode_steps": steps,
            "rows_per_step": dict(sorted(self.step_rows.items())),
            "mean_rows_per_step": (sum(k * v for k, v in self.step_rows.items()) / steps) if steps else 0.0,
            "admitted": self.admitted,
            "joined_running": self.joined_running,
            "prefills": self.prefills,
            "failed_rows": self.failed_rows,
        }

    # ---- the loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self.batch.entries and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                admit = self._take()
            try:
                if admit:
                    self._admit(admit)
                if self.batch.entries:
                    self._step()
            except Exception:  # noqa: BLE001 - the loop must survive whatever a step raises
                log.exception("decode loop step failed unexpectedly; its rows are retried alone")
                self._requeue_solo(self.batch.entries)
                self.batch = _Batch()

    def _take(self) -> list[_Entry]:
        """What joins before the next step: up to the free rows; a solo row only into an empty batch."""
        running = self.batch.entries
        if any(e.solo for e in running):
            return []
        if self._pending and self._pending[0].solo:
            return [self._pending.popleft()] if not running else []
        take = []
        while self._pending and len(running) + len(take) < self.max_rows and not self._pending[0].solo:
            take.append(self._pending.popleft())
        return take

    def _admit(self, entries: list[_Entry]) -> None:
        """Prefill `entries` (all together; one by one when that fails) and join them to the batch."""
        entries = [e for e in entries if not self._cancelled(e)]
        if not entries:
            return
        try:
            fresh = self._prefill(entries)
        except Exception as exc:  # noqa: BLE001
            if len(entries) == 1:
                self._fail(entries[0], exc)
                return
            log.warning("a prefill of %d requests failed; prefilling them one by one", len(entries))
            for e in entries:
                self._admit([e])
            return
        if self.batch.entries:
            self.joined_running += len(entries)
        self.admitted += len(entries)
        self.batch = join(self.batch, fresh)
        self._drop_finished()

    def _prefill(self, entries: list[_Entry]) -> _Batch:
        eng = self.engine
        for e in entries:
            if not e.admitted:
                e.weights = eng.weights_for(e.row.req)  # a gate's forward, once
                e.admitted = True
        # A resumed (solo) row continues from its prompt plus what it generated before.
        seqs = [e.row.req.prompt_ids + e.row.out for e in entries]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), eng.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
        ids, mask = ids.to(eng.device), mask.to(eng.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        plan = eng._plan([e.row.req for e in entries], [e.weights for e in entries])
        out = eng._forward(plan, input_ids=ids, attention_mask=mask, position_ids=pos)
        self.prefills += 1
        tokens = self._pick(out.logits[:, -1, :], entries)
        return _Batch(entries, out.past_key_values, mask, pos[:, -1:], tokens)

    def _step(self) -> None:
        """One decode step of every running row."""
        eng, b = self.engine, self.batch  # every row is live: finished ones left after their last pick
        assert b.mask is not None and b.pos is not None
        self.step_rows[len(b.entries)] += 1
        ids = torch.tensor([[t] for t in b.tokens], device=eng.device)
        mask = torch.cat([b.mask, torch.ones(len(b.entries), 1, dtype=b.mask.dtype, device=eng.device)], 1)
        pos = b.pos + 1
        plan = eng._plan([e.row.req for e in b.entries], [e.weights for e in b.entries])
        try:
            out = eng._forward(
                plan, input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=b.cache
            )
        except Exception as exc:  # noqa: BLE001
            if len(b.entries) == 1:
                self._fail(b.entries[0], exc)
                self.batch = _Batch()
                return
            log.warning("a decode step of %d rows failed; each is retried alone", len(b.entries))
            self._requeue_solo(b.entries)
            self.batch = _Batch()
            return
        b.cache, b.mask, b.pos = out.past_key_values, mask, pos
        b.tokens = self._pick(out.logits[:, -1, :], b.entries)
        self._drop_finished()

    def _pick(self, logits: torch.Tensor, entries: list[_Entry]) -> list[int]:
        """Sample and advance each row (a row whose sampling raises fails alone); notify every row."""
        eng = self.engine
        rows = [e.row for e in entries]
        try:
            picks = pick(logits, rows)
        except Exception:  # noqa: BLE001 - find the row(s) that raise
            picks = []
            for i, row in enumerate(rows):
                try:
                    picks.extend(pick(logits[i : i + 1], [row]))
                except Exception as exc:  # noqa: BLE001
                    self._fail(entries[i], exc)
                    picks.append(eng.pad_id)
        for e, tok in zip(entries, picks, strict=True):
            if e.row.finish is not None:
                continue
            if e.row.req.cancelled.is_set():
                e.row.finish = "cancelled"
                eng.cancelled_rows += 1
            else:
                eng.advance(e.row, tok)
            e.notify(e.row, None)
        return picks

    def _drop_finished(self) -> None:
        b = self.batch
        live = [i for i, e in enumerate(b.entries) if e.row.finish is None]
        if len(live) != len(b.entries):
            self.batch = keep(b, live)

    def _cancelled(self, e: _Entry) -> bool:
        if e.row.req.cancelled.is_set() and e.row.finish is None:
            e.row.finish = "cancelled"
            self.engine.cancelled_rows += 1
            e.notify(e.row, None)
        return e.row.finish is not None

    def _requeue_solo(self, entries: list[_Entry]) -> None:
        with self._wake:
            for e in reversed(entries):
                if e.row.finish is None:
                    e.solo = True
                    self._pending.appendleft(e)

    def _fail(self, e: _Entry, exc: BaseException) -> None:
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        self.failed_rows += 1
        e.row.finish = "error"
        err = APIError(500, f"generation failed: {type(exc).__name__}: {exc}", code="internal_error")
        e.notify(e.row, Failure.of(err))
