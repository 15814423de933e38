"""`mdkif eval CONFIG [key=value ...]`: score every variant on every benchmark and write the report.

mdkif eval eval/mirage_sample.yaml
mdkif eval eval/mirage_sample.yaml --limit 5 --no-ray --out /tmp/eval-smoke
mdkif eval eval/mirage_sample.yaml variants.0.scoring.batch_size=4
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from mdkif.config import load_config


def eval_command(
    config: Annotated[Path, typer.Argument(help="evaluation YAML (see eval/)")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides, e.g. shard_size=10 variants.0.scoring.method=generate"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (overrides `out:`)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="first N items of each benchmark")] = None,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="score in this process (debugging)")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="Ray actors (overrides `num_workers:`)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Run CONFIG's variants x benchmarks (sharded over Ray actors, resumable) and write the report."""
    from mdkif.evaluation.config import EvalConfig
    from mdkif.evaluation.fewshot import FewshotError
    from mdkif.evaluation.runner import run_eval
    from mdkif.evaluation.worker import EvalError

    extra = list(overrides or [])
    if out is not None:
        extra.append(f"out={out}")
    if no_ray:
        extra.append("use_ray=false")
    if workers is not None:
        extra.append(f"num_workers={workers}")
    cfg = load_config(config, EvalConfig, extra)
    start = time.perf_counter()
    try:
        summary = run_eval(cfg, limit=limit, progress=progress)
    except (EvalError, FewshotError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    typer.echo((cfg.out / "report.md").read_text(encoding="utf-8"))
    shards = summary["shards"]
    typer.echo(
        f"shards computed {shards['computed']}, reused {shards['reused']}; "
        f"wrote {cfg.out} in {time.perf_counter() - start:.1f}s"
    )
