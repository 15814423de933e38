"""The unseen-task experiment: fit routers on tasks no skill was trained on, with k examples, and score them.

For each task and each k, one router is fitted on k items and scored, by the evaluation harness (the same
scorer as every other variant), on a fixed held-out test set against four references: the base model,
the uniform mixture of all skills, Arrow (zero-shot per-token routing, which needs no task data at all)
and the best single skill (picked by its answer loss on the same k items, so it gets the same data the
router gets).

Protocol:
- the test set is the first `n_test` items of the task (the harness's `limit`), the same for every k;
  the fitting pool is every other item, shuffled with `seed`; the k examples are the first k of the pool;
- fitting examples are rendered exactly as the harness scores them (`loglik` / `letter`: the prompt that
  lists the options, the chat template when the tokenizer has one, target ` <key>`);
- each fitted router is saved as an artifact (`OUTPUT/<task>/router-k<k>/`) and evaluated as a harness
  variant (`router: {adapters, path}`), the best single skill as fixed one-hot weights, the uniform
  mixture as fixed weights 1/K; all merged into the base once per worker. The Arrow artifact
  (`OUTPUT/arrow/`) is one for every task and runs in the stacked path.

Writes `OUTPUT/<task>/eval/` (the harness's predictions, summary, report, chart per task) and
`OUTPUT/unseen.{json,md,png}`: accuracy with 95% bootstrap intervals per (task, k) and method.
"""

from __future__ import annotations

import gc
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from mdkif.config import StrictModel, validate
from mdkif.models import ModelConfig
from mdkif.plan import Plan, Stage, StageContext
from mdkif.routing.config import (
    ArrowSettings,
    CmaesSettings,
    GradientSettings,
    Regularizer,
    RouteConfig,
    RouterSettings,
    SkillsSource,
    TaskSource,
    check_arrow_top_k,
    count_skills,
)
from mdkif.routing.data import TaskExample, encode
from mdkif.routing.fit import task_loss
from mdkif.tracking import TrackingConfig


class UnseenTask(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="label in the table and the output folder")
    source: str = Field(description="benchmark name or file for load_benchmark")
    split: str | None = None


class ExperimentConfig(StrictModel):
    """Routers fitted per (task, k), compared with base, uniform mixture and the best single skill."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    skills: SkillsSource
    tasks: list[UnseenTask] = Field(min_length=1)
    ks: list[int] = Field([5, 20, 100], min_length=1)
    n_test: int = Field(
        50, ge=1, description="first N items of each task, scored for every k (never fitted on)"
    )
    seed: int = Field(0, description="shuffles the fitting pool; seeds the fit and the bootstrap")
    max_length: int = Field(320, ge=16)
    method: str = Field(
        "cmaes", pattern="^(gradient|cmaes)$", description="a static router (the harness merges it)"
    )
    router: RouterSettings = Field(default_factory=RouterSettings)
    regularizer: Regularizer = Field(default_factory=Regularizer)
    gradient: GradientSettings = Field(default_factory=GradientSettings)
    cmaes: CmaesSettings = Field(default_factory=CmaesSettings)
    arrow: ArrowSettings | None = Field(
        default_factory=ArrowSettings,
        description="the zero-shot Arrow row (no fitting data; the same artifact for every task); null: none",
    )
    num_workers: int = Field(2, ge=1, description="evaluation actors (each loads the model once)")
    shard_size: int = Field(25, ge=1)
    use_ray: bool = Field(True, description="false: evaluate in this process")
    stages: list[str] | None = Field(
        None, description="run only these stages of the plan (routers, eval, report); default all"
    )
    output: Path = Path("runs/unseen")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="one parent run; each task's evaluation a child"
    )

    @model_validator(mode="after")
    def _unique(self) -> ExperimentConfig:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique: {names}")
        if len(set(self.ks)) != len(self.ks) or min(self.ks) < 1:
            raise ValueError(f"ks must be distinct positive sizes: {self.ks}")
        if self.arrow is not None:
            check_arrow_top_k(self.arrow, count_skills(self.skills))
        PLAN.check(self.stages)
        return self


def harness_examples(tokenizer: Any, records: list) -> list[TaskExample]:
    """MCQ items rendered as the harness's `loglik` / `letter` scorer reads them, target ` <key>`."""
    from mdkif.prompts import use_chat, user_message, wrap

    chat = use_chat(tokenizer, "auto")
    return [
        TaskExample(wrap(tokenizer, user_message(r, method="loglik"), "Answer:", chat), f" {r.answer}")
        for r in records
    ]


