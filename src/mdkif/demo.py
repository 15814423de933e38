"""`mdkif demo`: the whole method on embedded defaults, on one machine, from a fresh clone.

Stages, each one re-runnable without redoing finished work:

1. **data**: unified skill data for the 12 skills, from the real data sets when a data root is at hand
   (capped per task), else the packaged illustrative set; benchmark items are excluded from it.
2. **skills**: 12 AdaLoRA adapters trained at once on local Ray (the skills stage; finished skills skip).
3. **rag**: a Chroma index of medical text (real corpora capped, else the packaged demo corpus).
4. **router**: CMA-ES fits skill weights for an unseen task (PubMedQA: no skill trained on it) on k
   examples rendered exactly as the evaluation renders them, disjoint from the evaluated items.
5. **eval**: base / base+RAG / skills+router / skills+router+RAG, one scorer, report + chart.
6. **serve**: the routed model and retriever behind the OpenAI-compatible API (unless `--no-serve`).

Every setting below is a default a user can override with `key=value` (`skills_max_per_task=4`).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field

from mdkif.config import StrictModel, apply_overrides, validate
from mdkif.models import DEFAULT_MODEL
from mdkif.tracking import TrackingConfig, parent_run, stage_run

REPO_HINT = "run `mdkif demo` from the repository root (it reads the shipped stage configs)"
PACKAGE = Path(__file__).resolve().parent


class DemoConfig(StrictModel):
    """Sizes of the demo run; the defaults finish in about 10 minutes on 2 CPU cores."""

    out: Path = Field(Path("runs/demo"), description="everything the demo writes")
    data_root: Path | None = Field(
        Path("../shared/data"), description="real data sets (skills/, mcq/); absent -> packaged demo data"
    )
    model: str = Field(DEFAULT_MODEL, description="base model for every stage")
    skills_max_per_task: int = Field(5, ge=2, description="records per task when building real skill data")
    skills_epochs: int = Field(2, ge=1)
    rag_medquad_docs: int = Field(
        120, ge=1, description="MedQuAD documents indexed (embedding is the slow part)"
    )
    rag_wikidoc_docs: int = Field(80, ge=1)
    router_k: int = Field(12, ge=2, description="few-shot examples the router is fitted on")
    router_val: int = Field(8, ge=1)
    router_evals: int = Field(18, ge=2, description="CMA-ES candidate evaluations")
    eval_items: int = Field(60, ge=5, description="PubMedQA items evaluated per variant")
    rag_k: int = Field(3, ge=1, description="passages per question, evaluated and served")
    rag_passage_chars: int = Field(
        500, ge=50, description="characters per passage, evaluated and served (one setting for both)"
    )
    serve: bool = True
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="one parent run for the demo, a child per stage"
    )


def stage(name: str) -> None:
    print(f"\n=== {name} " + "=" * max(4, 66 - len(name)), flush=True)


def repo_config(rel: str) -> Path:
    path = Path(rel)
    if not path.is_file():
        raise FileNotFoundError(f"{rel} not found: {REPO_HINT}")
    return path


def real_data(cfg: DemoConfig) -> Path | None:
    """The data root when it holds the skill sources and the PubMedQA benchmark, else None."""
    root = cfg.data_root
    if root and (root / "skills").is_dir() and (root / "mcq" / "pubmedqa" / "pqal_dev500.json").is_file():
        return root
    return None


def task_items(cfg: DemoConfig) -> tuple[str, list[Any]]:
    """The unseen task's items (PubMedQA, without gold contexts) and the file they come from."""
    from mdkif.data.mcq import load_benchmark

    root = real_data(cfg)
    if root is not None:
        source = str(root / "mcq" / "pubmedqa" / "pqal_dev500.json")
        return source, load_benchmark(source)
    source = str(PACKAGE / "assets" / "demo_mcq" / "demo_mcq.json")
    return source, [r for r in load_benchmark(source) if r.benchmark == "pubmedqa"]


