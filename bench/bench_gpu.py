"""The GPU checks and figures (issue 15.3): one short script for a lent GPU, also runnable on a CPU at toy size.

    PYTHONPATH=src python3 bench/bench_gpu.py                  # on a CUDA machine (no Ray needed)
    .venv/bin/python bench/bench_gpu.py --smoke --out /tmp/g   # the same checks on the CPU, tiny shapes

Each check runs on its own; a failure is recorded with its traceback and the others still run:

- `train/<shape>/<precision>`: AdaLoRA skill training through `run_job` (the loop Ray Train runs) on a
  random Llama of a real model's shape (the tiny tokenizer's vocabulary), bf16 base vs 4-bit nf4 QLoRA,
  and QLoRA with gradient checkpointing: real-token throughput, peak GPU memory, validation loss.
- `zero3/save-reload`: DeepSpeed ZeRO-3 (single process, nccl on CUDA) LoRA training killed by SIGKILL
  after its first checkpoint, resumed in a new process, then the saved adapter reloaded with
  `PeftModel.from_pretrained` on the device to the same validation loss.
- `export/peft`: synthetic AdaLoRA skills, a global and a per-layer mixture exported as one LoRA and
  loaded with `PeftModel.from_pretrained` on the device; logits against the fused merged model (fp32 and bf16).
- `fusion/nf4`: the bank fused into a 4-bit base (stacked only; merging refused) against the bf16 base.
- `route/<method>`: gradient and CMA-ES routers fitted on the device (routers, batches, weights there).
- `infer/<shape>`: forward tokens/s of the base, the fused model stacked and merged, and greedy generation.

Results: bench/results/gpu.{json,md} (`--out` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from _harness import RESULTS, Figure, write_results  # bench/ is sys.path[0] when a benchmark runs

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    # The layer shapes of real models; the vocabulary is the tiny tokenizer's (no weights can be fetched).
    "smollm2-135m": dict(
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
    ),
    "llama-3.2-1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
    ),
}
SMOKE_SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
}
SKILL_DATA = ["qa", "dialogue", "summarization", "nli", "ner", "mcqa"]


class Checks:
    """Run named checks, each isolated: timing, result dict or the error with its traceback."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}

    @contextmanager
    def run(self, name: str):
        out: dict[str, Any] = {}
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            yield out
            out["ok"] = True
        except Exception as e:  # a check's failure is a result, not the end of the script
            out["ok"] = False
            out["error"] = f"{type(e).__name__}: {e}"
            out["traceback"] = traceback.format_exc()[-4000:]
            print(out["traceback"], flush=True)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        self.results[name] = out
        brief = {k: v for k, v in out.items() if k != "traceback"}
        print(f"   {json.dumps(brief, default=str)[:600]}", flush=True)


def cuda_sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def train_job(out: Path, shape: dict, quant: str, steps: int, *, smoke: bool, **extra: Any) -> Any:
    from mdkif.models import ModelConfig
    from mdkif.skills.config import AdapterConfig, OptimConfig
    from mdkif.skills.job import SkillData, TrainJob

    optim = OptimConfig(
        max_steps=steps,
        batch_size=2 if smoke else 8,
        grad_accum=1,
        max_length=64 if smoke else 256,
        lr=1e-3 if not smoke else 1e-2,
        bf16=True,
        gradient_checkpointing=extra.pop("gradient_checkpointing", False),
    )
    adapter = extra.pop("adapter", AdapterConfig(r=8, target_r=4))
    return TrainJob(
        name="qa",
        model=ModelConfig(name="tiny", tiny=shape, quantization=quant),
        adapter=adapter,
        optim=optim,
        data=SkillData(dir="pkg:assets/demo_skills", skills=tuple(SKILL_DATA)),
        out_dir=out / "adapter",
        ckpt_dir=out / "ckpt",
        checkpoint_every=extra.pop("checkpoint_every", steps),
        seed=0,
        job_key=f"gpu-bench-{quant}",
        **extra,
    )