def split_task(task: UnseenTask, n_test: int, max_k: int, seed: int) -> tuple[list, list]:
    """(test, pool): the harness's first `n_test` items, and every other item shuffled with `seed`."""
    from mdkif.data.mcq import load_benchmark

    records = load_benchmark(task.source, split=task.split)
    test = records[:n_test]
    pool = records[n_test:]
    if len(test) < n_test or len(pool) < max_k:
        raise ValueError(
            f"task {task.name!r} ({task.source}): {len(records)} items, but n_test={n_test} plus "
            f"the largest k={max_k} need {n_test + max_k}"
        )
    random.Random(seed).shuffle(pool)
    return test, pool


# The ExperimentConfig fields a RouteConfig takes as they are (the rest of it: no task file, this output).
ROUTE_FIELDS = ("model", "skills", "method", "router", "regularizer", "gradient", "cmaes")


def route_config(cfg: ExperimentConfig) -> RouteConfig:
    """The RouteConfig every (task, k) fit uses: the experiment's router settings, examples handed in."""
    return RouteConfig(
        task=TaskSource(source="-", k=1), output=cfg.output, **{f: getattr(cfg, f) for f in ROUTE_FIELDS}
    )


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> dict[str, Any]:
    """The unseen-task plan: fit every (task, k) router, evaluate every task's variants with the harness,
    write the table. One MLflow parent run (`unseen-task`) holds the table; each task's evaluation is a
    child run. `OUTPUT/plan.json` records the stages, so a re-run with the same settings reuses them."""
    params = cfg.model_dump(mode="json", exclude={"tracking", "tasks"})
    params |= {"progress": progress}
    result = PLAN.run(cfg, Path(cfg.output), selected=cfg.stages, tracking=cfg.tracking, params=params)
    return result.outputs.get("report") or result.outputs


