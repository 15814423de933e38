"""Benchmark the router's task loss: LM head on the answer positions only vs full logits.

    .venv/bin/python bench/bench_answer_loss.py --skills runs/demo/adapters --k 20

One CMA-ES candidate (or one gradient step's forward) scores k task examples under the fused model.
`answer_loss` passes the positions that predict a target token as `logits_to_keep`, so the vocabulary
projection (49,152 x 576 for SmolLM2) and the float softmax run on a few positions per row instead of
every prompt position. Baseline in the same run: the same fused model and batch with full logits. Both
must give the same loss. Also the naive candidate on the same task batch: the skills in peft, the weighted
deltas re-merged into the base per candidate, and the loss from `model(labels=...)` (full logits), i.e.
the issue's "re-merging adapters with peft per candidate" measured on a real task instead of random
tokens. Writes bench/results/answer_loss.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _harness import RESULTS, Figure, write_results  # bench/ is sys.path[0] when a benchmark runs


class FullLogits:
    """The fused model behind a bare call signature, so `answer_loss` takes its full-logits path."""

    def __init__(self, model) -> None:
        self._fused = model  # not `.model`: answer_loss would unwrap that and find logits_to_keep

    def __call__(self, **kw):
        return self._fused(**kw)


def figures(d: dict) -> list[Figure]:
    """The rows bench/summary.py tabulates (each against its same-run baseline)."""
    s = d["seconds"]
    return [
        Figure(
            "fusion",
            f"router task loss, LM head on answer positions (k={d['batch'][0]})",
            s["kept"],
            s["full"],
            "full logits, same fused model and batch",
            "s",
        ),
        Figure(
            "fusion",
            f"CMA-ES candidate on a real task ({Path(d['task']).stem} k={d['batch'][0]}), shipped",
            s["kept"],
            s["naive"],
            "peft re-merge per candidate + model(labels=...)",
            "s",
            "<= 0.2 (5x cheaper)",
            s["naive"] >= 5 * s["kept"],
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument(
        "--skills",
        default="runs/demo/adapters",
        help="folder of <skill>/adapter_config.json; missing: 12 random AdaLoRA adapters (cost does not "
        "depend on what the skills learned)",
    )
    ap.add_argument("--task", default="../shared/data/mcq/pubmedqa/pqal_dev500.json")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=320)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from mdkif.fusion import SkillBank, fuse
    from mdkif.models import ModelConfig, load_model
    from mdkif.routing.data import answer_loss, encode, load_examples

    tmp = None
    if (Path(args.skills)).is_dir():
        paths = sorted(p.parent for p in Path(args.skills).glob("*/adapter_config.json"))
    else:
        from bench_fusion import make_adapters  # the scripts' own folder is on sys.path

        tmp = tempfile.TemporaryDirectory()
        paths = make_adapters(args.model, Path(tmp.name), 12, 8, ["q_proj", "k_proj", "v_proj", "o_proj"])
    bank = SkillBank.from_paths({p.name: p for p in paths})
    loaded = load_model(ModelConfig(name=args.model))
    fused = fuse(loaded.model, bank)
    batch = encode(loaded.tokenizer, load_examples(args.task)[: args.k], max_length=args.max_length)
    w = torch.full((len(bank),), 1.0 / len(bank))
    fused.set_weights(w)
    from bench_fusion import NaiveRemerge

    naive = NaiveRemerge(args.model, paths)
    times: dict[str, list[float]] = {"naive": [], "full": [], "kept": []}
    losses = {}
    with torch.no_grad():
        for _ in range(args.repeat):  # interleaved, so load changes hit all alike
            t = time.perf_counter()
            losses["naive"] = naive.candidate_loss(w, batch)
            times["naive"].append(time.perf_counter() - t)
            for name, model in (("full", FullLogits(fused)), ("kept", fused)):
                fused.set_weights(w)  # what a candidate costs us: new weights, one forward
                t = time.perf_counter()
                losses[name] = float(answer_loss(model, batch))
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    if tmp is not None:
        tmp.cleanup()
    targets = int((batch.labels != -100).sum())
    result = {
        "model": args.model,
        "skills": len(bank),
        "skills_from": args.skills if tmp is None else "random AdaLoRA adapters",
        "task": args.task,
        "batch": list(batch.input_ids.shape),
        "target_tokens": targets,
        "threads": 1,
        "seconds": med,
        "speedup": med["full"] / med["kept"],
        "candidate_vs_naive": med["naive"] / med["kept"],
        "loss": losses,
        "abs_loss_diff": abs(losses["full"] - losses["kept"]),
        "abs_loss_diff_naive": abs(losses["naive"] - losses["kept"]),
    }
    md = (
        f"# CMA-ES candidate on a real task: naive re-merge vs fused ({args.model}, {len(bank)} skills, "
        f"{Path(args.task).name} k={args.k}, batch {tuple(batch.input_ids.shape)}, {targets} target tokens, "
        f"1 thread, median of {args.repeat})\n\n"
        "| one CMA-ES candidate (new weights + task loss over the k examples) | seconds | loss |\n"
        "|---|---|---|\n"
        f"| naive: restore W, merge sum w_i dW_i with peft, `model(labels=...)` | {med['naive']:.3f} | "
        f"{losses['naive']:.6f} |\n"
        f"| stacked fused, full logits | {med['full']:.3f} | {losses['full']:.6f} |\n"
        f"| stacked fused, LM head on answer positions (shipped) | {med['kept']:.3f} | {losses['kept']:.6f} |\n\n"
        f"Answer positions only: **{result['speedup']:.2f}x** faster than full logits, same loss (difference "
        f"{result['abs_loss_diff']:.1e}). Shipped candidate vs the naive one: **{result['candidate_vs_naive']:.2f}x** "
        f"(loss difference {result['abs_loss_diff_naive']:.1e}: merged and stacked fusion agree).\n"
    )
    write_results("answer_loss", result, md, figures(result), results=RESULTS)
    print(md)


if __name__ == "__main__":
    main()
