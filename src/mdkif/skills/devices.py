"""Where a stage's workers run and in which precision: the Ray Train resources of every trainer, the
mixed-precision dtype of a step (CUDA, or a CPU whose base computes in bf16), and the process-group backend.

One place for these so that the skills stage, CPT/SFT/task, the multi-step pipeline and the AdaLoRA Tune
trials all ask Ray for the GPUs their config names, and a CPU run takes the same path with the GPU parts off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ray.train import ScalingConfig

    from mdkif.skills.config import RayConfig


def worker_resources(ray_cfg: RayConfig, cpus_per_worker: float | None = None) -> dict[str, float]:
    """What one Train worker reserves: `cpus_per_worker` CPUs, plus `gpus_per_worker` GPUs with `use_gpu`.

    `cpus_per_worker` overrides the config's (a Tune trial sizes its trainer in its own block).
    """
    resources = {"CPU": cpus_per_worker if cpus_per_worker is not None else ray_cfg.cpus_per_worker}
    if ray_cfg.use_gpu:
        resources["GPU"] = ray_cfg.gpus_per_worker
    return resources


def scaling_config(
    ray_cfg: RayConfig, num_workers: int | None = None, cpus_per_worker: float | None = None
) -> ScalingConfig:
    """The `ScalingConfig` of every trainer a stage or a Tune trial launches, from the config's `ray:` block.

    `num_workers` defaults to `ray.num_workers` (the skills stage passes its bin count or a skill's own
    `workers`). With `use_gpu`, Ray Train also picks nccl for the workers' process group and hands each
    worker its own `cuda` device.
    """
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=num_workers if num_workers is not None else ray_cfg.num_workers,
        use_gpu=ray_cfg.use_gpu,
        resources_per_worker=worker_resources(ray_cfg, cpus_per_worker),
        accelerator_type=ray_cfg.accelerator_type if ray_cfg.use_gpu else None,
    )


def autocast_dtype(
    device: torch.device, mixed_precision: bool = True, weight_dtype: torch.dtype | None = None
) -> torch.dtype | None:
    """The autocast dtype of a training step on `device`, or None for none.

    On CUDA: bf16 on a GPU that has it, fp16 on an older one (V100, T4); fp16 needs loss scaling (the
    loop's `GradScaler`, or DeepSpeed's own `fp16` block), bf16 does not. On a CPU: bf16 when the frozen
    base computes in bf16 (`weight_dtype`, from `model.dtype: auto` on a CPU with AMX or AVX-512 BF16), so
    the fp32 adapters' products run in bf16 too instead of casting every activation up; None otherwise
    (an fp32 base trains exactly as before). DeepSpeed's own mixed precision stays a CUDA matter: on a CPU
    the backends are never asked for it (no `weight_dtype`).
    """
    if not mixed_precision:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and weight_dtype == torch.bfloat16:
        return torch.bfloat16
    return None


def process_group_backend(device: torch.device) -> str:
    """nccl for a process group whose tensors live on CUDA, gloo for CPU tensors."""
    return "nccl" if device.type == "cuda" and torch.cuda.is_available() else "gloo"
