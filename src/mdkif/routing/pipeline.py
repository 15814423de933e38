"""Fit a router end to end from a `RouteConfig`: load base + skills, fit on k examples, score, save."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from mdkif.fusion import FusedModel, SkillBank, fuse
from mdkif.routing.config import RouteConfig
from mdkif.routing.data import encode, load_examples, split_examples
from mdkif.routing.fit import FitResult, fit_progress, task_loss
from mdkif.routing.registry import router_method
from mdkif.routing.router import save_router
from mdkif.tracking import Run, stage_run


def build_fused(cfg: RouteConfig) -> tuple[FusedModel, Any, SkillBank]:
    """The base model with the configured skills fused in (stacked mode), its tokenizer and the bank."""
    from mdkif.models import load_model

    bank = SkillBank.from_dir(cfg.skills.root, cfg.skills.names)
    loaded = load_model(cfg.model)
    return fuse(loaded.model, bank), loaded.tokenizer, bank


def fit_router(
    cfg: RouteConfig, fused: FusedModel, train, seed: int | None = None, progress: str | None = None
) -> tuple[torch.nn.Module, Any]:
    """Build the configured router and fit it on the encoded `train` batch; returns (router, FitResult).

    A method with nothing to fit (Arrow) is only built (`train` may be None); its FitResult reports the
    loss on `train` if given. `progress` (a label) shows a bar of evaluations and the best loss so far.
    """
    method = router_method(cfg.method)
    router = method.build(cfg, fused)
    if method.fit is None:
        res = FitResult()
        if train is not None:
            res.final_loss = task_loss(fused, router, train)
        return router, res
    seed = cfg.task.seed if seed is None else seed
    torch.manual_seed(seed)
    if progress is None:
        return router, method.fit(cfg, fused, router, train, seed)
    settings = getattr(cfg, method.settings) if method.settings else None
    total = getattr(settings, "steps", None) or getattr(settings, "max_evals", 0)
    with fit_progress(total, f"{progress} ({cfg.method})"):
        return router, method.fit(cfg, fused, router, train, seed)


def run_route(cfg: RouteConfig, save: bool = True) -> dict[str, Any]:
    """Fit the router `cfg` describes, score it on held-out examples against base and uniform, save it.

    A saved fit is one MLflow run (settings, the objective per step or CMA-ES generation, held-out losses,
    final weights per skill, the artifact); an unsaved one (a Tune trial) is tracked by Tune's callback.
    """
    with stage_run(cfg.tracking if save else None, "route", f"route:{cfg.output.name}") as run:
        summary, history, names = _route(cfg, save)
        if run.active:
            _track_route(run, cfg, summary, history, names)
    return summary


def _track_route(
    run: Run, cfg: RouteConfig, summary: dict[str, Any], history: list[float], names: list[str]
) -> None:
    run.params(
        cfg.model_dump(mode="json", include={"method", "router", "regularizer", "model", "task"})
        | _method_settings(cfg)
        | {"skills": ",".join(names)}
    )
    run.series("objective", history)
    run.metrics({k: v for k, v in summary.items() if k != "weights" and k != "seed"})
    if summary.get("weights") is not None:
        mean = torch.tensor(summary["weights"]).reshape(-1, len(names)).mean(0).tolist()
        run.metrics({f"weight/{n}": w for n, w in zip(names, mean, strict=True)})
    if summary.get("artifact"):
        run.artifact(Path(summary["artifact"]).parent, "router")  # router.json + router.safetensors


def _method_settings(cfg: RouteConfig) -> dict[str, Any]:
    field = router_method(cfg.method).settings
    return {} if field is None else {field: getattr(cfg, field).model_dump(mode="json")}


def _route(cfg: RouteConfig, save: bool) -> tuple[dict[str, Any], list[float], list[str]]:
    start = time.perf_counter()
    fused, tok, bank = build_fused(cfg)
    t = cfg.task
    if t is None:  # arrow without task data: nothing to fit or score, only the artifact to write
        router, _ = fit_router(cfg, fused, None)
        summary = {"method": cfg.method, "task": None}
        return _save(cfg, router, bank, fused, summary, save, start), [], bank.names
    # MCQ items are rendered in the skills' prompt format (JSONL prompts are used as written).
    examples = load_examples(t.source, t.split, t.limit, t.data_root, tok, bank.prompt_format)
    train_ex, val_ex = split_examples(examples, t.k, t.n_val, t.seed)
    train, val = encode(tok, train_ex, t.max_length), encode(tok, val_ex, t.max_length)
    router, res = fit_router(cfg, fused, train, progress=f"router on {t.k} examples" if save else None)
    uniform = torch.full((len(bank),), 1.0 / len(bank))
    summary: dict[str, Any] = {
        "method": cfg.method,
        "task": t.source,
        "k": t.k,
        "n_val": len(val_ex),
        "seed": t.seed,
        "fit_loss": res.final_loss,
        "evaluations": res.evaluations,
        "val_loss": task_loss(fused, router, val),
        "val_loss_base": task_loss(fused, None, val),
        "val_loss_uniform": task_loss(fused, uniform, val),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return _save(cfg, router, bank, fused, summary, save, start), list(res.history), bank.names


def _save(
    cfg: RouteConfig,
    router: torch.nn.Module,
    bank: SkillBank,
    fused: FusedModel,
    summary: dict[str, Any],
    save: bool,
    start: float,
) -> dict[str, Any]:
    """Write the artifact (when `save`) and finish the summary: its path, and a static router's weights."""
    if router.serve == "per_token":  # Arrow: its two settings are what it is
        summary.update(top_k=router.top_k, temperature=router.temperature)
    summary.setdefault("seconds", round(time.perf_counter() - start, 2))
    if save:
        settings = cfg.model_dump(
            mode="json", include={"router", "regularizer", "gradient", "cmaes", "arrow", "model"}
        )
        path = save_router(router, bank, fused, cfg.output, {"fit": summary, "settings": settings})
        summary["artifact"] = str(path)
    if router.serve == "merged":  # one fixed mixture: report it
        with torch.no_grad():
            summary["weights"] = router().tolist()
    return summary
