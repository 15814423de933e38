"""Run a stage: plan its jobs, schedule them on Ray Train (or in this process), and write what it made.

Skills: every `TorchTrainer.fit()` pays a start-up before its first step (bench/results/train.md measures
it), so the small skills do not get a trainer each. They are spread over the workers of ONE trainer (longest
first onto the least loaded worker), and each worker trains its share one after another. A skill marked
`workers: N > 1` gets its own trainer of N data-parallel workers. Several trainers run at once, each `fit()`
launched from a Ray task (Ray 2.60's Train v2 refuses a trainer inside a Tuner). Finished skills (same data
and settings) are skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from mdkif.fusion.bank import SKILLS_MANIFEST
from mdkif.ray_session import ray_session
from mdkif.skills.config import (
    CommonStage,
    CorpusSource,
    CptStage,
    PipelineStage,
    SftData,
    SftStage,
    SkillsStage,
    resolve_path,
)
from mdkif.skills.data import records_hash, total_steps
from mdkif.skills.devices import scaling_config
from mdkif.skills.job import CorpusData, SkillData, TrainJob, job_key
from mdkif.skills.loop import METRICS, StepCallback, finished, train_loop_per_worker
from mdkif.tracking import Run, stage_run

log = logging.getLogger(__name__)


def _base_job(cfg: CommonStage, name: str, out_dir: Path, data: SkillData | CorpusData) -> TrainJob:
    out_dir = Path(out_dir).resolve()
    return TrainJob(
        name=name,
        model=cfg.model,
        adapter=cfg.adapter,
        optim=cfg.optim,
        data=data,
        out_dir=out_dir,
        ckpt_dir=out_dir.parent / ".checkpoints" / out_dir.name,
        checkpoint_every=cfg.checkpoint_every,
        seed=cfg.seed,
        prompt_format=cfg.prompt_format,
        deepspeed=cfg.deepspeed,
    )


def skill_jobs(cfg: SkillsStage) -> tuple[list[TrainJob], dict[str, str]]:
    """One job per skill with data, its planned step count and key; and the skills left out, with why."""
    from mdkif.skills.datasets import skill_records

    out = Path(cfg.output_dir)
    jobs, left_out = [], {}
    for skill, spec in cfg.skill_specs().items():
        data = SkillData(
            dir=str(resolve_path(cfg.data_dir).resolve()),
            skills=(skill,),
            max_train=cfg.max_train_records,
            max_val=cfg.max_val_records,
            sample_seed=cfg.seed,
        )
        job = _base_job(cfg, skill, out / skill, data)
        overrides = {k: v for k, v in (("max_steps", spec.max_steps), ("epochs", spec.epochs)) if v}
        o = job.optim.model_copy(update=overrides)
        train, val = skill_records(data)
        if not train:
            left_out[skill] = "no training records"
            continue
        steps = total_steps(len(train), o.batch_size, o.grad_accum, spec.workers, o.epochs, o.max_steps)
        job = job.model_copy(update={"optim": o, "workers": spec.workers, "total_steps": steps})
        jobs.append(job.model_copy(update={"job_key": job_key(job, records_hash(train + val))}))
    return jobs, left_out


def _cost(job: TrainJob) -> int:
    return (job.total_steps or 0) * job.optim.batch_size * job.optim.grad_accum


def assign(jobs: list[TrainJob], workers: int) -> list[list[TrainJob]]:
    """Longest-processing-time-first: each job (cost = planned examples) goes to the least loaded worker."""
    bins: list[list[TrainJob]] = [[] for _ in range(min(workers, len(jobs)))]
    load = [0] * len(bins)
    for job in sorted(jobs, key=lambda j: -_cost(j)):
        i = load.index(min(load))
        bins[i].append(job)
        load[i] += _cost(job)
    return bins


def build_trainer(loop_config: dict[str, Any], num_workers: int, cfg: CommonStage, name: str) -> Any:
    """The `TorchTrainer` of one plan: `num_workers` workers sized by the config's `ray:` block (GPUs too)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    storage = Path(cfg.ray.storage_path or Path(cfg.output_dir) / ".ray").resolve()
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg.ray, num_workers),
        run_config=ray.train.RunConfig(
            name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures),
        ),
    )