def build_data(cfg: DemoConfig, items: list[Any]) -> Path:
    """Stage 1: skill data from the real sources (capped), or the packaged set when they are absent."""
    from mdkif.data.build import build_skill_data
    from mdkif.data.mcq import write_exclusions

    root = real_data(cfg)
    if root is None:
        print("no real data at", cfg.data_root, "-> packaged illustrative skill data")
        return PACKAGE / "assets" / "demo_skills"
    out = cfg.out / "skilldata"
    if (out / "manifest.json").is_file():
        print(f"{out} exists: reusing it")
        return out
    exclusions = write_exclusions(items, cfg.out / "exclusions.jsonl")
    print(
        f"building skill data from {root} (max {cfg.skills_max_per_task} per task, {exclusions} excluded items)"
    )
    manifest = build_skill_data(
        root,
        out,
        max_per_task=cfg.skills_max_per_task,
        skip_bad=True,
        exclude=[cfg.out / "exclusions.jsonl"],
        progress=True,
    )
    counts = {s: c.train for s, c in manifest.skills.items()}
    print("train records per skill:", json.dumps(counts))
    return out


def train_skills(cfg: DemoConfig, data_dir: Path) -> Path:
    """Stage 2: the 12 skills on local Ray (train/skills_demo.yaml; finished skills are skipped)."""
    from mdkif.skills.config import load_stage
    from mdkif.skills.runner import print_skill_losses, run

    out = cfg.out / "adapters"
    stage_cfg = load_stage(
        repo_config("train/skills_demo.yaml"),
        [
            f"data_dir={data_dir}",
            f"output_dir={out}",
            f"model.name={cfg.model}",
            f"optim.epochs={cfg.skills_epochs}",
        ],
    )
    result = run(stage_cfg)
    print_skill_losses(result)
    return out


def build_rag(cfg: DemoConfig) -> Path:
    """Stage 3: the Chroma index (real corpora capped, or the packaged demo corpus)."""
    from mdkif.config import load_config
    from mdkif.rag.config import RagIndexConfig
    from mdkif.rag.index import build_index

    out = cfg.out / "rag"
    if real_data(cfg) is not None:
        root = cfg.data_root
        overrides = [
            f"corpora.0.path={root}/skills/medquad/medquad_answered.jsonl",
            f"corpora.0.max_docs={cfg.rag_medquad_docs}",
            f"corpora.1.path={root}/skills/medalpaca_wikidoc/medical_meadow_small.json",
            f"corpora.1.max_docs={cfg.rag_wikidoc_docs}",
            f"corpora.2.path={root}/mcq/pubmedqa/pqal_dev500.json",
            f"persist_dir={out}",
            "use_ray=false",  # on a laptop one process embeds as fast as Ray actors (bench/results/rag.md)
        ]
        rag_cfg = load_config(repo_config("rag/index.yaml"), RagIndexConfig, overrides)
    else:
        rag_cfg = load_config(repo_config("rag/index_demo.yaml"), RagIndexConfig, [f"persist_dir={out}"])
    report = build_index(rag_cfg, progress=True)
    print(f"index: {report.total} chunks ({report.added} added, {report.skipped} already there)")
    return out


