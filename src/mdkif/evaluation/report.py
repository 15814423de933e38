"""Turn per-item predictions into summary.json, report.md (variant x benchmark table) and a bar chart."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mdkif.evaluation import task_metrics as tm
from mdkif.evaluation.metrics import summarize
from mdkif.evaluation.paired import mcnemar_exact, paired_bootstrap

MCQ = "mcq"


def column_kind(rows: Sequence[dict[str, Any]]) -> str:
    """`mcq` for multiple-choice rows, else the task kind the rows carry."""
    return rows[0].get("kind", MCQ) if rows else MCQ


def primary_metric(kind: str) -> str:
    return "accuracy" if kind == MCQ else tm.PRIMARY[kind]


def item_stats(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """(n, D) per-item statistics: `[correct]` for MCQ rows, the scorer's `stats` for task rows."""
    if column_kind(rows) == MCQ:
        return np.asarray([[float(bool(r["correct"]))] for r in rows], dtype=float)
    return np.asarray([r["stats"] for r in rows], dtype=float)


def metric_fn(kind: str, labels: Sequence[str] | None):
    """Summed statistics (R, D) and item counts -> the kind's primary metric (R,), vectorised."""
    if kind == MCQ:
        return lambda summed, n: summed[..., 0] / n
    name = tm.PRIMARY[kind]
    return lambda summed, n: tm.metrics_from_stats(kind, summed, n, labels)[name]


def summarize_column(
    rows: Sequence[dict[str, Any]], labels: Sequence[str] | None, *, resamples: int, seed: int
) -> dict[str, Any]:
    """A variant x column result: the primary metric with its bootstrap CI, every metric, counts."""
    kind = column_kind(rows)
    if kind == MCQ:
        base = summarize(rows, resamples=resamples, seed=seed)
        return {
            "kind": MCQ,
            "metric": "accuracy",
            "value": base["accuracy"],
            "metrics": {"accuracy": base["accuracy"]},
            **base,
        }
    golds, preds = _golds_preds(kind, rows)
    metrics = tm.corpus_metrics(kind, golds, preds, labels)
    name = tm.PRIMARY[kind]
    stats = item_stats(rows)
    low, high = tm.bootstrap_metric(kind, stats, labels, metric=name, resamples=resamples, seed=seed)
    out: dict[str, Any] = {
        "kind": kind,
        "metric": name,
        "value": float(metrics[name]),
        "ci_low": low,
        "ci_high": high,
        "n": len(rows),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "truncated": sum(bool(r.get("truncated")) for r in rows),
    }
    if kind == "classification":
        out["correct"] = sum(bool(r["correct"]) for r in rows)
    if kind == "multilabel":
        out["outside_label_set"] = sum(len(r.get("outside_label_set", [])) for r in rows)
    return out


