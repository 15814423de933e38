"""A routed mixture as one plain peft LoRA adapter: what vLLM and Ray Serve LLM can serve per request.

Serving engines take exactly one LoRA per request; a routed profile is `W + sum_i w_i dW_i` with
`dW_i = s_i B_i diag(E_i) A_i` (AdaLoRA's SVD form). That sum is itself low rank: stacking the skills'
factors gives, per adapted module,

    A = [E_1 * A_1; ...; E_K * A_K]                  [sum r_i, in]
    B = [w_1 s_1 B_1, ..., w_K s_K B_K]              [out, sum r_i]

so `B @ A` is the exact update (per-layer weights fold into B per layer; skills with weight 0 are left
out). Every module is zero-padded to one rank R and written with `lora_alpha = R`, so the LoRA scale is
1 in peft and in vLLM alike (older vLLM reads no `rank_pattern`). Optionally the update is recompressed
to a smaller rank by truncated SVD, computed through QR of the two factors (never the dense matrix),
and the energy it drops is reported per module.

The vLLM rules (`vllm_problems`) are those of vLLM's `PEFTHelper.validate_legal` and LoRA loader: rank
at most `max_lora_rank` (512 at most), no `modules_to_save`, no DoRA, no bias, not `fan_in_fan_out`, only
`lora_A`/`lora_B` tensors, and every target a projection vLLM can adapt (for Llama-family models the
attention and MLP projections; not embeddings or the LM head).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mdkif.fusion.bank import ADAPTER_CONFIG, ADAPTER_WEIGHTS, FusionError, SkillBank
from mdkif.fusion.fused import layer_group

EXPORT_MANIFEST = "mdkif_export.json"
VLLM_MAX_RANK = 512
# Projections vLLM's Llama-family models (Llama, Mistral, Qwen2, SmolLM) take LoRA on: it packs q/k/v
# into qkv_proj and gate/up into gate_up_proj and maps the peft names onto them.
VLLM_LLAMA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})


class ExportError(FusionError):
    """A mixture cannot be exported, or an exported adapter breaks a rule; the message says which."""


@dataclass
class ExportReport:
    """What an export wrote: rank, modules, the mixture, and the SVD error when recompressed."""

    out: str
    rank: int
    stacked_rank: int
    modules: int
    skills: dict[str, float]
    per_layer: bool
    svd_rank: int | None = None
    dropped_energy: float | None = None  # fraction of ||dW||_F^2 over all modules that the SVD dropped
    max_module_error: float | None = None  # worst relative Frobenius error ||dW - dW_r|| / ||dW||
    module_errors: dict[str, float] = field(default_factory=dict)
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weights_matrix(weights: torch.Tensor, bank: SkillBank, groups: list[str] | None) -> torch.Tensor:
    w = torch.as_tensor(weights, dtype=torch.float32)
    K = len(bank)
    if not torch.isfinite(w).all():
        raise ExportError("weights contain NaN or infinity")
    if w.dim() == 0 or w.shape[-1] != K:
        raise ExportError(f"weights have shape {tuple(w.shape)}, the bank has {K} skills {bank.names}")
    if w.dim() == 1:
        return w[None, :]
    if w.dim() != 2:
        raise ExportError(f"weights must be [K] or [L, K], got shape {tuple(w.shape)}")
    if groups is None or len(groups) != w.shape[0]:
        raise ExportError(
            f"per-layer weights [{w.shape[0]}, {K}] need the router's layer groups (one name per row); "
            f"got {None if groups is None else len(groups)}"
        )
    return w


def stacked_factors(
    bank: SkillBank, weights: torch.Tensor, groups: list[str] | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per module the exact `(A [R_m, in], B [out, R_m])` with `B @ A = sum_i w_i dW_i`, in fp32.

    `weights` is [K] (one mixture) or [L, K] with `groups` naming each row's layer group (a router's
    `layer_groups`). Modules where every weight is zero are left out (they add nothing).
    """
    w = _weights_matrix(weights, bank, groups)
    row = {g: i for i, g in enumerate(groups)} if w.shape[0] > 1 and groups else None
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module in bank.modules():
        if row is not None:
            g = layer_group(module)
            if g not in row:
                raise ExportError(
                    f"module {module!r} is in layer group {g!r}, which the router has no weights for"
                )
            wm = w[row[g]]
        else:
            wm = w[0]
        downs, ups = [], []
        for i, skill in enumerate(bank.skills):
            d = skill.layers.get(module)
            if d is None or float(wm[i]) == 0.0:
                continue
            live = d.E != 0  # triplets the rank allocator masked (saved with E = 0) add nothing
            if not live.any():
                continue
            downs.append((d.A * d.E[:, None])[live])
            ups.append((d.B * (d.scale * float(wm[i])))[:, live])
        if downs:
            out[module] = (torch.cat(downs), torch.cat(ups, 1))
    if not out:
        raise ExportError("every weight is zero: the mixture is the base model, there is nothing to export")
    return out


