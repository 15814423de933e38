"""The training loop shared by every stage: one adapter on a frozen base, run inside Ray Train or directly.

`train_loop_per_worker(config)` is what a `TorchTrainer` runs, and what a test or a laptop calls in-process.
A config holds either one `job` (run data-parallel over all workers of the trainer) or `jobs_by_rank`
(each worker trains its own share of small skills one after another, with no gradient exchange).

A step, in order: forward each micro-batch (bf16 autocast on CUDA; fp16 with loss scaling on a GPU
without bf16), loss = token-mean cross-entropy (LM head on the answer positions only) over
the labelled tokens of the whole step (+ AdaLoRA's orthogonality penalty), backward (no DDP sync until the
last micro-batch), clip, optimizer and scheduler step, AdaLoRA `update_and_allocate(step)` on the unwrapped
peft model (it reads the gradients, so before `zero_grad`), `zero_grad`. Checkpoints every N steps and at
the end; a restarted worker reloads the last one and re-enters the same micro-batch stream at the same step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mdkif.io import write_json_atomic
from mdkif.skills.checkpoint import (
    load_checkpoint,
    prune_deepspeed_checkpoints,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    save_deepspeed_checkpoint,
)
from mdkif.skills.data import IGNORE, Example, MicroBatchStream, collate, total_steps
from mdkif.skills.devices import autocast_dtype, process_group_backend

log = logging.getLogger(__name__)

METRICS = "metrics.json"


@dataclass
class WorkerContext:
    """Where this loop runs: rank/world for data parallelism, the device, and how to report a step."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    report: Callable[[dict[str, Any]], None] = lambda metrics: None
    in_ray: bool = False
    reports: int = 0

    def send(self, metrics: dict[str, Any]) -> None:
        self.reports += 1
        self.report(metrics)


def ray_context() -> WorkerContext | None:
    """The Ray Train worker context, or None outside a Train worker (ray need not even be imported)."""
    if "ray" not in sys.modules:
        return None
    import ray.train

    try:
        tc = ray.train.get_context()
        rank, world = tc.get_world_rank(), tc.get_world_size()
    except Exception:  # not inside a Train worker
        return None
    from ray.train.torch import get_device

    _quiet_ray_report_log()
    return WorkerContext(rank, world, get_device(), _report_with_progress, in_ray=True)


def _quiet_ray_report_log() -> None:
    """Ray Train logs every report as a full `TrainingReport(...)` repr at INFO; keep only its warnings."""
    import importlib

    try:
        module = importlib.import_module("ray.train.v2._internal.execution.context")
    except ImportError:  # another Ray layout: leave its logging alone
        return
    logging.getLogger(module.__file__).setLevel(logging.WARNING)


def _report_with_progress(metrics: dict[str, Any]) -> None:
    """`ray.train.report`, plus one short progress line per training step (Ray forwards it to the driver)."""
    import ray.train

    if metrics.get("skill") and "loss" in metrics and "total_steps" in metrics:
        # Straight to the process's stdout: Ray Train patches `print` into its logger and, when stdout is
        # wrapped, tees it as well, which printed every line twice.
        out = sys.__stdout__
        if out is not None:
            out.write(
                f"{metrics['skill']}: step {metrics['step']}/{metrics['total_steps']}  "
                f"loss {metrics['loss']:.3f}  {metrics.get('step_seconds', 0.0):.1f} s/step\n"
            )
            out.flush()
    ray.train.report(metrics)


def _local_device(config: dict[str, Any]) -> torch.device:
    """The device of an in-process run (no Ray Train): the jobs' `model.device` (`auto`: CUDA if present)."""
    from mdkif.models import resolve_device

    jobs = (
        [config["job"]] if "job" in config else [j for rank in config.get("jobs_by_rank", []) for j in rank]
    )
    devices = {str(j.get("model", {}).get("device", "auto")) for j in jobs} or {"auto"}
    return resolve_device(devices.pop() if len(devices) == 1 else "auto")


