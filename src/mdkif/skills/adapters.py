"""The trainable adapter on a frozen base: build it (LoRA or AdaLoRA), read and restore its state, save it.

Everything the loop needs to know about peft is here, so the loop itself never touches peft internals:
the AdaLoRA schedule derived from a step count, the orthogonality penalty, the rank allocator's state for
checkpoints, the ranks after allocation, and saving in peft format (ZeRO-3 gathered tensors included).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from mdkif.skills.config import AdapterConfig


def build_peft_model(
    base: Any,
    adapter: AdapterConfig,
    steps: int,
    seed: int,
    quantized: bool,
    gradient_checkpointing: bool = False,
) -> Any:
    """Wrap the frozen base with a fresh LoRA or AdaLoRA adapter (AdaLoRA's schedule set from `steps`).

    With `gradient_checkpointing`, the base recomputes its layers' activations in backward, non-reentrant:
    the reentrant kind gives the adapter inside a layer no gradient unless the layer's input requires grad,
    which the frozen embeddings' output does not (the input hook makes it so anyway, as peft advises).
    """
    from peft import AdaLoraConfig, LoraConfig, get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = {"use_reentrant": False}
    if quantized:
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs=gc_kwargs
        )
    elif gradient_checkpointing:
        enable_activation_checkpointing(base, gc_kwargs)
    if gradient_checkpointing:
        base.enable_input_require_grads()
        base.config.use_cache = False  # a KV cache is useless in training and conflicts with recomputation
    common = {
        "task_type": "CAUSAL_LM",
        "lora_alpha": adapter.lora_alpha,
        "lora_dropout": adapter.lora_dropout,
        "target_modules": list(adapter.target_modules),
    }
    if adapter.kind == "adalora":
        # The loop calls update_and_allocate(step - 1), i.e. 0..steps-1: with tfinal >= 1 the final,
        # forced allocation (at steps - tfinal) happens after at least one importance update.
        tfinal = max(1, int(adapter.tfinal * steps)) if steps >= 2 else 0
        tinit = min(int(adapter.tinit * steps), max(0, steps - tfinal - 1))
        cfg = AdaLoraConfig(
            init_r=adapter.r,
            target_r=adapter.target_r,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=adapter.delta_t,
            beta1=adapter.beta1,
            beta2=adapter.beta2,
            orth_reg_weight=adapter.orth_reg_weight,
            total_step=steps,
            **common,
        )
    else:
        cfg = LoraConfig(r=adapter.r, **common)
    torch.manual_seed(seed)  # same adapter init on every rank and on every restart
    # peft keeps the adapters in fp32 over a bf16/fp16 base (autocast_adapter_dtype, its default).
    model = get_peft_model(base, cfg)
    if adapter.kind == "adalora":
        use_rank_scaled_forward(model)
    return model


def use_rank_scaled_forward(peft_model: Any) -> int:
    """Turn every plain AdaLoRA `SVDLinear` of `peft_model` into `RankScaledSVDLinear` (same parameters,
    state dict and value, a cheaper forward: `mdkif.skills.adalora_layer`); returns how many.

    The bitsandbytes variants (QLoRA) keep peft's own forward.
    """
    from peft.tuners.adalora.layer import SVDLinear

    from mdkif.skills.adalora_layer import RankScaledSVDLinear

    count = 0
    for module in peft_model.modules():
        if type(module) is SVDLinear:
            module.__class__ = RankScaledSVDLinear
            count += 1
    return count


def enable_activation_checkpointing(model: Any, kwargs: dict[str, Any]) -> None:
    """transformers >= 5 names it `activation_checkpointing_enable` (the old name warns); older ones do not."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def orth_penalty(peft_model: Any) -> torch.Tensor:
    """AdaLoRA's regulariser: mean over P and Q of ||P P^T - I||_F (peft adds it only when labels go in).

    Same value as peft's per-matrix loop, computed on stacks of same-shaped matrices: a few batched
    products instead of one product, subtraction and norm per adapted matrix (420 of each on SmolLM2 with
    7 projections, ~2,500 small ops forward and backward every micro-batch).
    """
    groups: dict[tuple[str, tuple[int, ...]], list[torch.Tensor]] = {}
    for name, p in peft_model.named_parameters():
        if p.requires_grad and ("lora_A" in name or "lora_B" in name):
            side = "A" if "lora_A" in name else "B"
            groups.setdefault((side, tuple(p.shape)), []).append(p)
    norms = []
    for (side, _), params in groups.items():
        stack = torch.stack(params)  # [n, r, in] (P^T rows) or [n, out, r]
        cov = stack @ stack.transpose(1, 2) if side == "A" else stack.transpose(1, 2) @ stack
        eye = torch.eye(cov.shape[-1], device=cov.device, dtype=cov.dtype)
        norms.append(torch.linalg.matrix_norm(cov - eye))
    return torch.cat(norms).mean() if norms else torch.zeros(())


def trainable_parameters(model: Any) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def gathered(params: list[torch.nn.Parameter], zero3: bool, modifier_rank: int | None = None) -> Any:
    """Under ZeRO-3, a context in which `params` are whole (gathered from their partitions); else nothing."""
    if not zero3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def trainable_state(model: Any, zero3: bool = False) -> dict[str, torch.Tensor]:
    """Trainable (adapter) tensors by name; under ZeRO-3 they are gathered from their partitions first."""
    params = trainable_parameters(model)
    with gathered(list(params.values()), zero3):
        return {n: p.detach().clone().cpu() for n, p in params.items()}


def load_trainable(peft_model: Any, weights: dict[str, torch.Tensor], zero3: bool = False) -> list[str]:
    """Copy checkpointed adapter tensors into the live parameters; returns the names the checkpoint lacks."""
    own = trainable_parameters(peft_model)
    with gathered(list(own.values()), zero3, modifier_rank=0), torch.no_grad():
        for name, p in own.items():
            if name in weights and p.numel() > 0:
                p.copy_(weights[name].to(p.device, p.dtype))
    return [n for n in own if n not in weights]


def adalora_ranks(peft_model: Any) -> dict[str, int]:
    """Rank per adapted matrix now: non-zero singular values of each AdaLoRA layer."""
    ranks = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_E") and "default" in getattr(module, "lora_E", {}):
            ranks[name] = int((module.lora_E["default"].detach() != 0).sum())
    return ranks


def total_rank(peft_model: Any) -> int:
    """Sum of the AdaLoRA layers' ranks now, with one device sync."""
    counts = [
        (m.lora_E["default"].detach() != 0).sum()
        for m in peft_model.modules()
        if hasattr(m, "lora_E") and "default" in getattr(m, "lora_E", {})
    ]
    return int(torch.stack(counts).sum()) if counts else 0


def allocator_state(peft_model: Any) -> dict[str, Any]:
    """AdaLoRA's importance statistics and rank pattern: what a resumed run needs to allocate the same."""
    base = peft_model.base_model
    alloc = base.rankallocator
    return {
        "ipt": alloc.ipt,
        "exp_avg_ipt": alloc.exp_avg_ipt,
        "exp_avg_unc": alloc.exp_avg_unc,
        "rank_pattern": base.peft_config[base.trainable_adapter_name].rank_pattern,
    }


def restore_allocator(peft_model: Any, state: dict[str, Any]) -> None:
    base = peft_model.base_model
    alloc = base.rankallocator
    alloc.ipt, alloc.exp_avg_ipt, alloc.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
    set_rank_pattern(peft_model, state["rank_pattern"])


def set_rank_pattern(peft_model: Any, rank_pattern: dict[str, Any] | None) -> None:
    """Set AdaLoRA's rank pattern (which ranks each matrix keeps), e.g. the one of restored earlier weights:
    peft cuts the saved matrices by it."""
    base = peft_model.base_model
    base.peft_config[base.trainable_adapter_name].rank_pattern = rank_pattern


def save_adapter(peft_model: Any, weights: dict[str, torch.Tensor], out_dir: Path) -> None:
    """Save the adapter in peft format (adapter_config.json + adapter_model.safetensors).

    `weights` are the gathered trainable tensors: passing them explicitly is what keeps ZeRO-3 adapters
    from being saved empty (the live parameters there are zero-size partitions).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    full = {**peft_model.state_dict(), **{k.removeprefix("module."): v for k, v in weights.items()}}
    peft_model.save_pretrained(str(out_dir), state_dict=full)
