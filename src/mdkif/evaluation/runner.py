"""Run an evaluation matrix: load benchmarks, plan shards, score them (Ray actors or in-process), report.

Output layout under `out/`:

    config.json                          the resolved config of the run
    <variant>/<benchmark>/meta.json      what the shards were computed with (resume guard)
    <variant>/<benchmark>/shard-0000.jsonl   per-item predictions, one file per finished shard
    <variant>/<benchmark>/predictions.jsonl  all shards, in item order
    summary.json  report.md  accuracy.png

A shard file is written atomically (temp file + rename) by the driver once its rows are back, so a
crash leaves only whole shards; a re-run skips every shard file that exists. `meta.json` pins the
variant's settings, the item ids and the shard size: resuming into a folder made with other settings
is refused rather than silently mixing results.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdkif.data.mcq import load_benchmark
from mdkif.data.records import MCQRecord
from mdkif.data.tasks import TaskRecord, load_task
from mdkif.evaluation.config import (
    BenchmarkConfig,
    EvalConfig,
    FewshotSource,
    TaskBenchmarkConfig,
    VariantConfig,
)
from mdkif.evaluation.fewshot import load_shots
from mdkif.evaluation.report import build_summary, write_reports
from mdkif.evaluation.worker import EvalError, ShardTask, ShardWorker, import_factory
from mdkif.io import numbered_lines, write_atomic
from mdkif.ray_session import ray_session
from mdkif.tracking import Run, stage_run


@dataclass
class Column:
    """One benchmark column of the report: its items, the config entry, and what shots must avoid.

    `unseen` is every item of the evaluated source, before any `limit`: k-shot examples are kept
    disjoint from the whole evaluated split, not just from the items this run happens to score.
    """

    bench: BenchmarkConfig | TaskBenchmarkConfig
    records: list[MCQRecord] | list[TaskRecord]
    unseen: list[MCQRecord] | list[TaskRecord]

    @property
    def fewshot(self) -> FewshotSource | None:
        return getattr(self.bench, "fewshot", None)


Columns = dict[str, Column]


def _group(bench: BenchmarkConfig, records: list[MCQRecord]) -> dict[str, list[MCQRecord]]:
    grouped: dict[str, list[MCQRecord]] = {}
    for r in records:
        grouped.setdefault(bench.name or r.benchmark, []).append(r)
    return grouped


def load_columns(cfg: EvalConfig, limit: int | None = None) -> Columns:
    """Benchmark column name -> its records; a MIRAGE file gives one column per source it holds."""
    columns: Columns = {}
    for bench in cfg.benchmarks:

        def load(n: int | None, bench: BenchmarkConfig = bench) -> list[MCQRecord]:
            return load_benchmark(
                bench.source, split=bench.split, limit=n, with_context=bench.with_context, root=cfg.data_root
            )

        records = load(limit or bench.limit)
        if not records:
            raise EvalError(f"benchmark {bench.source!r} (split {bench.split}) has no items")
        full = _group(bench, load(None)) if bench.fewshot is not None else {}
        for name, items in _group(bench, records).items():
            if name in columns:
                raise EvalError(f"two benchmark entries both produce column {name!r}; give one a `name:`")
            ids = [r.id for r in items]
            if len(set(ids)) != len(ids):
                raise EvalError(f"benchmark column {name!r} holds duplicate item ids")
            columns[name] = Column(bench, items, full.get(name, items))
    for task in cfg.tasks:
        name = task.column
        if name in columns:
            raise EvalError(f"two entries both produce column {name!r}; give one a `name:`")
        items = load_task(task.task, task.split, root=data_root(cfg), limit=limit or task.limit)
        if not items:
            raise EvalError(f"task {task.task!r} (split {task.split}) has no items")
        columns[name] = Column(task, items, items)
    return columns


def data_root(cfg: EvalConfig) -> Path:
    """Where task data live: the config's `data_root`, else $MDKIF_DATA_ROOT, else ../shared/data."""
    if cfg.data_root is not None:
        return cfg.data_root
    return Path(os.environ.get("MDKIF_DATA_ROOT", "../shared/data"))


