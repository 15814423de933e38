"""`mdkif reference`: the CPU-scale reference run that tests SA-MDKIF's claim on downstream medical tasks.

Stages, each re-runnable without redoing finished work (interrupt it and run the same command again):

1. **data**: the tasks' held-out items (test + dev ids; every id of an unseen task) are written to an
   exclusion list, and the 12 skills' data are built from the real data sets without them;
2. **skills**: the 12 AdaLoRA skills (`train/skills_cpu.yaml`) on local Ray Train, resumable;
3. **routers**, per task, on the task's `train` split only: gradient descent on `k_gradient` items, CMA-ES
   on k = 5 and 20 items; the best single skill is chosen by its task loss on the same `k_gradient` items;
4. **task LoRAs** (the `task_lora` row, what a user would otherwise do): a plain LoRA per task trained on
   exactly the `k_gradient` train items the routers see (`train/task_lora_cpu.yaml`), early-stopped on the
   task's `dev` split;
5. **evaluation**: base / best single / uniform / routed (gradient) / routed (CMA-ES k) / routed (Arrow:
   zero-shot, per token, built from the skills alone, one artifact for every task) / task_lora on each
   task's `test` items, by the evaluation harness (one scorer, Ray actors), with paired tests against the
   base and against task_lora;
6. **results**: `reference.{md,json,png}` in `results` (the table, the exact command, wall times).

Tuning never looks at a test split: the routers and the task LoRAs see `train` items (the LoRAs' early
stopping a `dev` slice), the held-out ids are checked against the skill data by id before anything is
scored.
"""

from __future__ import annotations

import json
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import Field, model_validator

from mdkif.config import StrictModel, load_config
from mdkif.plan import Plan, Stage, StageContext
from mdkif.routing.config import ArrowSettings, check_arrow_top_k
from mdkif.tracking import Run, TrackingConfig

DEFAULT_CONFIG = Path("bench/reference.yaml")


class ReferenceTask(StrictModel):
    """A downstream task of the reference table (a name in `mdkif.data.tasks.TASKS`)."""

    name: str
    unseen: bool = Field(False, description="exclude every item of the task from the skill data")


class RouterPlan(StrictModel):
    """How the per-task routers are fitted (train split only)."""

    k_gradient: int = Field(128, ge=2, description="train items the gradient router is fitted on")
    gradient_steps: int = Field(30, ge=1)
    gradient_lr: float = Field(0.1, gt=0)
    batch_size: int = Field(8, ge=1)
    cmaes_ks: list[int] = Field([5, 20], min_length=1)
    best_single_k: int | None = Field(
        None, ge=1, description="train items the best single skill is chosen on (default: max of cmaes_ks)"
    )
    cmaes_max_evals: int = Field(30, ge=2)
    cmaes_popsize: int | None = Field(None, ge=2, description="default: cma's 4 + 3 ln(skills)")
    cmaes_sigma0: float = Field(0.3, gt=0)
    l1: float = Field(0.01, ge=0, description="L1 strength on the free CMA-ES weights")
    max_length: int = Field(320, ge=32)
    loss: Literal["answer", "label"] = Field(
        "answer",
        description="router objective on classification tasks: 'answer' = target-token cross-entropy over "
        "the vocabulary (every task kind); 'label' = cross-entropy of the gold label among the task's labels, "
        "the scorer's own quantity (other kinds keep 'answer' and reuse its routers and evaluation). Label fits "
        "go to routers-label/ and eval-label/",
    )


