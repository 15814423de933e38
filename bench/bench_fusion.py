"""Benchmark exact skill fusion: CMA-ES candidate cost vs peft re-merging, and fused forward latency.

    .venv/bin/python bench/bench_fusion.py --model smollm2-135m-instruct --skills 12

(i) One CMA-ES candidate evaluation = new weights + one forward over the k examples. Ours: the stacked
    fused model reads the weights at run time (`set_weights`, no tensor rebuilt). Naive: the same K
    AdaLoRA adapters loaded in peft; per candidate restore the base weights and merge
    `sum_i w_i * get_delta_weight(i)` layer by layer with peft (what you do when peft cannot combine
    AdaLoRA adapters), then forward.
(ii) Forward latency of base, merged and stacked (K skills) on the same batch.
Adapters are random non-zero AdaLoRA adapters (peft's own init plus non-zero singular values): latency
and cost do not depend on what the skills learned. Writes bench/results/fusion.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _harness import RESULTS, Figure, write_results  # bench/ is sys.path[0] when a benchmark runs


def make_adapters(model_name: str, root: Path, k: int, init_r: int, targets: list[str]) -> list[Path]:
    from peft import AdaLoraConfig, get_peft_model

    from mdkif.models import ModelConfig, load_model

    paths = []
    for i in range(k):
        torch.manual_seed(i)
        base = load_model(ModelConfig(name=model_name)).model
        cfg = AdaLoraConfig(
            init_r=init_r, target_r=init_r // 2, total_step=100, target_modules=targets, task_type="CAUSAL_LM"
        )
        m = get_peft_model(base, cfg)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_E" in n:
                    p.normal_(0, 0.5)
        m.save_pretrained(str(root / f"skill{i}"))
        paths.append(root / f"skill{i}")
        del m, base
    return paths


class NaiveRemerge:
    """The same skills in peft; each candidate restores the base weights, merges `sum_i w_i dW_i` layer by
    layer (peft cannot combine AdaLoRA adapters itself) and takes the loss the usual way,
    `model(input_ids, attention_mask, labels=...)`, which computes logits at every position."""

    def __init__(self, model_name: str, paths: list[Path]) -> None:
        from peft import PeftModel
        from peft.tuners.adalora.layer import SVDLinear

        from mdkif.models import ModelConfig, load_model

        base = load_model(ModelConfig(name=model_name)).model
        self.model = PeftModel.from_pretrained(base, str(paths[0]), adapter_name=paths[0].name)
        for p in paths[1:]:
            self.model.load_adapter(str(p), adapter_name=p.name)
        self.model.eval()
        self.names = [p.name for p in paths]
        self.layers = [m for m in self.model.modules() if isinstance(m, SVDLinear)]
        self.originals = [m.get_base_layer().weight.detach().clone() for m in self.layers]

    @torch.no_grad()
    def merge(self, w: torch.Tensor) -> None:
        """Restore every adapted base weight and add `sum_i w_i * dW_i` (peft's delta, singular values in)."""
        for m, w0 in zip(self.layers, self.originals, strict=True):
            weight = m.get_base_layer().weight
            weight.copy_(w0)
            for i, n in enumerate(self.names):
                if n in m.lora_A:
                    weight.add_(w[i] * m.get_delta_weight(n))

    @torch.no_grad()
    def forward(self, **batch):
        with self.model.disable_adapter():  # the merged base's forward
            return self.model(**batch)

    @torch.no_grad()
    def candidate_loss(self, w: torch.Tensor, batch) -> float:
        self.merge(w)
        with self.model.disable_adapter():  # the base's forward (AdaLoraModel's own adds its orth. loss)
            out = self.model.get_base_model()(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
            )
        return float(out.loss)


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def figures(d: dict) -> list[Figure]:
    """The rows bench/summary.py tabulates (each against its same-run baseline)."""
    c = d["candidate_eval_s"]
    f = d["forward_s"]
    speed = c["naive_peft_remerge"] / c["fused_stacked"]
    return [
        Figure(
            "fusion",
            f"CMA-ES candidate evaluation, fused stacked ({d['skills']} skills)",
            c["fused_stacked"],
            c["naive_peft_remerge"],
            "re-merge adapters with peft per candidate",
            "s",
            "<= 0.2 (5x cheaper)",
            speed >= 5,
        ),
        Figure(
            "fusion",
            "forward, merged mode",
            f["merged"],
            f["base"],
            "base model forward",
            "s",
            "within 2%",
            f["merged"] <= 1.02 * f["base"],
        ),
        Figure(
            "fusion",
            f"forward, stacked mode ({d['skills']} skills)",
            f["stacked"],
            f["base"],
            "base model forward",
            "s",
            "within 30%",
            f["stacked"] <= 1.30 * f["base"],
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--skills", type=int, default=12)
    ap.add_argument("--init-r", type=int, default=8)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    ap.add_argument("--k-examples", type=int, default=8, help="examples per CMA-ES candidate evaluation")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "fusion"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # shared machine: one thread gives steadier ratios

    from mdkif.fusion import SkillBank, fuse
    from mdkif.models import ModelConfig, load_model

    targets = args.targets.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_adapters(args.model, Path(tmp), args.skills, args.init_r, targets)
        bank = SkillBank.from_paths({p.name: p for p in paths})
        loaded = load_model(ModelConfig(name=args.model))
        vocab = loaded.model.config.vocab_size
        ids = torch.randint(0, vocab, (args.k_examples, args.seq), generator=torch.Generator().manual_seed(0))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        # Naive: peft holds the K adapters; every candidate re-merges them into restored base weights.
        naive = NaiveRemerge(args.model, paths)
        names = naive.names
        gen = torch.Generator().manual_seed(1)

        def naive_candidate() -> None:
            naive.merge(torch.randn(len(names), generator=gen))
            naive.forward(**batch)

        fused = fuse(loaded.model, bank)

        @torch.no_grad()
        def fused_candidate() -> None:
            fused.set_weights(torch.randn(len(names), generator=gen))
            fused(**batch)

        @torch.no_grad()
        def plain_forward() -> None:
            fused(**batch)

        naive_s = timeit(naive_candidate, args.repeat)
        ours_s = timeit(fused_candidate, args.repeat)

        base_model = load_model(ModelConfig(name=args.model)).model

        @torch.no_grad()
        def base_forward() -> None:
            base_model(**batch)

        w = torch.softmax(torch.randn(len(names)), -1)
        lat = {}
        for _ in range(3):  # interleave so load spikes on the shared machine hit every mode alike
            lat.setdefault("base", []).append(timeit(base_forward, args.repeat))
            fused.merge(w)
            lat.setdefault("merged", []).append(timeit(plain_forward, args.repeat))
            fused.unmerge()
            fused.set_weights(w)
            lat.setdefault("stacked", []).append(timeit(plain_forward, args.repeat))

        lat_s = {k: min(v) for k, v in lat.items()}
    result = {
        "model": args.model,
        "skills": args.skills,
        "init_r": args.init_r,
        "targets": targets,
        "batch": [args.k_examples, args.seq],
        "threads": 1,
        "candidate_eval_s": {
            "naive_peft_remerge": naive_s,
            "fused_stacked": ours_s,
            "speedup": naive_s / ours_s,
        },
        "candidate_overhead_beyond_base_forward_s": {
            "naive_peft_remerge": naive_s - lat_s["base"],
            "fused_stacked": ours_s - lat_s["base"],
            "ratio": (naive_s - lat_s["base"]) / max(ours_s - lat_s["base"], 1e-9),
        },
        "forward_s": lat_s,
        "overhead_vs_base": {
            "merged": lat_s["merged"] / lat_s["base"] - 1,
            "stacked": lat_s["stacked"] / lat_s["base"] - 1,
        },
    }
    out = Path(args.out)
    md = (
        f"# Fusion benchmark ({args.model}, {args.skills} AdaLoRA skills, init_r {args.init_r}, "
        f"targets {args.targets}, batch {args.k_examples}x{args.seq}, 1 thread)\n\n"
        "| measure | seconds | ratio |\n|---|---|---|\n"
        f"| CMA-ES candidate, naive peft re-merge | {naive_s:.4f} | |\n"
        f"| CMA-ES candidate, stacked fused | {ours_s:.4f} | {naive_s / ours_s:.1f}x cheaper |\n"
        f"| candidate cost beyond one base forward: naive / fused | "
        f"{naive_s - lat_s['base']:.4f} / {ours_s - lat_s['base']:.4f} | "
        f"{(naive_s - lat_s['base']) / max(ours_s - lat_s['base'], 1e-9):.1f}x |\n"
        f"| forward, base | {lat_s['base']:.4f} | 1.00 |\n"
        f"| forward, merged | {lat_s['merged']:.4f} | {lat_s['merged'] / lat_s['base']:.3f} |\n"
        f"| forward, stacked ({args.skills} skills) | {lat_s['stacked']:.4f} | {lat_s['stacked'] / lat_s['base']:.3f} |\n"
    )
    write_results(out.name, result, md, figures(result), results=out.parent)
    print(md)


if __name__ == "__main__":
    main()
