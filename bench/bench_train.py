"""Benchmark the skill trainer: Ray Train loop vs a plain peft loop, and 12 skills in parallel vs in turn.

    MDKIF_CACHE=/tmp/mdkif-cache .venv/bin/python bench/bench_train.py            # both parts
    .venv/bin/python bench/bench_train.py --part overhead --steps 8                # one part
    MDKIF_CACHE=/tmp/mdkif-cache .venv/bin/python bench/bench_train.py --part grouping   # ~3 min on 2 cores

Part 1 (overhead): the same AdaLoRA training (model, data, batch, steps) three ways in one run:
  plain  - a minimal single-process peft loop written here (forward with labels, backward, step,
           update_and_allocate, zero_grad): the reference;
  direct - mdkif's `train_loop_per_worker` called in this process (no Ray);
  ray    - the same function inside a 1-worker `TorchTrainer`.
Throughput is training tokens (non-pad) per step: the median over steps of tokens per wall-second and
per CPU-second (this machine is shared, so wall-clock is noisy and CPU time is the steadier figure), the
first step left out; the variants alternate over `--rounds`. The Ray figure also gets the measured time
of `ray.train.report` per step and the end-to-end `fit()` wall-clock, which includes start-up.
Part 2 (parallel): the 12 demo skills on the same CPUs: one trainer whose 2 workers share the skills
(parallel) vs one trainer with 1 worker taking them one after another (sequential), plus the measured
cost of starting one trainer, times 12, for the "one trainer per skill" design we did not take.
Part 3 (grouping): real-token throughput of the loop's step with random vs length-grouped micro-batches
(`MicroBatchStream(group_by_length=False/True)`), same model, adapter, examples and run. Real skill data
(a mix of skills with very different lengths, built from `--data-root`); the timed grouped micro-batches
are steps 1..N of the grouped stream's first epoch (step 0 is the widest by construction, left out), and
the random ones are the ungrouped stream over exactly those examples, so both variants train the same real
tokens and differ only in padding. Steps alternate random/grouped, each step runs `--group-repeats` times
and its fastest run counts (the least disturbed by other jobs on a shared machine); real tokens (prompt +
labelled, not padding) over the summed step times give the throughput. The padding share of a whole epoch of each
stream over all the examples (no training, so exact and cheap) is reported beside the timed sample's.
Results: bench/results/train.json and bench/results/train.md (a one-part run merges into them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _harness import RESULTS, Figure, write_results  # bench/ is sys.path[0] when a benchmark runs

from mdkif.ray_session import fast_train_reports

REPO = Path(__file__).resolve().parents[1]


def plain_peft_loop(model_name: str, skill: str, steps: int, batch: int, max_length: int) -> dict:
    """The reference: the textbook peft AdaLoRA loop, no mdkif loop code (only its data encoding)."""
    from peft import AdaLoraConfig, get_peft_model

    from mdkif.models import load_model
    from mdkif.skills.data import MicroBatchStream, collate
    from mdkif.skills.datasets import skill_examples
    from mdkif.skills.job import SkillData

    loaded = load_model(name=model_name)
    data = SkillData(dir="pkg:assets/demo_skills", skills=(skill,))
    train, _, _ = skill_examples(data, loaded.tokenizer, max_length)
    cfg = AdaLoraConfig(
        init_r=8,
        target_r=4,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        total_step=steps,
        tinit=0,
        tfinal=1,
        orth_reg_weight=0.1,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(0)
    model = get_peft_model(loaded.model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    stream = MicroBatchStream(train, batch, seed=0)
    times, cpu, tokens = [], [], []
    for step in range(steps):
        b = collate(stream.batch(step), loaded.tokenizer.pad_token_id)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.base_model.update_and_allocate(step)
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        tokens.append(int(b["attention_mask"].sum()))
    return {"step_seconds": times, "step_cpu_seconds": cpu, "tokens": tokens}


def mdkif_job(out: Path, model_name: str, skill: str, steps: int, batch: int, max_length: int) -> Any:
    from mdkif.models import ModelConfig
    from mdkif.skills.config import AdapterConfig, OptimConfig
    from mdkif.skills.job import SkillData, TrainJob

    return TrainJob(
        name=skill,
        model=ModelConfig(name=model_name),
        adapter=AdapterConfig(r=8, target_r=4, orth_reg_weight=0.1),
        optim=OptimConfig(max_steps=steps, batch_size=batch, max_length=max_length, lr=3e-3),
        data=SkillData(dir="pkg:assets/demo_skills", skills=(skill,)),
        out_dir=out / skill,
        ckpt_dir=out / ".checkpoints" / skill,
        checkpoint_every=10_000,  # the final checkpoint only: measure the loop, not the disk
        seed=0,
        job_key="bench",
    )


def rates(steps: list[dict]) -> dict:
    """Median per-step tokens/s by wall-clock and by CPU time; step 1 (one-off allocations) is left out.

    Medians and CPU time, because this machine is shared: other jobs stretch some steps' wall-clock.
    """
    steps = steps[1:]
    return {
        "tokens_per_s": statistics.median(s["tokens"] / s["step_seconds"] for s in steps),
        "tokens_per_cpu_s": statistics.median(s["tokens"] / s["step_cpu_seconds"] for s in steps),
        "steps": len(steps),
    }


def as_steps(run: dict) -> list[dict]:
    return [
        {"tokens": t, "step_seconds": w, "step_cpu_seconds": c}
        for t, w, c in zip(run["tokens"], run["step_seconds"], run["step_cpu_seconds"], strict=True)
    ]


def part_overhead(args: argparse.Namespace, work: Path) -> dict:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from mdkif.skills.loop import train_loop_per_worker

    runs: dict[str, list[dict]] = {"plain": [], "direct": [], "ray": []}
    extra: dict = {"ray_fit_wall_seconds": [], "ray_report_seconds_per_step": []}
    for rnd in range(args.rounds):  # alternate the variants so slow phases of the machine hit all of them
        plain = plain_peft_loop(args.model, args.skill, args.steps, args.batch, args.max_length)
        runs["plain"] += as_steps(plain)[1:] if rnd else as_steps(plain)

        seen: list[dict] = []
        job = mdkif_job(
            work / f"direct{rnd}", args.model, args.skill, args.steps, args.batch, args.max_length
        )
        train_loop_per_worker({"job": job, "report": seen.append})
        runs["direct"] += seen[1:] if rnd else seen

        fast_train_reports()
        ray.init(include_dashboard=True, num_cpus=args.cpus, log_to_driver=False)
        try:
            job = mdkif_job(
                work / f"ray{rnd}", args.model, args.skill, args.steps, args.batch, args.max_length
            )
            t0 = time.perf_counter()
            TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"job": job},
                scaling_config=ray.train.ScalingConfig(
                    num_workers=1, resources_per_worker={"CPU": args.cpus}
                ),
                run_config=ray.train.RunConfig(
                    name=f"bench-overhead-{rnd}", storage_path=str(work / "ray-storage")
                ),
            ).fit()
            extra["ray_fit_wall_seconds"].append(time.perf_counter() - t0)
        finally:
            ray.shutdown()
        meta = json.loads((work / f"ray{rnd}" / args.skill / "metrics.json").read_text())
        runs["ray"] += meta["history"][1:] if rnd else meta["history"]
        extra["ray_report_seconds_per_step"].append(meta["report_seconds_this_attempt"] / meta["steps"])
        extra.setdefault("ray_compute_seconds", []).append(meta["compute_seconds_this_attempt"])

    rows = {name: rates(steps) for name, steps in runs.items()}
    for r in rows.values():
        r["overhead_vs_plain_pct"] = (
            100.0 * (rows["plain"]["tokens_per_s"] - r["tokens_per_s"]) / rows["plain"]["tokens_per_s"]
        )
        r["cpu_overhead_vs_plain_pct"] = (
            100.0
            * (rows["plain"]["tokens_per_cpu_s"] - r["tokens_per_cpu_s"])
            / rows["plain"]["tokens_per_cpu_s"]
        )
    step_s = statistics.median(s["step_seconds"] for s in runs["ray"])
    report_s = statistics.median(extra["ray_report_seconds_per_step"])
    rows["ray"]["report_seconds_per_step"] = report_s
    rows["ray"]["report_share_of_step_pct"] = 100.0 * report_s / (step_s + report_s)
    rows["ray"]["fit_wall_seconds"] = extra["ray_fit_wall_seconds"]
    rows["ray"]["startup_and_teardown_seconds"] = [
        w - c for w, c in zip(extra["ray_fit_wall_seconds"], extra["ray_compute_seconds"], strict=True)
    ]
    return rows


def part_parallel(args: argparse.Namespace, work: Path) -> dict:
    import ray

    from mdkif.skills.config import load_stage
    from mdkif.skills.runner import run_skills

    def once(tag: str, workers: int, cpus_per_worker: float) -> dict:
        out = work / tag
        cfg = load_stage(
            REPO / "train" / "skills_demo.yaml",
            [
                f"output_dir={out}",
                f"model.name={args.parallel_model}",
                f"optim.max_steps={args.parallel_steps}",
                f"optim.max_length={args.max_length}",
                f"ray.num_workers={workers}",
                f"ray.cpus_per_worker={cpus_per_worker}",
                "checkpoint_every=1000",
            ],
        )
        t0 = time.perf_counter()
        manifest = run_skills(cfg)
        wall = time.perf_counter() - t0
        trained = [m for m in manifest["skills"].values() if m.get("status") == "trained"]
        return {
            "workers": workers,
            "cpus_per_worker": cpus_per_worker,
            "wall_seconds": wall,
            "skills": len(trained),
        }

    fast_train_reports()
    ray.init(include_dashboard=True, num_cpus=args.cpus, log_to_driver=False)
    try:
        parallel = once("parallel", args.cpus, 1.0)
        sequential = once("sequential", 1, float(args.cpus))
        # Start-up of one trainer: fit a 1-step skill; its wall minus its compute is the fixed cost.
        out = work / "startup"
        cfg = load_stage(
            REPO / "train" / "skills_demo.yaml",
            [
                f"output_dir={out}",
                "model.name=tiny",
                "optim.max_steps=1",
                "skills=[qa]",
                "ray.num_workers=1",
                f"ray.cpus_per_worker={args.cpus}",
            ],
        )
        t0 = time.perf_counter()
        run_skills(cfg)
        startup = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {
        "parallel": parallel,
        "sequential": sequential,
        "model": args.parallel_model,
        "steps_per_skill": args.parallel_steps,
        "cpus": args.cpus,
        "speedup": sequential["wall_seconds"] / parallel["wall_seconds"],
        "one_trainer_fit_seconds": startup,
        "estimated_12_trainers_startup_seconds": 12 * startup,
    }


def part_grouping(args: argparse.Namespace, work: Path) -> dict:
    from mdkif.data.build import build_skill_data
    from mdkif.models import ModelConfig, load_model
    from mdkif.skills.adapters import build_peft_model, orth_penalty
    from mdkif.skills.config import AdapterConfig
    from mdkif.skills.data import MicroBatchStream, collate
    from mdkif.skills.datasets import skill_examples
    from mdkif.skills.job import SkillData
    from mdkif.skills.losses import token_losses

    t_start = time.perf_counter()
    skills = args.group_skills.split(",")
    data_dir = work / "grouping-skills"
    build_skill_data(
        args.data_root, data_dir, max_per_task=args.group_max_per_task, skip_bad=True, skills=skills
    )
    loaded = load_model(ModelConfig(name=args.model))
    pad_id = loaded.tokenizer.pad_token_id
    data = SkillData(dir=str(data_dir), skills=tuple(skills))
    train, _, _ = skill_examples(data, loaded.tokenizer, args.group_max_length)
    steps, size = args.group_steps, args.group_batch

    grouped_stream = MicroBatchStream(train, size, seed=0)
    if steps + 2 > grouped_stream.per_epoch:
        raise SystemExit(f"--group-steps {steps}: the data gives {grouped_stream.per_epoch - 2} at most")
    # Step 0 is the epoch's widest micro-batch by construction: timing it would over-weight long batches
    # in a short sample, so the timed steps are 1..N and the untimed warm-up is step N+1.
    grouped = [grouped_stream.batch(k) for k in range(1, steps + 1)]
    warmup = grouped_stream.batch(steps + 1)
    timed = [e for b in grouped for e in b]
    # The random variant: the ungrouped stream over exactly the grouped steps' examples.
    random_stream = MicroBatchStream(timed, size, seed=0, group_by_length=False)
    shuffled = [random_stream.batch(k) for k in range(random_stream.per_epoch)]

    adapter = AdapterConfig()
    total = args.group_repeats * (len(grouped) + len(shuffled)) + 1
    model = build_peft_model(loaded.model, adapter, total, seed=0, quantized=False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3)
    at = 0

    def train_step(examples: list) -> dict:
        """The loop's step on one micro-batch: token-mean CE + orthogonality, clip, step, allocate."""
        nonlocal at
        t0, c0 = time.perf_counter(), time.process_time()
        b = collate(examples, pad_id)
        ce, n = token_losses(model, b)
        loss = ce / max(n, 1) + adapter.orth_reg_weight * orth_penalty(model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        model.base_model.update_and_allocate(at)
        opt.zero_grad()
        at += 1
        real = int(b["attention_mask"].sum())
        return {
            "real": real,
            "padded": b["attention_mask"].numel() - real,
            "wall": time.perf_counter() - t0,
            "cpu": time.process_time() - c0,
        }

    train_step(warmup)
    # runs[name][k]: the repeats of step k. Steps alternate random/grouped, so slow phases of the machine
    # hit both variants; each step's time is its fastest repeat, the one least disturbed by other jobs.
    runs: dict[str, list[list[dict]]] = {"random": [[] for _ in shuffled], "grouped": [[] for _ in grouped]}
    for rep in range(args.group_repeats):
        for k in range(max(len(shuffled), len(grouped))):
            for name, batches in (("random", shuffled), ("grouped", grouped)):
                if k < len(batches):
                    r = train_step(batches[k])
                    runs[name][k].append(r)
                    print(
                        f"grouping: repeat {rep + 1} {name} step {k + 1}: {r['real']} real + "
                        f"{r['padded']} pad tokens, {r['wall']:.1f} s",
                        flush=True,
                    )

    rows = {}
    for name, reps in runs.items():
        recs = [rs[0] for rs in reps]
        real, padded = sum(r["real"] for r in recs), sum(r["padded"] for r in recs)
        wall = sum(min(r["wall"] for r in rs) for rs in reps)
        cpu = sum(min(r["cpu"] for r in rs) for rs in reps)
        rows[name] = {
            "steps": len(recs),
            "repeats": args.group_repeats,
            "step_seconds_all_repeats": [[r["wall"] for r in rs] for rs in reps],
            "real_tokens": real,
            "padded_tokens": padded,
            "padding_share": padded / (real + padded),
            "step_seconds_total": wall,
            "step_seconds_mean": wall / len(recs),
            "real_tokens_per_s": real / wall,
            "real_tokens_per_cpu_s": real / cpu,
        }
    lengths = [len(e.input_ids) for e in train]

    def epoch_padding_share(stream: MicroBatchStream) -> float:
        pad = total = 0
        for idx in stream.epoch_batches(0):
            width = max(lengths[i] for i in idx)
            pad += sum(width - lengths[i] for i in idx)
            total += width * len(idx)
        return pad / total

    for name, grouped_flag in (("random", False), ("grouped", True)):
        stream = MicroBatchStream(train, size, seed=0, group_by_length=grouped_flag)
        rows[name]["padding_share_full_epoch"] = epoch_padding_share(stream)
    return {
        **rows,
        "ratio_grouped_vs_random": rows["grouped"]["real_tokens_per_s"] / rows["random"]["real_tokens_per_s"],
        "ratio_grouped_vs_random_cpu": rows["grouped"]["real_tokens_per_cpu_s"]
        / rows["random"]["real_tokens_per_cpu_s"],
        "settings": {
            "model": args.model,
            "adapter": "adalora (AdapterConfig defaults, built by the loop's build_peft_model)",
            "skills": skills,
            "max_per_task": args.group_max_per_task,
            "train_examples": len(train),
            "example_tokens_median": statistics.median(lengths),
            "example_tokens_max": max(lengths),
            "mega_batch": grouped_stream.mega_batch,
            "batch": size,
            "max_length": args.group_max_length,
            "steps_per_variant": steps,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "torch_threads": torch.get_num_threads(),
        "wall_seconds": time.perf_counter() - t_start,
        "note": args.note,
    }


def precision_job(out: Path, args: argparse.Namespace, data_dir: Path, dtype: str) -> Any:
    """The reference skills' training job (train/skills_cpu.yaml's model, adapter, optimiser) at `dtype`."""
    from mdkif.skills.config import load_stage
    from mdkif.skills.job import SkillData, TrainJob

    stage = load_stage(REPO / "train" / "skills_cpu.yaml", [f"output_dir={out}", f"model.name={args.model}"])
    return TrainJob(
        name=f"precision-{dtype}",
        model=stage.model.model_copy(update={"dtype": dtype}),
        adapter=stage.adapter,
        optim=stage.optim.model_copy(update={"max_steps": args.precision_steps}),
        data=SkillData(
            dir=str(data_dir),
            skills=tuple(args.group_skills.split(",")),
            max_val=args.precision_val,
        ),
        out_dir=out / dtype,
        ckpt_dir=out / ".checkpoints" / dtype,
        checkpoint_every=10_000,  # the final checkpoint only: measure the loop, not the disk
        seed=0,
        job_key=f"bench-precision-{dtype}",
    )


def matmul_peak(dtype: torch.dtype, shape: tuple[int, int, int] = (1024, 576, 1536), reps: int = 20) -> float:
    """Measured FLOP/s of one matrix product of a training step's typical shape (tokens x hidden x MLP)."""
    m, k, n = shape
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def profile_steps(args: argparse.Namespace, work: Path, data_dir: Path, dtype: str) -> dict:
    """torch.profiler over `--profile-steps` steps of the loop (after 2 untimed): top ops and matmul FLOPs."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from mdkif.skills.loop import train_loop_per_worker

    active = args.profile_steps
    job = precision_job(work / f"profile-{dtype}", args, data_dir, dtype)
    job = job.model_copy(update={"optim": job.optim.model_copy(update={"max_steps": active + 3})})
    prof = profile(
        activities=[ProfilerActivity.CPU],
        schedule=schedule(wait=1, warmup=1, active=active, repeat=1),
        with_flops=True,
    )
    seen: list[dict] = []
    with prof:
        train_loop_per_worker(
            {"job": job, "report": seen.append, "callbacks": [lambda _job, _rank, _step: prof.step()]}
        )
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    matmul = {
        "aten::mm",
        "aten::bmm",
        "aten::addmm",
        "aten::baddbmm",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
    }
    mm_us = sum(e.self_cpu_time_total for e in events if e.key in matmul)
    flops = sum(e.flops or 0 for e in events)
    steps = seen[2 : 2 + active]
    step_s = sum(s["step_seconds"] for s in steps)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    peak = matmul_peak(torch.bfloat16 if job.model.dtype != "float32" else torch.float32)
    return {
        "dtype": dtype,
        "steps": active,
        "step_seconds": step_s / max(len(steps), 1),
        "tokens_per_step": sum(s["tokens"] for s in steps) / max(len(steps), 1),
        "self_cpu_seconds": total_us / 1e6,
        "matmul_share": mm_us / total_us if total_us else 0.0,
        "matmul_flops_per_step": flops / active,
        "achieved_flops": flops / step_s if step_s else 0.0,
        "peak_matmul_flops": peak,
        "share_of_peak": (flops / step_s) / peak if step_s else 0.0,
        "top_ops": [
            {"op": e.key, "self_seconds": e.self_cpu_time_total / 1e6 / active, "calls": e.count // active}
            for e in top
        ],
    }


def part_precision(args: argparse.Namespace, work: Path) -> dict:
    """The loop at `model.dtype: auto` vs float32: same data, steps, seed; real tokens/s and val loss."""
    from mdkif.data.build import build_skill_data
    from mdkif.models.precision import cpu_bf16_reason, resolve_dtype
    from mdkif.skills.loop import train_loop_per_worker

    t_start = time.perf_counter()
    data_dir = work / "precision-skills"
    build_skill_data(
        args.data_root,
        data_dir,
        max_per_task=args.precision_max_per_task,
        skip_bad=True,
        skills=args.group_skills.split(","),
    )
    auto = resolve_dtype("auto", torch.device("cpu"))
    runs: dict[str, dict] = {}
    for rnd in range(args.rounds):
        for dtype in ("float32", "auto"):  # alternate, so a slow phase of the machine hits both
            job = precision_job(work / f"precision{rnd}", args, data_dir, dtype)
            seen: list[dict] = []
            train_loop_per_worker({"job": job, "report": seen.append})
            meta = json.loads((job.out_dir / "metrics.json").read_text())
            hist = meta["history"][1:]  # step 1 pays one-off allocations
            r = runs.setdefault(dtype, {"tokens": 0, "seconds": 0.0, "cpu_seconds": 0.0, "val": []})
            r["tokens"] += sum(h["tokens"] for h in hist)
            r["seconds"] += sum(h["step_seconds"] for h in hist)
            r["cpu_seconds"] += sum(h["step_cpu_seconds"] for h in hist)
            r["val"].append((meta["val_loss_before"], meta["val_loss_after"]))
            r["final_train_loss"] = meta["final_train_loss"]
            r["train_examples"] = meta["train_examples"]
            print(
                f"precision {dtype}: {sum(h['tokens'] for h in hist) / sum(h['step_seconds'] for h in hist):.0f} "
                f"real tokens/s, val loss {meta['val_loss_before']:.4f} -> {meta['val_loss_after']:.4f}",
                flush=True,
            )
    rows = {}
    for dtype, r in runs.items():
        rows[dtype] = {
            "real_tokens_per_s": r["tokens"] / r["seconds"],
            "real_tokens_per_cpu_s": r["tokens"] / r["cpu_seconds"],
            "val_loss_before": r["val"][0][0],
            "val_loss_after": r["val"][-1][1],
            "final_train_loss": r["final_train_loss"],
        }
    f32, au = rows["float32"], rows["auto"]
    result = {
        **rows,
        "auto_dtype": str(auto).removeprefix("torch."),
        "auto_reason": cpu_bf16_reason()[1],
        "speedup": au["real_tokens_per_s"] / f32["real_tokens_per_s"],
        "speedup_cpu": au["real_tokens_per_cpu_s"] / f32["real_tokens_per_cpu_s"],
        "val_loss_rel_diff": (au["val_loss_after"] - f32["val_loss_after"]) / f32["val_loss_after"],
        "matmul_peak_tflops": {
            "float32": matmul_peak(torch.float32) / 1e12,
            "bfloat16": matmul_peak(torch.bfloat16) / 1e12,
        },
        "settings": {
            "model": args.model,
            "skills": args.group_skills.split(","),
            "max_per_task": args.precision_max_per_task,
            "train_examples": runs["auto"]["train_examples"],
            "steps": args.precision_steps,
            "rounds": args.rounds,
            "batch": f"{job.optim.batch_size} x {job.optim.grad_accum} micro-batch(es), <= "
            f"{job.optim.max_length} tokens (train/skills_cpu.yaml)",
            "adapter": f"AdaLoRA r {job.adapter.r} -> {job.adapter.target_r}, "
            f"{len(job.adapter.target_modules)} projections, orth_reg {job.adapter.orth_reg_weight}",
        },
        "machine": machine_facts(),
        "wall_seconds": time.perf_counter() - t_start,
        "note": args.note,
    }
    if args.profile:
        result["profile"] = {d: profile_steps(args, work, data_dir, d) for d in ("float32", "auto")}
    return result


def machine_facts() -> dict:
    from mdkif.models.precision import cpu_flags

    flags = cpu_flags()
    return {
        "cpu": platform.processor() or platform.machine(),
        "model_name": _cpu_model_name(),
        "cores": os.cpu_count(),
        "bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def precision_markdown(p: dict) -> list[str]:
    s, m = p["settings"], p["machine"]
    f32, au = p["float32"], p["auto"]
    lines = [
        f"## Precision: `model.dtype: auto` ({p['auto_dtype']}) vs float32, the project's AdaLoRA loop "
        f"({s['model']}, skills {'+'.join(s['skills'])}, {s['steps']} steps, {s['batch']})",
        "",
        f"Machine: {m['model_name']}, {m['cores']} cores, bf16 flags {m['bf16_flags'] or 'none'}, load "
        f"{m['load_avg_1min_at_start']} at start, torch {m['torch']} ({m['torch_threads']} threads). `auto` "
        f"chose {p['auto_dtype']} because {p['auto_reason']}. Plain matrix product (1024x576 @ 576x1536) in "
        f"the same run: fp32 {p['matmul_peak_tflops']['float32']:.2f}, bf16 "
        f"{p['matmul_peak_tflops']['bfloat16']:.2f} TFLOP/s. {s['train_examples']} training examples; both "
        f"runs train the same examples in the same order from the same seed ({s['rounds']} alternating round(s)).",
        "",
        "| precision | real tokens/s (wall) | real tokens per CPU-second | val loss before | val loss after "
        "| last train loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in (("float32", f32), (f"auto ({p['auto_dtype']})", au)):
        lines.append(
            f"| {name} | {r['real_tokens_per_s']:.0f} | {r['real_tokens_per_cpu_s']:.0f} "
            f"| {r['val_loss_before']:.4f} | {r['val_loss_after']:.4f} | {r['final_train_loss']:.4f} |"
        )
    lines += [
        "",
        f"auto vs float32: **{p['speedup']:.2f}x** real tokens/s (target >= 3x), {p['speedup_cpu']:.2f}x per "
        f"CPU-second; validation loss after the same steps {100 * p['val_loss_rel_diff']:+.2f}% relative "
        "(target within 2%).",
        "",
    ]
    for dtype, prof in (p.get("profile") or {}).items():
        lines += [
            f"### Profile of {prof['steps']} steps at {dtype} (torch.profiler, after 2 untimed steps)",
            "",
            f"Step {prof['step_seconds']:.2f} s for {prof['tokens_per_step']:.0f} real tokens; matrix "
            f"products (mm, bmm, flash attention) {100 * prof['matmul_share']:.0f}% of the CPU time; "
            f"{prof['matmul_flops_per_step'] / 1e9:.0f} GFLOP of products a step, "
            f"{prof['achieved_flops'] / 1e12:.3f} TFLOP/s over the step = "
            f"**{100 * prof['share_of_peak']:.0f}% of the measured matrix-product peak** "
            f"({prof['peak_matmul_flops'] / 1e12:.2f} TFLOP/s).",
            "",
            "| op | self seconds per step | calls per step |",
            "| --- | ---: | ---: |",
        ]
        lines += [f"| `{o['op']}` | {o['self_seconds']:.3f} | {o['calls']} |" for o in prof["top_ops"]]
        lines.append("")
    if p.get("note"):
        lines += [f"Note: {p['note']}", ""]
    return lines


def grouping_markdown(g: dict) -> list[str]:
    s = g["settings"]
    lines = [
        f"## Length-grouped vs random micro-batches ({s['model']}, AdaLoRA, skills {'+'.join(s['skills'])}, "
        f"{s['steps_per_variant']} steps each, fastest of {g['grouped']['repeats']}, "
        f"batch {s['batch']} x <= {s['max_length']} tokens)",
        "",
        f"Machine: {g['machine']}; torch threads {g['torch_threads']}. {s['train_examples']} training "
        f"examples (median {s['example_tokens_median']:.0f}, max {s['example_tokens_max']} tokens), "
        f"mega-batch {s['mega_batch']} micro-batches; both variants train the same "
        f"{g['grouped']['real_tokens']} real tokens.",
        "",
        "| micro-batches | real tokens/s (wall) | real tokens per CPU-second | padding share (timed steps) "
        "| padding share (whole epoch) | mean step, fastest repeat (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("random", "grouped"):
        r = g[name]
        lines.append(
            f"| {name} | {r['real_tokens_per_s']:.0f} | {r['real_tokens_per_cpu_s']:.0f} "
            f"| {100 * r['padding_share']:.1f}% | {100 * r['padding_share_full_epoch']:.1f}% "
            f"| {r['step_seconds_mean']:.2f} |"
        )
    lines += [
        "",
        f"Grouped vs random real-token throughput: {g['ratio_grouped_vs_random']:.2f}x (wall), "
        f"{g['ratio_grouped_vs_random_cpu']:.2f}x (CPU). Measurement wall-clock {g['wall_seconds']:.0f} s "
        "(data build and model load included).",
        "",
    ]
    if g.get("note"):
        lines += [f"Note: {g['note']}", ""]
    return lines


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# Skill training benchmark",
        "",
        f"Machine: {result['machine']}; torch threads {result['torch_threads']}.",
        "",
    ]
    if "overhead" in result:
        o = result["overhead"]
        s = result["settings"]
        lines += [
            f"## Ray loop vs plain peft loop ({s['model']}, skill {s['skill']}, {s['steps']} steps, batch {s['batch']} x <= {s['max_length']} tokens)",
            "",
            "| loop | tokens/s (wall, median step) | vs plain | tokens per CPU-second | vs plain |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name in ("plain", "direct", "ray"):
            r = o[name]
            lines.append(
                f"| {name} | {r['tokens_per_s']:.0f} | {0.0 - r['overhead_vs_plain_pct'] + 0.0:+.1f}% "
                f"| {r['tokens_per_cpu_s']:.0f} | {0.0 - r['cpu_overhead_vs_plain_pct'] + 0.0:+.1f}% |"
            )
        fits = ", ".join(f"{w:.0f}" for w in o["ray"]["fit_wall_seconds"])
        starts = ", ".join(f"{w:.0f}" for w in o["ray"]["startup_and_teardown_seconds"])
        lines += [
            "",
            f"Ray per-step cost measured inside the loop: `ray.train.report` takes "
            f"{1000 * o['ray']['report_seconds_per_step']:.1f} ms a step "
            f"({o['ray']['report_share_of_step_pct']:.2f}% of a step).",
            f"Ray `fit()` wall-clock per round: {fits} s; of it start-up/teardown (not training): {starts} s.",
            "",
        ]
    if result.get("note"):
        lines += [f"Note: {result['note']}", ""]
    if "parallel" in result:
        p = result["parallel"]
        lines += [
            f"## 12 demo skills, same {p['cpus']} CPUs ({p['model']}, {p['steps_per_skill']} steps each)",
            "",
            "| schedule | wall-clock (s) |",
            "| --- | ---: |",
            f"| parallel: one trainer, {p['parallel']['workers']} workers share the skills | {p['parallel']['wall_seconds']:.1f} |",
            f"| sequential: one trainer, 1 worker, skills one after another | {p['sequential']['wall_seconds']:.1f} |",
            f"| (estimate) one trainer per skill, in turn: 12 x {p['one_trainer_fit_seconds']:.1f} s start-up alone | {p['estimated_12_trainers_startup_seconds']:.0f} |",
            "",
            f"Speed-up parallel vs sequential: {p['speedup']:.2f}x.",
            "",
        ]
    if "grouping" in result:
        lines += grouping_markdown(result["grouping"])
    if "precision" in result:
        lines += precision_markdown(result["precision"])
    path.write_text("\n".join(lines) + "\n")


def figures(d: dict) -> list[Figure]:
    """The rows bench/summary.py tabulates (each against its same-run baseline)."""
    rows = []
    p = d.get("parallel")
    if p:
        rows.append(
            Figure(
                "train",
                f"{p['parallel']['skills']} skills, one trainer, {p['parallel']['workers']} workers",
                p["parallel"]["wall_seconds"],
                p["sequential"]["wall_seconds"],
                "one worker, skills in sequence",
                "s",
            )
        )
        rows.append(
            Figure(
                "train",
                "start-up paid by one shared trainer",
                p["one_trainer_fit_seconds"],
                p["estimated_12_trainers_startup_seconds"],
                "12 separate TorchTrainers (estimated)",
                "s",
            )
        )
    pr = d.get("precision")
    if pr:
        rows.append(
            Figure(
                "train",
                f"AdaLoRA loop real tokens/s, model.dtype auto ({pr['auto_dtype']})",
                pr["auto"]["real_tokens_per_s"],
                pr["float32"]["real_tokens_per_s"],
                "float32, same data and steps",
                "tokens/s",
                ">= 3x",
                pr["speedup"] >= 3.0,
            )
        )
        rows.append(
            Figure(
                "train",
                "validation loss after the same steps, auto vs float32",
                pr["auto"]["val_loss_after"],
                pr["float32"]["val_loss_after"],
                "float32",
                "loss",
                "within 2% relative",
                abs(pr["val_loss_rel_diff"]) <= 0.02,
            )
        )
    o = d.get("overhead", {}).get("ray")
    if o and "report_share_of_step_pct" in o:
        rows.append(
            Figure(
                "train",
                "ray.train.report per step",
                o["report_seconds_per_step"] * 1000,
                None,
                "",
                "ms",
                f"{o['report_share_of_step_pct']:.2f}% of a step",
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["overhead", "parallel", "grouping", "precision", "all"], default="all")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model for the overhead part")
    ap.add_argument("--skill", default="qa")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of plain/direct/ray")
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--parallel-model", default="tiny")
    ap.add_argument("--parallel-steps", type=int, default=6)
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "skills")
    ap.add_argument("--group-skills", default="ner,summarization,qa,nli", help="comma-separated")
    ap.add_argument("--group-max-per-task", type=int, default=40, help="records per task (seeded)")
    ap.add_argument("--group-steps", type=int, default=8, help="timed steps per variant")
    ap.add_argument("--group-repeats", type=int, default=2, help="runs of each step; the fastest counts")
    ap.add_argument("--group-batch", type=int, default=4)
    ap.add_argument("--group-max-length", type=int, default=512)
    ap.add_argument("--precision-steps", type=int, default=12, help="optimizer steps per precision")
    ap.add_argument("--precision-max-per-task", type=int, default=60, help="records per task (seeded)")
    ap.add_argument("--precision-val", type=int, default=48, help="validation records")
    ap.add_argument("--profile", action="store_true", help="precision part: also profile a few steps")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--note", default="", help="free text stored with the results (e.g. other load on the machine)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.cpus)
    os.environ.setdefault("MDKIF_CACHE", str(Path.home() / ".cache" / "mdkif"))
    work = Path(tempfile.mkdtemp(prefix="mdkif-bench-train-"))
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "torch_threads": torch.get_num_threads(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "note": args.note,
    }
    try:
        if args.part in ("overhead", "all"):
            result["overhead"] = part_overhead(args, work)
        if args.part in ("parallel", "all"):
            result["parallel"] = part_parallel(args, work)
        if args.part in ("grouping", "all"):
            result["grouping"] = part_grouping(args, work)
        if args.part in ("precision", "all"):
            result["precision"] = part_precision(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "train.json"
    if args.part in ("grouping", "precision") and path.is_file():  # own settings and machine facts
        result = {**json.loads(path.read_text()), args.part: result[args.part]}
    elif args.part != "all" and path.is_file():  # one part re-run: keep the other part's last figures
        previous = json.loads(path.read_text())
        previous.update({k: v for k, v in result.items() if k != "settings"})
        previous.setdefault("settings", {}).update(result["settings"])
        result = previous
    write_markdown(result, args.out / "train.md")
    write_results("train", result, None, figures(result), results=args.out)
    print((args.out / "train.md").read_text())


if __name__ == "__main__":
    main()