def truncate(A: torch.Tensor, B: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Best rank-`rank` factors of `B @ A` (truncated SVD via QR), with the dropped and total energy."""
    Qb, Rb = torch.linalg.qr(B.double())  # B = Qb Rb
    Qa, Ra = torch.linalg.qr(A.double().T)  # A^T = Qa Ra
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T)  # B A = Qb (U S Vh) Qa^T
    total = float((S**2).sum())
    k = min(rank, S.numel())
    dropped = float((S[k:] ** 2).sum())
    root = S[:k].sqrt()
    B_r = (Qb @ U[:, :k]) * root
    A_r = root[:, None] * (Vh[:k] @ Qa.T)
    return A_r.float(), B_r.float(), dropped, total


def vllm_problems(
    config: dict[str, Any],
    tensor_names: list[str],
    *,
    max_lora_rank: int = VLLM_MAX_RANK,
    supported_modules: frozenset[str] = VLLM_LLAMA_MODULES,
) -> list[str]:
    """Every rule of vLLM's LoRA loading that an adapter (its config dict, its tensor names) breaks."""
    problems = []
    ranks = [int(config.get("r", 0)), *(int(v) for v in (config.get("rank_pattern") or {}).values())]
    if max(ranks) > min(max_lora_rank, VLLM_MAX_RANK):
        problems.append(
            f"LoRA rank {max(ranks)} is greater than max_lora_rank {min(max_lora_rank, VLLM_MAX_RANK)} "
            f"(vLLM serves ranks up to {VLLM_MAX_RANK}; recompress with --rank)"
        )
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} is not supported (vLLM needs None)")
    if config.get("use_dora"):
        problems.append("DoRA (use_dora) is not supported by vLLM")
    if config.get("bias", "none") != "none":
        problems.append(f"bias {config['bias']!r} is not supported (vLLM needs 'none')")
    if config.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out is not supported")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r}: vLLM loads plain LoRA only")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        problems.append(f"target_modules is a regex {targets!r}: vLLM needs a list of module names")
        targets = []
    bad = sorted({t.rsplit(".", 1)[-1] for t in targets} - supported_modules)
    if bad:
        problems.append(
            f"target module(s) {bad} cannot take LoRA in vLLM (supported: {sorted(supported_modules)})"
        )
    odd = sorted({n for n in tensor_names if ".lora_A." not in n and ".lora_B." not in n})
    if odd:
        problems.append(f"tensors other than lora_A/lora_B: {odd[:3]}")
    return problems


def check_vllm(folder: str | Path, **rules: Any) -> None:
    """Raise `ExportError` listing every vLLM rule the adapter in `folder` breaks."""
    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    names = list(load_file(str(folder / ADAPTER_WEIGHTS)))
    problems = vllm_problems(config, names, **rules)
    if problems:
        raise ExportError(f"{folder}: not loadable by vLLM: " + "; ".join(problems))


def export_lora(
    bank: SkillBank,
    weights: torch.Tensor,
    out_dir: str | Path,
    *,
    groups: list[str] | None = None,
    rank: int | None = None,
    base_model: str | None = None,
    dtype: torch.dtype = torch.float32,
    source: dict[str, Any] | None = None,
    vllm_check: bool = True,
) -> ExportReport:
    """Write the mixture as a peft LoRA folder (atomically) and return what was written.

    `rank` recompresses every module to at most that rank (truncated SVD); without it the rank is the
    largest stacked rank (exact). The folder loads with `PeftModel.from_pretrained(base, out_dir)`.
    """
    from peft import LoraConfig

    factors = stacked_factors(bank, weights, groups)
    stacked = max(A.shape[0] for A, _ in factors.values())
    errors: dict[str, float] = {}
    dropped_sum = total_sum = 0.0
    if rank is not None:
        if rank < 1:
            raise ExportError(f"rank must be >= 1, got {rank}")
        for m, (A, B) in list(factors.items()):
            A_r, B_r, dropped, total = truncate(A, B, rank)
            factors[m] = (A_r, B_r)
            dropped_sum, total_sum = dropped_sum + dropped, total_sum + total
            errors[m] = (dropped / total) ** 0.5 if total > 0 else 0.0
    R = max(A.shape[0] for A, _ in factors.values())
    tensors: dict[str, torch.Tensor] = {}
    for m, (A, B) in factors.items():
        pad = R - A.shape[0]
        A = torch.cat([A, A.new_zeros(pad, A.shape[1])]) if pad else A
        B = torch.cat([B, B.new_zeros(B.shape[0], pad)], 1) if pad else B
        tensors[f"base_model.model.{m}.lora_A.weight"] = A.to(dtype).contiguous()
        tensors[f"base_model.model.{m}.lora_B.weight"] = B.to(dtype).contiguous()
    config = LoraConfig(
        r=R,
        lora_alpha=R,  # scale alpha / r = 1: the factors carry every scale already
        target_modules=sorted(factors),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model or bank.base_model,
        inference_mode=True,
    )
    w = _weights_matrix(weights, bank, groups)
    report = ExportReport(
        out=str(out_dir),
        rank=R,
        stacked_rank=stacked,
        modules=len(factors),
        skills={n: round(float(v), 6) for n, v in zip(bank.names, w.mean(0).tolist(), strict=True)},
        per_layer=w.shape[0] > 1,
        svd_rank=rank,
        dropped_energy=(dropped_sum / total_sum if total_sum > 0 else 0.0) if rank is not None else None,
        max_module_error=max(errors.values()) if errors else None,
        module_errors={m: round(e, 8) for m, e in errors.items()},
    )
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        report.bytes = (tmp / ADAPTER_WEIGHTS).stat().st_size
        manifest = {
            "format": "mdkif-lora-export/1",
            "skills": bank.names,
            "skill_digests": bank.digests,
            "weights": w.tolist(),
            "layer_groups": groups if w.shape[0] > 1 else None,
            "source": source or {},
            "report": report.to_dict(),
        }
        (tmp / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if vllm_check:  # on the files as written, before they replace anything
            problems = vllm_problems(json.loads((tmp / ADAPTER_CONFIG).read_text()), list(tensors))
            if problems:
                raise ExportError("the export would not load in vLLM: " + "; ".join(problems))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report