def fit_demo_router(cfg: DemoConfig, adapters: Path, items: list[Any]) -> Path:
    """Stage 4: CMA-ES skill weights for the unseen task, on items the evaluation never scores."""
    from mdkif.models import ModelConfig, load_model
    from mdkif.prompts import user_message, wrap
    from mdkif.routing.artifact import is_router, read_router_info
    from mdkif.routing.config import RouteConfig
    from mdkif.routing.pipeline import run_route

    out = cfg.out / "router"
    if is_router(out):
        print(f"{out} exists: reusing it")
        return out
    # The evaluated items are the first `eval_items`; the router sees items from the end of the file.
    fit_items = items[-(cfg.router_k + cfg.router_val) :]
    overlap = {r.id for r in fit_items} & {r.id for r in items[: cfg.eval_items]}
    if overlap:
        raise ValueError(f"router examples overlap the evaluated items ({len(overlap)}): lower eval_items")
    tokenizer = load_model(ModelConfig(name=cfg.model)).tokenizer
    rows = [
        {
            "prompt": wrap(tokenizer, user_message(r, method="loglik"), "Answer:", True),
            "target": f" {r.answer}",
        }
        for r in fit_items
    ]
    examples = cfg.out / "router_examples.jsonl"
    examples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    route_cfg = validate(
        RouteConfig,
        {
            "model": {"name": cfg.model},
            "skills": {"root": str(adapters)},
            "task": {"source": str(examples), "k": cfg.router_k, "n_val": cfg.router_val, "max_length": 320},
            "method": "cmaes",
            "router": {"per_layer": False, "normalize": "linear"},
            "regularizer": {"kind": "l1", "strength": 0.05},
            "cmaes": {"max_evals": cfg.router_evals, "sigma0": 0.3},
            "output": str(out),
        },
        "demo router",
    )
    result = run_route(route_cfg)
    info = read_router_info(out)
    weights = dict(zip(info["skills"], info["weights"], strict=False))
    top = sorted(weights.items(), key=lambda kv: -abs(kv[1]))[:4]
    print("router weights (top 4):", ", ".join(f"{k} {v:+.2f}" for k, v in top))
    print("fit:", json.dumps({k: v for k, v in result.items() if isinstance(v, int | float | str)}))
    return out


def evaluate(cfg: DemoConfig, source: str, adapters: Path, router: Path, index: Path) -> dict[str, Any]:
    """Stage 5: the four variants on the unseen task's held-out items, one scorer for all."""
    from mdkif.evaluation.config import EvalConfig
    from mdkif.evaluation.runner import run_eval

    model = {"name": cfg.model}
    scoring = {"method": "loglik", "batch_size": 8}
    retriever = {
        "index": str(index),
        "options": {"mode": "hybrid"},
        "k": cfg.rag_k,
        "passage_chars": cfg.rag_passage_chars,
    }
    routed = {"adapters": str(adapters), "path": str(router)}
    variants = [
        {"name": "base", "model": model, "scoring": scoring},
        {"name": "base-rag", "model": model, "retriever": retriever, "scoring": scoring},
        {"name": "skills-router", "model": model, "router": routed, "scoring": scoring},
        {
            "name": "skills-router-rag",
            "model": model,
            "router": routed,
            "retriever": retriever,
            "scoring": scoring,
        },
    ]
    bench = {"source": source, "limit": cfg.eval_items, "with_context": False}
    if "demo_mcq" in source:
        bench["split"] = "pubmedqa"
    eval_cfg = validate(
        EvalConfig,
        {
            "out": str(cfg.out / "eval"),
            "shard_size": 20,
            "num_workers": 2,
            "variants": variants,
            "benchmarks": [bench],
        },
        "demo eval",
    )
    return run_eval(eval_cfg, progress=True)


