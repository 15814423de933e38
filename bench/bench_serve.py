"""Serving benchmark: Ray Serve vs the model in-process, and continuous batching on vs off, at concurrency 1/8/32.

    python bench/bench_serve.py                      # tiny model, ~6-8 minutes on a 2-core laptop
    python bench/bench_serve.py --model smollm2-135m-instruct --paths proxy   # the default model, ~12 min
    python bench/bench_serve.py --max-tokens 32 --requests 120

The tiny random model is the overhead probe (its forwards cost so little that Serve's own per-request path
dominates); SmolLM2-135M is the model users run, where batching has real forwards to share. Either way two
synthetic AdaLoRA skills are trained for the model and requests go to a profile of them.

A closed-loop load generator on 127.0.0.1 (each of C client threads sends its next request when the last
one returns), bounded per setting by --requests and --seconds. Every request is a greedy completion of
exactly --max-tokens tokens (`ignore_eos`), so all settings do the same work. Settings:

- in-process: C threads call the engine directly (no HTTP, no Ray); a lock serialises forwards, so this
  is "no batching, no serving overhead".
- serve, batch off: HTTP -> proxy -> Ingress -> RoutedModel, one token loop per request.
- serve, batch on: the same with continuous batching (one decode loop per replica, at most 32 rows).
- serve, no-op app (floor): the same shape with no work (FastAPI ingress -> handle -> echo), C=1.
- serve, batch on, stacked profile: batching on with `merged_cache_size: 0`, so the profile's skills run
  beside the base per forward (stacked) instead of folded into one merged copy of the weights.
- serve direct, ...: the three above again with Serve throughput-optimized (RAY_SERVE_THROUGHPUT_OPTIMIZED=1,
  as `mdkif serve --throughput-optimized`), requests sent to the Ingress replica's own port; run in a
  child process because Ray reads that mode when each process imports ray.serve.

Serve's added latency is p50(serve, batch off, C=1) - p50(in-process, C=1). Results go to
bench/results/serve.{json,md,png} (tiny) or serve_<model>.{json,md,png}. Model replicas get one CPU and one torch thread, like the in-process
engine, so the comparison is per core.
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

from _harness import RESULTS, Figure, write_results  # bench/ is sys.path[0] when a benchmark runs

from mdkif.serving.commands import THROUGHPUT_ENV

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


def figures(d: dict) -> list[Figure]:
    """The rows bench/summary.py tabulates (each against its same-run baseline).

    The added-p50 target is judged only with >= 4 cores (or a GPU replica): on fewer, the load generator,
    the proxy and the replica share the cores the latency is measured on."""
    s = d["summary"]
    by = {name: {r["concurrency"]: r for r in runs} for name, runs in d["settings"].items()}
    inproc = by["in-process"][1]["p50_ms"]
    model = d.get("model", "tiny")
    judged = (d.get("cpus") or 0) >= 4
    rows = []
    for label, tag in (("serve", ""), ("serve direct", "direct_")):
        if f"{label}, batch off" not in by:
            continue  # a path this run did not measure
        added = s[f"serve_{tag}added_p50_ms_c1"]
        hi = max(by[f"{label}, batch off"])
        on, off = (
            by[f"{label}, batch on"][hi]["throughput_rps"],
            by[f"{label}, batch off"][hi]["throughput_rps"],
        )
        how = "default proxy" if not tag else "throughput-optimized, direct ingress"
        rows += [
            Figure(
                "serve",
                f"{model}: p50 latency through Serve ({how}), concurrency 1",
                inproc + added,
                inproc,
                "model called in-process",
                "ms",
                "added p50 < 10 ms" + ("" if judged else f" (not judged on {d.get('cpus')} cores)"),
                added < 10 if judged else None,
            ),
            Figure(
                "serve",
                f"{model}: throughput with continuous batching ({how}), concurrency {hi}",
                on,
                off,
                "batching off",
                "req/s",
                ">= 3x",
                on >= 3 * off,
            ),
        ]
        stacked = by.get(f"{label}, batch on, stacked profile")
        if stacked:
            rows.append(
                Figure(
                    "serve",
                    f"{model}: throughput, profile stacked ({how}, batching on), concurrency {hi}",
                    stacked[hi]["throughput_rps"],
                    on,
                    "the same profile merged",
                    "req/s",
                )
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny (default) or smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--requests", type=int, default=160, help="per setting and concurrency (<= 200)")
    ap.add_argument("--seconds", type=float, default=45.0, help="per setting and concurrency (<= 60)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument(
        "--paths",
        default="proxy,direct",
        help="Serve paths: proxy (default mode), direct (throughput-optimized)",
    )
    ap.add_argument("--no-stacked", action="store_true", help="skip the stacked-profile setting")
    ap.add_argument("--work", default=None, help="artifact folder (default: a temp dir)")
    ap.add_argument("--serve-only", choices=["direct"], help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.requests, args.seconds = min(args.requests, 200), min(args.seconds, 60.0)
    levels = [int(c) for c in args.concurrency.split(",")]
    paths = [p for p in args.paths.split(",") if p]
    if not paths or set(paths) - {"proxy", "direct"}:
        raise SystemExit(f"--paths: a comma list of proxy, direct (got {args.paths!r})")
    name = "serve" if args.model == "tiny" else f"serve_{args.model.split('/')[-1]}"
    os.environ.setdefault("MDKIF_CACHE", "/tmp/mdkif-cache")

    from mdkif.serving.config import ServeAppConfig, check_artifacts
    from mdkif.serving.engine import GenRequest, RoutedEngine
    from mdkif.serving.protocol import SamplingParams
    from mdkif.testing.serving import SKILLS, build_tiny_artifacts
    from mdkif.testing.synthetic import make_synthetic_skills

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_serve_"))
    if args.model == "tiny":
        have = (work / "adapters").is_dir()
        art = {"adapters": work / "adapters"} if have else build_tiny_artifacts(work)
    else:  # two skills trained for this model (their shape, not their quality, sets the cost)
        art = {"adapters": make_synthetic_skills(work / "adapters", args.model, SKILLS, steps=4)}

    def app_args(batching: bool, stacked: bool = False) -> dict:
        cfg = {
            "model": {"name": args.model},
            "torch_threads": 1,
            "api_key_env": None,
            "limits": {"max_tokens": 256, "request_timeout_s": 120},
            "batching": {"enabled": batching, "max_batch_size": 32},
            "routed_model": {
                "max_ongoing_requests": 64,
                "max_queued_requests": -1,
                "ray_actor_options": {"num_cpus": 1},
            },
            "ingress": {"ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 256},
            "adapters_dir": str(art["adapters"]),
            "profiles": {"triage": {"weights": {"triage_yes": 0.7, "triage_no": 0.3}}},
        }
        if stacked:
            cfg["merged_cache_size"] = 0
        return cfg

    profile = "triage"
    if args.serve_only:
        settings = run_serve(args.serve_only, args, levels, app_args, profile)
        Path(args.child_out).write_text(json.dumps({"settings": settings}))
        return
    results: dict = {
        "name": name,
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
        out = engine.generate_batch(
            [GenRequest(ids, profile, SamplingParams(max_tokens=args.max_tokens, ignore_eos=True))]
        )
        return out[0]["completion_tokens"] == args.max_tokens

    in_process()  # warm-up (builds the merged weights once)
    results["settings"]["in-process"] = [load(in_process, c, args.requests, args.seconds) for c in levels]
    print("in-process", results["settings"]["in-process"], flush=True)

    # ---- Serve, default (proxy) mode here; throughput-optimized in a child process -------------------
    # Ray reads the Serve mode from the environment when each process imports ray.serve, so the second
    # mode needs a fresh driver and a fresh Ray.
    if "proxy" in paths:
        for key, rows in run_serve("proxy", args, levels, app_args, profile).items():
            results["settings"][key] = rows
    if "direct" in paths:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            child_out = f.name
        cmd = [sys.executable, __file__, "--serve-only", "direct", "--child-out", child_out]
        cmd += ["--work", str(work), "--model", args.model, "--max-tokens", str(args.max_tokens)]
        cmd += ["--requests", str(args.requests), "--seconds", str(args.seconds)]
        cmd += ["--concurrency", args.concurrency] + (["--no-stacked"] if args.no_stacked else [])
        subprocess.run(cmd, check=True, env={**os.environ, **THROUGHPUT_ENV})
        results["settings"].update(json.loads(Path(child_out).read_text())["settings"])
        Path(child_out).unlink()

    s = results["settings"]
    by_c = {name: {r["concurrency"]: r for r in rows} for name, rows in s.items()}
    c_lo, c_hi = min(levels), max(levels)
    inproc = by_c["in-process"][c_lo]["p50_ms"]
    summary: dict[str, float] = {}
    for label, tag in (("serve", ""), ("serve direct", "direct_")):
        if f"{label}, batch off" not in by_c:
            continue  # a path not run (--paths)
        off, on = by_c[f"{label}, batch off"], by_c[f"{label}, batch on"]
        summary[f"serve_{tag}added_p50_ms_c1"] = round(off[c_lo]["p50_ms"] - inproc, 2)
        summary[f"serve_{tag}added_p50_ms_c1_batch_on"] = round(on[c_lo]["p50_ms"] - inproc, 2)
        summary[f"{tag}batch_speedup_c{c_hi}"] = round(
            on[c_hi]["throughput_rps"] / off[c_hi]["throughput_rps"], 2
        )
        summary[f"serve_{tag}floor_p50_ms"] = by_c[f"{label}, no-op app (floor)"][1]["p50_ms"]
        stacked = by_c.get(f"{label}, batch on, stacked profile")
        if stacked:  # the same profile served stacked, against merged, batching on
            summary[f"{tag}stacked_over_merged_throughput_c{c_hi}"] = round(
                stacked[c_hi]["throughput_rps"] / on[c_hi]["throughput_rps"], 2
            )
            summary[f"{tag}stacked_over_merged_p50_c{c_lo}"] = round(
                stacked[c_lo]["p50_ms"] / on[c_lo]["p50_ms"], 2
            )
    results["summary"] = summary
    results["load_avg_end"] = os.getloadavg()[0]
    write_results(name, results, markdown(results, levels), figures(results), results=RESULTS)
    plot(results, levels)
    print(json.dumps(results["summary"]))


def run_serve(mode: str, args, levels: list[int], app_args, profile) -> dict[str, list[dict]]:
    """Both apps (batching off / on) on one Ray; `mode` "proxy" calls Serve's HTTP proxy, "direct" the
    ingress replica's own port (throughput-optimized Serve). Also measures Serve's floor in this mode: a
    no-op app of the same shape (FastAPI ingress -> handle -> deployment), concurrency 1."""
    import ray
    import requests
    from ray import serve

    from mdkif.serving.app import build_app
    from mdkif.serving.commands import wait_direct_urls
    from mdkif.serving.config import ServeAppConfig

    port = 8123 + random.randint(900, 1700)
    ray.init(
        num_cpus=3,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"MDKIF_CACHE": os.environ["MDKIF_CACHE"]}},
    )
    label = "serve" if mode == "proxy" else "serve direct"
    out: dict[str, list[dict]] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        bases: dict[str, str] = {}

        def deploy(name: str, batching: bool | None, stacked: bool = False) -> None:
            """One app at a time: idle replicas of the others would share the 2 cores with it."""
            for other in list(bases):
                serve.delete(other)
                bases.pop(other)
            app = (
                floor_app()
                if batching is None
                else build_app(ServeAppConfig.model_validate(app_args(batching, stacked)))
            )
            serve.run(app, name=name, route_prefix=f"/{name}")
            bases[name] = f"http://127.0.0.1:{port}"
            if mode == "direct":
                urls = wait_direct_urls(name, "127.0.0.1")
                if not urls:
                    raise SystemExit(f"throughput-optimized Serve reported no direct port for app {name!r}")
                bases[name] = urls[0]

        local = threading.local()
        model_id = f"{args.model.split('/')[-1]}:{profile}"
        body = {"model": model_id, "prompt": PROMPT, "max_tokens": args.max_tokens, "ignore_eos": True}

        def session():
            if not hasattr(local, "s"):
                local.s = requests.Session()
            return local.s

        def via(name: str):
            url = f"{bases[name]}/{name}/v1/completions"

            def call() -> bool:
                r = session().post(url, json=body, timeout=120)
                return r.status_code == 200 and r.json()["usage"]["completion_tokens"] == args.max_tokens

            return call

        def floor_call() -> bool:
            return session().post(f"{bases['floor']}/floor/echo", json=body, timeout=30).status_code == 200

        deploy("floor", None)
        for _ in range(5):
            assert floor_call(), "warm-up request to the no-op app failed"
        out[f"{label}, no-op app (floor)"] = [load(floor_call, 1, args.requests, args.seconds)]
        apps = [("off", False, False), ("on", True, False)]
        if not args.no_stacked:
            apps.append(("stacked", True, True))
        for name, batching, stacked in apps:
            deploy(name, batching, stacked)
            call = via(name)
            for _ in range(3):
                assert call(), f"warm-up request to /{name} failed"
            key = f"{label}, batch on, stacked profile" if stacked else f"{label}, batch {name}"
            rows = []
            for c in levels:
                rows.append(load(call, c, args.requests, args.seconds))
                stats = requests.get(f"{bases[name]}/{name}/v1/stats", timeout=30).json()
                loop = stats["model"].get("decode_loop") or {}
                rows[-1]["rows_per_step_so_far"] = loop.get("rows_per_step", {})
            out[key] = rows
            print(key, rows, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def floor_app():
    """The app's shape with no work: FastAPI ingress -> one handle call -> a deployment echoing a string."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Echo:
        async def __call__(self, text: str) -> str:
            return text

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class EchoIngress:
        def __init__(self, echo) -> None:
            self.echo = echo

        @api.post("/echo")
        async def echo_route(self, body: dict) -> dict:
            return {"text": await self.echo.remote(body["prompt"])}

    return EchoIngress.bind(Echo.bind())


