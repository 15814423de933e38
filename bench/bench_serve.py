"""Serving benchmark: Ray Serve vs the model in-process, and @serve.batch on vs off, at concurrency 1/8/32.

    python bench/bench_serve.py                      # tiny model, ~4-6 minutes on a 2-core laptop
    python bench/bench_serve.py --max-tokens 32 --requests 120

A closed-loop load generator on 127.0.0.1 (each of C client threads sends its next request when the last
one returns), bounded per setting by --requests and --seconds. Every request is a greedy completion of
exactly --max-tokens tokens (`ignore_eos`), so all settings do the same work. Three settings:

- in-process: C threads call the engine directly (no HTTP, no Ray); a lock serialises forwards, so this
  is "no batching, no serving overhead".
- serve, batch off: HTTP -> proxy -> Ingress -> RoutedModel, one token loop per request.
- serve, batch on: the same with @serve.batch (max_batch_size 32, 5 ms wait), one loop per batch.

Serve's added latency is p50(serve, batch off, C=1) - p50(in-process, C=1). Results go to
bench/results/serve.{json,md,png}. Model replicas get one CPU and one torch thread, like the in-process
engine, so the comparison is per core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Answer yes or no: does this finding need same-day care? Patient with fever and neck stiffness."


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def load(call, concurrency: int, max_requests: int, max_seconds: float) -> dict:
    """Closed loop: `concurrency` threads call `call()` until `max_requests` are done or time is up."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    issued = 0
    start = time.perf_counter()
    deadline = start + max_seconds

    def worker() -> None:
        nonlocal issued, errors
        while True:
            with lock:
                if issued >= max_requests or time.perf_counter() > deadline:
                    return
                issued += 1
            t = time.perf_counter()
            ok = call()
            dt = time.perf_counter() - t
            with lock:
                if ok:
                    latencies.append(dt)
                else:
                    errors += 1

    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(wall, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(1000 * percentile(latencies, 99), 2) if latencies else None,
        "throughput_rps": round(len(latencies) / wall, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny (default) or smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--requests", type=int, default=160, help="per setting and concurrency (<= 200)")
    ap.add_argument("--seconds", type=float, default=45.0, help="per setting and concurrency (<= 60)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--work", default=None, help="artifact folder (default: a temp dir)")
    args = ap.parse_args()
    args.requests, args.seconds = min(args.requests, 200), min(args.seconds, 60.0)
    levels = [int(c) for c in args.concurrency.split(",")]
    os.environ.setdefault("MDKIF_CACHE", "/tmp/mdkif-cache")

    import ray
    import requests
    from ray import serve

    from mdkif.serving.app import build_app
    from mdkif.serving.config import ServeAppConfig, check_artifacts
    from mdkif.serving.engine import GenRequest, RoutedEngine
    from mdkif.serving.fixtures import build_tiny_artifacts

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_serve_"))
    art = build_tiny_artifacts(work) if args.model == "tiny" else None

    def app_args(batching: bool) -> dict:
        cfg = {
            "model": {"name": args.model},
            "torch_threads": 1,
            "api_key_env": None,
            "limits": {"max_tokens": 256, "request_timeout_s": 120},
            "batching": {"enabled": batching, "max_batch_size": 32, "batch_wait_timeout_s": 0.005},
            "routed_model": {
                "max_ongoing_requests": 64,
                "max_queued_requests": -1,
                "ray_actor_options": {"num_cpus": 1},
            },
            "ingress": {"ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 256},
        }
        if art is not None:
            cfg["adapters_dir"] = str(art["adapters"])
            cfg["profiles"] = {"triage": {"weights": {"triage_yes": 1.0}}}
        return cfg

    profile = "triage" if art is not None else None
    results: dict = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "profile": profile,
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg()[0],
        "settings": {},
    }

    # ---- in-process ------------------------------------------------------------------------------
    engine = RoutedEngine(check_artifacts(ServeAppConfig.model_validate(app_args(False))))
    ids = engine.render(prompt=PROMPT)

    def in_process() -> bool:
        out = engine.generate_batch([GenRequest(ids, profile, max_tokens=args.max_tokens, ignore_eos=True)])
        return out[0]["completion_tokens"] == args.max_tokens

    in_process()  # warm-up (builds the merged weights once)
    results["settings"]["in-process"] = [load(in_process, c, args.requests, args.seconds) for c in levels]
    print("in-process", results["settings"]["in-process"], flush=True)

    # ---- Serve: two apps, batching on and off, on one random loopback port -----------------------
    port = 8123 + random.randint(900, 1700)
    ray.init(
        num_cpus=3,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"MDKIF_CACHE": os.environ["MDKIF_CACHE"]}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for name, batching in (("off", False), ("on", True)):
            serve.run(
                build_app(ServeAppConfig.model_validate(app_args(batching))),
                name=name,
                route_prefix=f"/{name}",
            )
        local = threading.local()
        model_id = "tiny:triage" if profile else args.model.split("/")[-1]
        body = {"model": model_id, "prompt": PROMPT, "max_tokens": args.max_tokens, "ignore_eos": True}

        def via(prefix: str):
            url = f"http://127.0.0.1:{port}/{prefix}/v1/completions"

            def call() -> bool:
                if not hasattr(local, "s"):
                    local.s = requests.Session()
                r = local.s.post(url, json=body, timeout=120)
                return r.status_code == 200 and r.json()["usage"]["completion_tokens"] == args.max_tokens

            return call

        for name in ("off", "on"):
            call = via(name)
            for _ in range(3):
                assert call(), f"warm-up request to /{name} failed"
            key = f"serve, batch {name}"
            rows = []
            for c in levels:
                rows.append(load(call, c, args.requests, args.seconds))
                health = requests.get(f"http://127.0.0.1:{port}/{name}/healthz", timeout=30).json()
                rows[-1]["batch_sizes_so_far"] = health["model"]["batch_sizes"]
            results["settings"][key] = rows
            print(key, results["settings"][key], flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    s = results["settings"]
    by_c = {name: {r["concurrency"]: r for r in rows} for name, rows in s.items()}
    c_lo, c_hi = min(levels), max(levels)
    results["summary"] = {
        "serve_added_p50_ms_c1": round(
            by_c["serve, batch off"][c_lo]["p50_ms"] - by_c["in-process"][c_lo]["p50_ms"], 2
        ),
        "serve_added_p50_ms_c1_batch_on": round(
            by_c["serve, batch on"][c_lo]["p50_ms"] - by_c["in-process"][c_lo]["p50_ms"], 2
        ),
        f"batch_speedup_c{c_hi}": round(
            by_c["serve, batch on"][c_hi]["throughput_rps"]
            / by_c["serve, batch off"][c_hi]["throughput_rps"],
            2,
        ),
    }
    results["load_avg_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, levels)
    plot(results, levels)
    print(json.dumps(results["summary"]))


def write_markdown(results: dict, levels: list[int]) -> None:
    lines = [
        "# Serving benchmark (`python bench/bench_serve.py`)",
        "",
        f"Model `{results['model']}` with profile `{results['profile']}` (merged skill weights), greedy, "
        f"{results['max_tokens']} tokens per request; closed-loop clients on 127.0.0.1; "
        f"{results['cpus']} CPUs, load average {results['load_avg_start']:.1f} at start "
        f"(a shared machine: treat as orders of magnitude).",
        "",
        "| setting | concurrency | requests | p50 ms | p99 ms | throughput req/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rows in results["settings"].items():
        for r in rows:
            lines.append(
                f"| {name} | {r['concurrency']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | {r['throughput_rps']} |"
            )
    summ = results["summary"]
    lines += [
        "",
        f"- Serve's added p50 latency at concurrency {min(levels)}: **{summ['serve_added_p50_ms_c1']} ms** "
        f"(batch off; {summ['serve_added_p50_ms_c1_batch_on']} ms with batching on, which waits up to 5 ms "
        "for companions). Target: under 10 ms.",
        f"- @serve.batch at concurrency {max(levels)}: **{summ[f'batch_speedup_c{max(levels)}']}x** the "
        "throughput of no batching. Target: at least 3x.",
        "",
        "![throughput and latency](serve.png)",
        "",
    ]
    (RESULTS / "serve.md").write_text("\n".join(lines))


def plot(results: dict, levels: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in results["settings"].items():
        cs = [r["concurrency"] for r in rows]
        a.plot(cs, [r["throughput_rps"] for r in rows], marker="o", label=name)
        b.plot(cs, [r["p50_ms"] for r in rows], marker="o", label=name)
    for ax, title in ((a, "throughput (req/s)"), (b, "p50 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    a.legend()
    fig.suptitle(f"MDKIF serving, {results['model']}, {results['max_tokens']} tokens/request")
    fig.tight_layout()
    fig.savefig(RESULTS / "serve.png", dpi=110)


if __name__ == "__main__":
    main()
