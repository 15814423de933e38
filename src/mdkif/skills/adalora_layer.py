"""peft's AdaLoRA layer with the same forward value, computed where it is cheap (imports peft: load lazily).

peft's `SVDLinear.forward` adds `((x @ (A*E)^T @ B^T) * scaling) / ranknum` to the base output: two
elementwise passes over the full `[tokens, out_features]` product, the division by a `[1]` fp32 tensor
promoting a bf16 product to fp32 and back, and the input cast up to fp32 for the adapter. In a bf16 CPU
training step of SmolLM2-135M (all 7 projections) that was about a fifth of the step (bench/results/train.md,
profile). `RankScaledSVDLinear` multiplies the `[tokens, r]` rank activations by `scaling / ranknum`
instead (the same product, reassociated), keeps the input's dtype under autocast (a bf16 base then feeds
the adapter in bf16 while its weights stay fp32), and adds the update in place.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.adalora.layer import SVDLinear


class RankScaledSVDLinear(SVDLinear):
    """An AdaLoRA `SVDLinear` whose adapter scale is applied on the rank axis (see the module docstring)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            A, B, E = self.lora_A[name], self.lora_B[name], self.lora_E[name]
            if x.dtype != A.dtype and not torch.is_autocast_enabled(x.device.type):
                x = x.to(A.dtype)
            h = F.linear(self.lora_dropout[name](x), A * E)
            h = h * (self.scaling[name] / (self.ranknum[name] + 1e-5)).to(h.dtype)
            result += F.linear(h, B).to(result.dtype)
        return result