def skill_data_ids(adapters: Path) -> tuple[Path | None, set[str]]:
    """The skill-data folder a bank of adapters was trained from (its skills.json) and every record id in it."""
    manifest = adapters / "skills.json"
    if not manifest.is_file():
        return None, set()
    folder = Path(json.loads(manifest.read_text(encoding="utf-8")).get("data_dir", ""))
    ids: set[str] = set()
    for path in sorted(folder.glob("*/*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            ids.update(json.loads(line)["id"] for line in fh if line.strip())
    return folder, ids


def check_unseen(cfg: EvalConfig, columns: Columns) -> dict[str, str]:
    """Refuse to score a task item that any evaluated skill was trained on (checked by id).

    Returns, per checked variant, the skill-data folder its items were checked against.
    """
    checked: dict[str, str] = {}
    cache: dict[Path, tuple[Path | None, set[str]]] = {}
    task_columns = {n: c for n, c in columns.items() if isinstance(c.bench, TaskBenchmarkConfig)}
    if not task_columns:
        return checked
    for v in cfg.variants:
        if v.router is None:
            continue
        if v.router.adapters not in cache:
            cache[v.router.adapters] = skill_data_ids(v.router.adapters)
        folder, ids = cache[v.router.adapters]
        if folder is None:
            continue
        for name, col in task_columns.items():
            seen = [r.id for r in col.records if r.id in ids]
            if seen:
                raise EvalError(
                    f"variant {v.name}: {len(seen)} of the {len(col.records)} {name} items scored were in the "
                    f"skills' training data {folder} (e.g. {seen[0]}); score another split or rebuild the "
                    "skill data excluding them (`mdkif data build --exclude`)"
                )
        checked[v.name] = str(folder)
    return checked


def shard_path(out: Path, variant: str, benchmark: str, index: int) -> Path:
    return out / variant / benchmark / f"shard-{index:04d}.jsonl"


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for _, line in numbered_lines(path)]


def _guard_resume(folder: Path, meta: dict[str, Any]) -> None:
    """Refuse to reuse shards computed with other settings or items; record the settings otherwise.

    Shards of the same settings whose artifacts changed (a router refitted, skills retrained into the same
    folder) are stale: they are moved to `<folder>.stale` and scored again. A record from before artifacts
    were recorded is taken as matching."""
    path = folder / "meta.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old == meta:
            return
        changed = sorted(k for k in meta if old.get(k) != meta[k])
        if changed not in ([], ["artifacts"]):
            raise EvalError(
                f"{folder} holds shards computed with different {', '.join(changed)}; "
                "use another --out or delete that folder"
            )
        if changed and "artifacts" in old:
            stale = folder.with_name(folder.name + ".stale")
            shutil.rmtree(stale, ignore_errors=True)
            folder.rename(stale)
            folder.mkdir(parents=True)
            print(f"{folder}: its router/adapter files changed since it was scored; old shards -> {stale}")
    write_atomic(path, json.dumps(meta, indent=2) + "\n")


def plan(cfg: EvalConfig, columns: Columns) -> tuple[list[ShardTask], int]:
    """Every shard still to score (finished ones skipped), grouped by model; and the skipped count."""
    tasks: list[ShardTask] = []
    skipped = 0
    for variant in cfg.variants:
        for column, col in columns.items():
            records = col.records
            shots = (
                load_shots(
                    col.fewshot, col.unseen, variant.scoring.shots, benchmark=column, root=cfg.data_root
                )
                if col.fewshot is not None and variant.scoring.shots
                else []
            )
            meta = {
                "variant": variant.fingerprint(),
                "artifacts": variant.artifacts_digest(),
                "items": hashlib.sha1("\n".join(r.id for r in records).encode()).hexdigest()[:16],
                "shard_size": cfg.shard_size,
                "shots": [s.id for s in shots],
            }
            _guard_resume(cfg.out / variant.name / column, meta)
            for index, start in enumerate(range(0, len(records), cfg.shard_size)):
                if shard_path(cfg.out, variant.name, column, index).exists():
                    skipped += 1
                    continue
                tasks.append(
                    ShardTask(variant, column, index, records[start : start + cfg.shard_size], shots)
                )
    # Variants sharing a model run next to each other, so a worker rarely swaps models.
    tasks.sort(key=lambda t: t.variant.model_key())
    return tasks, skipped


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="eval items", unit="q", disable=not enabled, dynamic_ncols=True)


def run_in_process(tasks: list[ShardTask], on_done: Callable[[ShardTask, list[dict]], None]) -> ShardWorker:
    """Score every task here, with one worker (debugging, tests)."""
    worker = ShardWorker()
    for task in tasks:
        on_done(task, worker.score(task))
    return worker


def run_on_ray(
    cfg: EvalConfig, tasks: list[ShardTask], on_done: Callable[[ShardTask, list[dict]], None]
) -> None:
    """Score tasks on `num_workers` Ray actors; each loads a model once and pulls shards until none are left.

    A free actor takes the next shard for the model it already holds when there is one, else the next
    shard in the queue.
    """
    with ray_session():  # a caller's Ray is left alone, one started here is stopped
        _drain_on_actors(cfg, tasks, on_done)


def _drain_on_actors(
    cfg: EvalConfig, tasks: list[ShardTask], on_done: Callable[[ShardTask, list[dict]], None]
) -> None:
    import ray

    env = {k: os.environ[k] for k in ("MDKIF_CACHE", "MDKIF_DATA_ROOT", "HF_HOME") if k in os.environ}
    actor_cls = ray.remote(ShardWorker).options(
        num_cpus=cfg.cpus_per_worker,
        num_gpus=cfg.gpus_per_worker,
        runtime_env={"env_vars": env} if env else None,
    )
    actors = [actor_cls.remote() for _ in range(min(cfg.num_workers, len(tasks)))]
    holding: dict[int, str | None] = dict.fromkeys(range(len(actors)))
    queue = deque(tasks)
    pending: dict[Any, tuple[ShardTask, int]] = {}

    def submit(slot: int) -> None:
        if not queue:
            return
        task = next((t for t in queue if t.variant.model_key() == holding[slot]), queue[0])
        queue.remove(task)
        holding[slot] = task.variant.model_key()
        pending[actors[slot].score.remote(task)] = (task, slot)

    try:
        for slot in range(len(actors)):
            submit(slot)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            task, slot = pending.pop(done[0])
            on_done(task, ray.get(done[0]))
            submit(slot)
    finally:
        for actor in actors:
            ray.kill(actor)