def train_loop_per_worker(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Run this worker's share of `config`: `{"job": ...}` data-parallel, or `{"jobs_by_rank": [[...], ...]}`.

    In the shared mode every worker reports `config["report_slots"]` times in all (padding when its own
    skills are done), because `ray.train.report` is a barrier that every worker must reach equally often.
    Returns one summary per job run here.
    """
    ctx = ray_context() or WorkerContext(
        device=_local_device(config), report=config.get("report") or (lambda m: None)
    )
    if "job" in config:
        return [run_job(config["job"], ctx, data_parallel=ctx.world > 1)]
    jobs = config["jobs_by_rank"][ctx.rank] if ctx.rank < len(config["jobs_by_rank"]) else []
    results = [run_job(job, ctx, data_parallel=False) for job in jobs]
    while ctx.reports < config.get("report_slots", 0):
        ctx.send({"skill": None, "idle": True})
    return results


# --------------------------------------------------------------------------------------------------------


def load_job_examples(job: dict[str, Any], tokenizer: Any) -> tuple[list[Example], list[Example], str]:
    """Train/validation examples of a job and a hash of its data (for skip-if-finished)."""
    from mdkif.skills.datasets import job_examples

    return job_examples(job, tokenizer)


def build_peft_model(
    base: Any,
    adapter: dict[str, Any],
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
        "lora_alpha": adapter["lora_alpha"],
        "lora_dropout": adapter["lora_dropout"],
        "target_modules": adapter["target_modules"],
    }
    if adapter["kind"] == "adalora":
        # The loop calls update_and_allocate(step - 1), i.e. 0..steps-1: with tfinal >= 1 the final,
        # forced allocation (at steps - tfinal) happens after at least one importance update.
        tfinal = max(1, int(adapter["tfinal"] * steps)) if steps >= 2 else 0
        tinit = min(int(adapter["tinit"] * steps), max(0, steps - tfinal - 1))
        cfg = AdaLoraConfig(
            init_r=adapter["r"],
            target_r=adapter["target_r"],
            tinit=tinit,
            tfinal=tfinal,
            deltaT=adapter["delta_t"],
            beta1=adapter["beta1"],
            beta2=adapter["beta2"],
            orth_reg_weight=adapter["orth_reg_weight"],
            total_step=steps,
            **common,
        )
    else:
        cfg = LoraConfig(r=adapter["r"], **common)
    torch.manual_seed(seed)  # same adapter init on every rank and on every restart
    return get_peft_model(base, cfg)


def enable_activation_checkpointing(model: Any, kwargs: dict[str, Any]) -> None:
    """transformers >= 5 names it `activation_checkpointing_enable` (the old name warns); older ones do not."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def orth_penalty(peft_model: Any) -> torch.Tensor:
    """AdaLoRA's regulariser: mean over P and Q of ||P P^T - I||_F (peft adds it only when labels go in)."""
    terms = []
    for name, p in peft_model.named_parameters():
        if p.requires_grad and ("lora_A" in name or "lora_B" in name):
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.linalg.norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)))
    return torch.stack(terms).mean() if terms else torch.zeros(())


def _takes_logits_to_keep(model: Any) -> bool:
    """Whether the causal LM under `model` (DDP / DeepSpeed / peft wrappers peeled) takes `logits_to_keep`."""
    import inspect

    inner = model
    for _ in range(4):
        inner = getattr(inner, "module", inner)
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
    try:
        return "logits_to_keep" in inspect.signature(type(inner).forward).parameters
    except (TypeError, ValueError):
        return False


