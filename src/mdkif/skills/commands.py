"""`mdkif train CONFIG [key=value ...]`: run one training stage described by a YAML file.

mdkif train train/skills_demo.yaml                 # 12 AdaLoRA skills on local Ray
mdkif train train/sft.yaml optim.max_steps=5       # any field can be overridden
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mdkif.skills.config import load_stage


def train(
    config: Annotated[
        Path, typer.Argument(help="stage YAML under train/ (skills, cpt, sft, task or pipeline)")
    ],
    overrides: Annotated[list[str] | None, typer.Argument(help="config overrides, key=value")] = None,
) -> None:
    """Train what CONFIG describes; adapters, manifests and loss curves go to its output_dir."""
    import logging

    from mdkif.skills.runner import run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_stage(config, overrides)
    result = run(cfg)
    if cfg.stage == "skills":
        typer.echo(f"\n{'skill':<28}{'status':<10}{'steps':>6}{'val before':>12}{'val after':>11}{'rank':>6}")
        for skill, m in result["skills"].items():
            if m.get("status") != "trained":
                typer.echo(f"{skill:<28}{m.get('status'):<10}  {m.get('reason', '')}")
                continue
            typer.echo(
                f"{skill:<28}{'trained':<10}{m['steps']:>6}{_f(m['val_loss_before']):>12}"
                f"{_f(m['val_loss_after']):>11}{m['total_rank']:>6}"
            )
        typer.echo(f"wrote {cfg.output_dir}/skills.json and loss_curves.png in {result['wall_seconds']:.1f}s")
    else:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2, default=str))


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
