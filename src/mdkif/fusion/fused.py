"""The fused forward: a frozen base whose adapted linears add `sum_i w_i * dW_i`, stacked or merged.

Stacked mode keeps, per layer, one down-projection `[sum r_i, in]` (rows `E_i * A_i`) and one
up-projection `[out, sum r_i]` (columns `s_i * B_i`). A forward is `W x + up((down x) * g)` where `g`
repeats each skill's weight over that skill's rank slots, so the weights enter at run time: the router's
gradient reaches its logits, CMA-ES swaps candidates without touching any tensor, and a batch may carry
one weight vector per example. This is exactly `sum_i w_i s_i B_i (E_i * (A_i x))`: the weight multiplies
the whole rank-r_i product of one skill, never A and B separately.

Merged mode folds `sum_i w_i dW_i` into `W` once (serving one task at the base model's speed) and can
be undone.

Arrow mode (`set_arrow`, see `mdkif.fusion.arrow`) is stacked mode with the weights computed inside each
fused layer from its own input, one vector per token: `g` then has a token axis. It never merges.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mdkif.fusion.arrow import arrow_prototypes, arrow_weights
from mdkif.fusion.bank import FusionError, LayerDelta, SkillBank

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_group(module: str) -> str:
    """The per-layer routing unit of a module: its transformer block (`layers.<i>`), else the module itself."""
    m = _BLOCK.search(module)
    return f"layers.{m.group(1)}" if m else module


def quantized_kind(layer: nn.Module) -> str | None:
    """The quantized layer type of a bitsandbytes (or other packed-weight) linear, else None.

    bitsandbytes' `Linear4bit` / `Linear8bitLt` subclass `nn.Linear`, so they pass the type check, but
    their weight is packed uint8 / int8 storage: a delta can neither be cast to it nor added into it.
    """
    weight = getattr(layer, "weight", None)
    if weight is None:
        return None
    if type(layer).__name__ in ("Linear4bit", "Linear8bitLt", "LinearNF4", "LinearFP4", "Linear8bit"):
        return type(layer).__name__
    if not weight.dtype.is_floating_point:
        return f"{type(layer).__name__} with {weight.dtype} weights"
    return None


def factor_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype skill factors are kept in beside `layer`: its weight dtype, or a quantized layer's
    compute dtype (bitsandbytes' `compute_dtype`; float32 when it has none), never packed storage."""
    if quantized_kind(layer) is None:
        return layer.weight.dtype
    compute = getattr(layer, "compute_dtype", None)
    return compute if isinstance(compute, torch.dtype) and compute.is_floating_point else torch.float32


@dataclass
class ArrowMode:
    """Arrow routing settings the fused layers read: one `top_k` / `temperature`, or one per example.

    With `rows` (a [B] bool mask) only those examples are Arrow-routed; the others keep their rows of the
    state's per-example weights. `record`, when a dict, collects each layer group's mean token weights.
    """

    top_k: int | torch.Tensor
    temperature: float | torch.Tensor
    rows: torch.Tensor | None = None
    record: dict[int, list[torch.Tensor]] | None = None


class FusionState:
    """The weights every fused layer reads: canonical shape [L, K], or [B, L, K] with one row per example."""

    def __init__(self, num_layers: int, num_skills: int) -> None:
        self.num_layers, self.num_skills = num_layers, num_skills
        self.weights: torch.Tensor = torch.zeros(num_layers, num_skills)
        self.enabled = True
        self.arrow: ArrowMode | None = None

    def set(self, weights: torch.Tensor, per_example: bool = False) -> None:
        """Accept [K] or [L, K] (one task), or with `per_example` [B, K] or [B, L, K] (a mixed batch).

        Fixed weights end any Arrow routing (`FusedModel.set_arrow` sets it again)."""
        self.arrow = None
        w = torch.as_tensor(weights)
        L, K = self.num_layers, self.num_skills
        if w.shape[-1] != K:
            raise FusionError(f"weights have {w.shape[-1]} skills, the bank has {K}")
        if per_example:
            if w.dim() == 2:
                w = w[:, None, :].expand(w.shape[0], L, K)
            elif w.dim() != 3 or w.shape[1] != L:
                raise FusionError(
                    f"per-example weights must be [B, {K}] or [B, {L}, {K}], got {tuple(w.shape)}"
                )
        elif w.dim() == 1:
            w = w.expand(L, K)
        elif w.shape != (L, K):
            raise FusionError(f"weights must be [{K}] or [{L}, {K}], got {tuple(w.shape)}")
        self.weights = w

    def for_layer(self, index: int) -> torch.Tensor:
        return self.weights[..., index, :]


