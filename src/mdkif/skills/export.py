"""Export an AdaLoRA adapter as a plain LoRA adapter with the same outputs, for engines that read only LoRA.

AdaLoRA's update of a layer is `dW = P diag(E) Q * alpha / (ranknum + 1e-5)` (peft: lora_B, lora_E, lora_A).
LoRA's is `dW = B A * lora_alpha / r`. Keeping only the singular values that survived allocation (E != 0)
and folding E and the whole scale into the factors gives `A = diag(E) Q`, `B = P * alpha / (ranknum + 1e-5)`,
with `lora_alpha = r` per module (scale 1), so the product is the same matrix. A module whose rank was
pruned to zero keeps rank 1 with zero factors, which adds nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def export_lora(adalora_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` as a peft LoRA adapter equivalent to the AdaLoRA adapter saved in `adalora_dir`."""
    src, out = Path(adalora_dir), Path(out_dir)
    cfg = json.loads((src / ADAPTER_CONFIG).read_text())
    if cfg.get("peft_type") != "ADALORA":
        raise ValueError(f"{src}: not an AdaLoRA adapter (peft_type {cfg.get('peft_type')!r})")
    weights = load_file(str(src / ADAPTER_WEIGHTS))
    alpha = cfg["lora_alpha"] if cfg["lora_alpha"] > 0 else None
    lora: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    for key in weights:
        if not key.endswith("lora_E"):
            continue
        prefix = key[: -len("lora_E")]
        e = weights[key].double()  # (r_saved, 1)
        a = weights[prefix + "lora_A"].double()  # (r_saved, in)
        b = weights[prefix + "lora_B"].double()  # (out, r_saved)
        # ranknum is the initial rank (peft never resizes it during training); the saved tensors may be
        # cut to the allocated rank, so take it from the config, not from the tensor shape.
        ranknum = float(cfg["init_r"])
        scale = (alpha if alpha is not None else ranknum) / (ranknum + 1e-5)
        keep = (e[:, 0] != 0).nonzero().flatten()
        if keep.numel() == 0:
            new_a, new_b = torch.zeros(1, a.shape[1]), torch.zeros(b.shape[0], 1)
        else:
            new_a = (a[keep] * e[keep]).float()
            new_b = (b[:, keep] * scale).float()
        lora[prefix + "lora_A.weight"] = new_a.contiguous()
        lora[prefix + "lora_B.weight"] = new_b.contiguous()
        module = prefix.removeprefix("base_model.model.").rstrip(".")
        rank_pattern[module] = int(new_a.shape[0])
    if not lora:
        raise ValueError(f"{src}: no AdaLoRA weights found")
    r_max = max(rank_pattern.values())
    lora_cfg = {
        "peft_type": "LORA",
        "task_type": cfg.get("task_type", "CAUSAL_LM"),
        "base_model_name_or_path": cfg.get("base_model_name_or_path"),
        "r": r_max,
        "lora_alpha": r_max,
        "rank_pattern": rank_pattern,
        # scale alpha / r must be 1 for every module, whatever its rank
        "alpha_pattern": dict(rank_pattern),
        "lora_dropout": cfg.get("lora_dropout", 0.0),
        "target_modules": cfg.get("target_modules"),
        "fan_in_fan_out": cfg.get("fan_in_fan_out", False),
        "bias": "none",
        "inference_mode": True,
        "use_rslora": False,
        "init_lora_weights": True,
        "modules_to_save": cfg.get("modules_to_save"),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(out / ADAPTER_WEIGHTS))
    (out / ADAPTER_CONFIG).write_text(json.dumps(lora_cfg, indent=2))
    return out