def markdown(results: dict, levels: list[int]) -> str:
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
    hi = max(levels)
    lines += [
        "",
        "Two ways through Serve: **serve** = Ray Serve's default path (HTTP proxy actor -> Ingress -> "
        "RoutedModel, Ray actor calls); **serve direct** = Serve started throughput-optimized "
        "(`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, `mdkif serve --throughput-optimized`): the Ingress replica "
        "answers HTTP on its own port and calls RoutedModel over gRPC. The no-op app has the same shape "
        "with no work (FastAPI ingress -> one handle call -> echo): Serve's own floor on this machine.",
        "",
        "| path | Serve floor p50 (no-op app) | added p50 at c=1, batch off | same, batch on | "
        f"batch on / off throughput at c={hi} |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, tag in (("serve", ""), ("serve direct", "direct_")):
        if f"serve_{tag}added_p50_ms_c1" not in summ:
            continue
        lines.append(
            f"| {label} | {summ[f'serve_{tag}floor_p50_ms']} ms | **{summ[f'serve_{tag}added_p50_ms_c1']} ms** | "
            f"{summ[f'serve_{tag}added_p50_ms_c1_batch_on']} ms | **{summ[f'{tag}batch_speedup_c{hi}']}x** |"
        )
    for label, tag in (("serve", ""), ("serve direct", "direct_")):
        key = f"{tag}stacked_over_merged_throughput_c{hi}"
        if key in summ:
            lines.append(
                f"\n{label}: the profile served **stacked** (skills beside the base per forward, "
                f"`merged_cache_size: 0`) against merged, batching on: throughput at c={hi} "
                f"x{summ[key]}, p50 at c={min(levels)} x{summ[f'{tag}stacked_over_merged_p50_c{min(levels)}']}."
            )
    lines += [
        "",
        "Added p50 = p50 through Serve - p50 in-process (c=1). Targets: added p50 under 10 ms; batching at "
        f"c={hi} at least 3x. Batching on waits up to 5 ms for companions.",
        "",
        f"![throughput and latency]({results['name']}.png)",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict, levels: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in results["settings"].items():
        if "floor" in name:
            continue
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
    fig.savefig(RESULTS / f"{results['name']}.png", dpi=110)


if __name__ == "__main__":
    main()