def _golds_preds(kind: str, rows: Sequence[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The library scorers' inputs, rebuilt from prediction rows."""
    if kind == "classification":
        return [r["gold"] for r in rows], [r["prediction"] for r in rows]
    if kind == "multilabel":
        return [r["gold_labels"] for r in rows], [r["prediction"] for r in rows]
    if kind == "ner":
        return [r["gold_tags"] for r in rows], [r["pred_tags"] for r in rows]
    if kind == "relation":
        golds = [tm.parse_relations(r["gold"]) for r in rows]
        preds = [{tuple(p.split(" -> ", 1)) for p in r["prediction"]} for r in rows]
        return golds, preds
    return [r["gold"] for r in rows], [r["prediction"] for r in rows]


def paired_comparisons(
    predictions: dict[tuple[str, str], list[dict[str, Any]]],
    variants: Sequence[str],
    benchmarks: Sequence[str],
    references: Sequence[str],
    labels: dict[str, list[str]],
    *,
    resamples: int,
    seed: int,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """Every variant against each reference, per column, on the same items.

    The difference of the primary metric with its paired-bootstrap interval and p (items resampled
    jointly); for accuracy also McNemar's exact p, which then decides significance.
    """
    out = []
    for ref in references:
        for v in variants:
            if v == ref:
                continue
            for b in benchmarks:
                a_rows, b_rows = predictions.get((ref, b)), predictions.get((v, b))
                if a_rows is None or b_rows is None:
                    continue
                if [r["id"] for r in a_rows] != [r["id"] for r in b_rows]:
                    raise ValueError(f"{ref} and {v} scored different items of {b}: no paired test")
                kind = column_kind(a_rows)
                fn = metric_fn(kind, labels.get(b))
                boot = paired_bootstrap(
                    item_stats(a_rows), item_stats(b_rows), fn, resamples=resamples, seed=seed
                )
                row: dict[str, Any] = {
                    "variant": v,
                    "reference": ref,
                    "benchmark": b,
                    "metric": primary_metric(kind),
                    "diff": boot["diff"],
                    "ci_low": boot["ci_low"],
                    "ci_high": boot["ci_high"],
                    "p_bootstrap": boot["p"],
                    "test": "bootstrap",
                    "p": boot["p"],
                }
                if primary_metric(kind) == "accuracy":
                    mc = mcnemar_exact([r["correct"] for r in a_rows], [r["correct"] for r in b_rows])
                    row.update(
                        test="mcnemar", p=mc["p"], p_mcnemar=mc["p"], b_only=mc["b_only"], a_only=mc["a_only"]
                    )
                row["significant"] = bool(row["p"] < alpha)
                out.append(row)
    return out


def build_summary(
    predictions: dict[tuple[str, str], list[dict[str, Any]]],
    variants: Sequence[str],
    benchmarks: Sequence[str],
    *,
    resamples: int,
    seed: int,
    references: Sequence[str] = (),
    labels: dict[str, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One result per (variant, benchmark) present, in config order, the paired tests, the run's settings."""
    labels = labels or {}
    results = []
    for v in variants:
        for b in benchmarks:
            rows = predictions.get((v, b))
            if rows is None:
                continue
            col = summarize_column(rows, labels.get(b), resamples=resamples, seed=seed)
            results.append({"variant": v, "benchmark": b, **col})
    paired = paired_comparisons(
        predictions, variants, benchmarks, references, labels, resamples=resamples, seed=seed
    )
    return {
        "variants": list(variants),
        "benchmarks": list(benchmarks),
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "method": "percentile"},
        "references": list(references),
        "results": results,
        "paired": paired,
        **(extra or {}),
    }


# --- table cells: one format for every report that compares variants (this one, the reference run's) ---


def pct(x: float | None) -> str:
    """A rate as a percentage with one decimal; n/a when missing or NaN."""
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def ci_cell(value: float, low: float, high: float) -> str:
    """`value [low, high]` in %."""
    return f"{pct(value)} [{pct(low)}, {pct(high)}]"


def mean_cell(values: list[float]) -> str:
    """The macro mean of a row's primary metrics in %, `-` for a row with none."""
    return pct(sum(values) / len(values)) if values else "-"


def paired_cell(p: dict[str, Any] | None) -> str:
    """A paired comparison: the difference in points [95% CI], p, McNemar's discordant counts, `*` if p < alpha."""
    if p is None:
        return "-"
    cell = f"{100 * p['diff']:+.1f} [{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}] p={p['p']:.3g}"
    if p["test"] == "mcnemar" and "b_only" in p:
        cell += f" ({p['b_only']}/{p['a_only']})"
    return cell + (" *" if p["significant"] else "")


def table_lines(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table: the header, its rule, one line per row."""
    return [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" for _ in head) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


METRIC_NAMES = {"accuracy": "acc", "micro_f1": "micro-F1", "f1": "F1", "rougeL": "ROUGE-L"}


def _column_metrics(summary: dict[str, Any]) -> dict[str, str]:
    return {r["benchmark"]: r.get("metric", "accuracy") for r in summary["results"]}


def render_markdown(summary: dict[str, Any]) -> str:
    """Variant rows x benchmark columns (primary metric [95% CI]), then the paired tests against references."""
    by = {(r["variant"], r["benchmark"]): r for r in summary["results"]}
    benches = summary["benchmarks"]
    metric = _column_metrics(summary)
    paired = {(p["variant"], p["reference"], p["benchmark"]): p for p in summary.get("paired", [])}
    first_ref = (summary.get("references") or [None])[0]
    lines = [
        "# Evaluation report",
        "",
        "Each column's primary metric in % (accuracy for multiple choice and classification, micro-F1 for "
        "multi-label, entity/pair F1 for extraction, ROUGE-L F for generation) with a 95% percentile-bootstrap "
        f"interval ({summary['bootstrap']['resamples']} resamples, seed {summary['bootstrap']['seed']}); "
        "n items; unp = unparsable or ambiguous MCQ answers (counted as wrong). Mean = macro average of the "
        f"columns' primary metrics. `*`: differs from `{first_ref}` at p < 0.05 by the paired test below.",
        "",
    ]
    rows = []
    for v in summary["variants"]:
        cells, vals = [], []
        for b in benches:
            r = by.get((v, b))
            if r is None:
                cells.append("-")
                continue
            value = r.get("value", r.get("accuracy"))
            vals.append(value)
            cell = f"{ci_cell(value, r['ci_low'], r['ci_high'])} n={r['n']}"
            if r.get("kind", "mcq") == "mcq":
                cell += f" unp={r['unparsable'] + r['ambiguous']}"
            p = paired.get((v, first_ref, b))
            if p is not None and p["significant"]:
                cell += " *"
            cells.append(cell)
        rows.append([v, *cells, mean_cell(vals)])
    columns = [f"{b} ({METRIC_NAMES.get(metric.get(b, ''), metric.get(b, ''))})" for b in benches]
    lines += table_lines(["variant", *columns, "mean"], rows)
    if summary.get("paired"):
        lines += [
            "",
            "## Paired comparisons",
            "",
            "Difference of the primary metric (variant minus reference, points) on the same items, with the "
            "paired-bootstrap 95% interval; p is McNemar's exact test for accuracy columns (b/a: items only "
            "the variant / only the reference got right), the paired bootstrap's otherwise. `*`: p < 0.05.",
            "",
        ]
        pairs = list(dict.fromkeys((p["variant"], p["reference"]) for p in summary["paired"]))
        rows = [[v, ref, *(paired_cell(paired.get((v, ref, b))) for b in benches)] for v, ref in pairs]
        lines += table_lines(["variant", "reference", *benches], rows)
    methods = summary.get("methods")
    if methods:
        lines += ["", *table_lines(["variant", "method"], [[v, m] for v, m in methods.items()])]
    return "\n".join(lines) + "\n"


# A bar: (value, ci_low, ci_high, significant) for one series in one group, or None where there is none.
Bar = tuple[float, float, float, bool]


def grouped_bars(
    path: Path,
    groups: list[str],
    series: list[str],
    bar: Callable[[str, str], Bar | None],
    *,
    title: str,
    figsize: tuple[float, float],
    xlabels: list[str] | None = None,
    tick_size: float | None = None,
    capsize: float = 3,
    legend: dict[str, Any] | None = None,
) -> None:
    """Groups on x, one bar per series with its 95% CI as error bars, `*` over a significant one; as PNG.

    The one comparison chart: the evaluation report's and the reference run's."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers or in CI
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=figsize)
    for j, s in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for i, g in enumerate(groups):
            b = bar(s, g)
            if b is None or math.isnan(b[0]):
                continue
            value, ci_low, ci_high, significant = b
            x = i - 0.4 + width * (j + 0.5)
            xs.append(x)
            ys.append(100 * value)
            lo.append(100 * (value - ci_low))
            hi.append(100 * (ci_high - value))
            if significant:
                ax.text(x, 100 * ci_high + 1, "*", ha="center", fontsize=12)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=capsize, label=s)
    ax.set_xticks(range(len(groups)), xlabels or groups, fontsize=tick_size)
    ax.set_ylabel("primary metric (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(**(legend or {"fontsize": "small"}))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_chart(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars (benchmarks on x, one bar per variant) with 95% CI error bars; `*` marks a significant
    paired difference from the first reference variant."""
    by = {(r["variant"], r["benchmark"]): r for r in summary["results"]}
    benches, variants = summary["benchmarks"], summary["variants"]
    metric = _column_metrics(summary)
    first_ref = (summary.get("references") or [None])[0]
    sig = {
        (p["variant"], p["benchmark"])
        for p in summary.get("paired", [])
        if p["reference"] == first_ref and p["significant"]
    }

    def bar(v: str, b: str) -> Bar | None:
        r = by.get((v, b))
        value = None if r is None else r.get("value", r.get("accuracy"))
        return None if value is None else (value, r["ci_low"], r["ci_high"], (v, b) in sig)

    title = "Primary metric by benchmark and variant (95% bootstrap CI)"
    if sig:
        title += f"; * p<0.05 vs {first_ref}"
    grouped_bars(
        path,
        benches,
        variants,
        bar,
        title=title,
        figsize=(max(5.0, 1.6 * len(benches) * max(1, len(variants)) ** 0.5), 3.8),
        xlabels=[f"{b}\n({METRIC_NAMES.get(metric.get(b, ''), '')})" for b in benches],
    )


def write_reports(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write summary.json, report.md and accuracy.png into `out`; return their paths."""
    paths = {"summary": out / "summary.json", "report": out / "report.md", "chart": out / "accuracy.png"}
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    paths["report"].write_text(render_markdown(summary), encoding="utf-8")
    plot_chart(summary, paths["chart"])
    return paths