def throughput(history: list[dict], skip: int) -> float:
    """Real (unpadded) tokens per second over the steps after the first `skip` (warm-up, allocator)."""
    rows = history[skip:] or history
    return sum(h["tokens"] for h in rows) / max(sum(h["step_seconds"] for h in rows), 1e-9)


def check_train(
    checks: Checks, device: torch.device, shapes: dict, steps: int, tmp: Path, smoke: bool
) -> None:
    from mdkif.skills.loop import WorkerContext, run_job

    variants = [("bf16", "none", False), ("nf4", "nf4", False), ("nf4+gc", "nf4", True)]
    for shape_name, shape in shapes.items():
        for label, quant, gc in variants:
            if quant != "none" and device.type != "cuda" and not smoke:
                continue
            with checks.run(f"train/{shape_name}/{label}") as r:
                out = tmp / f"train-{shape_name}-{label}"
                job = train_job(out, shape, quant, steps, smoke=smoke, gradient_checkpointing=gc)
                reset_peak()
                summary = run_job(job, WorkerContext(device=device), data_parallel=False)
                r.update(
                    tokens_per_s=round(throughput(summary["history"], skip=min(3, steps - 1)), 1),
                    peak_gib=peak_gib(),
                    val_loss_before=round(summary["val_loss_before"], 4),
                    val_loss_after=round(summary["val_loss_after"], 4),
                    total_rank=summary["total_rank"],
                    steps=summary["steps"],
                    saved=sorted(p.name for p in (out / "adapter").iterdir()),
                )
                if not summary["val_loss_after"] < summary["val_loss_before"]:
                    raise AssertionError(f"validation loss did not fall: {r}")


ZERO3_STEPS, ZERO3_EVERY, ZERO3_KILL = 6, 3, 5


def zero3_job(out: Path, shape: dict, smoke: bool) -> Any:
    from mdkif.skills.config import AdapterConfig, DeepSpeedConfig

    adapter = AdapterConfig(kind="lora", r=8)
    return train_job(
        out,
        shape,
        "none",
        ZERO3_STEPS,
        smoke=smoke,
        adapter=adapter,
        checkpoint_every=ZERO3_EVERY,
        deepspeed=DeepSpeedConfig(stage=3, keep_checkpoints=2),
    )


def zero3_child(job_path: str, device: str) -> None:
    """Subprocess entry: run the ZeRO-3 job (it SIGKILLs itself once at ZERO3_KILL), print its summary."""
    from mdkif.skills.job import TrainJob
    from mdkif.skills.loop import WorkerContext, run_job
    from mdkif.testing.faults import KillAt

    job = TrainJob.model_validate_json(Path(job_path).read_text())
    kill = KillAt(step=ZERO3_KILL, marker=job.out_dir.parent / "killed")
    summary = run_job(job, WorkerContext(device=torch.device(device)), data_parallel=False, callbacks=[kill])
    keep = ("resumed_from_step", "val_loss_before", "val_loss_after", "steps", "tokens")
    print("SUMMARY " + json.dumps({k: summary[k] for k in keep}), flush=True)