def fit_trainer(loop_config: dict[str, Any], num_workers: int, cfg: CommonStage, name: str) -> None:
    """Build the plan's trainer and run it to the end (Ray must be running)."""
    trainer = build_trainer(loop_config, num_workers, cfg, name)
    # TorchTrainer.fit installs a SIGINT handler that aborts its run and leaves it installed afterwards:
    # a later Ctrl-C in the same process (the demo's server loop) then calls into a dead controller.
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)


def run_trainers(plans: list[tuple[dict[str, Any], int, str]], cfg: CommonStage) -> None:
    """Fit each (loop_config, workers, name); one runs in this process, several from parallel Ray tasks."""
    import ray

    if len(plans) == 1:
        loop_config, workers, name = plans[0]
        fit_trainer(loop_config, workers, cfg, name)
        return
    # A task that only waits on a trainer still needs a non-zero CPU share to be scheduled.
    remote_fit = ray.remote(num_cpus=0.01)(fit_trainer)
    ray.get([remote_fit.remote(lc, n, cfg, name) for lc, n, name in plans])


def _stage_ray(cfg: CommonStage) -> AbstractContextManager[bool]:
    """Ray for a training stage: its `ray.address`, the dashboard, workers' logs, fast Train reports."""
    return ray_session(cfg.ray.address, dashboard=True, log_to_driver=True, train=True)


def run_skills(cfg: SkillsStage, callbacks: Sequence[StepCallback] = ()) -> dict[str, Any]:
    """Train every skill of `cfg` (skipping finished ones) and write skills.json and loss curves; the
    stage's MLflow run gets the settings, each skill's curves and the bank as artifacts."""
    with stage_run(cfg.tracking, "skills") as run:
        manifest = _train_skills(cfg, callbacks)
        track_training(run, cfg, {k: v["adapter_dir"] for k, v in _trained(manifest).items()})
        run.metrics({"wall_seconds": manifest["wall_seconds"], "skills_trained": len(_trained(manifest))})
        run.artifact(Path(cfg.output_dir) / SKILLS_MANIFEST)
        run.artifact(Path(cfg.output_dir) / "loss_curves.png")
    return manifest


def _trained(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest["skills"].items() if v.get("status") == "trained"}


def track_training(run: Run, cfg: CommonStage, adapters: dict[str, str], prefix: str = "") -> None:
    """Log a training stage: its settings once, then per adapter (name -> folder with its metrics) the
    loss, lr and AdaLoRA-rank curves by step, validation losses and final ranks, and the adapter itself."""
    if not run.active:
        return
    run.params(
        {
            f"{prefix}model": cfg.model.model_dump(mode="json"),
            f"{prefix}adapter": cfg.adapter.model_dump(mode="json"),
            f"{prefix}optim": cfg.optim.model_dump(mode="json"),
            f"{prefix}seed": cfg.seed,
            f"{prefix}prompt_format": cfg.prompt_format,
            f"{prefix}deepspeed": cfg.deepspeed.model_dump() if cfg.deepspeed else None,
        }
    )
    for name, folder in adapters.items():
        meta = json.loads((Path(folder) / METRICS).read_text())
        history = meta["history"]
        steps = [h["step"] for h in history]
        for key in ("loss", "lr", "adalora_rank"):
            if history and all(key in h for h in history):
                run.series(f"{name}/{key}", [h[key] for h in history], steps)
        for key in ("val_loss", "label_accuracy"):  # at the early-stopping validations
            seen = [(h["step"], h[key]) for h in history if h.get(key) is not None]
            if seen:
                run.series(f"{name}/{key}", [v for _, v in seen], [s for s, _ in seen])
        run.metrics(
            {
                f"{name}/{k}": meta.get(k)
                for k in (
                    "val_loss_before",
                    "val_loss_after",
                    "final_train_loss",
                    "total_rank",
                    "steps",
                    "label_accuracy_before",
                    "label_accuracy_after",
                )
            }
            | {f"{name}/train_examples": meta.get("train_examples"), f"{name}/tokens": meta.get("tokens")}
        )
        run.artifact(folder, f"adapters/{name}")


