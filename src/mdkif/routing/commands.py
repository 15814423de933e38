"""`mdkif route CONFIG` (fit and save a router) and `mdkif tune CONFIG` (Ray Tune search)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def route(
    config: Annotated[Path, typer.Argument(help="route config YAML (see route/*.yaml)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="config overrides, key=value")] = None,
    experiment: Annotated[
        bool, typer.Option(help="CONFIG is an unseen-task experiment (tune/unseen_task.yaml)")
    ] = False,
) -> None:
    """Fit a skill router for one task (gradient, CMA-ES or input-conditioned gate) and save the artifact."""
    from mdkif.config import load_config
    from mdkif.routing.config import RouteConfig

    if experiment:
        from mdkif.routing.experiment import ExperimentConfig, run_experiment

        result = run_experiment(load_config(config, ExperimentConfig, overrides or []))
        typer.echo(Path(result["table"]).read_text())
        typer.echo(f"table: {result['table']}  chart: {result['chart']}")
        return
    cfg = load_config(config, RouteConfig, overrides or [])
    from mdkif.routing.pipeline import run_route

    summary = run_route(cfg)
    typer.echo(json.dumps(summary, indent=2))


def tune(
    config: Annotated[
        Path, typer.Argument(help="tune config YAML (tune/router_search.yaml, tune/adalora_search.yaml)")
    ],
    overrides: Annotated[list[str] | None, typer.Argument(help="config overrides, key=value")] = None,
) -> None:
    """Search router or AdaLoRA settings with Ray Tune (CMA-ES searcher by default); save table + best config."""
    from mdkif.config import load_config
    from mdkif.routing.tuning import SearchConfig, run_tune

    cfg = load_config(config, SearchConfig, overrides or [])
    summary = run_tune(cfg)
    typer.echo(json.dumps(summary, indent=2))
