"""The reference run's results: one table over tasks, the paired tests against the base, the targets.

Writes `reference.json` (everything: rows, paired tests, fits, skill losses, command, wall times),
`reference.md` (the table a reader compares, the targets checked, what the routers chose) and
`reference.png` (primary metric per task and row, `*` where the paired test says p < 0.05 against base),
plus a copy of the skills' loss curves.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from mdkif.evaluation.report import (
    METRIC_NAMES,
    Bar,
    ci_cell,
    grouped_bars,
    mean_cell,
    paired_cell,
    table_lines,
)

PAIRED_KEYS = ("diff", "ci_low", "ci_high", "p", "test", "significant", "b_only", "a_only")


def _table(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for task, s in summaries.items():
        res = {r["variant"]: r for r in s["results"]}
        paired = {p["variant"]: p for p in s.get("paired", []) if p["reference"] == "base"}
        vs_lora = {p["variant"]: p for p in s.get("paired", []) if p["reference"] == "task_lora"}
        for v in s["variants"]:
            r = res[v]
            p = paired.get(v)
            rows.append(
                {
                    "task": task,
                    "row": v,
                    "kind": r["kind"],
                    "metric": r["metric"],
                    "n": r["n"],
                    "value": r["value"],
                    "ci_low": r["ci_low"],
                    "ci_high": r["ci_high"],
                    "metrics": r.get("metrics", {}),
                    "vs_base": None if p is None else {k: p[k] for k in PAIRED_KEYS if k in p},
                    "vs_task_lora": None
                    if v not in vs_lora
                    else {k: vs_lora[v][k] for k in PAIRED_KEYS if k in vs_lora[v]},
                }
            )
    return rows


def targets(table: list[dict[str, Any]], routed: str) -> dict[str, Any]:
    """Issue 13's targets for one routed row: significant wins, mean relative gain, routed vs uniform."""
    by = {(r["task"], r["row"]): r for r in table}
    tasks = list(dict.fromkeys(r["task"] for r in table))
    wins, gains, vs_uniform = [], [], []
    for t in tasks:
        r, base, uni = by.get((t, routed)), by[(t, "base")], by.get((t, "uniform"))
        if r is None:
            continue
        if r["vs_base"] and r["vs_base"]["significant"] and r["vs_base"]["diff"] > 0:
            wins.append(t)
        if base["value"] > 0:
            gains.append((r["value"] - base["value"]) / base["value"])
        if uni is not None:
            vs_uniform.append(r["value"] - uni["value"])
    return {
        "row": routed,
        "significant_wins": wins,
        "n_significant_wins": len(wins),
        "mean_relative_gain": sum(gains) / len(gains) if gains else math.nan,
        "relative_gain_tasks": len(gains),
        "mean_minus_uniform": sum(vs_uniform) / len(vs_uniform) if vs_uniform else math.nan,
    }