def _train_skills(cfg: SkillsStage, callbacks: Sequence[StepCallback] = ()) -> dict[str, Any]:
    start = time.perf_counter()
    jobs, left_out = skill_jobs(cfg)
    todo = [j for j in jobs if finished(j) is None]
    log.info(
        "%d skills to train, %d already finished, %d without data",
        len(todo),
        len(jobs) - len(todo),
        len(left_out),
    )
    plans: list[tuple[dict[str, Any], int, str]] = []
    if todo:
        hooks = list(callbacks)
        shared = [j for j in todo if j.workers == 1]
        if shared:
            bins = assign(shared, cfg.ray.num_workers if cfg.ray.enabled else 1)
            plans.append(
                (
                    {"jobs_by_rank": bins, "callbacks": hooks},
                    len(bins),
                    "skills-shared",
                )
            )
        plans += [
            ({"job": j, "callbacks": hooks}, j.workers, f"skill-{j.name}") for j in todo if j.workers > 1
        ]
        if cfg.ray.enabled:
            with _stage_ray(cfg):
                run_trainers(plans, cfg)
        else:
            for loop_config, _, _ in plans:
                if "job" in loop_config:
                    raise ValueError("a skill with workers > 1 needs ray.enabled: true")
                train_loop_per_worker(loop_config)
    manifest = write_manifest(cfg, jobs, left_out, plans, time.perf_counter() - start)
    plot_curves(manifest, Path(cfg.output_dir) / "loss_curves.png")
    return manifest


