"""The unseen-task experiment: fit routers on tasks no skill was trained on, with k examples, and score them.

For each task and each k, one router is fitted on k items and scored on a fixed held-out test set
against three references: the base model, the uniform mixture of all skills, and the best single skill
(picked by its answer loss on the same k items, so it gets the same data the router gets). Scoring is
log-likelihood of the option key after a prompt listing the options (the evaluation harness's
`loglik` / `letter` protocol), so nothing is unparsable. Writes `unseen.json` and `unseen.md`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from mdkif.config import StrictModel
from mdkif.fusion import FusedModel
from mdkif.models import ModelConfig
from mdkif.routing.config import (
    CmaesSettings,
    GradientSettings,
    Regularizer,
    RouteConfig,
    RouterSettings,
    SkillsSource,
    TaskSource,
)
from mdkif.routing.data import encode, mcq_example
from mdkif.routing.fit import route_weights, task_loss


class UnseenTask(StrictModel):
    name: str
    source: str = Field(description="benchmark name or file for load_benchmark")
    split: str | None = None


class ExperimentConfig(StrictModel):
    """Routers fitted per (task, k), compared with base, uniform mixture and the best single skill."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    skills: SkillsSource
    tasks: list[UnseenTask] = Field(min_length=1)
    ks: list[int] = Field([5, 20, 100], min_length=1)
    n_test: int = Field(50, ge=1, description="held-out items scored per task (the same for every k)")
    seed: int = 0
    max_length: int = Field(320, ge=16)
    method: str = Field("cmaes", pattern="^(gradient|cmaes|gate)$")
    router: RouterSettings = Field(default_factory=RouterSettings)
    regularizer: Regularizer = Field(default_factory=Regularizer)
    gradient: GradientSettings = Field(default_factory=GradientSettings)
    cmaes: CmaesSettings = Field(default_factory=CmaesSettings)
    output: Path = Path("runs/unseen")


@torch.no_grad()
def mcq_accuracy(fused: FusedModel, tok: Any, records: list, weights: Any, max_length: int) -> float:
    """Share of items whose highest-scoring option key (first token of ' X') is the answer."""
    correct = 0
    for rec in records:
        ex = mcq_example(rec)
        batch = encode(tok, [ex], max_length)
        n = int(batch.prompt_mask.sum())
        ids, att = batch.input_ids[:, :n], batch.attention_mask[:, :n]
        if weights is None:
            with fused.adapters_off():
                logits = fused(input_ids=ids, attention_mask=att).logits[0, -1]
        else:
            if isinstance(weights, torch.Tensor):
                fused.set_weights(weights)
            else:
                from mdkif.routing.data import Batch

                w, per_ex = route_weights(fused, weights, Batch(ids, att, ids, batch.prompt_mask[:, :n]))
                fused.set_weights(w, per_example=per_ex)
            logits = fused(input_ids=ids, attention_mask=att).logits[0, -1]
        keys = list(rec.options)
        scores = [float(logits[tok(f" {k}", add_special_tokens=False)["input_ids"][0]]) for k in keys]
        correct += keys[max(range(len(keys)), key=scores.__getitem__)] == rec.answer
    return correct / max(len(records), 1)


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run every (task, k) cell; returns and writes the table."""
    import random

    from mdkif.data.mcq import load_benchmark
    from mdkif.routing.pipeline import build_fused, fit_router

    route_cfg = RouteConfig(
        model=cfg.model,
        skills=cfg.skills,
        task=TaskSource(source="-", k=1),
        method=cfg.method,
        router=cfg.router,
        regularizer=cfg.regularizer,
        gradient=cfg.gradient,
        cmaes=cfg.cmaes,
        output=cfg.output,
    )
    fused, tok, bank = build_fused(route_cfg)
    K = len(bank)
    rows = []
    for task in cfg.tasks:
        records = load_benchmark(task.source, split=task.split)
        order = list(range(len(records)))
        random.Random(cfg.seed).shuffle(order)
        test = [records[i] for i in order[-cfg.n_test :]]
        pool = [records[i] for i in order[: len(order) - cfg.n_test]]
        base_acc = mcq_accuracy(fused, tok, test, None, cfg.max_length)
        uni_acc = mcq_accuracy(fused, tok, test, torch.full((K,), 1.0 / K), cfg.max_length)
        for k in cfg.ks:
            t0 = time.perf_counter()
            train = encode(tok, [mcq_example(r) for r in pool[:k]], cfg.max_length)
            single = [task_loss(fused, torch.eye(K)[i], train) for i in range(K)]
            best_i = min(range(K), key=single.__getitem__)
            router, res = fit_router(route_cfg, fused, train, seed=cfg.seed)
            row = {
                "task": task.name,
                "k": k,
                "n_test": len(test),
                "base": base_acc,
                "uniform": uni_acc,
                "best_single": mcq_accuracy(fused, tok, test, torch.eye(K)[best_i], cfg.max_length),
                "best_single_skill": bank.names[best_i],
                "routed": mcq_accuracy(fused, tok, test, router, cfg.max_length),
                "fit_evaluations": res.evaluations,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            if not hasattr(router, "net"):
                with torch.no_grad():
                    w = router().reshape(-1, K).mean(0)
                row["top_skills"] = [bank.names[i] for i in w.argsort(descending=True)[:3].tolist()]
            rows.append(row)
    cfg.output.mkdir(parents=True, exist_ok=True)
    (cfg.output / "unseen.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| task | k | n_test | base | uniform | best single (skill) | routed | top routed skills |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['k']} | {r['n_test']} | {r['base']:.3f} | {r['uniform']:.3f} | "
            f"{r['best_single']:.3f} ({r['best_single_skill']}) | {r['routed']:.3f} | {', '.join(r.get('top_skills', []))} |"
        )
    (cfg.output / "unseen.md").write_text("\n".join(lines) + "\n")
    return {"rows": rows, "table": str(cfg.output / "unseen.md")}
