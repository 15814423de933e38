"""Collect every benchmark's figures into one table: bench/results/SUMMARY.md (run by `make bench`).

Each row is one figure measured against a baseline taken in the same run, with the ratio and, where an
issue set one, the target and whether it is met. A benchmark whose JSON is missing is listed as not run,
so the table never silently drops a figure.

    python bench/summary.py [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    bench: str
    figure: str
    value: float
    baseline: float | None
    baseline_name: str
    unit: str
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


def _ratio(value: float, baseline: float | None) -> float | None:
    return None if not baseline else value / baseline


def eval_rows(d: dict[str, Any]) -> list[Row]:
    q_ll, q_gen = d["loglik"]["questions_per_s"], d["generate"]["questions_per_s"]
    return [
        Row(
            "eval_scoring",
            f"log-likelihood scoring ({d['items']} items, {d['model']})",
            q_ll,
            q_gen,
            "generative scoring",
            "questions/s",
            _ratio(q_ll, q_gen),
        )
    ]


def fusion_rows(d: dict[str, Any]) -> list[Row]:
    c = d["candidate_eval_s"]
    f = d["forward_s"]
    speed = c["naive_peft_remerge"] / c["fused_stacked"]
    return [
        Row(
            "fusion",
            f"CMA-ES candidate evaluation, fused stacked ({d['skills']} skills)",
            c["fused_stacked"],
            c["naive_peft_remerge"],
            "re-merge adapters with peft per candidate",
            "s",
            _ratio(c["fused_stacked"], c["naive_peft_remerge"]),
            "<= 0.2 (5x cheaper)",
            speed >= 5,
        ),
        Row(
            "fusion",
            "forward, merged mode",
            f["merged"],
            f["base"],
            "base model forward",
            "s",
            _ratio(f["merged"], f["base"]),
            "within 2%",
            f["merged"] <= 1.02 * f["base"],
        ),
        Row(
            "fusion",
            f"forward, stacked mode ({d['skills']} skills)",
            f["stacked"],
            f["base"],
            "base model forward",
            "s",
            _ratio(f["stacked"], f["base"]),
            "within 30%",
            f["stacked"] <= 1.30 * f["base"],
        ),
    ]


def answer_loss_rows(d: dict[str, Any]) -> list[Row]:
    s = d["seconds"]
    return [
        Row(
            "fusion",
            f"router task loss, LM head on answer positions (k={d['batch'][0]})",
            s["kept"],
            s["full"],
            "full logits, same fused model and batch",
            "s",
            _ratio(s["kept"], s["full"]),
        ),
        Row(
            "fusion",
            f"CMA-ES candidate on a real task ({Path(d['task']).stem} k={d['batch'][0]}), shipped",
            s["kept"],
            s["naive"],
            "peft re-merge per candidate + model(labels=...)",
            "s",
            _ratio(s["kept"], s["naive"]),
            "<= 0.2 (5x cheaper)",
            s["naive"] >= 5 * s["kept"],
        ),
    ]


def rag_rows(d: dict[str, Any]) -> list[Row]:
    rows = []
    r = d["recall"]
    for mode in ("dense", "hybrid"):
        rows.append(
            Row(
                "rag",
                f"recall@1, {mode} ({d['recall_questions']} PubMedQA questions)",
                r[mode]["recall@1"],
                r["bm25"]["recall@1"],
                "BM25",
                "",
                _ratio(r[mode]["recall@1"], r["bm25"]["recall@1"]),
            )
        )
    t = d["throughput"]
    rows.append(
        Row(
            "rag",
            f"index throughput, Ray Data ({t['actors']} actors)",
            t["ray_cps"],
            t["single_cps"],
            "single process",
            "chunks/s",
            _ratio(t["ray_cps"], t["single_cps"]),
        )
    )
    lat = d["latency_full"]
    for mode in ("dense", "hybrid"):
        rows.append(
            Row(
                "rag",
                f"query p50, {mode} ({d['full_size']['chunks']} chunks)",
                lat[mode]["p50_ms"],
                lat["bm25"]["p50_ms"],
                "BM25 p50",
                "ms",
                _ratio(lat[mode]["p50_ms"], lat["bm25"]["p50_ms"]),
            )
        )
    return rows


def serve_rows(d: dict[str, Any]) -> list[Row]:
    s = d["summary"]
    by = {name: {r["concurrency"]: r for r in runs} for name, runs in d["settings"].items()}
    inproc = by["in-process"][1]["p50_ms"]
    rows = []
    for label, tag in (("serve", ""), ("serve direct", "direct_")):
        if f"{label}, batch off" not in by:
            continue  # results from before the throughput-optimized path was measured
        added = s[f"serve_{tag}added_p50_ms_c1"]
        on, off = (
            by[f"{label}, batch on"][32]["throughput_rps"],
            by[f"{label}, batch off"][32]["throughput_rps"],
        )
        how = "default proxy" if not tag else "throughput-optimized, direct ingress"
        rows += [
            Row(
                "serve",
                f"p50 latency through Serve ({how}), concurrency 1",
                inproc + added,
                inproc,
                "model called in-process",
                "ms",
                _ratio(inproc + added, inproc),
                "added p50 < 10 ms",
                added < 10,
            ),
            Row(
                "serve",
                f"throughput with @serve.batch ({how}), concurrency 32",
                on,
                off,
                "batching off",
                "req/s",
                _ratio(on, off),
                ">= 3x",
                on >= 3 * off,
            ),
        ]
    return rows


def train_rows(d: dict[str, Any]) -> list[Row]:
    rows = []
    p = d.get("parallel")
    if p:
        rows.append(
            Row(
                "train",
                f"{p['parallel']['skills']} skills, one trainer, {p['parallel']['workers']} workers",
                p["parallel"]["wall_seconds"],
                p["sequential"]["wall_seconds"],
                "one worker, skills in sequence",
                "s",
                _ratio(p["parallel"]["wall_seconds"], p["sequential"]["wall_seconds"]),
            )
        )
        rows.append(
            Row(
                "train",
                "start-up paid by one shared trainer",
                p["one_trainer_fit_seconds"],
                p["estimated_12_trainers_startup_seconds"],
                "12 separate TorchTrainers (estimated)",
                "s",
                _ratio(p["one_trainer_fit_seconds"], p["estimated_12_trainers_startup_seconds"]),
            )
        )
    o = d.get("overhead", {}).get("ray")
    if o and "report_share_of_step_pct" in o:
        rows.append(
            Row(
                "train",
                "ray.train.report per step",
                o["report_seconds_per_step"] * 1000,
                None,
                "",
                "ms",
                None,
                f"{o['report_share_of_step_pct']:.2f}% of a step",
            )
        )
    return rows


READERS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "eval_scoring.json": eval_rows,
    "fusion.json": fusion_rows,
    "answer_loss.json": answer_loss_rows,
    "rag.json": rag_rows,
    "serve.json": serve_rows,
    "train.json": train_rows,
}


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def collect(results: Path) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    missing: list[str] = []
    for name, reader in READERS.items():
        path = results / name
        if not path.is_file():
            missing.append(name)
            continue
        try:
            rows += reader(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as e:
            raise SystemExit(
                f"{path}: unexpected layout ({type(e).__name__}: {e}); re-run its benchmark"
            ) from e
    return rows, missing


def render(rows: list[Row], missing: list[str]) -> str:
    lines = [
        "# Benchmark summary",
        "",
        "Every figure against a baseline measured in the same run (`make bench`; each benchmark's own",
        "Markdown beside this file has the details and the machine it ran on). ratio = value / baseline.",
        "",
        "| bench | figure | value | baseline | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        unit = f" {r.unit}" if r.unit else ""
        base = f"{_fmt(r.baseline)}{unit} ({r.baseline_name})" if r.baseline is not None else "-"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.bench} | {r.figure} | {_fmt(r.value)}{unit} | {base} | {_fmt(r.ratio)} | {r.target} | {met} |"
        )
    if missing:
        lines += ["", "Not run (no results file): " + ", ".join(missing)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows, missing = collect(args.results)
    text = render(rows, missing)
    out = args.results / "SUMMARY.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(text)


if __name__ == "__main__":
    main()