def write_manifest(
    cfg: SkillsStage, jobs: list[TrainJob], left_out: dict[str, str], plans: list, seconds: float
) -> dict[str, Any]:
    """skills.json: base model, data, and per skill its hash, steps, losses and ranks after allocation."""
    skills: dict[str, Any] = {}
    for job in jobs:
        meta_path = job.out_dir / METRICS
        if not meta_path.is_file():
            skills[job.name] = {"status": "missing"}
            continue
        m = json.loads(meta_path.read_text())
        skills[job.name] = {
            "status": "trained",
            "adapter_dir": str(job.out_dir),
            "data_hash": m["data_hash"],
            "train_examples": m["train_examples"],
            "steps": m["steps"],
            "world_size": m["world_size"],
            "final_train_loss": m["final_train_loss"],
            "val_loss_before": m["val_loss_before"],
            "val_loss_after": m["val_loss_after"],
            "total_rank": m["total_rank"],
            "ranks": m["ranks"],
            "resumed_from_step": m["resumed_from_step"],
            "compute_seconds_this_attempt": m.get("compute_seconds_this_attempt"),
            "label_accuracy_before": m.get("label_accuracy_before"),
            "label_accuracy_after": m.get("label_accuracy_after"),
            "label_tasks": m.get("label_tasks") or {},
            "early_stopping": m.get("early_stopping"),
            "history": [
                {k: h[k] for k in ("step", "loss", "val_loss", "label_accuracy") if k in h}
                for h in m["history"]
            ],
        }
    for skill, why in left_out.items():
        skills[skill] = {"status": "skipped", "reason": why}
    manifest = {
        "base_model": cfg.model.model_dump(mode="json"),
        "adapter": cfg.adapter.model_dump(mode="json"),
        "prompt_format": cfg.prompt_format,
        "data_dir": str(resolve_path(cfg.data_dir)),
        "trainers": [{"name": name, "workers": n, "skills": _plan_skills(lc)} for lc, n, name in plans],
        "wall_seconds": seconds,
        "skills": skills,
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SKILLS_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _plan_skills(loop_config: dict[str, Any]) -> list[list[str]] | list[str]:
    if "job" in loop_config:
        return [loop_config["job"].name]
    return [[j.name for j in b] for b in loop_config["jobs_by_rank"]]


def plot_curves(manifest: dict[str, Any], path: Path) -> None:
    """One panel per trained skill: training loss by step, with validation loss before/after in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = {k: v for k, v in manifest["skills"].items() if v.get("status") == "trained"}
    if not trained:
        return
    cols = 4
    rows = -(-len(trained) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, (skill, m) in zip(axes.flat, trained.items(), strict=False):
        ax.plot([h["step"] for h in m["history"]], [h["loss"] for h in m["history"]], lw=1.2, label="train")
        before, after = m["val_loss_before"], m["val_loss_after"]
        validated = [(h["step"], h["val_loss"]) for h in m["history"] if h.get("val_loss") is not None]
        if validated and before is not None:  # early-stopping validations, from the start
            steps, losses = zip(*[(0, before), *validated], strict=True)
            ax.plot(steps, losses, "o-", ms=3, lw=1.0, label="validation")
            best = (m.get("early_stopping") or {}).get("best_step")
            if best is not None:
                ax.axvline(best, color="grey", lw=0.8, ls=":")
            ax.legend(fontsize=7)
        val = f"val {before:.2f}->{after:.2f}" if before is not None and after is not None else ""
        ax.set_title(f"{skill}  {val}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
    for ax in list(axes.flat)[len(trained) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- single-adapter stages: CPT, SFT, task adaptation, and the pipeline of them ---------------------------


def stage_job(
    cfg: CommonStage,
    name: str,
    out_dir: Path,
    stage: str,
    corpus: list[CorpusSource] | None = None,
    data: SftData | None = None,
) -> TrainJob:
    """The one job of a CPT/SFT/task stage; its key makes a re-run skip it when nothing changed."""
    from mdkif.data.records import SKILLS
    from mdkif.skills.datasets import skill_records

    job_data: SkillData | CorpusData
    if stage == "cpt":
        job_data = CorpusData(
            # absolute: Ray workers do not run in this process's working directory
            sources=tuple(c.model_copy(update={"path": Path(c.path).resolve()}) for c in corpus or ()),
            val_fraction=getattr(cfg, "val_fraction", 0.05),
        )
        blob = json.dumps(job_data.model_dump(mode="json"), sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    else:
        assert data is not None
        job_data = SkillData(
            dir=str(resolve_path(data.dir).resolve()),
            skills=tuple(data.skills or SKILLS),
            max_train=data.max_records,
            max_val=data.max_val_records,
            sample_seed=cfg.seed,
        )
        train, val = skill_records(job_data)
        digest = records_hash(train + val)
    job = _base_job(cfg, name, out_dir, job_data)
    return job.model_copy(update={"job_key": job_key(job, digest)})


def _run_single(cfg: CommonStage, job: TrainJob, callbacks: Sequence[StepCallback] = ()) -> dict[str, Any]:
    if finished(job) is None:
        loop_config = {"job": job, "callbacks": list(callbacks)}
        if cfg.ray.enabled:
            with _stage_ray(cfg):
                run_trainers([(loop_config, cfg.ray.num_workers, job.name)], cfg)
        else:
            train_loop_per_worker(loop_config)
    meta = json.loads((job.out_dir / METRICS).read_text())
    plot_curves({"skills": {job.name: {"status": "trained", **meta}}}, job.out_dir / "loss_curve.png")
    return meta


def run_stage(cfg: CptStage | SftStage, callbacks: Sequence[StepCallback] = ()) -> dict[str, Any]:
    """Train the stage's one adapter into OUTPUT/adapter (peft format) with metrics and a loss curve."""
    job = stage_job(
        cfg,
        cfg.stage,
        Path(cfg.output_dir) / "adapter",
        cfg.stage,
        getattr(cfg, "corpus", None),
        getattr(cfg, "data", None),
    )
    with stage_run(cfg.tracking, cfg.stage) as run:
        meta = _run_single(cfg, job, callbacks)
        track_training(run, cfg, {cfg.stage: str(job.out_dir)})
    return meta


def merge_adapter(base: dict[str, Any], adapter_dir: Path, out_dir: Path) -> Path:
    """Fold a LoRA adapter into an unquantized copy of its base and save it as a model directory.

    The copy is loaded where and in the precision the base config says (`auto`: the GPU in bf16 when
    there is one), not always as fp32 on the driver's CPU (32 GB for an 8B model), and it is saved in that
    precision; on a CPU, `auto` keeps the saved copy in fp32 (bf16 there is a compute choice, and the next
    step's base should not lose precision to it: `mdkif.models.precision.storage_dtype`).
    """
    from peft import PeftModel

    from mdkif.models import ModelConfig, load_model, resolve_device
    from mdkif.models.loading import save_model_dir
    from mdkif.models.precision import storage_dtype

    if (out_dir / "config.json").is_file():
        return out_dir
    cfg = ModelConfig(**{**base, "quantization": "none"})
    dtype = storage_dtype(cfg.dtype, resolve_device(cfg.device))
    loaded = load_model(cfg.model_copy(update={"dtype": str(dtype).removeprefix("torch.")}))
    merged = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).merge_and_unload()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    save_model_dir(merged, loaded.tokenizer, tmp)
    tmp.rename(out_dir)
    return out_dir


