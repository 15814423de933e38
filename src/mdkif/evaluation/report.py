"""Turn per-item predictions into summary.json, report.md (variant x benchmark table) and a bar chart."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mdkif.evaluation.metrics import summarize


def build_summary(
    predictions: dict[tuple[str, str], list[dict[str, Any]]],
    variants: Sequence[str],
    benchmarks: Sequence[str],
    *,
    resamples: int,
    seed: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One result per (variant, benchmark) present, in config order, plus the run's settings."""
    results = []
    for v in variants:
        for b in benchmarks:
            rows = predictions.get((v, b))
            if rows is None:
                continue
            results.append({"variant": v, "benchmark": b, **summarize(rows, resamples=resamples, seed=seed)})
    return {
        "variants": list(variants),
        "benchmarks": list(benchmarks),
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "method": "percentile"},
        "results": results,
        **(extra or {}),
    }


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def render_markdown(summary: dict[str, Any]) -> str:
    """Variant rows x benchmark columns: accuracy [95% CI], n and unparsable count, plus a macro mean."""
    by = {(r["variant"], r["benchmark"]): r for r in summary["results"]}
    benches = summary["benchmarks"]
    lines = [
        "# Evaluation report",
        "",
        "Accuracy in % with a 95% percentile-bootstrap interval "
        f"({summary['bootstrap']['resamples']} resamples, seed {summary['bootstrap']['seed']}); "
        "n items; unp = unparsable or ambiguous answers (counted as wrong). Mean = macro average over benchmarks.",
        "",
        "| variant | " + " | ".join(benches) + " | mean |",
        "| --- | " + " | ".join("---" for _ in benches) + " | --- |",
    ]
    for v in summary["variants"]:
        cells, accs = [], []
        for b in benches:
            r = by.get((v, b))
            if r is None:
                cells.append("-")
                continue
            accs.append(r["accuracy"])
            unp = r["unparsable"] + r["ambiguous"]
            cells.append(
                f"{_pct(r['accuracy'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}] n={r['n']} unp={unp}"
            )
        mean = _pct(sum(accs) / len(accs)) if accs else "-"
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {mean} |")
    methods = summary.get("methods")
    if methods:
        lines += ["", "| variant | method |", "| --- | --- |"]
        lines += [f"| {v} | {m} |" for v, m in methods.items()]
    return "\n".join(lines) + "\n"


def plot_chart(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars (benchmarks on x, one bar per variant) with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers or in CI
    import matplotlib.pyplot as plt

    by = {(r["variant"], r["benchmark"]): r for r in summary["results"]}
    benches, variants = summary["benchmarks"], summary["variants"]
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(benches) * max(1, len(variants)) ** 0.5), 3.8))
    for j, v in enumerate(variants):
        xs, ys, lo, hi = [], [], [], []
        for i, b in enumerate(benches):
            r = by.get((v, b))
            if r is None or math.isnan(r["accuracy"]):
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(100 * r["accuracy"])
            lo.append(100 * (r["accuracy"] - r["ci_low"]))
            hi.append(100 * (r["ci_high"] - r["accuracy"]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=v)
    ax.set_xticks(range(len(benches)), benches)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy by benchmark and variant (95% bootstrap CI)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write summary.json, report.md and accuracy.png into `out`; return their paths."""
    paths = {"summary": out / "summary.json", "report": out / "report.md", "chart": out / "accuracy.png"}
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    paths["report"].write_text(render_markdown(summary), encoding="utf-8")
    plot_chart(summary, paths["chart"])
    return paths
