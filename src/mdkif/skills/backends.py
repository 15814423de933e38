"""How a step's gradients are reduced and applied: plain PyTorch (one process or DDP) or DeepSpeed ZeRO.

The loop sees one `Backend`: `module` to call, `accumulating(last)` around each micro-batch's forward and
backward, `backward(loss)`, `step()` (clip, optimizer, scheduler; the gradient norm, when it is known),
`zero_grad()`, `lr()`, and the optimizer state for checkpoints (`state()` / `load()`). `make_backend`
picks the kind from the job, so the step has one path and no `engine is not None` branches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

import torch

from mdkif.skills.checkpoint import prune_deepspeed_checkpoints, save_deepspeed_checkpoint
from mdkif.skills.config import DeepSpeedConfig, OptimConfig
from mdkif.skills.devices import autocast_dtype, process_group_backend
from mdkif.skills.job import TrainJob


class Backend(Protocol):
    module: Any  # what the step calls: the peft model, its DDP wrapper, or the DeepSpeed engine

    def accumulating(self, last: bool) -> AbstractContextManager[Any]: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> float: ...
    def zero_grad(self) -> None: ...
    def lr(self) -> float: ...
    def state(self, step: int) -> dict[str, Any]: ...
    def load(self, state: dict[str, Any]) -> None: ...
    def saved(self, state: dict[str, Any]) -> None: ...


def _cosine(optimizer: torch.optim.Optimizer, optim: OptimConfig, steps: int) -> Any:
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, int(math.ceil(optim.warmup_ratio * steps)), steps)


def _adamw(params: list[torch.nn.Parameter], optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay, **fused)


class TorchBackend:
    """AdamW + cosine warm-up, clipping, and a GradScaler for fp16; DDP over the group when `ddp`.

    Gradients are synchronised once per step: DDP's `no_sync` holds all but the last micro-batch back.
    """

    def __init__(
        self,
        model: Any,
        optim: OptimConfig,
        steps: int,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        ddp: bool,
    ):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.max_grad_norm = optim.max_grad_norm
        self.optimizer = _adamw(self.params, optim, device)
        self.scheduler = _cosine(self.optimizer, optim, steps)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.module = torch.nn.parallel.DistributedDataParallel(model) if ddp else model

    def accumulating(self, last: bool) -> AbstractContextManager[Any]:
        if last or not isinstance(self.module, torch.nn.parallel.DistributedDataParallel):
            return nullcontext()
        return self.module.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> float:
        self.scaler.unscale_(self.optimizer)  # true gradients for clipping and AdaLoRA's importance scores
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return norm

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def state(self, step: int) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def load(self, state: dict[str, Any]) -> None:
        # Moves the CPU-loaded state onto the parameters' device (whichever GPU this worker has now).
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def saved(self, state: dict[str, Any]) -> None:
        pass


class DeepSpeedBackend:
    """A DeepSpeed engine around the same AdamW + cosine: it scales, accumulates, clips and steps itself.

    Its optimizer state lives in DeepSpeed checkpoints beside the job's own (`<ckpt_dir>-ds/<tag>`); the
    job's state file names the tag, and older tags are pruned once the new state file is written.
    """

    def __init__(
        self,
        model: Any,
        job: TrainJob,
        steps: int,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        world: int,
    ):
        import deepspeed

        assert job.deepspeed is not None
        if not torch.distributed.is_initialized():
            init_single_process_group(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = _adamw(params, job.optim, device)
        self.module, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=_cosine(optimizer, job.optim, steps),
            config=deepspeed_config(job.optim, job.deepspeed, world, amp_dtype),
        )
        self.accum = job.optim.grad_accum
        self.keep = job.deepspeed.keep_checkpoints
        self.ds_dir = job.ckpt_dir.parent / f"{job.ckpt_dir.name}-ds"

    def accumulating(self, last: bool) -> AbstractContextManager[Any]:
        return nullcontext()  # DeepSpeed reduces at its own accumulation boundary

    def backward(self, loss: torch.Tensor) -> None:
        self.module.backward(loss * self.accum)  # DeepSpeed divides by its accumulation steps itself
        self.module.step()  # a no-op until the boundary micro-batch

    def step(self) -> float:
        return float("nan")  # already stepped at the boundary; DeepSpeed clips without handing back the norm

    def zero_grad(self) -> None:
        pass

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def state(self, step: int) -> dict[str, Any]:
        tag = f"step{step}"
        save_deepspeed_checkpoint(self.module, self.ds_dir, tag)
        return {"ds_tag": tag}

    def load(self, state: dict[str, Any]) -> None:
        self.module.load_checkpoint(str(self.ds_dir), tag=state["ds_tag"], load_module_strict=False)

    def saved(self, state: dict[str, Any]) -> None:
        # only now does the state file name the new tag
        prune_deepspeed_checkpoints(self.ds_dir, self.keep, current=state["ds_tag"])


def make_backend(
    model: Any, job: TrainJob, steps: int, device: torch.device, world: int, data_parallel: bool
) -> Backend:
    """DeepSpeed when the job asks for it, else plain PyTorch (DDP when more than one rank shares the job)."""
    amp_dtype = autocast_dtype(device, job.optim.bf16)
    if job.deepspeed is not None:
        return DeepSpeedBackend(model, job, steps, device, amp_dtype, world)
    return TorchBackend(model, job.optim, steps, device, amp_dtype, ddp=data_parallel and world > 1)


def deepspeed_config(
    optim: OptimConfig, ds: DeepSpeedConfig, world: int, amp_dtype: torch.dtype | None
) -> dict[str, Any]:
    """DeepSpeed's config for a job: ZeRO stage, batch sizes, clipping, and bf16 or fp16 as the device allows."""
    return {
        "train_micro_batch_size_per_gpu": optim.batch_size,
        "gradient_accumulation_steps": optim.grad_accum,
        "train_batch_size": optim.batch_size * optim.grad_accum * world,
        "gradient_clipping": optim.max_grad_norm,
        "zero_optimization": {"stage": ds.stage},
        "bf16": {"enabled": amp_dtype == torch.bfloat16},
        "fp16": {"enabled": amp_dtype == torch.float16},
        "zero_allow_untested_optimizer": True,
    }


@contextmanager
def zero3_loading(job: TrainJob, device: torch.device, world: int) -> Iterator[dict[str, Any] | None]:
    """Under ZeRO-3, the base is built partitioned: transformers' `from_pretrained` runs inside
    `deepspeed.zero.Init` while an `HfDeepSpeedConfig` is alive, so no rank ever holds the whole model
    (16 GB per rank for an 8B bf16 base, before). Yields the DeepSpeed config, or None for other jobs;
    the global config is dropped on the way out so later loads in this process are ordinary again."""
    if not job.zero3:
        yield None
        return
    assert job.deepspeed is not None
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    if not torch.distributed.is_initialized():
        init_single_process_group(device)
    config = deepspeed_config(job.optim, job.deepspeed, world, autocast_dtype(device, job.optim.bf16))
    keep_alive = HfDeepSpeedConfig(config)  # transformers holds only a weak reference
    try:
        yield config
    finally:
        del keep_alive
        unset_hf_deepspeed_config()


def init_single_process_group(device: torch.device) -> None:
    """DeepSpeed needs a process group even for one process (outside Ray Train): world size 1, over nccl
    when the model is on CUDA (gloo cannot reduce CUDA tensors), else gloo."""
    import socket

    import deepspeed

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend=process_group_backend(device))
