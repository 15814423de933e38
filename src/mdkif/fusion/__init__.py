"""Exact skill fusion: K AdaLoRA skills over one frozen base, as `sum_i w_i * dW_i` per layer (fixed
weights, or Arrow's per-token ones)."""

from mdkif.fusion.arrow import arrow_prototypes, arrow_weights
from mdkif.fusion.bank import FusionError, LayerDelta, SkillAdapter, SkillBank, load_skill
from mdkif.fusion.fused import FusedLinear, FusedModel, FusionState, fuse, layer_group

__all__ = [
    "FusedLinear",
    "FusedModel",
    "FusionError",
    "FusionState",
    "LayerDelta",
    "SkillAdapter",
    "SkillBank",
    "arrow_prototypes",
    "arrow_weights",
    "fuse",
    "layer_group",
    "load_skill",
]