def token_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled tokens, and how many there were.

    Only the positions that predict a labelled token in some row go through the LM head (`logits_to_keep`
    with explicit positions, as the router's answer loss does): for instruction data the prompt's
    positions never reach the vocabulary projection, so the fp32 `[batch, positions, vocab]` buffer
    (128k-entry vocabularies on 8B bases) covers the answers only. Same loss as over full logits (tested).
    """
    labels = batch["labels"][:, 1:]
    keep = (labels != IGNORE).any(0).nonzero().flatten()
    if 0 < len(keep) < labels.shape[1] and _takes_logits_to_keep(model):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
        logits, labels = out.logits.float(), labels[:, keep]
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, :-1].float()
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((labels != IGNORE).sum())


@torch.no_grad()
def evaluate(
    model: Any, examples: list[Example], batch_size: int, pad_id: int, device: torch.device, autocast: Any
) -> float | None:
    """Token-weighted mean validation loss (no regulariser), or None without validation data."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        with autocast():
            loss, n = token_losses(model, batch)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


def trainable_state(model: Any, zero3: bool = False) -> dict[str, torch.Tensor]:
    """Trainable (adapter) tensors by name; under ZeRO-3 they are gathered from their partitions first."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if zero3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            return {n: p.detach().clone().cpu() for n, p in params.items()}
    return {n: p.detach().clone().cpu() for n, p in params.items()}


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


def _maybe_fault(job: dict[str, Any], ctx: WorkerContext, step: int) -> None:
    fault = job.get("fault")
    if fault and step == fault["kill_at_step"] and ctx.rank == fault.get("rank", 0):
        marker = Path(fault["marker"])
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"killed rank {ctx.rank} pid {os.getpid()} at step {step}\n")
            os.kill(os.getpid(), signal.SIGKILL)


def finished(job: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of a finished run of this job with the same data and settings, else None."""
    path = Path(job["out_dir"]) / METRICS
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    return meta if meta.get("job_key") == job.get("job_key") else None


def run_job(job: dict[str, Any], ctx: WorkerContext, data_parallel: bool) -> dict[str, Any]:
    """Train one adapter described by `job` to the end (resuming from its checkpoint) and save it.

    With `data_parallel`, all ranks of `ctx` train the same job, each on its stride of the data, with
    DDP (or DeepSpeed) averaging gradients; rank 0 writes checkpoints and the final adapter.
    """
    with zero3_loading(job, ctx.device, ctx.world if data_parallel else 1):
        return _train(job, ctx, data_parallel)


@contextmanager
def zero3_loading(job: dict[str, Any], device: torch.device, world: int) -> Iterator[dict[str, Any] | None]:
    """Under ZeRO-3, the base is built partitioned: transformers' `from_pretrained` runs inside
    `deepspeed.zero.Init` while an `HfDeepSpeedConfig` is alive, so no rank ever holds the whole model
    (16 GB per rank for an 8B bf16 base, before). Yields the DeepSpeed config, or None for other jobs;
    the global config is dropped on the way out so later loads in this process are ordinary again."""
    ds = job.get("deepspeed")
    if ds is None or ds["stage"] != 3:
        yield None
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    if not torch.distributed.is_initialized():
        _init_single_process_group(device)
    config = deepspeed_config(job["optim"], ds, world, autocast_dtype(device, job["optim"]["bf16"]))
    keep_alive = HfDeepSpeedConfig(config)  # transformers holds only a weak reference
    try:
        yield config
    finally:
        del keep_alive
        unset_hf_deepspeed_config()


def _train(job: dict[str, Any], ctx: WorkerContext, data_parallel: bool) -> dict[str, Any]:
    from mdkif.models import ModelConfig, load_model

    done = finished(job)
    if done is not None:
        log.info("%s: already finished, skipping", job["name"])
        for _ in range(job.get("total_steps", 0)):
            ctx.send({"skill": job["name"], "skipped": True})
        return done

    start_time = time.perf_counter()
    seed, optim = job["seed"], job["optim"]
    device = ctx.device
    model_cfg = ModelConfig(**{**job["model"], "device": str(device)})
    loaded = load_model(model_cfg)
    tokenizer = loaded.tokenizer
    train_ex, val_ex, data_hash = load_job_examples(job, tokenizer)
    world = ctx.world if data_parallel else 1
    rank = ctx.rank if data_parallel else 0
    steps = total_steps(
        len(train_ex), optim["batch_size"], optim["grad_accum"], world, optim["epochs"], optim["max_steps"]
    )
    if job.get("total_steps") not in (None, steps):
        raise RuntimeError(f"{job['name']}: planned {job['total_steps']} steps, data gives {steps}")

    model = build_peft_model(
        loaded.model,
        job["adapter"],
        steps,
        seed,
        model_cfg.quantization != "none",
        gradient_checkpointing=optim.get("gradient_checkpointing", False),
    )
    peft_model = model
    is_adalora = job["adapter"]["kind"] == "adalora"
    amp_dtype = autocast_dtype(device, optim["bf16"])

    def autocast():
        return torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(params, lr=optim["lr"], weight_decay=optim["weight_decay"], **fused)
    from transformers import get_cosine_schedule_with_warmup

    warmup = int(math.ceil(optim["warmup_ratio"] * steps))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)

    ds = job.get("deepspeed")
    engine = None
    if ds is not None:
        import deepspeed

        if not torch.distributed.is_initialized():
            _init_single_process_group(device)

        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(optim, ds, world, amp_dtype),
        )
        model = engine
    elif data_parallel and world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    zero3 = ds is not None and ds["stage"] == 3
    # fp16 gradients underflow without loss scaling; DeepSpeed scales its own (its `fp16` block).
    scaler = torch.amp.GradScaler("cuda", enabled=engine is None and amp_dtype == torch.float16)
    ckpt_dir = Path(job["ckpt_dir"])
    ds_dir = ckpt_dir.parent / f"{ckpt_dir.name}-ds"

    step, history, val_before, resumed_from = 0, [], None, None
    restored = load_checkpoint(ckpt_dir, map_location="cpu")
    if restored is not None and restored[1].get("job_key") != job.get("job_key"):
        log.warning("%s: checkpoint is from other data or settings; starting over", job["name"])
        restored = None
    if restored is not None:
        weights, state = restored
        if zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                missing = _load_weights(peft_model, weights)
        else:
            missing = _load_weights(peft_model, weights)
        if missing:
            raise RuntimeError(f"{job['name']}: checkpoint lacks {missing[:3]}")
        if engine is not None:
            engine.load_checkpoint(str(ds_dir), tag=state["ds_tag"], load_module_strict=False)
        else:
            # Moves the CPU-loaded state onto the parameters' device (whichever GPU this worker has now).
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        step, history, val_before = state["step"], state["history"], state["val_before"]
        resumed_from = step
        restore_rng_state(state["rng"])
        if is_adalora:
            _restore_allocator(peft_model, state["adalora"])
        log.info("%s: resumed from step %d", job["name"], step)
        for _ in range(step):  # keep the shared trainer's report barriers aligned
            if not data_parallel:
                ctx.send({"skill": job["name"], "skipped": True})
    else:
        val_before = evaluate(
            peft_model, val_ex, optim["batch_size"], tokenizer.pad_token_id, device, autocast
        )

    stream = MicroBatchStream(
        train_ex,
        optim["batch_size"],
        seed,
        rank,
        world,
        group_by_length=optim.get("group_by_length", True),
    )
    accum = optim["grad_accum"]
    batches = stream.iterate(step * accum)
    model.train()
    tokens_seen = sum(h["tokens"] for h in history)
    compute_s = 0.0

    def checkpoint(at: int) -> None:
        state = {
            "step": at,
            "job_key": job.get("job_key"),
            "history": history,
            "val_before": val_before,
            "rng": rng_state(),
            "adalora": _allocator_state(peft_model) if is_adalora else None,
        }
        if engine is not None:
            tag = f"step{at}"
            save_deepspeed_checkpoint(engine, ds_dir, tag)
            state["ds_tag"] = tag
        else:
            state["optimizer"] = optimizer.state_dict()
            state["scheduler"] = scheduler.state_dict()
            state["scaler"] = scaler.state_dict() if scaler.is_enabled() else None
        weights = trainable_state(peft_model, zero3)
        if rank == 0:
            save_checkpoint(ckpt_dir, weights, state)
            if engine is not None:  # only now does the state file name the new tag
                prune_deepspeed_checkpoints(ds_dir, ds.get("keep_checkpoints", 2), current=state["ds_tag"])
        if data_parallel and world > 1:
            torch.distributed.barrier()

    report_s = 0.0
    while step < steps:
        t0, c0 = time.perf_counter(), time.process_time()
        micro = [next(batches) for _ in range(accum)]
        step_tokens = sum(sum(1 for t in e.labels[1:] if t != IGNORE) for mb in micro for e in mb)
        loss_sum, input_tokens, reg_value = 0.0, 0, 0.0
        for i, mb in enumerate(micro):
            batch = {k: v.to(device) for k, v in collate(mb, tokenizer.pad_token_id).items()}
            input_tokens += int(batch["attention_mask"].sum())
            sync = nullcontext()
            if (
                engine is None
                and isinstance(model, torch.nn.parallel.DistributedDataParallel)
                and i < accum - 1
            ):
                sync = model.no_sync()
            with sync:
                with autocast():
                    ce_sum, _ = token_losses(model, batch)
                    loss = ce_sum / max(step_tokens, 1)
                    if is_adalora and job["adapter"]["orth_reg_weight"] > 0:
                        reg = orth_penalty(peft_model)
                        reg_value = float(reg.detach())
                        loss = loss + job["adapter"]["orth_reg_weight"] * reg / accum
                if engine is not None:
                    engine.backward(loss * accum)  # DeepSpeed divides by its accumulation steps itself
                    engine.step()
                else:
                    scaler.scale(loss).backward()
            loss_sum += float(ce_sum.detach())
        if engine is None:
            scaler.unscale_(optimizer)  # true gradients for clipping and AdaLoRA's importance scores
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, optim["max_grad_norm"]))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        else:
            grad_norm = float("nan")
        step += 1
        if is_adalora:
            # Reads p.grad for the importance scores: after backward, before zero_grad, on the peft model
            # itself (never through the DDP wrapper).
            peft_model.base_model.update_and_allocate(step - 1)
        if engine is None:
            optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        compute_s += dt
        tokens_seen += input_tokens
        record = {
            "skill": job["name"],
            "step": step,
            "total_steps": steps,
            "loss": loss_sum / max(step_tokens, 1),
            "orth_reg": reg_value,
            "lr": float(scheduler.get_last_lr()[0]),
            "grad_norm": grad_norm,
            "tokens": input_tokens * world,
            "step_seconds": dt,
            "step_cpu_seconds": cpu,  # all threads of this process: robust to other load on the machine
            "rank": ctx.rank,
        }
        kept = ("step", "loss", "lr", "tokens", "step_seconds", "step_cpu_seconds")
        history.append({k: record[k] for k in kept})
        if is_adalora:  # the budget the allocator has left at this step (the tracked rank curve)
            history[-1]["adalora_rank"] = total_rank(peft_model)
        if step % job["checkpoint_every"] == 0 or step == steps:
            checkpoint(step)
        r0 = time.perf_counter()
        ctx.send(record)  # in Ray Train: a barrier across workers, then the result queue
        report_s += time.perf_counter() - r0
        _maybe_fault(job, ctx, step)

    val_after = evaluate(peft_model, val_ex, optim["batch_size"], tokenizer.pad_token_id, device, autocast)
    ranks = adalora_ranks(peft_model) if is_adalora else {}
    weights = trainable_state(peft_model, zero3)
    summary = {
        "name": job["name"],
        "job_key": job.get("job_key"),
        "base_model": job["model"]["name"],
        "adapter_kind": job["adapter"]["kind"],
        "prompt_format": job.get("prompt_format", "alpaca"),
        "data_hash": data_hash,
        "train_examples": len(train_ex),
        "val_examples": len(val_ex),
        "steps": steps,
        "world_size": world,
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "final_train_loss": history[-1]["loss"] if history else None,
        "ranks": ranks,
        "total_rank": sum(ranks.values()),
        "resumed_from_step": resumed_from,
        "tokens": tokens_seen,
        "compute_seconds_this_attempt": compute_s,
        "report_seconds_this_attempt": report_s,
        "seconds_this_attempt": time.perf_counter() - start_time,
        "history": history,
    }
    if rank == 0:
        save_adapter(peft_model, weights, Path(job["out_dir"]))
        write_json_atomic(Path(job["out_dir"]) / METRICS, summary)
    if data_parallel and world > 1:
        torch.distributed.barrier()
    return summary


