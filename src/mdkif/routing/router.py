"""Routers: where the skill weights come from.

- `SkillRouter`: one weight vector per task, global [K] or per layer [L, K]; `softmax(logits / T)`
  (a convex mixture) or `linear` (free weights, LoraHub's parameterisation, for an L1 penalty to sparsify).
- `GateRouter`: input-conditioned (MoE-like): a small MLP on the prompt's pooled base hidden state gives
  one weight vector per example, so a mixed batch routes every item on its own.
- `ArrowRouter`: zero-shot (Arrow, peft's `ArrowConfig`): per token and per fused layer, from each skill's
  top singular direction (`mdkif.fusion.arrow`); nothing is fitted, the artifact holds its two settings.

Each module class says what it is once: its artifact `kind`, how it is served (`serve`: "merged", one
fixed mixture that can be merged into the weights; "per_example", one mixture per prompt; "per_token",
computed inside the fused layers), how it routes a batch (`route_batch`) and what its artifact holds
(`artifact_fields` / `from_artifact`). Callers ask those, never `isinstance`. How each *method* builds and
fits one lives in `mdkif.routing.registry`.

A router artifact is `router.json` (skills, their digests, the skills manifest digest, the weights and
how they were fitted) plus `router.safetensors` (the parameters). Weights are read in the bank's order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mdkif.fusion import FusedModel, FusionError, SkillBank
from mdkif.fusion.arrow import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from mdkif.routing.artifact import ROUTER_FILE, TENSORS_FILE, read_router_info, router_folder

Normalize = Literal["softmax", "linear"]
Serve = Literal["merged", "per_example", "per_token"]


class SkillRouter(nn.Module):
    """Task-level routing weights from learnable logits: [K] (global) or [L, K] (per layer)."""

    kind: ClassVar[str] = "static"
    serve: ClassVar[Serve] = "merged"

    def __init__(
        self,
        num_skills: int,
        num_layers: int = 1,
        per_layer: bool = False,
        temperature: float = 1.0,
        normalize: Normalize = "softmax",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        shape = (num_layers, num_skills) if per_layer else (num_skills,)
        init = torch.zeros(shape) if normalize == "softmax" else torch.full(shape, 1.0 / num_skills)
        self.logits = nn.Parameter(init)
        self.per_layer, self.temperature, self.normalize = per_layer, float(temperature), normalize

    def forward(self) -> torch.Tensor:
        if self.normalize == "softmax":
            return torch.softmax(self.logits / self.temperature, dim=-1)
        return self.logits

    def weights_from(self, params: torch.Tensor) -> torch.Tensor:
        """Weights for a flat parameter vector (a CMA-ES candidate), without touching `self.logits`."""
        p = torch.as_tensor(params, dtype=torch.float32).view_as(self.logits)
        return torch.softmax(p / self.temperature, -1) if self.normalize == "softmax" else p

    @torch.no_grad()
    def route_batch(self, fused: FusedModel, batch: Any) -> None:
        """Make `fused` route `batch`: one mixture for every item."""
        fused.set_weights(self(), per_example=False)

    def artifact_fields(self) -> dict[str, Any]:
        with torch.no_grad():
            return {"normalize": self.normalize, "weights": self().tolist()}

    @classmethod
    def from_artifact(cls, info: dict[str, Any], num_skills: int, num_layers: int) -> SkillRouter:
        return cls(num_skills, num_layers, info["per_layer"], info["temperature"], info["normalize"])


class GateRouter(nn.Module):
    """Input-conditioned weights: MLP(pooled prompt hidden state) -> softmax over skills ([B, K] or [B, L, K])."""

    kind: ClassVar[str] = "gate"
    serve: ClassVar[Serve] = "per_example"

    def __init__(
        self,
        hidden_size: int,
        num_skills: int,
        num_layers: int = 1,
        per_layer: bool = False,
        temperature: float = 1.0,
        width: int = 64,
    ) -> None:
        super().__init__()
        out = num_skills * (num_layers if per_layer else 1)
        self.net = nn.Sequential(
            nn.LayerNorm(hidden_size), nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, out)
        )
        nn.init.zeros_(self.net[-1].weight)  # start from the uniform mixture
        nn.init.zeros_(self.net[-1].bias)
        self.shape = (num_layers, num_skills) if per_layer else (num_skills,)
        self.per_layer, self.temperature, self.width = per_layer, float(temperature), width

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        logits = self.net(pooled).view(pooled.shape[0], *self.shape)
        return torch.softmax(logits / self.temperature, -1)

    @torch.no_grad()
    def route_batch(self, fused: FusedModel, batch: Any) -> None:
        """Make `fused` route `batch`: one mixture per item, from its prompt's pooled base state."""
        pooled = pooled_prompt_state(fused, batch.input_ids, batch.attention_mask, batch.prompt_mask)
        fused.set_weights(self(pooled), per_example=True)

    def artifact_fields(self) -> dict[str, Any]:
        return {"hidden_size": self.net[0].normalized_shape[0], "width": self.width}

    @classmethod
    def from_artifact(cls, info: dict[str, Any], num_skills: int, num_layers: int) -> GateRouter:
        return cls(
            info["hidden_size"], num_skills, num_layers, info["per_layer"], info["temperature"], info["width"]
        )


