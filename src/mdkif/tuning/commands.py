"""`mdkif tune CONFIG`: a Ray Tune search over router or AdaLoRA settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def tune(
    config: Annotated[
        Path, typer.Argument(help="tune config YAML (tune/router_search.yaml, tune/adalora_search.yaml)")
    ],
    overrides: Annotated[list[str] | None, typer.Argument(help="config overrides, key=value")] = None,
) -> None:
    """Search router or AdaLoRA settings with Ray Tune (CMA-ES searcher by default); save table + best config."""
    from mdkif.config import load_config
    from mdkif.tuning.search import SearchConfig, check_space, run_tune

    cfg = load_config(config, SearchConfig, overrides or [])
    check_space(cfg, str(config))  # a misspelt or out-of-range key stops here, before Ray starts
    summary = run_tune(cfg)
    typer.echo(json.dumps(summary, indent=2))