def deepspeed_config(
    optim: dict[str, Any], ds: dict[str, Any], world: int, amp_dtype: torch.dtype | None
) -> dict[str, Any]:
    """DeepSpeed's config for a job: ZeRO stage, batch sizes, clipping, and bf16 or fp16 as the device allows."""
    return {
        "train_micro_batch_size_per_gpu": optim["batch_size"],
        "gradient_accumulation_steps": optim["grad_accum"],
        "train_batch_size": optim["batch_size"] * optim["grad_accum"] * world,
        "gradient_clipping": optim["max_grad_norm"],
        "zero_optimization": {"stage": ds["stage"]},
        "bf16": {"enabled": amp_dtype == torch.bfloat16},
        "fp16": {"enabled": amp_dtype == torch.float16},
        "zero_allow_untested_optimizer": True,
    }


def _init_single_process_group(device: torch.device) -> None:
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


def save_adapter(peft_model: Any, weights: dict[str, torch.Tensor], out_dir: Path) -> None:
    """Save the adapter in peft format (adapter_config.json + adapter_model.safetensors).

    `weights` are the gathered trainable tensors: passing them explicitly is what keeps ZeRO-3 adapters
    from being saved empty (the live parameters there are zero-size partitions).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    full = {**peft_model.state_dict(), **_strip_module(weights)}
    peft_model.save_pretrained(str(out_dir), state_dict=full)


def _strip_module(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in weights.items()}


def _load_weights(peft_model: Any, weights: dict[str, torch.Tensor]) -> list[str]:
    own = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for name, p in own.items():
            if name in weights and p.numel() > 0:
                p.copy_(weights[name].to(p.device, p.dtype))
    return [n for n in own if n not in weights]


def _allocator_state(peft_model: Any) -> dict[str, Any]:
    base = peft_model.base_model
    alloc = base.rankallocator
    return {
        "ipt": alloc.ipt,
        "exp_avg_ipt": alloc.exp_avg_ipt,
        "exp_avg_unc": alloc.exp_avg_unc,
        "rank_pattern": base.peft_config[base.trainable_adapter_name].rank_pattern,
    }


def _restore_allocator(peft_model: Any, state: dict[str, Any]) -> None:
    base = peft_model.base_model
    alloc = base.rankallocator
    alloc.ipt, alloc.exp_avg_ipt, alloc.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
    base.peft_config[base.trainable_adapter_name].rank_pattern = state["rank_pattern"]