def fit_routers(cfg: ExperimentConfig, ctx: StageContext) -> dict[str, Any]:
    """Stage 1: per task and k, the best single skill and a router on the pool's first k items; the Arrow
    artifact (skills only, one for every task). Returns the fits and each task's evaluation variants."""
    from mdkif.routing.pipeline import build_fused, fit_router
    from mdkif.routing.router import save_router

    route_cfg = route_config(cfg)
    fused, tok, bank = build_fused(route_cfg)
    K, names = len(bank), bank.names
    fits: list[dict[str, Any]] = []
    variants: dict[str, list[dict[str, Any]]] = {}
    model = cfg.model.model_dump(mode="json")
    scoring = {"method": "loglik", "target": "letter", "batch_size": 8}
    adapters = str(cfg.skills.root)
    arrow_rows: list[dict[str, Any]] = []
    if cfg.arrow is not None:  # built from the skills alone: one artifact serves every task
        arrow_cfg = route_cfg.model_copy(update={"method": "arrow", "arrow": cfg.arrow})
        folder = cfg.output / "arrow"
        fit = {"method": "arrow", "top_k": cfg.arrow.top_k}
        save_router(fit_router(arrow_cfg, fused, None)[0], bank, fused, folder, {"fit": fit})
        router_spec = {"adapters": adapters, "path": str(folder)}
        arrow_rows = [{"name": "arrow", "model": model, "router": router_spec, "scoring": scoring}]
    for task in cfg.tasks:
        _, pool = split_task(task, cfg.n_test, max(cfg.ks), cfg.seed)
        uniform = {"adapters": adapters, "weights": {n: 1.0 / K for n in names}}
        rows = [
            {"name": "base", "model": model, "scoring": scoring},
            {"name": "uniform", "model": model, "router": uniform, "scoring": scoring},
            *arrow_rows,
        ]
        for k in sorted(cfg.ks):
            t0 = time.perf_counter()
            train = encode(tok, harness_examples(tok, pool[:k]), cfg.max_length)
            single = [task_loss(fused, torch.eye(K)[i], train) for i in range(K)]
            best = min(range(K), key=single.__getitem__)
            router, res = fit_router(route_cfg, fused, train, seed=cfg.seed, progress=f"{task.name} k={k}")
            with torch.no_grad():
                w = router().reshape(-1, K).mean(0)
            fit = {
                "method": cfg.method,
                "task": task.name,
                "k": k,
                "seed": cfg.seed,
                "fit_loss": res.final_loss,
                "evaluations": res.evaluations,
                "loss_base": task_loss(fused, None, train),
                "loss_uniform": task_loss(fused, torch.full((K,), 1.0 / K), train),
                "loss_best_single": single[best],
                "best_single_skill": names[best],
                "top_skills": [names[i] for i in w.abs().argsort(descending=True)[:3].tolist()],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            folder = cfg.output / task.name / f"router-k{k}"
            save_router(router, bank, fused, folder, {"fit": fit})
            fits.append(fit)
            single_spec = {"adapters": adapters, "weights": {names[best]: 1.0}}
            rows += [
                {"name": f"single-k{k}", "model": model, "router": single_spec, "scoring": scoring},
                {
                    "name": f"routed-k{k}",
                    "model": model,
                    "router": {"adapters": adapters, "path": str(folder)},
                    "scoring": scoring,
                },
            ]
            print(
                f"[unseen] {task.name} k={k}: fitted in {fit['seconds']} s, top {fit['top_skills']}",
                flush=True,
            )
        variants[task.name] = rows
    del fused
    gc.collect()
    return {"fits": fits, "variants": variants}


def evaluate(cfg: ExperimentConfig, ctx: StageContext) -> dict[str, Any]:
    """Stage 2: each task's variants on its first `n_test` items, one harness run per task."""
    from mdkif.evaluation.config import EvalConfig
    from mdkif.evaluation.runner import run_eval

    summaries = {}
    for task in cfg.tasks:
        eval_cfg = validate(
            EvalConfig,
            {
                "out": str(cfg.output / task.name / "eval"),
                "variants": ctx.got["routers"]["variants"][task.name],
                "benchmarks": [
                    {"source": task.source, "split": task.split, "name": task.name, "limit": cfg.n_test}
                ],
                "shard_size": cfg.shard_size,
                "num_workers": cfg.num_workers,
                "use_ray": cfg.use_ray,
                "seed": cfg.seed,
            },
            f"unseen-task evaluation of {task.name}",
        )
        summaries[task.name] = run_eval(eval_cfg, progress=ctx.params.get("progress", True))
    return summaries


def report(cfg: ExperimentConfig, ctx: StageContext) -> dict[str, Any]:
    """Stage 3: the (task, k) table with 95% intervals, from the harness's summaries and the fits."""
    fits = {(f["task"], f["k"]): f for f in ctx.got["routers"]["fits"]}
    table: list[dict[str, Any]] = []
    for task in cfg.tasks:
        cell = {r["variant"]: r for r in ctx.got["eval"][task.name]["results"]}

        def acc(variant: str, cell: dict = cell) -> dict[str, float]:
            r = cell[variant]
            return {"accuracy": r["accuracy"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}

        for k in sorted(cfg.ks):
            row = {
                "task": task.name,
                "k": k,
                "n_test": cell["base"]["n"],
                "base": acc("base"),
                "uniform": acc("uniform"),
                "best_single": acc(f"single-k{k}"),
                "routed": acc(f"routed-k{k}"),
                "fit": fits[(task.name, k)],
            }
            if "arrow" in cell:
                row["arrow"] = acc("arrow")
            table.append(row)
    result = write_table(cfg.output, table)
    if ctx.parent is not None:
        for row in table:
            for variant in ("base", "uniform", "best_single", "routed", "arrow"):
                if variant in row:
                    ctx.parent.metrics({f"{row['task']}/k{row['k']}/{variant}": row[variant]["accuracy"]})
        for f in sorted(Path(cfg.output).glob("*.md")) + sorted(Path(cfg.output).glob("*.png")):
            ctx.parent.artifact(f)
    return result


def _routers_exist(output: Any) -> bool:
    """Every saved router a recorded routers stage points at is still on disk."""
    rows = [row for rows in output["variants"].values() for row in rows]
    return all(Path(row["router"]["path"]).is_dir() for row in rows if "path" in row.get("router", {}))


PLAN: Plan[ExperimentConfig] = Plan(
    "unseen-task",
    [
        Stage(
            "routers",
            "routers per task and k, and the zero-shot Arrow router",
            fit_routers,
            lambda c: c.model_dump(
                mode="json", exclude={"tracking", "num_workers", "shard_size", "use_ray", "stages"}
            ),
            exists=_routers_exist,
        ),
        Stage(
            "eval",
            "evaluation: base / uniform / Arrow / best single / routed per k",
            evaluate,
            lambda c: {"n_test": c.n_test, "seed": c.seed},
            needs=("routers",),
            exists=lambda out: True,
        ),
        Stage("report", "table and chart", report, needs=("routers", "eval")),
    ],
)


def _cell(a: dict[str, float]) -> str:
    return f"{100 * a['accuracy']:.1f} [{100 * a['ci_low']:.0f}, {100 * a['ci_high']:.0f}]"


def write_table(out: Path, table: list[dict[str, Any]]) -> dict[str, Any]:
    """unseen.json (rows), unseen.md (the table) and unseen.png (accuracy against k, per task)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "unseen.json").write_text(json.dumps(table, indent=2) + "\n")
    arrow = any("arrow" in r for r in table)
    lines = [
        "Accuracy in % (95% bootstrap interval) on each task's first n_test items, scored by the evaluation",
        "harness (log-likelihood of the option key). Best single skill and router are fitted on the same k",
        "items; base, uniform" + (" and Arrow (zero-shot, per token)" if arrow else "") + " need no fitting.",
        "",
        "| task | k | n_test | base | uniform |"
        + (" arrow |" if arrow else "")
        + " best single (skill) | routed | top routed skills |",
        "|---|---|---|---|---|" + ("---|" if arrow else "") + "---|---|---|",
    ]
    for r in table:
        f = r["fit"]
        arrow_cell = (f" {_cell(r['arrow'])} |" if "arrow" in r else " - |") if arrow else ""
        lines.append(
            f"| {r['task']} | {r['k']} | {r['n_test']} | {_cell(r['base'])} | {_cell(r['uniform'])} |"
            f"{arrow_cell} {_cell(r['best_single'])} ({f['best_single_skill']}) | {_cell(r['routed'])} | "
            f"{', '.join(f['top_skills'])} |"
        )
    (out / "unseen.md").write_text("\n".join(lines) + "\n")
    plot(out / "unseen.png", table)
    return {"rows": table, "table": str(out / "unseen.md"), "chart": str(out / "unseen.png")}


def plot(path: Path, table: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in table))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [r for r in table if r["task"] == task]
        ks = [r["k"] for r in rows]
        for key, style in (("routed", "o-"), ("best_single", "s--")):
            y = [100 * r[key]["accuracy"] for r in rows]
            err = [
                [100 * (r[key]["accuracy"] - r[key]["ci_low"]) for r in rows],
                [100 * (r[key]["ci_high"] - r[key]["accuracy"]) for r in rows],
            ]
            ax.errorbar(ks, y, yerr=err, fmt=style, capsize=3, label=key.replace("_", " "))
        for key, color in (("base", "black"), ("uniform", "grey"), ("arrow", "tab:green")):
            if key not in rows[0]:
                continue
            ax.axhline(100 * rows[0][key]["accuracy"], color=color, linestyle=":", label=key)
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (fitting examples)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{task} (n={rows[0]['n_test']})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def unseen_command(config: Path, overrides: list[str]) -> None:
    """`mdkif route --experiment CONFIG [key=value ...]`: run the experiment, print its table."""
    import typer

    from mdkif.config import load_config

    result = run_experiment(load_config(config, ExperimentConfig, overrides))
    typer.echo(Path(result["table"]).read_text())
    typer.echo(f"table: {result['table']}  chart: {result['chart']}")