def check_zero3(checks: Checks, device: torch.device, shape: dict, tmp: Path, smoke: bool) -> None:
    with checks.run("zero3/save-reload") as r:
        out = tmp / "zero3"
        out.mkdir(parents=True, exist_ok=True)
        job = zero3_job(out, shape, smoke)
        job_path = out / "job.json"
        job_path.write_text(job.model_dump_json())
        cmd = [sys.executable, __file__, "--zero3-child", str(job_path), "--device", str(device)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        r["first_rc"] = first.returncode  # -9: killed by its own fault injection after the step-3 checkpoint
        if first.returncode != -9:
            raise AssertionError(
                f"first attempt should be SIGKILLed, rc={first.returncode}: {first.stderr[-2000:]}"
            )
        tags = sorted(p.name for p in (out / "ckpt").rglob("*") if p.is_dir())
        r["checkpoint_dirs"] = tags[:12]
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if second.returncode != 0:
            raise AssertionError(f"resume failed rc={second.returncode}: {second.stderr[-3000:]}")
        line = next(x for x in second.stdout.splitlines() if x.startswith("SUMMARY "))
        summary = json.loads(line[len("SUMMARY ") :])
        r.update(summary)
        if summary["resumed_from_step"] != ZERO3_EVERY:
            raise AssertionError(f"expected a resume from step {ZERO3_EVERY}: {summary}")
        # reload the saved adapter on the device, in this (non-DeepSpeed) process
        from peft import PeftModel
        from safetensors.torch import load_file

        from mdkif.models import ModelConfig, load_model
        from mdkif.skills.datasets import job_examples
        from mdkif.skills.devices import autocast_dtype
        from mdkif.skills.losses import evaluate

        weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
        r["adapter_tensors"] = len(weights)
        r["adapter_empty_tensors"] = sum(1 for v in weights.values() if v.numel() == 0)
        loaded = load_model(ModelConfig(name="tiny", tiny=shape, device=str(device)))
        model = PeftModel.from_pretrained(loaded.model, str(out / "adapter")).to(device)
        _, val, _ = job_examples(job, loaded.tokenizer)
        amp = autocast_dtype(device, True)

        def autocast():
            return torch.autocast("cuda", dtype=amp) if amp is not None else nullcontext()

        with torch.no_grad():
            reloaded = evaluate(
                model, val, job.optim.batch_size, loaded.tokenizer.pad_token_id, device, autocast
            )
        r["reloaded_val_loss"] = round(reloaded, 5)
        r["reload_diff"] = abs(reloaded - summary["val_loss_after"])
        if r["adapter_empty_tensors"] or r["reload_diff"] > 2e-2:
            raise AssertionError(f"reloaded adapter differs: {r}")


def synthetic_bank(tmp: Path):
    from mdkif.fusion import SkillBank
    from mdkif.testing.synthetic import make_synthetic_skills

    root = make_synthetic_skills(tmp / "skills", tasks=("triage_yes", "triage_no", "organ_heart"))
    return root, SkillBank.from_dir(root)


def check_export(checks: Checks, device: torch.device, root: Path, bank, tmp: Path) -> None:
    from peft import PeftModel

    from mdkif.fusion import fuse
    from mdkif.fusion.export import check_vllm, export_lora
    from mdkif.models import ModelConfig, load_model
    from mdkif.testing.synthetic import task_examples

    prompts = [r["prompt"] for r in task_examples("triage_yes", 6, seed=7)]
    for dtype in ("float32", "bfloat16"):
        cfg = ModelConfig(name="tiny", dtype=dtype, device=str(device))
        tok = load_model(cfg).tokenizer
        ids = {k: v.to(device) for k, v in tok(prompts, return_tensors="pt", padding=True).items()}
        mask = ids["attention_mask"].bool()
        fused = fuse(load_model(cfg).model, bank)
        K, L = fused.num_skills, fused.num_layers
        mixtures = {
            "global": torch.tensor([0.6, 0.3, 0.1][:K]),
            "per-layer": torch.softmax(torch.randn(L, K, generator=torch.Generator().manual_seed(0)), -1),
        }
        for mix, w in mixtures.items():
            with checks.run(f"export/peft/{mix}/{dtype}") as r:
                with torch.no_grad():
                    fused.set_weights(w.to(device))
                    stacked = fused(**ids).logits.float()
                    fused.merge(w.to(device))
                    merged = fused(**ids).logits.float()
                    fused.unmerge()
                groups = fused.groups if w.dim() == 2 else None
                rep = export_lora(bank, w, tmp / f"export-{mix}-{dtype}", groups=groups)
                check_vllm(rep.out)
                peft_model = PeftModel.from_pretrained(load_model(cfg).model, str(rep.out)).to(device).eval()
                with torch.no_grad():
                    got = peft_model(**ids).logits.float()
                r.update(
                    rank=rep.rank,
                    device=str(next(peft_model.parameters()).device),
                    max_diff_vs_merged=float((got - merged).abs()[mask].max()),
                    max_diff_stacked_vs_merged=float((stacked - merged).abs()[mask].max()),
                    next_token_agreement=float((got.argmax(-1) == merged.argmax(-1))[mask].float().mean()),
                )
                tol = 1e-4 if dtype == "float32" else 0.25
                if r["max_diff_vs_merged"] > tol:
                    raise AssertionError(f"exported adapter differs from the merged model by more than {tol}")


def check_nf4_fusion(checks: Checks, device: torch.device, bank) -> None:
    from mdkif.fusion import FusionError, fuse
    from mdkif.models import ModelConfig, load_model
    from mdkif.testing.synthetic import task_examples

    with checks.run("fusion/nf4") as r:
        prompts = [x["prompt"] for x in task_examples("triage_no", 4, seed=3)]
        ref_cfg = ModelConfig(name="tiny", device=str(device))
        tok = load_model(ref_cfg).tokenizer
        ids = {k: v.to(device) for k, v in tok(prompts, return_tensors="pt", padding=True).items()}
        mask = ids["attention_mask"].bool()
        w = torch.tensor([0.5, 0.5, 0.0][: len(bank)], device=device)
        ref = fuse(load_model(ref_cfg).model, bank)
        q = fuse(load_model(ModelConfig(name="tiny", device=str(device), quantization="nf4")).model, bank)
        with torch.no_grad():
            ref.set_weights(w)
            q.set_weights(w)
            a, b = ref(**ids).logits.float(), q(**ids).logits.float()
        dtypes = sorted({str(layer.down.dtype) for layer in q.layers.values()})
        r.update(
            quantized=q.quantized,
            factor_dtypes=dtypes,
            max_diff_vs_bf16_base=float((a - b).abs()[mask].max()),
            next_token_agreement=float((a.argmax(-1) == b.argmax(-1))[mask].float().mean()),
        )
        try:
            q.merge(w)
            r["merge_refused"] = False
        except FusionError as e:
            r["merge_refused"] = str(e)[:200]
        if not q.quantized or r["merge_refused"] is False:
            raise AssertionError("a 4-bit base must fuse stacked-only and refuse merging")


def check_route(checks: Checks, device: torch.device, root: Path, bank) -> None:
    from mdkif.config import validate
    from mdkif.fusion import fuse
    from mdkif.models import ModelConfig, load_model
    from mdkif.routing.config import RouteConfig
    from mdkif.routing.data import TaskExample, encode
    from mdkif.routing.pipeline import fit_router

    loaded = load_model(ModelConfig(name="tiny", device=str(device)))
    fused = fuse(loaded.model, bank)
    rows = [json.loads(x) for x in (root / "tasks" / "triage_no.jsonl").read_text().splitlines()][:20]
    batch = encode(loaded.tokenizer, [TaskExample(**x) for x in rows])
    for method, k, extra in (("gradient", 20, {"gradient": {"steps": 30}}), ("cmaes", 5, {})):
        with checks.run(f"route/{method}") as r:
            cfg = validate(
                RouteConfig,
                {
                    "model": {"name": "tiny"},
                    "skills": {"root": str(root)},
                    "task": {"source": "-", "k": k},
                    "method": method,
                    **extra,
                },
                "bench_gpu",
            )
            router, res = fit_router(cfg, fused, batch)
            w = router()
            r.update(
                router_device=str(next(router.parameters()).device),
                weights=[round(float(x), 3) for x in w.reshape(-1, w.shape[-1]).mean(0)],
                first_loss=round(res.history[0], 4) if res.history else None,
                final_loss=round(res.final_loss, 4),
                evaluations=res.evaluations,
            )
            if device.type == "cuda" and "cuda" not in r["router_device"]:
                raise AssertionError("router not on the GPU")


def time_it(fn, repeat: int) -> float:
    fn()
    cuda_sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    cuda_sync()
    return (time.perf_counter() - t0) / repeat


def check_infer(checks: Checks, device: torch.device, shapes: dict, tmp: Path, smoke: bool) -> None:
    """Forward tokens/s of base vs fused (stacked, merged) on a bank of 3 random-factor skills of the shape,
    and greedy generation tokens/s at batch 1 and 16."""
    from mdkif.fusion import SkillBank, fuse
    from mdkif.models import ModelConfig, load_model

    batch, seq, new = (2, 32, 8) if smoke else (16, 256, 64)
    for shape_name, shape in shapes.items():
        with checks.run(f"infer/{shape_name}") as r:
            cfg = ModelConfig(name="tiny", tiny=shape, device=str(device))
            loaded = load_model(cfg)
            model = loaded.model.eval()
            vocab = model.config.vocab_size
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(5, vocab, (batch, seq), generator=g).to(device)
            with torch.no_grad():
                base_s = time_it(lambda m=model, x=ids: m(input_ids=x), 5)
            r["base_forward_tokens_per_s"] = round(batch * seq / base_s)
            for b in (1, batch):
                prompt = ids[:b, :32]
                with torch.no_grad():
                    s = time_it(
                        lambda p=prompt, m=model: m.generate(
                            p, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
                        ),
                        2,
                    )
                r[f"generate_b{b}_tokens_per_s"] = round(b * new / s)
            bank_dir = random_bank(model, tmp / f"bank-{shape_name}", k=3, rank=8)
            bank = SkillBank.from_dir(bank_dir)
            fused = fuse(model, bank)
            w = torch.tensor([0.5, 0.3, 0.2], device=device)
            with torch.no_grad():
                fused.set_weights(w)
                stacked_s = time_it(lambda f=fused, x=ids: f(input_ids=x), 5)
                fused.merge(w)
                merged_s = time_it(lambda f=fused, x=ids: f(input_ids=x), 5)
                fused.unmerge()
            r.update(
                batch=batch,
                seq=seq,
                stacked_forward_tokens_per_s=round(batch * seq / stacked_s),
                merged_forward_tokens_per_s=round(batch * seq / merged_s),
                stacked_over_base_time=round(stacked_s / base_s, 3),
                merged_over_base_time=round(merged_s / base_s, 3),
                peak_gib=peak_gib(),
            )
            fused = model = loaded = None  # free the shape's weights before the next
            reset_peak()


def random_bank(model, root: Path, k: int, rank: int) -> Path:
    """K LoRA skills with random factors on q/v/o/down (a bank for timing; the values do not matter)."""
    from peft import LoraConfig, get_peft_model

    for i in range(k):
        cfg = LoraConfig(r=rank, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
        peft_model = get_peft_model(model, cfg, adapter_name="default")
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.01)
        peft_model.save_pretrained(str(root / f"skill{i}"))
        model = peft_model.unload()
    return root


def figures(d: dict) -> list[Figure]:
    out: list[Figure] = []
    c = d["checks"]
    for shape in d["shapes"]:
        bf16, nf4 = c.get(f"train/{shape}/bf16", {}), c.get(f"train/{shape}/nf4", {})
        if bf16.get("ok") and nf4.get("ok"):
            out.append(
                Figure(
                    "gpu",
                    f"QLoRA nf4 training tokens/s, {shape}",
                    nf4["tokens_per_s"],
                    bf16["tokens_per_s"],
                    "bf16 base",
                    "tok/s",
                )
            )
            if nf4.get("peak_gib") and bf16.get("peak_gib"):
                out.append(
                    Figure(
                        "gpu",
                        f"QLoRA nf4 peak GPU memory, {shape}",
                        nf4["peak_gib"],
                        bf16["peak_gib"],
                        "bf16 base",
                        "GiB",
                    )
                )
        inf = c.get(f"infer/{shape}", {})
        if inf.get("ok"):
            out.append(
                Figure(
                    "gpu",
                    f"fused stacked forward tokens/s, {shape}",
                    inf["stacked_forward_tokens_per_s"],
                    inf["base_forward_tokens_per_s"],
                    "base forward",
                    "tok/s",
                )
            )
            out.append(
                Figure(
                    "gpu",
                    f"fused merged forward tokens/s, {shape}",
                    inf["merged_forward_tokens_per_s"],
                    inf["base_forward_tokens_per_s"],
                    "base forward",
                    "tok/s",
                )
            )
    return out


def markdown(d: dict) -> str:
    lines = [
        "# GPU checks (issue 15.3)",
        "",
        f"Device: {d['device_name']} · torch {d['versions'].get('torch')} · CUDA {d['versions'].get('cuda')} · "
        f"bitsandbytes {d['versions'].get('bitsandbytes')} · deepspeed {d['versions'].get('deepspeed')} · "
        f"transformers {d['versions'].get('transformers')} · peft {d['versions'].get('peft')}",
        "",
        f"Command: `{d['command']}` · wall {d['wall_seconds']:.0f} s",
        "",
        "| check | ok | s | figures |",
        "| --- | --- | ---: | --- |",
    ]
    for name, r in d["checks"].items():
        facts = {
            k: v for k, v in r.items() if k not in ("ok", "seconds", "traceback", "saved", "checkpoint_dirs")
        }
        text = ", ".join(f"{k}={v}" for k, v in facts.items())
        lines.append(f"| {name} | {'yes' if r['ok'] else '**no**'} | {r['seconds']} | {text[:400]} |")
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for mod in ("transformers", "peft", "bitsandbytes", "deepspeed", "accelerate"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # a missing package is a finding
            out[mod] = f"missing ({type(e).__name__})"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and few steps (a CPU dry run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--steps", type=int, default=None, help="training steps per variant (default 20, smoke 4)"
    )
    ap.add_argument(
        "--only", nargs="*", default=None, help="check groups: train zero3 export nf4 route infer"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--zero3-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.zero3_child:
        return zero3_child(args.zero3_child, args.device)
    os.environ.setdefault("MDKIF_CACHE", tempfile.mkdtemp(prefix="mdkif-gpu-cache-"))
    device = torch.device(args.device)
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    steps = args.steps or (4 if args.smoke else 20)
    groups = set(args.only or ["train", "zero3", "export", "nf4", "route", "infer"])
    checks = Checks()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "train" in groups:
            check_train(checks, device, shapes, steps, tmp, args.smoke)
        if "zero3" in groups:
            check_zero3(checks, device, next(iter(shapes.values())), tmp, args.smoke)
        if groups & {"export", "nf4", "route"}:
            with checks.run("skills/synthetic") as r:
                root, bank = synthetic_bank(tmp)
                r["skills"] = list(bank.names)
            if checks.results["skills/synthetic"]["ok"]:
                if "export" in groups:
                    check_export(checks, device, root, bank, tmp)
                if "nf4" in groups and (device.type == "cuda" or args.smoke):
                    check_nf4_fusion(checks, device, bank)
                if "route" in groups:
                    check_route(checks, device, root, bank)
        if "infer" in groups:
            check_infer(checks, device, shapes, tmp, args.smoke)
    doc = {
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "versions": versions(),
        "command": " ".join(["python", "bench/bench_gpu.py", *sys.argv[1:]]),
        "wall_seconds": time.perf_counter() - t0,
        "shapes": list(shapes),
        "checks": checks.results,
        "passed": sum(r["ok"] for r in checks.results.values()),
        "failed": [k for k, r in checks.results.items() if not r["ok"]],
    }
    name = "gpu" if not args.smoke else "gpu_smoke"
    write_results(name, doc, markdown(doc), figures(doc), results=args.out)
    print(markdown(doc))
    print(f"passed {doc['passed']}/{len(checks.results)}; failed: {doc['failed']}")


if __name__ == "__main__":
    main()