def _relocate(value: Any, out: Path) -> Any:
    """The shipped serve config points at the default demo folder; move its paths under `out`."""
    if isinstance(value, dict):
        return {k: _relocate(v, out) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("runs/demo/"):
        return str(out / value.removeprefix("runs/demo/"))
    return value


def ask_served(url: str, body: str, timeout: float = 300.0) -> str:
    """One real chat request through the running app, so the demo shows a served answer."""
    import urllib.request

    request = urllib.request.Request(
        f"{url}/chat/completions", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    return reply["choices"][0]["message"]["content"]


def serve_demo(cfg: DemoConfig, port: int = 8000) -> None:
    """Stage 6: serve/serve_config.yaml over this run's artifacts, until Ctrl-C."""
    from ray import serve

    from mdkif.serving.app import build_app, serve_until_interrupted
    from mdkif.serving.config import check_artifacts, load_app_config, load_serve_file

    data, apps = load_serve_file(repo_config("serve/serve_config.yaml"))
    raw, _ = apps[0]
    args = _relocate(raw["args"], cfg.out)
    args["model"] = {**args.get("model", {}), "name": cfg.model}
    # Serve what was evaluated: the demo's retrieval settings, not the shipped file's.
    args["rag"] = {**args.get("rag", {}), "passage_chars": cfg.rag_passage_chars}
    for profile in args.get("profiles", {}).values():
        if profile.get("rag"):
            profile["k"] = cfg.rag_k
    app_cfg = check_artifacts(load_app_config(args, "serve/serve_config.yaml args"))
    # The shipped file's HTTP settings (keep-alive, timeouts), on loopback at the demo's port.
    serve.start(http_options={**(data.get("http_options") or {}), "host": "127.0.0.1", "port": port})
    serve.run(build_app(app_cfg), name="mdkif", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1"
    model = f"{cfg.model}:pubmedqa-rag"
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Does aspirin prevent heart attacks?"}],
            "max_tokens": 48,
        }
    )
    print(f"\nserving the routed model and the retriever at {url}  (models: {url}/models)")
    answer = ask_served(url, body)
    print(f"served answer (through Serve, routed skills + RAG): {answer!r}")
    print(f"curl -s {url}/chat/completions -H 'Content-Type: application/json' -d '{body}'")
    print("Ctrl-C stops the server")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever an earlier stage's library set
    serve_until_interrupted()


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run every stage in order and return where each one wrote its output.

    Stages 1-5 are one MLflow parent run (`demo`) with a child run per stage; it is finished before
    serving starts, so the store is complete while the server runs."""
    from mdkif.data.build import track_data

    start = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    source, items = task_items(cfg)
    print(f"MDKIF demo -> {cfg.out}  (model {cfg.model}; unseen task: PubMedQA from {source})")

    with parent_run(cfg.tracking, "demo") as parent:
        parent.params(cfg.model_dump(mode="json", exclude={"tracking"}))
        stage("1/6 skill data")
        with stage_run(cfg.tracking, "data") as run:
            data_dir = build_data(cfg, items)
            track_data(run, data_dir)
        stage("2/6 train 12 skills (AdaLoRA, Ray Train)")
        adapters = train_skills(cfg, data_dir)
        stage("3/6 RAG index (Chroma)")
        index = build_rag(cfg)
        stage("4/6 router for the unseen task (CMA-ES)")
        router = fit_demo_router(cfg, adapters, items)
        stage("5/6 evaluation: base / RAG / skills+router / skills+router+RAG")
        summary = evaluate(cfg, source, adapters, router, index)
        report = cfg.out / "eval" / "report.md"
        if report.is_file():
            print(report.read_text())
        print(f"report: {report}  chart: {cfg.out / 'eval' / 'accuracy.png'}")
        seconds = time.perf_counter() - start
        parent.metrics({"seconds": seconds})
        print(f"demo stages finished in {seconds:.0f} s")
    if parent.active:
        print(f"MLflow: run {parent.run_id} at {parent.uri}  (README: opening the tracking store)")
    if cfg.serve:
        stage("6/6 serve (Ray Serve, OpenAI-compatible API)")
        serve_demo(cfg)
    return {"data": data_dir, "adapters": adapters, "index": index, "router": router, "summary": summary}


def load_demo_config(overrides: list[str]) -> DemoConfig:
    data: dict[str, Any] = {}
    apply_overrides(data, overrides, origin="demo: ")
    return validate(DemoConfig, data, "demo")


def demo_command(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="settings, key=value (e.g. out=runs/demo2 eval_items=30)")
    ] = None,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="stop after the evaluation")] = False,
) -> None:
    """Run the whole method on embedded defaults: data, 12 skills, RAG index, router, evaluation, server."""
    cfg = load_demo_config(list(overrides or []))
    if no_serve:
        cfg.serve = False
    run_demo(cfg)