def collect(cfg: EvalConfig, columns: Columns) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Merge each variant x benchmark's shards into predictions.jsonl and return all rows."""
    predictions = {}
    for variant in cfg.variants:
        for column, col in columns.items():
            records = col.records
            n_shards = -(-len(records) // cfg.shard_size)
            rows = []
            for index in range(n_shards):
                path = shard_path(cfg.out, variant.name, column, index)
                if not path.exists():
                    raise EvalError(f"shard {path} is missing after the run")
                rows.extend(read_jsonl(path))
            if [r["id"] for r in rows] != [r.id for r in records]:
                raise EvalError(f"{variant.name}/{column}: shard rows do not match the benchmark items")
            write_atomic(cfg.out / variant.name / column / "predictions.jsonl", _jsonl(rows))
            predictions[(variant.name, column)] = rows
    return predictions


def _check_factories(variants: Iterable[VariantConfig]) -> None:
    # Fail on the driver, before any actor starts, when a RAG variant's factory does not exist.
    for v in variants:
        if v.retriever is not None:
            import_factory(v.retriever.factory)


def run_eval(cfg: EvalConfig, *, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the whole matrix described by `cfg` and write every output; returns the summary dict.

    The stage's MLflow run gets each variant's settings, every (variant, column) metric with its interval,
    the paired differences against the references, and summary.json, report.md and the chart."""
    with stage_run(cfg.tracking, "eval", f"eval:{cfg.out.name}") as run:
        summary = _run_eval(cfg, limit, progress)
        if run.active:
            track_summary(run, summary, cfg.out)
    return summary


def track_summary(run: Run, summary: dict[str, Any], out: Path) -> None:
    """Metrics as `variant/column/metric` and `variant-vs-reference/column/field`; the reports as artifacts."""
    run.params({"variants": ",".join(summary["variants"]), "columns": ",".join(summary["benchmarks"])})
    run.params({f"method/{k}": v for k, v in summary.get("methods", {}).items()})
    for r in summary["results"]:
        run.metrics({f"{r['variant']}/{r['benchmark']}/{k}": v for k, v in r.items()})
    for p in summary.get("paired", []):
        key = f"{p['variant']}-vs-{p['reference']}/{p['benchmark']}"
        run.metrics({f"{key}/{k}": v for k, v in p.items()})
    for name in ("summary.json", "report.md"):
        run.artifact(out / name)
    for chart in sorted(out.glob("*.png")):
        run.artifact(chart)


def _run_eval(cfg: EvalConfig, limit: int | None, progress: bool) -> dict[str, Any]:
    _check_factories(cfg.variants)
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_atomic(cfg.out / "config.json", cfg.model_dump_json(indent=2) + "\n")
    columns = load_columns(cfg, limit)
    unseen_checked = check_unseen(cfg, columns)
    tasks, skipped = plan(cfg, columns)
    bar = _progress(sum(len(t.records) for t in tasks), progress)

    def on_done(task: ShardTask, rows: list[dict]) -> None:
        write_atomic(shard_path(cfg.out, task.variant.name, task.benchmark, task.index), _jsonl(rows))
        bar.update(len(rows))

    try:
        if tasks and cfg.use_ray:
            run_on_ray(cfg, tasks, on_done)
        elif tasks:
            run_in_process(tasks, on_done)
    finally:
        bar.close()
    predictions = collect(cfg, columns)
    summary = build_summary(
        predictions,
        [v.name for v in cfg.variants],
        list(columns),
        resamples=cfg.bootstrap_resamples,
        seed=cfg.seed,
        references=cfg.references(),
        labels={
            n: list(c.records[0].labels or ())
            for n, c in columns.items()
            if isinstance(c.records[0], TaskRecord)
        },
        extra={
            "methods": {v.name: _describe(v) for v in cfg.variants},
            "shards": {"computed": len(tasks), "reused": skipped},
            "unseen_checked": unseen_checked,
        },
    )
    write_reports(summary, cfg.out)
    return summary


def _describe(v: VariantConfig) -> str:
    """A one-line description of a variant for the report."""
    s = v.scoring
    parts = [v.model.name, s.method + (f"/{s.target}" if s.method in ("loglik", "voc") else "")]
    if s.shots:
        parts.append(f"{s.shots}-shot")
    if v.adapter:
        parts.append(f"adapter={v.adapter}")
    if v.retriever:
        parts.append(f"RAG k={v.retriever.k} ({v.retriever.index})")
    return ", ".join(parts)