def distance_to_task_lora(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task: the best routed row (by its value) against the task LoRA, with their paired difference."""
    by = {(r["task"], r["row"]): r for r in table}
    out = []
    for t in dict.fromkeys(r["task"] for r in table):
        lora = by.get((t, "task_lora"))
        routed = [r for r in table if r["task"] == t and r["row"].startswith("routed")]
        if lora is None or not routed:
            continue
        best = max(routed, key=lambda r: r["value"])
        out.append(
            {
                "task": t,
                "best_routed": best["row"],
                "routed_value": best["value"],
                "task_lora_value": lora["value"],
                "base_value": by[(t, "base")]["value"],
                "gap": best["value"] - lora["value"],
                "share_of_lora_gain": (best["value"] - by[(t, "base")]["value"])
                / (lora["value"] - by[(t, "base")]["value"])
                if lora["value"] != by[(t, "base")]["value"]
                else None,
                "paired": best.get("vs_task_lora"),
            }
        )
    return out


SKILL_KEYS = (
    "train_examples",
    "steps",
    "val_loss_before",
    "val_loss_after",
    "total_rank",
    "label_accuracy_before",
    "label_accuracy_after",
    "label_tasks",
    "compute_seconds_this_attempt",
)


def _skills(adapters: Path) -> dict[str, Any]:
    path = adapters / "skills.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    skills = {}
    for s, v in m["skills"].items():
        row = {k: v.get(k) for k in SKILL_KEYS}
        es = v.get("early_stopping") or {}
        row["early_stopping"] = (
            {k: es.get(k) for k in ("planned_steps", "stopped_at", "best_step")} if es else None
        )
        row["validations"] = es.get("validations")
        skills[s] = row
    return {"wall_seconds": m.get("wall_seconds"), "skills": skills}


def _task_loras(task_loras: dict[str, Path]) -> dict[str, Any]:
    """Per task LoRA: items, steps, early stopping and validation loss (its metrics.json)."""
    out = {}
    for task, adapter in task_loras.items():
        path = Path(adapter) / "metrics.json"
        if path.is_file():
            m = json.loads(path.read_text())
            es = m.get("early_stopping") or {}
            out[task] = {
                "train_examples": m.get("train_examples"),
                "planned_steps": m.get("steps"),
                "stopped_at": es.get("stopped_at"),
                "best_step": es.get("best_step"),
                "val_loss_before": m.get("val_loss_before"),
                "val_loss_after": m.get("val_loss_after"),
                "label_accuracy_after": m.get("label_accuracy_after"),
            }
    return out


def write_results(
    cfg: Any,
    adapters: Path,
    fits: dict[str, dict[str, Any]],
    summaries: dict[str, dict[str, Any]],
    *,
    command: str,
    times: dict[str, float],
    task_loras: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """reference.{json,md,png} in `cfg.results`; returns the JSON document."""
    out = Path(cfg.results)
    out.mkdir(parents=True, exist_ok=True)
    table = _table(summaries)
    rows = list(dict.fromkeys(r["row"] for r in table))
    routed = [r for r in rows if r.startswith("routed")]
    doc = {
        "command": command,
        "wall_seconds": {k: round(v, 1) for k, v in times.items()},
        "config": cfg.model_dump(mode="json"),
        "table": table,
        "targets": [targets(table, r) for r in routed],
        "to_task_lora": distance_to_task_lora(table),
        "fits": fits,
        "skills": _skills(adapters),
        "task_loras": _task_loras(task_loras or {}),
    }
    (out / "reference.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "reference.md").write_text(render(doc, cfg))
    plot(table, out / "reference.png")
    curves = adapters / "loss_curves.png"
    if curves.is_file():
        shutil.copyfile(curves, out / "skills_loss_curves.png")
    return doc


def render(doc: dict[str, Any], cfg: Any) -> str:
    table = doc["table"]
    tasks = list(dict.fromkeys(r["task"] for r in table))
    rows = list(dict.fromkeys(r["row"] for r in table))
    by = {(r["task"], r["row"]): r for r in table}
    unseen = {t.name for t in cfg.tasks if t.unseen}
    head = [
        f"{t}{' (unseen)' if t in unseen else ''} {METRIC_NAMES.get(by[(t, 'base')]['metric'], '')}"
        for t in tasks
    ]
    lines = [
        "# Reference run: 12 CPU-scale skills + router vs the base model",
        "",
        f"Command: `{doc['command']}`  ",
        "Wall time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in doc["wall_seconds"].items())
        + f" (2 CPU cores). n = {cfg.n_test} test items per task (first of each task's test split).",
        "",
        "Primary metric in % [95% bootstrap CI]. `*`: paired test against `base` at p < 0.05 (McNemar's "
        "exact test for accuracy, paired bootstrap for F1 / ROUGE-L); the second table gives the "
        "differences. Routers and the best single skill saw only each task's train split; "
        "routed_arrow saw no task data at all (zero-shot, per token, from the skills' singular directions).",
        "",
    ]
    metric_rows = []
    for row in rows:
        cells, vals = [], []
        for t in tasks:
            r = by.get((t, row))
            if r is None:
                cells.append("-")
                continue
            vals.append(r["value"])
            star = " *" if r["vs_base"] and r["vs_base"]["significant"] else ""
            cells.append(ci_cell(r["value"], r["ci_low"], r["ci_high"]) + star)
        metric_rows.append([row, *cells, mean_cell(vals)])
    lines += table_lines(["row", *head, "mean"], metric_rows)
    lines += ["", "Paired difference against base (points, 95% paired-bootstrap CI, p):", ""]
    diff_rows = [
        [row, *(paired_cell(by[(t, row)]["vs_base"] if (t, row) in by else None) for t in tasks)]
        for row in rows
        if row != "base"
    ]
    lines += table_lines(["row", *tasks], diff_rows)
    lines += [
        "",
        "## Targets",
        "",
        "Target: a routed row beats base with p < 0.05 on >= 4 of the 6 tasks, mean relative gain >= +10%, "
        "routed >= uniform on average.",
        "",
        "| routed row | significant wins over base | mean relative gain | mean minus uniform (points) |",
        "| --- | --- | --- | --- |",
    ]
    for g in doc["targets"]:
        lines.append(
            f"| {g['row']} | {g['n_significant_wins']} ({', '.join(g['significant_wins']) or 'none'}) | "
            f"{100 * g['mean_relative_gain']:+.1f}% over {g['relative_gain_tasks']} tasks | "
            f"{100 * g['mean_minus_uniform']:+.1f} |"
        )
    if doc.get("to_task_lora"):
        lines += [
            "",
            "## Distance to task_lora (a plain LoRA on the routers' train items)",
            "",
            "| task | best routed row | routed | task_lora | base | routed - task_lora (paired) | share of the "
            "LoRA's gain over base |",
            "| --- | --- | ---: | ---: | ---: | --- | ---: |",
        ]
        for d in doc["to_task_lora"]:
            share = "-" if d["share_of_lora_gain"] is None else f"{100 * d['share_of_lora_gain']:.0f}%"
            lines.append(
                f"| {d['task']} | {d['best_routed']} | {100 * d['routed_value']:.1f} | "
                f"{100 * d['task_lora_value']:.1f} | {100 * d['base_value']:.1f} | "
                f"{paired_cell(d['paired'])} | {share} |"
            )
    if doc["fits"]:
        lines += ["", "## What the routers chose (train split only)", ""]
        lines += [
            "| task | best single skill | router | task loss base -> fitted | top weights |",
            "| --- | --- | --- | --- | --- |",
        ]
    for t, f in doc["fits"].items():
        for key, info in f["routers"].items():
            top = sorted(info["weights"].items(), key=lambda kv: -abs(kv[1]))[:3]
            lines.append(
                f"| {t} | {f['best_single_skill']} | {key} (k={info['k']}) | "
                f"{info['loss_base']:.3f} -> {info['fit_loss']:.3f} | "
                + ", ".join(f"{n} {w:+.2f}" for n, w in top)
                + " |"
            )
    sk = doc["skills"].get("skills", {})
    if sk:
        lines += ["", "## Skills (validation loss on the answers, before -> after training)", ""]
        lines += [
            "| skill | train examples | planned steps | stopped at (best step) | val loss before -> after "
            "| deciding-label accuracy before -> after (tasks) |",
            "| --- | ---: | ---: | --- | --- | --- |",
        ]
        for s, m in sk.items():
            if m.get("val_loss_before") is None:
                lines.append(f"| {s} | - | - | - | - | - |")
                continue
            es = m.get("early_stopping") or {}
            stop = f"{es.get('stopped_at') or 'not stopped'} ({es.get('best_step')})" if es else "-"
            acc = "-"
            if m.get("label_accuracy_after") is not None:
                tasks = ", ".join(
                    f"{t} {v['labels']} labels" for t, v in (m.get("label_tasks") or {}).items()
                )
                acc = f"{100 * m['label_accuracy_before']:.0f}% -> {100 * m['label_accuracy_after']:.0f}% ({tasks})"
            lines.append(
                f"| {s} | {m['train_examples']} | {m['steps']} | {stop} | "
                f"{m['val_loss_before']:.3f} -> {m['val_loss_after']:.3f} | {acc} |"
            )
    if doc.get("task_loras"):
        lines += ["", "## Task LoRAs (train: the routers' items; early stopping: the task's dev split)", ""]
        lines += [
            "| task | train items | planned steps | stopped at (best step) | dev loss before -> after |",
            "| --- | ---: | ---: | --- | --- |",
        ]
        for t, m in doc["task_loras"].items():
            lines.append(
                f"| {t} | {m['train_examples']} | {m['planned_steps']} | {m['stopped_at'] or 'not stopped'} "
                f"({m['best_step']}) | {m['val_loss_before']:.3f} -> {m['val_loss_after']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], path: Path) -> None:
    """Primary metric per task (x) and row (bars), 95% CI, `*` where the paired test against base says p < 0.05."""
    tasks = list(dict.fromkeys(r["task"] for r in table))
    rows = list(dict.fromkeys(r["row"] for r in table))
    by = {(r["task"], r["row"]): r for r in table}

    def bar(row: str, t: str) -> Bar | None:
        r = by.get((t, row))
        if r is None:
            return None
        return r["value"], r["ci_low"], r["ci_high"], bool(r["vs_base"] and r["vs_base"]["significant"])

    grouped_bars(
        path,
        tasks,
        rows,
        bar,
        title="Reference run: base vs skills + router (95% CI; * p<0.05 paired vs base)",
        figsize=(max(7.0, 1.9 * len(tasks)), 4.0),
        xlabels=[f"{t}\n({METRIC_NAMES.get(by[(t, 'base')]['metric'], '')})" for t in tasks],
        tick_size=8,
        capsize=2,
        legend={"fontsize": 7, "ncol": 3},
    )
