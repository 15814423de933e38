"""The routed model without Ray: base model + skill bank + task profiles, batched generation, streaming.

A batch is served one of two ways, chosen per batch:

- **merged**: every request wants the same fixed mixture (profiles with fixed weights or a static
  router, or the plain base). The mixture's merged weights `W + sum_i w_i dW_i` are built once, kept in
  an LRU keyed by the weights' values (profiles with equal weights share one copy) and bounded by
  `merged_cache_mb` and `merged_cache_size`, and swapped in by pointer; the forward then costs what the
  base model costs. When the bound holds no copy (e.g. an 8B model under the default bound), these
  batches are served stacked instead.
- **stacked**: the batch mixes profiles, or uses an input-conditioned gate. The fused layers add the
  low-rank term with one weight vector per example ([B, L, K]), which is exact and needs one forward
  for the whole mixed batch (the base model is the all-zero row).
- **arrow**: stacked, with some rows routed by an Arrow profile: those rows' weights are computed per
  token inside every fused layer from its input (`FusedModel.set_arrow`); the other rows keep theirs.
  Arrow is never merged.

Generation is a manual token loop over a left-padded batch with a KV cache, so each row keeps its own
`SamplingParams` (max_tokens, temperature/top_p, seed, stop sequences); what happens to a row between two
forwards (pick, advance, stream cutting) is `serving.sampling`. Greedy rows give the same tokens batched as
alone. A lock guards the model around every forward, and each forward first re-activates the weights
its batch needs, so a streaming request (which bypasses batching) may interleave with batches safely.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mdkif.fusion import FusedModel, FusionError, SkillBank, fuse
from mdkif.models import load_model
from mdkif.models.prompting import PromptFormatError, check_format, encode_messages, encode_user_text
from mdkif.models.tokens import end_of_turn_ids
from mdkif.prompts import render_passages
from mdkif.rag.config import PASSAGE_CHARS
from mdkif.rag.types import Passage
from mdkif.routing.artifact import read_router_info
from mdkif.routing.router import ArrowRouter, GateRouter, load_router, pooled_prompt_state
from mdkif.serving.config import ServeAppConfig
from mdkif.serving.protocol import APIError, Failure
from mdkif.serving.sampling import GenRequest, Row, StreamCutter, advance, new_row, pick, result

__all__ = ["GenRequest", "MergedCache", "Profile", "RoutedEngine", "StreamCutter", "weights_key"]

log = logging.getLogger(__name__)


@dataclass
class Profile:
    """A served task profile: fixed weights ([K] or [L, K]), a gate or Arrow, and its retrieval settings."""

    name: str | None
    weights: torch.Tensor | None = None
    gate: GateRouter | None = None
    arrow: ArrowRouter | None = None
    rag: bool = False
    k: int = 3
    source: str = "base"  # base | weights | router:static | router:gate | router:arrow
    key: str | None = None  # merged-cache key of the fixed weights (`weights_key`); None: base, gate, arrow


def weights_key(weights: torch.Tensor, num_layers: int) -> str | None:
    """The merged-cache key of a mixture: a digest of its values as [L, K] float32; None when all zero.

    Two profiles with the same weights (two names for one router, or the same fixed weights) get the
    same key, so they share one merged copy; an all-zero mixture is the base model itself.
    """
    w = weights.detach().float().cpu()
    w = w.expand(num_layers, w.shape[-1]) if w.dim() == 1 else w
    if not bool(w.any()):
        return None
    w = w.contiguous() + 0.0  # -0.0 + 0.0 is +0.0: equal values, equal bytes
    digest = hashlib.blake2b(w.numpy().tobytes(), digest_size=16)
    digest.update(repr(tuple(w.shape)).encode())
    return digest.hexdigest()


class MergedCache:
    """Merged weights of every fused layer per distinct mixture, bounded in bytes and in count (LRU).

    An entry is one full copy of the adapted layers' weights (`entry_bytes`), keyed by `weights_key`, so
    profiles with equal weights share it. At most `capacity = min(max_entries, max_bytes // entry_bytes)`
    entries exist at any moment, the one being built included: on a miss with the cache full, the least
    recently used entry is evicted first and its buffers are re-merged in place, `W = W_orig + delta`
    (in fp32, rounded once into the weight dtype, as `FusedLinear.merge` does). Capacity 1 is thus one
    working copy re-merged on every switch; capacity 0 (a bound below one copy, or a quantized base
    whose packed weights cannot take a delta) merges nothing, and the engine serves such batches stacked.
    The original weights are never written: activating swaps tensors into the layers by pointer.
    """

    def __init__(self, fused: FusedModel, max_entries: int, max_bytes: float) -> None:
        self.fused = fused
        self.original = {name: layer.base.weight.data for name, layer in fused.layers.items()}
        self.entry_bytes = sum(t.numel() * t.element_size() for t in self.original.values())
        self.max_bytes = max_bytes
        fits = int(max_bytes // self.entry_bytes) if self.entry_bytes else max_entries
        self.capacity = 0 if fused.quantized else min(max_entries, fits)
        self.entries: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.active: str | None = None  # key whose merged weights are in the layers; None = original
        self.builds = self.hits = 0

    @property
    def bytes(self) -> int:
        """Bytes the merged copies hold now (never above `capacity * entry_bytes`)."""
        return len(self.entries) * self.entry_bytes

    @torch.no_grad()
    def _build(
        self, weights: torch.Tensor, slot: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Merged weights of `weights` ([K] or [L, K]), written into `slot`'s buffers when given."""
        L, K = self.fused.num_layers, self.fused.num_skills
        w = weights.float()
        w = w.expand(L, K) if w.dim() == 1 else w
        out = {}
        for name, layer in self.fused.layers.items():
            original = self.original[name]
            merged = layer.delta(w[layer.group])  # fp32, one layer at a time
            merged += original  # fp32 sum, the same value as original.float() + delta
            buf = slot[name] if slot is not None else torch.empty_like(original)
            out[name] = buf.copy_(merged)  # rounded once into the weight dtype
            del merged
        return out

    def activate(self, key: str | None, weights: torch.Tensor | None) -> None:
        """Put the merged weights of mixture `key` (None: the base weights) into the layers; adapters off."""
        self.fused.state.enabled = False
        if key == self.active:
            return
        if key is None:
            tensors = self.original
        else:
            tensors = self.entries.get(key)
            if tensors is None:
                if self.capacity == 0 or weights is None:
                    raise FusionError(f"merged cache: cannot build {key!r} (capacity {self.capacity})")
                # Evict before building and reuse the evicted buffers, so no moment holds capacity + 1.
                slot = self.entries.popitem(last=False)[1] if len(self.entries) >= self.capacity else None
                try:
                    tensors = self._build(weights, slot)
                except BaseException:
                    self._swap(self.original)  # the layers may point into a half-written slot
                    self.active = None
                    raise
                self.entries[key] = tensors
                self.builds += 1
            else:
                self.hits += 1
            self.entries.move_to_end(key)
        self._swap(tensors)
        self.active = key

    def _swap(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, layer in self.fused.layers.items():
            layer.base.weight.data = tensors[name]

    def deactivate(self) -> None:
        """Back to the original base weights with the stacked low-rank path on."""
        self.activate(None, None)
        self.fused.state.enabled = True


class RoutedEngine:
    """Loads the base model, skills and profiles once; generates for batches, streams, and routes prompts."""

    def __init__(self, cfg: ServeAppConfig, loaded: Any | None = None, bank: SkillBank | None = None) -> None:
        self.cfg = cfg
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        loaded = loaded or load_model(cfg.model)
        self.tokenizer, model = loaded.tokenizer, loaded.model
        self.device = next(model.parameters()).device
        if bank is None and cfg.adapters_dir is not None:
            bank = SkillBank.from_dir(cfg.adapters_dir, cfg.skills or self._router_order(cfg))
        self.bank = bank
        self.fused: FusedModel | None = fuse(model, bank) if bank is not None else None
        self.model = self.fused.model if self.fused is not None else model
        self.cache = (
            MergedCache(self.fused, cfg.merged_cache_size, cfg.merged_cache_mb * 2**20)
            if self.fused is not None
            else None
        )
        self.profiles: dict[str | None, Profile] = {None: Profile(None)}
        for name, p in cfg.profiles.items():
            self.profiles[name] = self._profile(name, p)
        self.lock = threading.RLock()
        self.cancelled_rows = 0  # rows whose caller went away, stopped before their end (see /v1/stats)
        self.prompt_format = self._prompt_format(cfg.prompt_format)
        # EOS, the generation config's EOS list and the family's end-of-turn token (<|eot_id|>, ...).
        self.eos_ids = set(end_of_turn_ids(self.tokenizer, self.model))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if self.cache is not None:
            self._log_cache()

    def _log_cache(self) -> None:
        c = self.cache
        assert c is not None and self.fused is not None
        copy_mb = c.entry_bytes / 2**20
        mixtures = len({p.key for p in self.profiles.values() if p.key is not None})
        if c.capacity > 0 or not mixtures:
            log.info(
                "merged cache: at most %d of %d distinct mixtures, %.0f MiB each (bound %g MiB)",
                c.capacity,
                mixtures,
                copy_mb,
                self.cfg.merged_cache_mb,
            )
            return
        if self.fused.quantized:
            why = "the base is quantized"
        elif self.cfg.merged_cache_size == 0:
            why = "merged_cache_size is 0"
        else:
            why = f"merged_cache_mb {self.cfg.merged_cache_mb:g} is below one copy, {copy_mb:.0f} MiB"
        log.warning("merged cache holds no copy (%s): single-profile batches are served stacked", why)

    # ---- profiles -------------------------------------------------------------------------------
    @staticmethod
    def _router_order(cfg: ServeAppConfig) -> list[str] | None:
        # Weights are read in the bank's order, so without an explicit `skills:` list the bank takes the
        # order the (first) router was fitted with; load_router then checks every other router agrees.
        for p in cfg.profiles.values():
            if p.router is not None:
                return read_router_info(p.router)["skills"]
        return None

    def _profile(self, name: str, p: Any) -> Profile:
        if p.router is None and p.weights is None:
            return Profile(name, rag=p.rag, k=p.k)
        assert self.bank is not None and self.fused is not None
        if p.weights is not None:
            w = torch.tensor([float(p.weights.get(s, 0.0)) for s in self.bank.names])
            key = weights_key(w, self.fused.num_layers)
            return Profile(name, weights=w, rag=p.rag, k=p.k, source="weights", key=key)
        router, info = load_router(p.router, self.bank)
        router.eval()
        source = f"router:{router.kind}"
        if router.serve == "per_example":
            return Profile(name, gate=router.to(self.device), rag=p.rag, k=p.k, source=source)
        if router.serve == "per_token":
            self.fused.build_prototypes()  # once, at start-up, not on the first request
            return Profile(name, arrow=router, rag=p.rag, k=p.k, source=source)
        with torch.no_grad():
            w = router().detach().float()
        if w.dim() == 2 and w.shape[0] != self.fused.num_layers:
            raise APIError(
                500, f"router {p.router}: {w.shape[0]} layer groups, model has {self.fused.num_layers}"
            )
        key = weights_key(w, self.fused.num_layers)
        return Profile(name, weights=w, rag=p.rag, k=p.k, source=source, key=key)

    def profile(self, name: str | None) -> Profile:
        return self.profiles[name]

    # ---- prompts --------------------------------------------------------------------------------
    def _prompt_format(self, setting: str) -> str:
        """The format chat messages are rendered in: the skills' own (auto), or as configured; "plain" is
        `role: content` lines for a base without skills or chat template."""
        if setting == "auto":
            if self.bank is not None:
                return self.bank.prompt_format
            return "chat" if self.tokenizer.chat_template else "plain"
        if self.bank is not None and setting != self.bank.prompt_format:
            log.warning(
                "prompt_format %s differs from the %s prompts the skills were trained on",
                setting,
                self.bank.prompt_format,
            )
        try:
            check_format(self.tokenizer, setting)
        except PromptFormatError as exc:
            raise ValueError(f"serve config prompt_format: {exc}") from exc
        return setting

    def render(
        self,
        *,
        messages: list[dict[str, str]] | None = None,
        prompt: str | None = None,
        passages: list[Passage] | None = None,
    ) -> list[int]:
        """Token ids of a chat (through the chat template) or a raw prompt, with retrieved passages first."""
        context = (
            render_passages(passages, self.cfg.rag.passage_chars if self.cfg.rag else PASSAGE_CHARS)
            if passages
            else ""
        )
        if messages is not None:
            msgs = [dict(m) for m in messages]
            if context:
                last = (
                    max(i for i, m in enumerate(msgs) if m["role"] == "user")
                    if any(m["role"] == "user" for m in msgs)
                    else len(msgs) - 1
                )
                msgs[last]["content"] = f"{context}\n\n{msgs[last]['content']}"
            # Contents are tokenized as text: only the template adds control tokens.
            if self.prompt_format in ("alpaca", "chat"):  # alpaca: as the skills were trained and scored
                try:
                    return encode_messages(self.tokenizer, msgs, self.prompt_format)
                except PromptFormatError as exc:
                    raise APIError(400, f"'messages': {exc}", "messages", "invalid_value") from None
            text = "\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\nassistant:"
        else:
            text = f"{context}\n\n{prompt}" if context else (prompt or "")
        return encode_user_text(self.tokenizer, text)

    @staticmethod
    def question(messages: list[dict[str, str]] | None, prompt: str | None) -> str:
        """What retrieval searches with: the last user message, else the prompt (the question only)."""
        if messages is not None:
            users = [m["content"] for m in messages if m["role"] == "user"]
            return users[-1] if users else messages[-1]["content"]
        return prompt or ""

    def check_length(self, ids: list[int], max_tokens: int, param: str = "messages") -> None:
        """400 when the prompt is over `limits.max_prompt_tokens` or prompt + max_tokens over the context."""
        limit = self.cfg.limits.max_prompt_tokens
        if len(ids) > limit:
            raise APIError(
                400,
                f"prompt is {len(ids)} tokens (with the chat template and any retrieved context); "
                f"the limit is {limit}",
                param=param,
                code="context_length_exceeded",
            )
        room = getattr(self.model.config, "max_position_embeddings", None)
        if room is not None and len(ids) + max_tokens > room:
            raise APIError(
                400,
                f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's context of {room}",
                param="max_tokens",
                code="context_length_exceeded",
            )

    # ---- routing weights ------------------------------------------------------------------------
    @torch.no_grad()
    def gate_weights(self, profile: Profile, ids: list[int]) -> torch.Tensor:
        """The gate's weights ([K] or [L, K]) for one prompt, from its unpadded base hidden state."""
        assert profile.gate is not None and self.fused is not None and self.cache is not None
        x = torch.tensor([ids], device=self.device)
        with self.lock:
            self.cache.deactivate()
            pooled = pooled_prompt_state(self.fused, x, torch.ones_like(x))
        return profile.gate(pooled.to(next(profile.gate.parameters()).dtype))[0].float().cpu()

    @torch.no_grad()
    def arrow_weights(self, profile: Profile, ids: list[int]) -> torch.Tensor:
        """Arrow's weights [L, K] for one prompt: per layer group, the mean over its fused linears and the
        prompt's tokens (what `/v1/route` reports; generation routes every token on its own)."""
        assert profile.arrow is not None and self.fused is not None and self.cache is not None
        x = torch.tensor([ids], device=self.device)
        record: dict[int, list[torch.Tensor]] = {}
        with self.lock, torch.inference_mode():
            self.cache.deactivate()
            self.fused.set_arrow(profile.arrow.top_k, profile.arrow.temperature, record=record)
            self.model(input_ids=x, attention_mask=torch.ones_like(x))
        K = self.fused.num_skills
        rows = [record.get(g) for g in range(self.fused.num_layers)]  # a group without skills: absent
        return torch.stack([torch.stack(r).mean(0) if r else torch.zeros(K) for r in rows]).cpu()

    def weights_for(self, req: GenRequest) -> torch.Tensor | None:
        """The skill weights a request gets: its profile's fixed ones, the gate's for its prompt, or None
        (the base, or an Arrow profile, whose weights the fused layers compute per token)."""
        prof = self.profiles[req.profile]
        if prof.gate is not None:
            return self.gate_weights(prof, req.prompt_ids)
        return prof.weights

    def route(self, profile: str | None, ids: list[int]) -> dict[str, Any]:
        """What `/v1/route` returns: the skills and the weights this profile gives this prompt."""
        prof = self.profiles[profile]
        w = None
        if prof.gate is not None:
            w = self.gate_weights(prof, ids)
        elif prof.arrow is not None:
            w = self.arrow_weights(prof, ids)
        elif prof.weights is not None:
            w = prof.weights
        return {
            "profile": profile,
            "source": prof.source,
            "skills": self.bank.names if self.bank is not None else [],
            "layer_groups": self.fused.groups if self.fused is not None else [],
            "per_layer": bool(w is not None and w.dim() == 2),
            "weights": None
            if w is None
            else [round(float(v), 6) for v in w.flatten()]
            if w.dim() == 1
            else [[round(float(v), 6) for v in row] for row in w],
            "prompt_tokens": len(ids),
            "rag": prof.rag,
        }

    # ---- generation -----------------------------------------------------------------------------
    def _plan(
        self, reqs: list[GenRequest], weights: list[torch.Tensor | None] | None = None
    ) -> tuple[str, Any]:
        """('merged', (key, weights)) when the batch shares one fixed mixture the merged cache can hold,
        ('arrow', (weights, rows, top_k, routing_temperature)) when some row is Arrow-routed, else
        ('stacked', [B, L, K] weights). `weights`: each request's own, when already known (the decode loop
        computes a gate's once per request, not once per step)."""
        profs = [self.profiles[r.profile] for r in reqs]
        if self.fused is None or all(p.weights is None and p.gate is None and p.arrow is None for p in profs):
            return "merged", (None, None)
        assert self.cache is not None
        if all(p.gate is None and p.arrow is None for p in profs) and len({p.key for p in profs}) == 1:
            if profs[0].key is None:  # all-zero weights: the base itself
                return "merged", (None, None)
            if self.cache.capacity > 0:
                return "merged", (profs[0].key, profs[0].weights)
        L, K = self.fused.num_layers, self.fused.num_skills
        rows = []
        for i, r in enumerate(reqs):
            w = self.weights_for(r) if weights is None else weights[i]
            w = torch.zeros(L, K) if w is None else w.float()
            rows.append(w.expand(L, K) if w.dim() == 1 else w)
        weights = torch.stack(rows).to(self.device)
        arrows = [p.arrow for p in profs]
        if any(a is not None for a in arrows):
            # Rows of other profiles get top_k 1 / routing temperature 1 only so the settings stay valid.
            # (Arrow's temperature shapes its softmax over skills, not the sampling: SamplingParams has that.)
            mask = torch.tensor([a is not None for a in arrows], device=self.device)
            top_k = torch.tensor([a.top_k if a else 1 for a in arrows], device=self.device)
            routing_temperature = torch.tensor(
                [a.temperature if a else 1.0 for a in arrows], device=self.device
            )
            return "arrow", (weights, mask, top_k, routing_temperature)
        return "stacked", weights

    def _activate(self, plan: tuple[str, Any]) -> None:
        if self.cache is None:
            return
        mode, arg = plan
        if mode == "merged":
            self.cache.activate(*arg)
        elif mode == "arrow":
            weights, rows, top_k, routing_temperature = arg
            self.cache.deactivate()
            self.fused.set_arrow(top_k, routing_temperature, rows=rows, weights=weights)
        else:
            self.cache.deactivate()
            self.fused.set_weights(arg, per_example=True)

    def _forward(self, plan, **inputs) -> Any:
        with self.lock, torch.inference_mode():
            self._activate(plan)
            return self.model(**inputs, use_cache=True)

    def advance(self, row: Row, token: int) -> None:
        """Append `token` to `row` and decide whether it is finished (`sampling.advance`)."""
        advance(row, token, self.eos_ids, self._decode)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def steps(self, reqs: list[GenRequest]) -> Iterator[list[Row]]:
        """The token loop: yields the rows after every decoding step until every row has finished."""
        plan = self._plan(reqs)
        rows = [new_row(r) for r in reqs]
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(reqs):  # left padding: every row's next token lands in the last column
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(plan, input_ids=ids, attention_mask=mask, position_ids=pos)
        past = out.past_key_values
        while True:
            picks = pick(out.logits[:, -1, :], rows)
            for row, tok in zip(rows, picks, strict=True):
                if row.finish is None and row.req.cancelled.is_set():
                    row.finish = "cancelled"
                    self.cancelled_rows += 1
                elif row.finish is None:
                    self.advance(row, tok)
            yield rows
            if all(r.finish is not None for r in rows):
                return
            nxt = torch.tensor(
                [[p if r.finish is None else self.pad_id] for p, r in zip(picks, rows, strict=True)]
            )
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype, device=self.device)], 1)
            pos = pos[:, -1:] + 1
            out = self._forward(
                plan,
                input_ids=nxt.to(self.device),
                attention_mask=mask,
                position_ids=pos,
                past_key_values=past,
            )
            past = out.past_key_values

    def generate_batch(self, reqs: list[GenRequest]) -> list[dict[str, Any]]:
        """Generate for every request in one batch; results in request order."""
        final: list[Row] = []
        for final in self.steps(reqs):  # noqa: B007 - the last yield holds every finished row
            pass
        return [result(r) for r in final]

    def generate_each(self, reqs: list[GenRequest]) -> list[dict[str, Any] | Failure]:
        """`generate_batch`, except that a request that fails fails alone.

        When the batch raises, each request is run again by itself; the ones that still fail get their own
        500 `Failure` and the others their normal results, so one poisoned row never
        costs the rest of its batch their answers.
        """
        try:
            return self.generate_batch(reqs)
        except Exception:  # noqa: BLE001
            log.exception("a batch of %d failed; retrying its requests one by one", len(reqs))
        results = []
        for req in reqs:
            try:
                results.append(self.generate_batch([req])[0])
            except Exception as exc:  # noqa: BLE001
                log.exception("request failed alone")
                err = APIError(500, f"generation failed: {type(exc).__name__}: {exc}", code="internal_error")
                results.append(Failure.of(err))
        return results

    def stream(self, req: GenRequest) -> Iterator[dict[str, Any]]:
        """Yield `{"delta", "finish_reason"}` per step for one request; the last one also carries usage.

        Text that could still become a stop sequence (or half a multi-byte character) is held back until
        the next step decides, so a client never sees a stop string it asked to cut.
        """
        cut = StreamCutter(req)
        for (row,) in self.steps([req]):
            chunk = cut.feed(row)
            if chunk is not None:
                yield chunk

    def stats(self) -> dict[str, Any]:
        return {
            "cancelled_rows": self.cancelled_rows,
            "profiles": [p for p in self.profiles if p is not None],
            "skills": self.bank.names if self.bank is not None else [],
            "merged_builds": self.cache.builds if self.cache else 0,
            "merged_hits": self.cache.hits if self.cache else 0,
            "merged_cached": [
                [n for n, p in self.profiles.items() if n is not None and p.key == key]
                for key in self.cache.entries
            ]
            if self.cache
            else [],
            "merged_cache": {
                "entries": len(self.cache.entries),
                "capacity": self.cache.capacity,
                "entry_bytes": self.cache.entry_bytes,
                "bytes": self.cache.bytes,
                "max_bytes": int(self.cache.max_bytes),
            }
            if self.cache
            else None,
        }