class ArrowRouter(nn.Module):
    """Arrow: each token picks its `top_k` skills per fused layer by |<x, v_i>| (v_i: skill i's top right-
    singular vector there) and mixes them by `softmax(. / temperature)`. No parameters, no task data.
    (`temperature` is Arrow's routing temperature over skills, never a sampling temperature.)"""

    kind: ClassVar[str] = "arrow"
    serve: ClassVar[Serve] = "per_token"

    def __init__(
        self, num_skills: int, top_k: int = DEFAULT_TOP_K, temperature: float = DEFAULT_TEMPERATURE
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_skills:
            raise ValueError(f"top_k must be between 1 and the number of skills ({num_skills}), got {top_k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.num_skills, self.top_k, self.temperature = num_skills, int(top_k), float(temperature)
        self.per_layer = True  # the weights differ per fused layer (and per token)

    def route(self, fused: FusedModel) -> None:
        """Make `fused` route its following forwards with Arrow (the stacked path; never merged)."""
        fused.set_arrow(self.top_k, self.temperature)

    def route_batch(self, fused: FusedModel, batch: Any) -> None:
        self.route(fused)

    def artifact_fields(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "routing": "per token, per fused layer"}

    @classmethod
    def from_artifact(cls, info: dict[str, Any], num_skills: int, num_layers: int) -> ArrowRouter:
        try:
            return cls(num_skills, info["top_k"], info["temperature"])
        except ValueError as exc:
            raise FusionError(f"arrow router: {exc}") from None


# The module classes by their artifact `kind` (what `load_router` rebuilds).
MODULES: dict[str, type[nn.Module]] = {c.kind: c for c in (SkillRouter, GateRouter, ArrowRouter)}


def pooled_prompt_state(
    fused: FusedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of the base model's last hidden state over the prompt tokens (adapters off): the gate's input."""
    device = next(fused.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    mask = (prompt_mask if prompt_mask is not None else attention_mask).to(device).float()
    with fused.adapters_off():
        out = fused.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    h = out.hidden_states[-1]
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


def save_router(
    router: nn.Module, bank: SkillBank, fused: FusedModel, out_dir: str | Path, meta: dict[str, Any]
) -> Path:
    """Write `router.json` + `router.safetensors` into `out_dir`; returns the json path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {
        "format": "mdkif-router/1",
        "kind": router.kind,
        "skills": bank.names,
        "skill_digests": bank.digests,
        "skills_manifest_digest": bank.manifest_digest,
        "skills_base_model": bank.base_model,
        "layer_groups": fused.groups,
        "per_layer": router.per_layer,
        "temperature": router.temperature,
        **meta,
        **router.artifact_fields(),
    }
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()},
        str(out / TENSORS_FILE),
    )
    path = out / ROUTER_FILE
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def load_router(path: str | Path, bank: SkillBank | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a router from its artifact folder (or its router.json); checks the bank's skills match."""
    folder = router_folder(path)
    info = read_router_info(folder)
    if bank is not None:
        if bank.names != info["skills"]:
            raise FusionError(
                f"{folder}: router was fitted on skills {info['skills']}, bank has {bank.names}"
            )
        changed = [n for n, d in bank.digests.items() if info["skill_digests"].get(n) != d]
        if changed:
            raise FusionError(f"{folder}: skill adapter(s) {changed} changed since the router was fitted")
    K, L = len(info["skills"]), len(info["layer_groups"])
    module = MODULES.get(info["kind"])
    if module is None:
        raise FusionError(f"{folder}: unknown router kind {info['kind']!r}; known: {sorted(MODULES)}")
    try:
        router = module.from_artifact(info, K, L)
    except FusionError as exc:
        raise FusionError(f"{folder}: {exc}") from None
    if any(True for _ in router.parameters()):
        router.load_state_dict(load_file(str(folder / TENSORS_FILE)))
    return router, info


def router_weights(path: str | Path, bank: SkillBank) -> tuple[torch.Tensor, dict[str, Any]]:
    """The fixed mixture a static router artifact encodes, `[L, K]` (per-layer) or `[K]`, and its info.

    A gate is input-conditioned (one mixture per prompt) and Arrow routes every token, so neither has a
    single mixture: both are refused.
    """
    router, info = load_router(path, bank)
    if router.serve == "per_token":
        raise FusionError(
            f"{path}: router is Arrow (per-token routing), so it has no single mixture to merge or export; "
            "it runs in the stacked path only"
        )
    if router.serve != "merged":
        raise FusionError(
            f"{path}: router is input-conditioned (a gate), so it has no single mixture to merge or export; "
            "use a static router (gradient or CMA-ES)"
        )
    with torch.no_grad():
        return router().detach().float(), info
