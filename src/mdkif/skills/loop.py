"""The training loop shared by every stage: one adapter on a frozen base, run inside Ray Train or directly.

`train_loop_per_worker(config)` is what a `TorchTrainer` runs, and what a test or a laptop calls in-process.
A config holds either one `job` (a `TrainJob`, run data-parallel over all workers of the trainer) or
`jobs_by_rank` (each worker trains its own share of small skills one after another, no gradient exchange).

`run_job` reads top to bottom: skip a finished job; set up (base, data, adapter, backend); restore the last
checkpoint or measure the starting validation loss; step to the end, checkpointing every N steps and
reporting each step; save the adapter and its metrics. A restarted worker reloads the last checkpoint and
re-enters the same micro-batch stream at the same step.

A step, in order: forward each micro-batch (bf16 autocast on CUDA and on a CPU whose base computes in
bf16; fp16 with loss scaling on a GPU without bf16), loss = token-mean cross-entropy (LM head on the answer positions only) over the labelled
tokens of the whole step (+ AdaLoRA's orthogonality penalty), backward (gradients reduced at the last
micro-batch only), then the backend's step (clip, optimizer, scheduler), AdaLoRA `update_and_allocate(step)`
on the unwrapped peft model (it reads the gradients, so before `zero_grad`), `zero_grad`. How gradients
are reduced and applied (one process, DDP, DeepSpeed ZeRO) is the backend's business (`skills/backends.py`).
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from mdkif.allocator import release_freed_memory
from mdkif.config import validate
from mdkif.io import write_json_atomic
from mdkif.skills.adapters import (
    adalora_ranks,
    allocator_state,
    build_peft_model,
    load_trainable,
    orth_penalty,
    restore_allocator,
    save_adapter,
    set_rank_pattern,
    total_rank,
    trainable_state,
)
from mdkif.skills.backends import make_backend, zero3_loading
from mdkif.skills.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from mdkif.skills.data import IGNORE, Example, MicroBatchStream, collate, total_steps
from mdkif.skills.datasets import job_examples, skill_records
from mdkif.skills.devices import autocast_dtype
from mdkif.skills.job import SkillData, TrainJob
from mdkif.skills.labels import LabelProbe
from mdkif.skills.losses import evaluate, token_losses

log = logging.getLogger(__name__)

METRICS = "metrics.json"

# Called after each step (after its checkpoint and report) with the job, this worker's rank and the step.
# Production runs pass none; tests inject faults through it (`mdkif.testing.faults.KillAt`).
StepCallback = Callable[[TrainJob, int, int], None]


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


def ray_context(shared: bool = False) -> WorkerContext | None:
    """The Ray Train worker context, or None outside a Train worker (ray need not even be imported).

    `shared`: the workers train different skills, so a step only prints its progress line. `ray.train.report`
    is a barrier across the workers (Train v2), which would run them in lock-step: the worker on the faster
    skill waited at every step for the other (measured: the NER worker idle ~65% of the time beside
    relation extraction's longer sequences). Data-parallel workers of one job report every step.
    """
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
    report = _print_progress if shared else _report_with_progress
    return WorkerContext(rank, world, get_device(), report, in_ray=True)


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

    _print_progress(metrics)
    ray.train.report(metrics)


def _print_progress(metrics: dict[str, Any]) -> None:
    """One short progress line per training step on the worker's stdout (Ray forwards it to the driver)."""
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


def as_job(job: TrainJob | Mapping[str, Any]) -> TrainJob:
    """A `TrainJob` as it is; a mapping validated into one, a bad field named (`ConfigError`)."""
    if isinstance(job, TrainJob):
        return job
    return validate(TrainJob, dict(job), f"training job {job.get('name', '?')!r}")


def _local_device(jobs: Sequence[TrainJob]) -> torch.device:
    """The device of an in-process run (no Ray Train): the jobs' `model.device` (`auto`: CUDA if present)."""
    from mdkif.models import resolve_device

    devices = {j.model.device for j in jobs} or {"auto"}
    return resolve_device(devices.pop() if len(devices) == 1 else "auto")


def train_loop_per_worker(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Run this worker's share of `config`: `{"job": ...}` data-parallel, or `{"jobs_by_rank": [[...], ...]}`.

    In the shared mode the workers never wait for each other (no `ray.train.report`: see `ray_context`);
    each trains its own skills to the end. `config["callbacks"]` (optional) are `StepCallback`s. Returns one
    summary per job run here.
    """
    if "job" in config:
        ranks = [[as_job(config["job"])]]
    else:
        ranks = [[as_job(j) for j in rank] for rank in config["jobs_by_rank"]]
    callbacks = tuple(config.get("callbacks") or ())
    ctx = ray_context(shared="job" not in config) or WorkerContext(
        device=_local_device([j for rank in ranks for j in rank]),
        report=config.get("report") or (lambda m: None),
    )
    if "job" in config:
        return [run_job(ranks[0][0], ctx, data_parallel=ctx.world > 1, callbacks=callbacks)]
    jobs = ranks[ctx.rank] if ctx.rank < len(ranks) else []
    return [run_job(job, ctx, data_parallel=False, callbacks=callbacks) for job in jobs]


def finished(job: TrainJob) -> dict[str, Any] | None:
    """The metrics of a finished run of this job with the same data and settings, else None."""
    path = job.out_dir / METRICS
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    return meta if meta.get("job_key") == job.job_key else None


def run_job(
    job: TrainJob | Mapping[str, Any],
    ctx: WorkerContext,
    data_parallel: bool,
    callbacks: Sequence[StepCallback] = (),
) -> dict[str, Any]:
    """Train one adapter described by `job` to the end (resuming from its checkpoint) and save it.

    With `data_parallel`, all ranks of `ctx` train the same job, each on its stride of the data, with
    DDP (or DeepSpeed) averaging gradients; rank 0 writes checkpoints and the final adapter.
    """
    job = as_job(job)
    done = finished(job)
    if done is not None:
        log.info("%s: already finished, skipping", job.name)
        return done
    with zero3_loading(job, ctx.device, ctx.world if data_parallel else 1):
        run = AdapterRun(job, ctx, data_parallel)
        try:
            return _train(run, job, ctx, callbacks)
        finally:
            run.close()


def _train(
    run: AdapterRun, job: TrainJob, ctx: WorkerContext, callbacks: Sequence[StepCallback]
) -> dict[str, Any]:
    """Restore or start, step to the end (or the early stop), checkpointing and reporting; then finish."""
    run.restore_or_start()
    while run.step < run.steps and not run.stopped:
        record = run.train_step()
        run.validate_for_early_stopping(record)
        if run.step % job.checkpoint_every == 0 or run.step == run.steps:
            run.save_checkpoint()
        t0 = time.perf_counter()
        ctx.send(record)  # in Ray Train: a barrier across workers, then the result queue
        run.report_s += time.perf_counter() - t0
        for callback in callbacks:
            callback(job, ctx.rank, run.step)
    return run.finish()


def label_probe(job: TrainJob, tokenizer: Any) -> LabelProbe | None:
    """The classification label probe of a skill job's validation records (None for raw text or none)."""
    if not isinstance(job.data, SkillData):
        return None
    train, val = skill_records(job.data)
    return LabelProbe.build(train, val, tokenizer, job.optim.max_length, job.prompt_format)


class AdapterRun:
    """One attempt at one job on one worker: built in `__init__`, then restored, stepped and saved."""

    def __init__(self, job: TrainJob, ctx: WorkerContext, data_parallel: bool):
        from mdkif.models import load_model

        self.job, self.ctx, self.start_time = job, ctx, time.perf_counter()
        self.world = ctx.world if data_parallel else 1
        self.rank = ctx.rank if data_parallel else 0
        self.device = ctx.device
        self.model_cfg = job.model.model_copy(update={"device": str(self.device)})
        loaded = load_model(self.model_cfg)
        self.pad_id = loaded.tokenizer.pad_token_id
        self.train_ex, self.val_ex, self.data_hash = job_examples(job, loaded.tokenizer)
        o = job.optim
        self.steps = total_steps(
            len(self.train_ex), o.batch_size, o.grad_accum, self.world, o.epochs, o.max_steps
        )
        if job.total_steps not in (None, self.steps):
            raise RuntimeError(f"{job.name}: planned {job.total_steps} steps, data gives {self.steps}")
        self.peft_model = build_peft_model(
            loaded.model,
            job.adapter,
            self.steps,
            job.seed,
            self.model_cfg.quantization != "none",
            gradient_checkpointing=o.gradient_checkpointing,
        )
        self.is_adalora = job.adapter.kind == "adalora"
        # bf16 compute under autocast where the base is bf16 (CUDA, or `auto` on a CPU with bf16 units);
        # the adapters, their optimizer state and AdaLoRA's scores stay fp32 either way.
        self.amp_dtype = autocast_dtype(self.device, o.bf16, loaded.model.dtype)
        self.backend = make_backend(self.peft_model, job, self.steps, self.device, self.world, data_parallel)
        self.step, self.history, self.val_before, self.resumed_from = 0, [], None, None
        self.tokens_seen, self.compute_s, self.report_s = 0, 0.0, 0.0
        self.batches: Iterator[list[Example]] = iter(())
        # Early stopping: every validation (step, loss, label accuracy), the best one and its weights.
        self.validations: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.stopped = False
        self.labels = label_probe(job, loaded.tokenizer)

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- restore ------------------------------------------------------------------------------------------

    def restore_or_start(self) -> None:
        """Resume from this job's checkpoint when it has one (same key), else measure the starting val loss;
        then open the micro-batch stream at the current step."""
        job = self.job
        restored = load_checkpoint(job.ckpt_dir, map_location="cpu")
        if restored is not None and restored[1].get("job_key") != job.job_key:
            log.warning("%s: checkpoint is from other data or settings; starting over", job.name)
            restored = None
        if restored is None:
            self.val_before = self.validation_loss()
            self._remember({"step": 0, "val_loss": self.val_before, "label_accuracy": self.label_accuracy()})
        else:
            self._restore(*restored)
        o = job.optim
        stream = MicroBatchStream(
            self.train_ex, o.batch_size, job.seed, self.rank, self.world, group_by_length=o.group_by_length
        )
        self.batches = stream.iterate(self.step * o.grad_accum)
        self.backend.module.train()
        self.tokens_seen = sum(h["tokens"] for h in self.history)

    def _restore(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        missing = load_trainable(self.peft_model, weights, self.job.zero3)
        if missing:
            raise RuntimeError(f"{self.job.name}: checkpoint lacks {missing[:3]}")
        self.backend.load(state)
        self.step, self.history, self.val_before = state["step"], state["history"], state["val_before"]
        early = state.get("early_stopping") or {}
        self.validations, self.best = early.get("validations", []), early.get("best")
        self.best_weights, self.stopped = early.get("best_weights"), early.get("stopped", False)
        self.resumed_from = self.step
        restore_rng_state(state["rng"])
        if self.is_adalora:
            restore_allocator(self.peft_model, state["adalora"])
        log.info("%s: resumed from step %d", self.job.name, self.step)

    # --- step ---------------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over `grad_accum` micro-batches; returns the step's report."""
        job, backend, accum = self.job, self.backend, self.job.optim.grad_accum
        t0, c0 = time.perf_counter(), time.process_time()
        micro = [next(self.batches) for _ in range(accum)]
        step_tokens = sum(sum(1 for t in e.labels[1:] if t != IGNORE) for mb in micro for e in mb)
        reg_weight = job.adapter.orth_reg_weight if self.is_adalora else 0.0
        loss_sum, input_tokens, reg_value = 0.0, 0, 0.0
        for i, mb in enumerate(micro):
            batch = {k: v.to(self.device) for k, v in collate(mb, self.pad_id).items()}
            input_tokens += int(batch["attention_mask"].sum())
            with backend.accumulating(last=i == accum - 1):
                with self.autocast():
                    ce_sum, _ = token_losses(backend.module, batch)
                    loss = ce_sum / max(step_tokens, 1)
                    if reg_weight > 0:
                        reg = orth_penalty(self.peft_model)
                        reg_value = float(reg.detach())
                        loss = loss + reg_weight * reg / accum
                backend.backward(loss)
            loss_sum += float(ce_sum.detach())
        grad_norm = backend.step()
        self.step += 1
        if self.is_adalora:
            # Reads p.grad for the importance scores: after backward, before zero_grad, on the peft model
            # itself (never through the DDP wrapper).
            self.peft_model.base_model.update_and_allocate(self.step - 1)
        backend.zero_grad()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.compute_s += dt
        self.tokens_seen += input_tokens
        record = {
            "skill": job.name,
            "step": self.step,
            "total_steps": self.steps,
            "loss": loss_sum / max(step_tokens, 1),
            "orth_reg": reg_value,
            "lr": backend.lr(),
            "grad_norm": grad_norm,
            "tokens": input_tokens * self.world,
            "step_seconds": dt,
            "step_cpu_seconds": cpu,  # all threads of this process: robust to other load on the machine
            "rank": self.ctx.rank,
        }
        kept = ("step", "loss", "lr", "tokens", "step_seconds", "step_cpu_seconds")
        self.history.append({k: record[k] for k in kept})
        if self.is_adalora:  # the budget the allocator has left at this step (the tracked rank curve)
            self.history[-1]["adalora_rank"] = total_rank(self.peft_model)
        return record

    # --- save ---------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Every rank hands over its state (DeepSpeed's save is collective); rank 0 writes it atomically."""
        state = {
            "step": self.step,
            "job_key": self.job.job_key,
            "history": self.history,
            "val_before": self.val_before,
            "rng": rng_state(),
            "adalora": allocator_state(self.peft_model) if self.is_adalora else None,
            "early_stopping": {
                "validations": self.validations,
                "best": self.best,
                "best_weights": self.best_weights,
                "stopped": self.stopped,
            },
            **self.backend.state(self.step),
        }
        weights = trainable_state(self.peft_model, self.job.zero3)
        if self.rank == 0:
            save_checkpoint(self.job.ckpt_dir, weights, state)
            self.backend.saved(state)
        self._barrier()

    def validation_loss(self) -> float | None:
        o = self.job.optim
        return evaluate(self.peft_model, self.val_ex, o.batch_size, self.pad_id, self.device, self.autocast)

    def label_accuracy(self) -> float | None:
        """Accuracy of the deciding label on the validation items of classification tasks, if any."""
        if self.labels is None:
            return None
        return self.labels.accuracy(self.peft_model, self.device, self.autocast, self.job.optim.batch_size)

    # --- early stopping -----------------------------------------------------------------------------------

    def validate_for_early_stopping(self, record: dict[str, Any]) -> None:
        """Every `early_stopping.every` steps: measure, keep the best weights, stop after `patience` misses.

        The measurement goes into the step's report (`val_loss`, `label_accuracy`) and the history."""
        es = self.job.optim.early_stopping
        if es is None or not self.val_ex or (self.step % es.every and self.step != self.steps):
            return
        seen = {
            "step": self.step,
            "val_loss": self.validation_loss(),
            "label_accuracy": self.label_accuracy(),
        }
        record.update(val_loss=seen["val_loss"], label_accuracy=seen["label_accuracy"])
        self.history[-1].update(val_loss=seen["val_loss"], label_accuracy=seen["label_accuracy"])
        self._remember(seen)
        release_freed_memory()  # the step buffers of 25 steps of varying lengths: hand the free ones back
        # validations since the best one (which carries best=True; the start, step 0, counts as one)
        misses = next(
            (i for i, v in enumerate(reversed(self.validations)) if v.get("best")), len(self.validations)
        )
        if misses >= es.patience:
            self.stopped = True
            log.info(
                "%s: validation loss has not improved for %d validations; stopping at step %d (best: step %d)",
                self.job.name,
                misses,
                self.step,
                self.best["step"] if self.best else 0,
            )

    def _remember(self, seen: dict[str, Any]) -> None:
        """Record a validation; when it is the best so far (by `min_delta`), keep a copy of the weights."""
        es = self.job.optim.early_stopping
        self.validations.append(seen)
        if es is None or seen["val_loss"] is None:
            return
        if self.best is not None and seen["val_loss"] >= self.best["val_loss"] - es.min_delta:
            return
        seen["best"] = True
        self.best = dict(seen)
        self.best_weights = trainable_state(self.peft_model, self.job.zero3)
        if self.is_adalora:  # the ranks those weights were masked to, which saving cuts the matrices by
            self.best["rank_pattern"] = copy.deepcopy(allocator_state(self.peft_model)["rank_pattern"])

    def finish(self) -> dict[str, Any]:
        """Final validation loss and ranks; rank 0 saves the adapter (peft format) and its metrics.json."""
        job = self.job
        if self.best_weights is not None and self.best is not None and self.best["step"] != self.step:
            missing = load_trainable(self.peft_model, self.best_weights, job.zero3)
            if missing:
                raise RuntimeError(f"{job.name}: best weights lack {missing[:3]}")
            if self.is_adalora:
                set_rank_pattern(self.peft_model, self.best.get("rank_pattern"))
            log.info("%s: restored the best weights (step %d)", job.name, self.best["step"])
        val_after = self.validation_loss()
        acc_after = self.label_accuracy()
        ranks = adalora_ranks(self.peft_model) if self.is_adalora else {}
        weights = trainable_state(self.peft_model, job.zero3)
        summary = {
            "name": job.name,
            "job_key": job.job_key,
            "base_model": job.model.name,
            "adapter_kind": job.adapter.kind,
            "prompt_format": job.prompt_format,
            "data_hash": self.data_hash,
            "train_examples": len(self.train_ex),
            "val_examples": len(self.val_ex),
            "steps": self.steps,
            "world_size": self.world,
            "val_loss_before": self.val_before,
            "val_loss_after": val_after,
            "final_train_loss": self.history[-1]["loss"] if self.history else None,
            "ranks": ranks,
            "total_rank": sum(ranks.values()),
            "resumed_from_step": self.resumed_from,
            "label_accuracy_before": self.validations[0].get("label_accuracy") if self.validations else None,
            "label_accuracy_after": acc_after,
            "label_tasks": self.labels.describe() if self.labels is not None else {},
            "early_stopping": self._early_stopping_summary(),
            "tokens": self.tokens_seen,
            "compute_seconds_this_attempt": self.compute_s,
            "report_seconds_this_attempt": self.report_s,
            "seconds_this_attempt": time.perf_counter() - self.start_time,
            "history": self.history,
        }
        if self.rank == 0:
            save_adapter(self.peft_model, weights, job.out_dir)
            write_json_atomic(job.out_dir / METRICS, summary)
        self._barrier()
        return summary

    def close(self) -> None:
        """Drop the model and give its memory back (a shared worker trains the next skill in this process)."""
        self.peft_model = self.backend = self.best_weights = None
        gc.collect()
        release_freed_memory()

    def _early_stopping_summary(self) -> dict[str, Any] | None:
        es = self.job.optim.early_stopping
        if es is None:
            return None
        return {
            **es.model_dump(),
            "planned_steps": self.steps,
            "stopped_at": self.step if self.stopped else None,
            "best_step": self.best["step"] if self.best else None,
            "best_val_loss": self.best["val_loss"] if self.best else None,
            "validations": [{k: v for k, v in x.items() if k != "best"} for x in self.validations],
        }

    def _barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()
