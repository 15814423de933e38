"""Benchmark `mdkif route export`: a routed mixture as one LoRA, exact and SVD-recompressed, on the real model.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_export.py \
        --skills runs/reference/adapters --routers runs/reference/routers/meqsum/cmaes-k5 \
        runs/reference/routers/healthver/gradient --ranks 64 32 16

For each router (a saved static router artifact) and each rank (exact = the stacked rank, then each
`--ranks` value by truncated SVD) it writes the adapter, reloads it with `PeftModel.from_pretrained` on a
fresh base, and compares its logits on real prompts with the baseline of the same run: the fused model
with the same mixture merged into its weights (what mdkif serves). Reported: rank, file size (fp32) and
its ratio to the merged weights of the adapted layers (what one would ship without the export), the
dropped SVD energy and worst module error, the max |logit| difference to the merged model, next to the
max |logit| shift the mixture causes over the base (the size of what is being reproduced), and the
greedy next-token agreement with the merged model. Results: bench/results/export.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from _harness import RESULTS, write_results  # bench/ is sys.path[0] when a benchmark runs

REPO = Path(__file__).resolve().parents[1]

PROMPTS = [
    "Summarize the question: my father takes metformin and now has stomach pain, should he stop it?",
    "Does the claim hold? Claim: vitamin C cures COVID-19.",
    "Patient with crushing chest pain radiating to the left arm. What is the most likely diagnosis?",
    "List the diseases mentioned: The patient developed acute kidney injury after cisplatin therapy.",
    "What are the common side effects of lisinopril?",
    "Is aspirin recommended for primary prevention in adults over 70?",
]


def run(args: argparse.Namespace) -> dict:
    from peft import PeftModel

    from mdkif.fusion import SkillBank, fuse
    from mdkif.fusion.export import export_lora
    from mdkif.models import ModelConfig, load_model
    from mdkif.routing.router import router_weights

    torch.set_num_threads(args.threads)
    model_cfg = ModelConfig(name=args.model)
    tok = load_model(model_cfg).tokenizer
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in map(Path, args.routers):
            names = json.loads((folder / "router.json").read_text())["skills"]
            bank = SkillBank.from_dir(args.skills, names)
            w, info = router_weights(folder, bank)
            groups = info["layer_groups"] if w.dim() == 2 else None
            fused = fuse(load_model(model_cfg).model, bank)
            base_model = load_model(model_cfg).model
            ids = tok(PROMPTS, return_tensors="pt", padding=True)
            with torch.no_grad():
                base = base_model(**ids).logits
                fused.merge(w)
                merged = fused(**ids).logits
            mask = ids["attention_mask"].bool()
            merged_bytes = sum(layer.base.weight.numel() * 4 for layer in fused.layers.values())
            for rank in [None, *args.ranks]:
                t0 = time.perf_counter()
                rep = export_lora(bank, w, Path(tmp) / f"{folder.name}-{rank}", groups=groups, rank=rank)
                seconds = time.perf_counter() - t0
                peft_model = PeftModel.from_pretrained(load_model(model_cfg).model, rep.out)
                peft_model.eval()
                with torch.no_grad():
                    got = peft_model(**ids).logits
                diff = (got - merged).abs()[mask].max()
                shift = (merged - base).abs()[mask].max()
                agree = (got.argmax(-1) == merged.argmax(-1))[mask].float().mean()
                rows.append(
                    {
                        "router": str(folder),
                        "per_layer": rep.per_layer,
                        "rank_arg": rank,
                        "rank": rep.rank,
                        "stacked_rank": rep.stacked_rank,
                        "modules": rep.modules,
                        "mb_fp32": round(rep.bytes / 2**20, 2),
                        "merged_mb_fp32": round(merged_bytes / 2**20, 2),
                        "size_ratio_vs_merged": round(rep.bytes / merged_bytes, 4),
                        "dropped_energy": rep.dropped_energy,
                        "max_module_error": rep.max_module_error,
                        "max_abs_logit_diff": float(diff),
                        "max_abs_logit_shift_over_base": float(shift),
                        "next_token_agreement": float(agree),
                        "export_seconds": round(seconds, 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return {
        "machine": {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__},
        "model": args.model,
        "skills": str(args.skills),
        "prompts": len(PROMPTS),
        "rows": rows,
    }


def markdown(doc: dict) -> str:
    lines = [
        "# `mdkif route export`: one LoRA per routed mixture (real model)",
        "",
        f"Model `{doc['model']}`, skills `{doc['skills']}`, {doc['prompts']} prompts; baseline: the fused model "
        "with the same mixture merged (same run). `bench/bench_export.py`.",
        "",
        "| router | rank | MB fp32 | size / merged | dropped energy | worst module err | max logit diff | "
        "logit shift over base | next-token agreement |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["rows"]:
        rank = f"{r['rank']} (exact)" if r["rank_arg"] is None else f"{r['rank']} (SVD)"
        de = "-" if r["dropped_energy"] is None else f"{r['dropped_energy']:.2e}"
        me = "-" if r["max_module_error"] is None else f"{r['max_module_error']:.4f}"
        lines.append(
            f"| {Path(r['router']).parent.name}/{Path(r['router']).name} | {rank} | {r['mb_fp32']} | "
            f"{r['size_ratio_vs_merged']:.3f} | {de} | {me} | {r['max_abs_logit_diff']:.2e} | "
            f"{r['max_abs_logit_shift_over_base']:.2f} | {r['next_token_agreement']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skills", type=Path, required=True, help="skill adapters folder")
    ap.add_argument("--routers", nargs="+", required=True, help="static router artifact folders")
    ap.add_argument("--ranks", nargs="*", type=int, default=[64, 32, 16])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    doc = run(args)
    write_results("export", doc, markdown(doc), results=RESULTS)
    print(markdown(doc))


if __name__ == "__main__":
    main()