class ReferenceConfig(StrictModel):
    """The whole reference run; every path is relative to the repository root."""

    out: Path = Field(Path("runs/reference"), description="data, adapters, routers, evaluation")
    results: Path = Field(Path("bench/results/reference"), description="table, JSON, chart")
    data_root: Path = Field(Path("../shared/data"), description="the real data sets (skills/, mcq/)")
    skills_config: Path = Path("train/skills_cpu.yaml")
    skills_overrides: list[str] = Field(
        default_factory=list, description="key=value overrides for the skills stage (e.g. a smaller run)"
    )
    task_lora_config: Path | None = Field(
        Path("train/task_lora_cpu.yaml"),
        description="the task stage that trains the task_lora row on the routers' train items; null: no row",
    )
    task_lora_overrides: list[str] = Field(default_factory=list, description="key=value for that stage")
    tasks: list[ReferenceTask] = Field(min_length=1)
    n_test: int = Field(100, ge=2, description="first N test items of each task are scored")
    routers: RouterPlan = Field(default_factory=RouterPlan)
    arrow: ArrowSettings | None = Field(
        default_factory=ArrowSettings,
        description="the zero-shot Arrow row (routed_arrow): no task data, one artifact for every task; null: none",
    )
    rows: list[str] | None = Field(
        None,
        description="evaluate only these rows (default: all; base is always needed for the paired tests). "
        "Without best_single and the fitted routed rows the routers stage is skipped",
    )
    stages: list[str] | None = Field(
        None,
        description="run only these stages of the plan (data, skills, routers, arrow, task_lora, eval, "
        "report); a selected stage takes what it needs from earlier runs recorded in OUT/plan.json",
    )
    num_workers: int = Field(2, ge=1, description="evaluation actors")
    shard_size: int = Field(25, ge=1)
    seed: int = 0
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="one parent run, a child per stage and task"
    )

    def label_loss(self, task: str) -> bool:
        """Whether `task`'s routers are fitted on the label objective (a classification task under 'label')."""
        from mdkif.data.tasks import TASKS

        return self.routers.loss == "label" and TASKS[task].kind == "classification"

    def routers_dir(self, task: str) -> Path:
        """Where `task`'s routers go: `routers-label/` only where the label objective changes the fit, so a
        'label' run reuses the other tasks' routers and evaluation as they are."""
        return self.out / ("routers-label" if self.label_loss(task) else "routers") / task

    def eval_dir(self, task: str) -> Path:
        return self.out / ("eval-label" if self.label_loss(task) else "eval") / task

    def all_rows(self) -> list[str]:
        """Every row the run can produce, in table order."""
        rows = [*ROWS, *(f"routed_cmaes_k{k}" for k in sorted(self.routers.cmaes_ks))]
        rows += ["routed_arrow"] if self.arrow is not None else []
        return rows + (["task_lora"] if self.task_lora_config is not None else [])

    def selected_rows(self) -> list[str]:
        return self.all_rows() if self.rows is None else [r for r in self.all_rows() if r in self.rows]

    def needs_fits(self) -> bool:
        """Whether a selected row is fitted on a task's train split (the best single skill or a router)."""
        return any(r not in (*TASK_FREE_ROWS, "task_lora") for r in self.selected_rows())

    @model_validator(mode="after")
    def _known(self) -> ReferenceConfig:
        from mdkif.data.tasks import TASKS

        unknown = [t.name for t in self.tasks if t.name not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {list(TASKS)}")
        if self.rows is not None:
            bad = [r for r in self.rows if r not in self.all_rows()]
            if bad:
                raise ValueError(f"field 'rows': unknown row(s) {bad}; this config has {self.all_rows()}")
            if "base" not in self.rows:
                raise ValueError("field 'rows': must include 'base' (every row is tested against it)")
        PLAN.check(self.stages)
        return self


def build_data(cfg: ReferenceConfig, run: Run | None = None) -> Path:
    """Stage 1: the skill data without any task's held-out items (ids listed in `exclusions.txt`)."""
    from mdkif.data.build import build_skill_data_once, track_data
    from mdkif.data.tasks import heldout_ids

    ids = sorted({i for t in cfg.tasks for i in heldout_ids(t.name, root=cfg.data_root, whole=t.unseen)})
    text = (
        "# held-out ids of the reference tasks (test + dev; all of an unseen task)\n" + "\n".join(ids) + "\n"
    )
    out = build_skill_data_once(cfg.data_root, cfg.out / "skilldata", cfg.out / "exclusions.txt", text)
    if run is not None:
        track_data(run, out)
    return out


def train_skills(cfg: ReferenceConfig, data_dir: Path) -> Path:
    """Stage 2: the 12 skills on local Ray Train (finished skills skip, interrupted ones resume)."""
    from mdkif.skills.runner import train_skill_bank

    stage_cfg = skills_stage(cfg)
    if stage_cfg.data_dir != str(data_dir):
        raise ValueError(f"skills_overrides must not move data_dir ({stage_cfg.data_dir} != {data_dir})")
    return train_skill_bank(stage_cfg)


ROWS = ("base", "best_single", "uniform", "routed_gradient")
TASK_FREE_ROWS = ("base", "uniform", "routed_arrow")  # need nothing from a task's train split


def _route_cfg(cfg: ReferenceConfig, adapters: Path, method: str) -> Any:
    from mdkif.config import validate
    from mdkif.routing.config import RouteConfig

    r = cfg.routers
    body: dict[str, Any] = {
        "model": _model(cfg),
        "skills": {"root": str(adapters)},
        "task": {"source": "-", "k": 1, "max_length": r.max_length, "seed": cfg.seed},
        "method": method,
        "gradient": {"steps": r.gradient_steps, "lr": r.gradient_lr, "batch_size": r.batch_size},
        "cmaes": {"max_evals": r.cmaes_max_evals, "sigma0": r.cmaes_sigma0, "popsize": r.cmaes_popsize},
        "output": str(cfg.out / "routers"),
    }
    if method == "cmaes":
        body["router"] = {"normalize": "linear"}
        body["regularizer"] = {"kind": "l1", "strength": r.l1}
    else:
        body["router"] = {"normalize": "softmax"}
        body["regularizer"] = {"kind": "entropy", "strength": 0.0}
    return validate(RouteConfig, body, "reference router")


def skills_stage(cfg: ReferenceConfig) -> Any:
    """The skills stage config with the run's paths and overrides (the base model comes from it too)."""
    from mdkif.skills.config import load_stage

    overrides = [
        f"data_dir={cfg.out / 'skilldata'}",
        f"output_dir={cfg.out / 'adapters'}",
        *cfg.skills_overrides,
    ]
    return load_stage(cfg.skills_config, overrides)


def _model(cfg: ReferenceConfig) -> dict[str, Any]:
    return skills_stage(cfg).model.model_dump(mode="json")


def router_pool(cfg: ReferenceConfig, task: str) -> list[Any]:
    """The task's train split in the one seeded order every fitted row draws from: the gradient router and
    the task LoRA take the first `k_gradient`, CMA-ES the first k."""
    from mdkif.data.tasks import load_task

    pool = sorted(load_task(task, "train", root=cfg.data_root), key=lambda x: x.id)
    random.Random(f"{cfg.seed}:router-pool:{task}").shuffle(pool)
    return pool


def fit_routers(cfg: ReferenceConfig, adapters: Path) -> dict[str, dict[str, Any]]:
    """Stage 3: per task, on its train split only: best single skill, gradient router, CMA-ES routers.

    The train split is shuffled once (seed); CMA-ES with k items takes its first k, the gradient router
    its first `k_gradient`, and the best single skill is the one with the lowest task loss on the first
    `best_single_k` items (default max(cmaes_ks): the few-shot routers' data). Finished tasks (their
    `fit.json`) are reused, and so is each router already saved within an unfinished task, so an
    interrupted stage loses at most the fit it was in.
    """
    import torch

    from mdkif.routing.data import encode, encode_labels, end_token, task_examples
    from mdkif.routing.fit import task_loss
    from mdkif.routing.pipeline import build_fused, fit_router
    from mdkif.routing.router import save_router

    r = cfg.routers
    methods = [("gradient", r.k_gradient)] + [("cmaes", k) for k in sorted(r.cmaes_ks)]
    fits: dict[str, dict[str, Any]] = {}
    todo = [t for t in cfg.tasks if not (cfg.routers_dir(t.name) / "fit.json").is_file()]
    for t in cfg.tasks:
        if t not in todo:
            fits[t.name] = json.loads((cfg.routers_dir(t.name) / "fit.json").read_text())
    if not todo:
        return fits
    grad_cfg = _route_cfg(cfg, adapters, "gradient")
    fused, tok, bank = build_fused(grad_cfg)
    K, names = len(bank), bank.names
    fmt = bank.prompt_format  # the skills' training prompts, which the harness scores too
    for t in todo:
        t0 = time.perf_counter()
        pool = router_pool(cfg, t.name)
        single_k = r.best_single_k or max(r.cmaes_ks)
        need = max(r.k_gradient, single_k, *r.cmaes_ks)
        if len(pool) < need:
            raise ValueError(f"task {t.name}: {len(pool)} train items, the routers need {need}")
        eos = end_token(tok, fmt)
        label_loss = cfg.label_loss(t.name)

        def batch_of(items: list[Any], label_loss: bool = label_loss, eos: str = eos) -> Any:
            if label_loss:
                return encode_labels(tok, items, r.max_length, fmt)
            return encode(tok, task_examples(items, eos, tok, fmt), r.max_length)

        fit: dict[str, Any] = {
            "task": t.name,
            "skills": names,
            "train_items": len(pool),
            "loss": "label" if label_loss else "answer",
            "routers": {},
        }
        few = batch_of(pool[:single_k])
        single = [task_loss(fused, torch.eye(K)[i], few) for i in range(K)]
        best = min(range(K), key=single.__getitem__)
        fit.update(
            loss_base=task_loss(fused, None, few),
            loss_uniform=task_loss(fused, torch.full((K,), 1.0 / K), few),
            loss_single={n: round(v, 5) for n, v in zip(names, single, strict=True)},
            best_single_skill=names[best],
        )
        print(
            f"[reference] {t.name}: best single skill {names[best]} (loss {single[best]:.4f}, base "
            f"{fit['loss_base']:.4f}, uniform {fit['loss_uniform']:.4f})",
            flush=True,
        )
        for method, k in methods:
            key = "gradient" if method == "gradient" else f"cmaes-k{k}"
            saved = _saved_fit(cfg.routers_dir(t.name) / key, method, k)
            if saved is not None:
                fit["routers"][key] = saved
                print(
                    f"[reference] {t.name} {key}: reused the saved router ({saved['seconds']} s)", flush=True
                )
                continue
            t1 = time.perf_counter()
            batch = batch_of(pool[:k])
            route_cfg = grad_cfg if method == "gradient" else _route_cfg(cfg, adapters, method)
            router, res = fit_router(route_cfg, fused, batch, seed=cfg.seed, progress=f"{t.name} {key}")
            with torch.no_grad():
                w = router().reshape(-1, K).mean(0)
            info = {
                "method": method,
                "k": k,
                "fit_loss": res.final_loss,
                "evaluations": res.evaluations,
                "history": res.history,
                "loss_base": task_loss(fused, None, batch),
                "weights": dict(zip(names, [round(x, 4) for x in w.tolist()], strict=True)),
                "seconds": round(time.perf_counter() - t1, 1),
            }
            save_router(router, bank, fused, cfg.routers_dir(t.name) / key, {"fit": info})
            fit["routers"][key] = info
            top = sorted(info["weights"].items(), key=lambda kv: -abs(kv[1]))[:3]
            print(
                f"[reference] {t.name} {key}: loss {info['loss_base']:.4f} -> {res.final_loss:.4f} "
                f"in {info['seconds']} s; top {top}",
                flush=True,
            )
        fit["seconds"] = round(time.perf_counter() - t0, 1)
        (cfg.routers_dir(t.name) / "fit.json").write_text(json.dumps(fit, indent=2) + "\n")
        fits[t.name] = fit
    del fused
    return fits


def _saved_fit(folder: Path, method: str, k: int) -> dict[str, Any] | None:
    """The fit record a router saved by an interrupted stage carries, when it is this method and k."""
    path = folder / "router.json"
    if not path.is_file():
        return None
    try:
        fit = json.loads(path.read_text()).get("fit")
    except (OSError, json.JSONDecodeError):
        return None  # a torn write: fit it again
    if not isinstance(fit, dict) or fit.get("method") != method or fit.get("k") != k:
        return None
    return fit


# The skill-format folder a task's items are written under for its LoRA (a container name only: the LoRA
# trains on the task's own instruction, input and output, exactly as the harness prompts them).
KIND_FOLDER = {
    "classification": "nli",
    "multilabel": "multilabel_classification",
    "ner": "ner",
    "relation": "relation_extraction",
    "generation": "summarization",
}


def task_lora_stage(cfg: ReferenceConfig, task: str) -> Any:
    """The task stage that trains `task`'s LoRA: its data folder, output folder and skill-format folder."""
    from mdkif.data.tasks import TASKS
    from mdkif.skills.config import load_stage

    assert cfg.task_lora_config is not None
    folder = TASKS[task].skill or KIND_FOLDER[TASKS[task].kind]
    root = cfg.out / "task_lora" / task
    overrides = [
        f"data.dir={root / 'data'}",
        f"data.skills=[{folder}]",
        f"output_dir={root}",
        f"model.name={skills_stage(cfg).model.name}",
        *cfg.task_lora_overrides,
    ]
    return load_stage(cfg.task_lora_config, overrides)


def write_task_lora_data(cfg: ReferenceConfig, task: str, stage_cfg: Any) -> int:
    """The routers' `k_gradient` train items as the stage's train split and the task's dev split as its
    validation split, in skill-record form; returns the number of train items."""
    from mdkif.data.records import SkillRecord
    from mdkif.data.tasks import load_task
    from mdkif.io import write_atomic

    folder = Path(stage_cfg.data.dir) / stage_cfg.data.skills[0]
    splits = {
        "train": router_pool(cfg, task)[: cfg.routers.k_gradient],
        "validation": load_task(task, "dev", root=cfg.data_root),
    }
    for split, items in splits.items():
        records = [
            SkillRecord(
                id=x.id,
                skill=stage_cfg.data.skills[0],
                task=task,
                instruction=x.instruction,
                input=x.input,
                output=x.output,
                source=f"task:{task}",
            )
            for x in items
        ]
        write_atomic(folder / f"{split}.jsonl", "".join(r.model_dump_json() + "\n" for r in records))
    return len(splits["train"])


def train_task_loras(cfg: ReferenceConfig) -> dict[str, Path]:
    """Stage 4: one plain LoRA per task on the routers' train items (in this process; finished ones skip)."""
    from mdkif.skills.runner import run_stage

    if cfg.task_lora_config is None or "task_lora" not in cfg.selected_rows():
        return {}
    out = {}
    for t in cfg.tasks:
        stage_cfg = task_lora_stage(cfg, t.name)
        n = write_task_lora_data(cfg, t.name, stage_cfg)
        t0 = time.perf_counter()
        meta = run_stage(stage_cfg)
        es = meta.get("early_stopping") or {}
        print(
            f"[reference] {t.name} task_lora: {n} train items, {meta['steps']} planned steps, stopped at "
            f"{es.get('stopped_at')}, best step {es.get('best_step')}, val loss {meta['val_loss_before']:.3f} "
            f"-> {meta['val_loss_after']:.3f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        out[t.name] = Path(stage_cfg.output_dir) / "adapter"
    return out


def skill_names(adapters: Path) -> list[str]:
    """The trained skills' names from the adapter folders (no adapter weights are read)."""
    return sorted(p.name for p in adapters.iterdir() if (p / "adapter_config.json").is_file())


def build_arrow(cfg: ReferenceConfig, adapters: Path) -> Path | None:
    """The Arrow router artifact (`OUT/arrow/`), from the skills alone: the same for every task."""
    from mdkif.routing.pipeline import build_fused, fit_router
    from mdkif.routing.router import save_router

    if cfg.arrow is None or "routed_arrow" not in cfg.selected_rows():
        return None
    folder = cfg.out / "arrow"
    route_cfg = _route_cfg(cfg, adapters, "gradient").model_copy(
        update={"method": "arrow", "arrow": cfg.arrow}
    )
    fused, _, bank = build_fused(route_cfg)
    check_arrow_top_k(cfg.arrow, len(bank))
    meta = {"method": "arrow", "top_k": cfg.arrow.top_k, "temperature": cfg.arrow.temperature}
    save_router(fit_router(route_cfg, fused, None)[0], bank, fused, folder, {"fit": meta})
    print(f"[reference] Arrow router (top_k {cfg.arrow.top_k}, zero-shot) -> {folder}", flush=True)
    return folder


def variant_rows(
    cfg: ReferenceConfig,
    adapters: Path,
    task: str,
    fit: dict[str, Any] | None,
    arrow: Path | None,
    task_lora: Path | None = None,
) -> list[dict[str, Any]]:
    """The table's selected rows for one task as evaluation variants (fixed weights or a saved router)."""
    model = _model(cfg)
    scoring = {
        "method": "loglik",
        "batch_size": 8,
        "max_prompt_tokens": 512,
        "prompt_format": skills_stage(cfg).prompt_format,  # the base row reads the skills' prompts too
    }
    names = fit["skills"] if fit is not None else skill_names(adapters)
    routers: dict[str, dict[str, Any]] = {
        "uniform": {"adapters": str(adapters), "weights": {n: 1.0 / len(names) for n in names}},
    }
    if fit is not None:
        routers["best_single"] = {"adapters": str(adapters), "weights": {fit["best_single_skill"]: 1.0}}
        for key in fit["routers"]:
            name = "routed_gradient" if key == "gradient" else f"routed_{key.replace('-', '_')}"
            routers[name] = {"adapters": str(adapters), "path": str(cfg.routers_dir(task) / key)}
    if arrow is not None:
        routers["routed_arrow"] = {"adapters": str(adapters), "path": str(arrow)}
    missing = [r for r in cfg.selected_rows() if r not in ("base", "task_lora") and r not in routers]
    if missing:
        raise ValueError(
            f"task {task}: no router for row(s) {missing} in {cfg.routers_dir(task) / 'fit.json'} "
            "(fitted with other routers settings?)"
        )
    rows = []
    for name in cfg.selected_rows():
        row = {"name": name, "model": model, "scoring": scoring}
        if name == "task_lora":
            if task_lora is None:
                raise ValueError(f"task {task}: no task LoRA (the task LoRA stage did not run)")
            row["adapter"] = str(task_lora)
        elif name != "base":
            row["router"] = routers[name]
        rows.append(row)
    return rows


def evaluate(
    cfg: ReferenceConfig,
    adapters: Path,
    fits: dict[str, dict[str, Any]],
    arrow: Path | None,
    task_loras: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Stage 5: each task's rows on its test items, one harness run per task (Ray actors, resumable);
    every row is paired against base, and against task_lora when there is one."""
    from mdkif.config import validate
    from mdkif.evaluation.config import EvalConfig
    from mdkif.evaluation.runner import run_eval

    summaries = {}
    for t in cfg.tasks:
        eval_cfg = validate(
            EvalConfig,
            {
                "out": str(cfg.eval_dir(t.name)),
                "variants": variant_rows(
                    cfg, adapters, t.name, fits.get(t.name), arrow, (task_loras or {}).get(t.name)
                ),
                "tasks": [{"task": t.name, "split": "test", "limit": cfg.n_test}],
                "data_root": str(cfg.data_root),
                "compare_to": ["base", *(["task_lora"] if "task_lora" in cfg.selected_rows() else [])],
                "num_workers": cfg.num_workers,
                "shard_size": cfg.shard_size,
                "seed": cfg.seed,
            },
            f"reference evaluation of {t.name}",
        )
        t0 = time.perf_counter()
        summaries[t.name] = run_eval(eval_cfg, progress=True)
        print(f"[reference] {t.name}: evaluated in {time.perf_counter() - t0:.0f} s", flush=True)
    return summaries


def _adapters(ctx: StageContext) -> Path:
    return Path(ctx.got["skills"])


def _fits_stage(cfg: ReferenceConfig, ctx: StageContext) -> dict[str, Any]:
    fits = fit_routers(cfg, _adapters(ctx)) if cfg.needs_fits() else {}
    if ctx.run is not None:
        track_fits(ctx.run, fits)
    return fits


def _eval_stage(cfg: ReferenceConfig, ctx: StageContext) -> dict[str, Any]:
    loras = {t: Path(p) for t, p in ctx.got["task_lora"].items()}
    arrow = Path(ctx.got["arrow"]) if ctx.got["arrow"] else None
    return evaluate(cfg, _adapters(ctx), ctx.got["routers"], arrow, loras)


def _task_lora_settings(cfg: ReferenceConfig) -> Any:
    if cfg.task_lora_config is None or "task_lora" not in cfg.selected_rows():
        return {"rows": "no task_lora row"}
    stages = {t.name: task_lora_stage(cfg, t.name).model_dump(mode="json") for t in cfg.tasks}
    return {
        "stages": stages,
        "k_gradient": cfg.routers.k_gradient,
        "seed": cfg.seed,
        "data_root": cfg.data_root,
    }


def _exists(output: Any) -> bool:
    """A recorded output whose paths (a path, or a dict of paths) still exist."""
    if isinstance(output, dict):
        return all(Path(p).exists() for p in output.values() if isinstance(p, str))
    return output is None or not isinstance(output, str) or Path(output).exists()


def _report_stage(cfg: ReferenceConfig, ctx: StageContext) -> dict[str, Any]:
    from mdkif.experiments.reference_report import write_results

    times = dict(ctx.seconds)
    times["routers"] = times.get("routers", 0.0) + times.pop("arrow", 0.0)
    got = ctx.got
    out = write_results(
        cfg,
        Path(got["skills"]),
        got["routers"],
        got["eval"],
        command=ctx.params.get("command", ""),
        times=times,
        task_loras={t: Path(p) for t, p in got["task_lora"].items()},
    )
    if ctx.parent is not None:
        for f in sorted(cfg.results.glob("reference.*")) + sorted(cfg.results.glob("*.png")):
            ctx.parent.artifact(f)
    print((cfg.results / "reference.md").read_text())
    return out


PLAN: Plan[ReferenceConfig] = Plan(
    "reference",
    [
        Stage(
            "data",
            "skill data without the tasks' held-out items",
            lambda cfg, ctx: str(build_data(cfg, ctx.run)),
            settings=lambda cfg: {"data_root": cfg.data_root, "tasks": cfg.tasks},
            tracked=True,
        ),
        Stage(
            "skills",
            "train 12 skills (AdaLoRA, Ray Train)",
            lambda cfg, ctx: str(train_skills(cfg, Path(ctx.got["data"]))),
            settings=lambda cfg: skills_stage(cfg).model_dump(mode="json"),
            needs=("data",),
        ),
        Stage(
            "routers",
            "routers per task (train split: gradient; CMA-ES k)",
            _fits_stage,
            settings=lambda cfg: {
                "routers": cfg.routers,
                "tasks": cfg.tasks,
                "seed": cfg.seed,
                "fits": cfg.needs_fits(),
                "data_root": cfg.data_root,
            },
            needs=("skills",),
            tracked=True,
        ),
        Stage(
            "arrow",
            "the zero-shot Arrow router (skills only)",
            lambda cfg, ctx: str(a) if (a := build_arrow(cfg, _adapters(ctx))) else None,
            settings=lambda cfg: {"arrow": cfg.arrow, "row": "routed_arrow" in cfg.selected_rows()},
            needs=("skills",),
            exists=_exists,
        ),
        Stage(
            "task_lora",
            "task LoRAs (the task_lora row: the routers' train items, early-stopped on dev)",
            lambda cfg, ctx: {t: str(p) for t, p in train_task_loras(cfg).items()},
            settings=_task_lora_settings,
            exists=_exists,
        ),
        Stage(
            "eval",
            "evaluation on the test splits (paired against base and task_lora)",
            _eval_stage,
            settings=lambda cfg: {
                "rows": cfg.selected_rows(),
                "n_test": cfg.n_test,
                "tasks": cfg.tasks,
                "seed": cfg.seed,
                "data_root": cfg.data_root,
            },
            needs=("skills", "routers", "arrow", "task_lora"),
        ),
        Stage("report", "results", _report_stage, needs=("skills", "routers", "task_lora", "eval")),
    ],
)


def run_reference(cfg: ReferenceConfig, command: str) -> dict[str, Any]:
    """Every stage of the reference plan in order (or `stages`); writes the results folder and returns the
    report's table (or, without the report stage, the stages' outputs)."""
    if cfg.arrow is not None:  # refused here, before any data is built or Ray starts
        check_arrow_top_k(cfg.arrow, len(skills_stage(cfg).skill_specs()), field="reference: arrow.top_k")
    params = {"command": command} | cfg.model_dump(mode="json", exclude={"tracking"})
    result = PLAN.run(cfg, cfg.out, selected=cfg.stages, tracking=cfg.tracking, params=params)
    return result.outputs.get("report") or result.outputs


def track_fits(run: Run, fits: dict[str, dict[str, Any]]) -> None:
    """Per task and router: the objective per step / CMA-ES generation, the final loss and the weights."""
    for task, fit in fits.items():
        run.metrics(
            {f"{task}/loss_base": fit.get("loss_base"), f"{task}/loss_uniform": fit.get("loss_uniform")}
        )
        run.params({f"{task}/best_single_skill": fit.get("best_single_skill")})
        for key, info in fit["routers"].items():
            run.series(f"{task}/{key}/objective", info.get("history") or [])
            run.metrics(
                {f"{task}/{key}/fit_loss": info["fit_loss"], f"{task}/{key}/evaluations": info["evaluations"]}
            )
            run.metrics({f"{task}/{key}/weight/{n}": w for n, w in info["weights"].items()})


def reference_command(
    config: Annotated[Path, typer.Argument(help="reference run YAML")] = DEFAULT_CONFIG,
    overrides: Annotated[list[str] | None, typer.Argument(help="settings, key=value")] = None,
) -> None:
    """The CPU-scale reference run: skills, per-task routers, paired evaluation on 6 downstream tasks."""
    cfg = load_config(config, ReferenceConfig, list(overrides or []))
    command = "mdkif reference " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    run_reference(cfg, command.strip())