class FusedLinear(nn.Module):
    """A frozen `nn.Linear` plus K skills' stacked low-rank factors, weighted at run time."""

    def __init__(
        self, base: nn.Linear, deltas: list[LayerDelta | None], group: int, state: FusionState
    ) -> None:
        super().__init__()
        self.base = base
        self.group = group
        self.state = state
        self.quantized = quantized_kind(base)
        dev, dtype = base.weight.device, factor_dtype(base)
        downs, ups, seg = [], [], []
        for i, d in enumerate(deltas):
            if d is None:
                continue
            if d.A.shape[1] != base.in_features or d.B.shape[0] != base.out_features:
                raise FusionError(
                    f"skill {i}: factors {tuple(d.B.shape)}x{tuple(d.A.shape)} do not fit "
                    f"Linear({base.in_features}, {base.out_features})"
                )
            downs.append(d.A * d.E[:, None])
            ups.append(d.B * d.scale)
            seg += [i] * d.rank
        self.register_buffer(
            "down",
            torch.cat(downs).to(dev, dtype)
            if downs
            else torch.zeros(0, base.in_features, device=dev, dtype=dtype),
        )
        self.register_buffer(
            "up",
            torch.cat(ups, 1).to(dev, dtype)
            if ups
            else torch.zeros(base.out_features, 0, device=dev, dtype=dtype),
        )
        self.register_buffer("segment", torch.tensor(seg, dtype=torch.long, device=dev))
        # Arrow's prototypes [K, in], computed from the bank by FusedModel.set_arrow on first use.
        self.register_buffer("prototypes", None, persistent=False)
        self.merged_weights: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.segment.numel())

    def delta(self, weights: torch.Tensor) -> torch.Tensor:
        """Dense `sum_i w_i dW_i` for one weight vector [K], in float32 (what merging adds to the base
        weight: computed in fp32 whatever the factors' dtype, rounded once into the weight's dtype)."""
        g = weights.to(device=self.down.device, dtype=torch.float32)[self.segment]
        return self.up.float() @ (self.down.float() * g[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged_weights is not None or not self.state.enabled or self.rank == 0:
            return y
        # The weights may live elsewhere (a router on the CPU, a CMA-ES candidate from numpy): move them to
        # the activations (differentiably), and the factors to the activations' dtype (a quantized base
        # computes in its compute dtype, which the factors are kept in, not its packed storage dtype).
        w = self.state.for_layer(self.group).to(device=x.device, dtype=x.dtype)
        if self.state.arrow is not None:
            g = self.arrow_weights(x, w)[..., self.segment].to(x.dtype)  # [B, T, R]: one vector per token
        else:
            g = w[..., self.segment]  # [R] or [B, R]
            if g.dim() == 2:
                g = g.view(g.shape[0], *([1] * (x.dim() - 2)), g.shape[1])
        down, up = self.down, self.up
        if down.dtype != x.dtype:
            down, up = down.to(x.dtype), up.to(x.dtype)
        return y + F.linear(F.linear(x, down) * g, up)

    def arrow_weights(self, x: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Arrow's per-token weights [..., K] for this layer's input `x`; rows the mode does not route keep
        `fixed` (this layer's per-example weights [B, K])."""
        mode = self.state.arrow
        assert mode is not None
        if self.prototypes is None:
            raise FusionError("Arrow routing needs the prototypes: use FusedModel.set_arrow")
        lead = [1] * (x.dim() - 1)  # settings per example broadcast over the token axes

        def per_example(v: int | float | torch.Tensor) -> int | float | torch.Tensor:
            return v.view(-1, *lead) if isinstance(v, torch.Tensor) else v

        w = arrow_weights(x, self.prototypes, per_example(mode.top_k), per_example(mode.temperature))
        if mode.rows is not None:
            keep = mode.rows.to(x.device).view(-1, *lead)
            w = torch.where(keep, w, fixed.view(fixed.shape[0], *lead[1:], -1).expand_as(w))
        if mode.record is not None:
            mode.record.setdefault(self.group, []).append(w.detach().float().reshape(-1, w.shape[-1]).mean(0))
        return w

    @torch.no_grad()
    def merge(self, weights: torch.Tensor) -> None:
        if self.quantized:
            raise FusionError(
                f"the base layer is quantized ({self.quantized}): a delta cannot be added into its packed "
                "weights; use the stacked path (serving `merged: false`, evaluation without merging)"
            )
        if self.merged_weights is not None:
            raise FusionError("layer already merged; unmerge first")
        # In fp32, rounded once into the weight's dtype (an in-place add would round the delta first).
        self.base.weight.copy_(self.base.weight.float() + self.delta(weights))
        self.merged_weights = weights.detach().clone()

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged_weights is not None:
            self.base.weight.copy_(self.base.weight.float() - self.delta(self.merged_weights))
            self.merged_weights = None


class FusedModel(nn.Module):
    """A causal LM with a skill bank fused into its linears; everything but the routing weights is frozen.

    `set_weights` picks the mixture for the next forwards (stacked mode); `merge` folds one mixture into
    the base weights (merged mode) and `unmerge` restores them. `num_layers` is the number of per-layer
    routing units (transformer blocks).
    """

    def __init__(self, model: nn.Module, bank: SkillBank) -> None:
        super().__init__()
        self.model = model
        self.bank = bank
        modules = bank.modules()
        present = {name for name, _ in model.named_modules()}
        missing = [m for m in modules if m not in present]
        if missing:
            raise FusionError(
                f"the base model has no module(s) {missing[:3]}: were these skills trained on it?"
            )
        order = [name for name, _ in model.named_modules() if name in set(modules)]
        self.groups: list[str] = list(dict.fromkeys(layer_group(m) for m in order))
        self.state = FusionState(len(self.groups), len(bank))
        self.layers: dict[str, FusedLinear] = {}
        for p in model.parameters():
            p.requires_grad_(False)
        for name in order:
            base = model.get_submodule(name)
            if not isinstance(base, nn.Linear):
                raise FusionError(f"module {name!r} is {type(base).__name__}, only nn.Linear can be fused")
            deltas = [s.layers.get(name) for s in bank.skills]
            fused = FusedLinear(base, deltas, self.groups.index(layer_group(name)), self.state)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, fused)
            self.layers[name] = fused

    @property
    def num_skills(self) -> int:
        return len(self.bank)

    @property
    def num_layers(self) -> int:
        return len(self.groups)

    @property
    def quantized(self) -> bool:
        """Whether some fused layer sits on a quantized (packed-weight) base layer: stacked mode only."""
        return any(layer.quantized for layer in self.layers.values())

    @property
    def merged(self) -> bool:
        return any(layer.merged_weights is not None for layer in self.layers.values())

    def set_weights(self, weights: torch.Tensor, per_example: bool = False) -> None:
        """Use `weights` ([K], [L, K]; with per_example [B, K] or [B, L, K]) for the following forwards."""
        if self.merged:
            raise FusionError("the model is merged: unmerge before switching to stacked weights")
        self.state.set(weights, per_example)

    def set_arrow(
        self,
        top_k: int | torch.Tensor,
        temperature: float | torch.Tensor,
        *,
        rows: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        record: dict[int, list[torch.Tensor]] | None = None,
    ) -> None:
        """Route the following forwards with Arrow: per token, per fused layer, from the skills' prototypes.

        One `top_k` / `temperature` for every example, or with `rows` ([B] bool) only those examples, each
        with its own `top_k[b]` / `temperature[b]` when tensors, while the others use their rows of the
        per-example `weights` ([B, K] or [B, L, K]). Prototypes are computed from the bank once.
        """
        if self.merged:
            raise FusionError("the model is merged: unmerge before Arrow routing (it never merges)")
        K = self.num_skills
        top = torch.as_tensor(top_k)
        if int(top.min()) < 1 or int(top.max()) > K:
            raise FusionError(f"arrow top_k must be between 1 and the number of skills ({K}), got {top_k}")
        if float(torch.as_tensor(temperature).min()) <= 0:
            raise FusionError(f"arrow temperature must be > 0, got {temperature}")
        self.build_prototypes()
        if rows is None:
            self.state.set(torch.zeros(K))
        else:
            self.state.set(torch.zeros(rows.shape[0], K) if weights is None else weights, per_example=True)
        self.state.arrow = ArrowMode(top_k, temperature, rows, record)

    def build_prototypes(self) -> None:
        """Compute Arrow's prototypes from the bank into every fused layer (once; `set_arrow` calls it)."""
        if all(layer.prototypes is not None for layer in self.layers.values()):
            return
        protos = arrow_prototypes(self.bank)
        for name, layer in self.layers.items():
            layer.prototypes = protos[name].to(layer.down.device, layer.down.dtype)

    @torch.no_grad()
    def merge(self, weights: torch.Tensor) -> None:
        """Fold `sum_i w_i dW_i` ([K] or [L, K]) into the base weights; forwards then cost what the base costs."""
        quantized = [name for name, layer in self.layers.items() if layer.quantized]
        if quantized:
            raise FusionError(
                f"{len(quantized)} fused layer(s) sit on a quantized base ({quantized[0]!r} is "
                f"{self.layers[quantized[0]].quantized}): merging into packed weights is impossible; "
                "use the stacked path (serving `merged: false`, evaluation without merging)"
            )
        w = torch.as_tensor(weights, dtype=torch.float32)
        self.state.set(w)
        full = self.state.weights
        for layer in self.layers.values():
            layer.merge(full[layer.group])

    @torch.no_grad()
    def unmerge(self) -> None:
        for layer in self.layers.values():
            layer.unmerge()

    @contextmanager
    def adapters_off(self) -> Iterator[None]:
        """The plain base model inside the block (stacked mode only), e.g. for the gate's prompt features."""
        if self.merged:
            raise FusionError("cannot switch adapters off while merged")
        self.state.enabled = False
        try:
            yield
        finally:
            self.state.enabled = True

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def unfuse(self) -> nn.Module:
        """Put the original linears back (unmerging first) and return the plain base model."""
        self.unmerge()
        for name, layer in self.layers.items():
            parent, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, child, layer.base)
        self.layers = {}
        return self.model


def fuse(model: nn.Module, bank: SkillBank) -> FusedModel:
    """Wrap `model`'s adapted linears with the bank's stacked factors (in place) and return the fused model."""
    return FusedModel(model, bank)
