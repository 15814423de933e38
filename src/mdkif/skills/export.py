"""Export one AdaLoRA skill as a plain LoRA adapter with the same outputs, for engines that read only LoRA.

The single-skill case of `mdkif.fusion.export` (weight 1 on the one skill): AdaLoRA's update
`dW = P diag(E) Q * alpha / (ranknum + 1e-5)` becomes LoRA factors `A = diag(E) Q`, `B = P * scale` with the
masked triplets (E = 0) dropped and `lora_alpha = r` (scale 1); vLLM's adapter rules are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"


def export_lora(adalora_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` as a peft LoRA adapter equivalent to the AdaLoRA adapter saved in `adalora_dir`."""
    from mdkif.fusion import SkillBank
    from mdkif.fusion.export import export_lora as export_mixture

    src = Path(adalora_dir)
    cfg = json.loads((src / ADAPTER_CONFIG).read_text())
    if cfg.get("peft_type") != "ADALORA":
        raise ValueError(f"{src}: not an AdaLoRA adapter (peft_type {cfg.get('peft_type')!r})")
    bank = SkillBank.from_paths({src.name or "skill": src})
    report = export_mixture(
        bank, torch.ones(1), out_dir, base_model=cfg.get("base_model_name_or_path"), vllm_check=False
    )
    return Path(report.out)