def run_pipeline(cfg: PipelineStage) -> dict[str, Any]:
    """CPT -> SFT -> task adaptation: each step trains an adapter on the previous step's merged model."""
    with stage_run(cfg.tracking, "pipeline") as run:
        report = _run_pipeline(cfg, run)
        run.artifact(Path(cfg.output_dir) / "pipeline.json")
    return report


def _run_pipeline(cfg: PipelineStage, run: Run) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    model = cfg.model.model_dump(mode="json")
    report: dict[str, Any] = {"base_model": model["name"], "steps": []}
    for step in cfg.steps:
        step_cfg = cfg.model_copy(
            update={
                "model": cfg.model.model_copy(update={"name": model["name"]}),
                "adapter": step.adapter or cfg.adapter,
                "optim": step.optim or cfg.optim,
            }
        )
        job = stage_job(step_cfg, step.name, out / step.name / "adapter", step.stage, step.corpus, step.data)
        meta = _run_single(step_cfg, job)
        track_training(run, step_cfg, {step.name: str(job.out_dir)}, prefix=f"{step.name}.")
        merged = merge_adapter(model, job.out_dir, out / step.name / "merged")
        report["steps"].append(
            {
                "name": step.name,
                "stage": step.stage,
                "base": model["name"],
                "adapter_dir": str(job.out_dir),
                "merged_dir": str(merged),
                "steps": meta["steps"],
                "val_loss_before": meta["val_loss_before"],
                "val_loss_after": meta["val_loss_after"],
            }
        )
        model = {**model, "name": str(merged.resolve()), "gguf_file": None}
    report["final_model"] = model["name"]
    (out / "pipeline.json").write_text(json.dumps(report, indent=2))
    return report


def run(cfg: Any, callbacks: Sequence[StepCallback] = ()) -> dict[str, Any]:
    """Dispatch on the config's `stage`; `callbacks` run after every training step (tests inject faults)."""
    if isinstance(cfg, SkillsStage):
        return run_skills(cfg, callbacks)
    if isinstance(cfg, PipelineStage):
        return run_pipeline(cfg)
    return run_stage(cfg, callbacks)


def train_skill_bank(cfg: SkillsStage) -> Path:
    """The skills stage of a plan: train (or resume, or reuse) every skill, print each one's validation
    loss, return the adapters folder."""
    result = run_skills(cfg)
    print_skill_losses(result)
    return Path(cfg.output_dir)


def print_skill_losses(result: dict[str, Any]) -> None:
    """One line per skill of a skills-stage result: validation loss before -> after, or why it is absent."""
    for skill, m in result["skills"].items():
        if m.get("status") == "trained":
            print(f"  {skill:<28} val loss {m['val_loss_before']:.3f} -> {m['val_loss_after']:.3f}")
        else:
            print(f"  {skill:<28} {m.get('status')} {m.get('reason', '')}")
