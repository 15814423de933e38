"""`mdkif route CONFIG` (fit and save a router) and `mdkif route export` (a routed mixture as one LoRA).

Like every `*.commands` module it imports nothing above its own package's layer: the unseen-task
experiment behind `--experiment` lives in `mdkif.experiments`, a higher layer, so the top-level CLI hands
its runner in (`set_experiment_runner`) instead of this module importing it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from mdkif.routing.artifact import ROUTER_FILE, read_router_info, router_folder

# (config path, key=value overrides) -> None; set by mdkif.cli to the unseen-task experiment.
ExperimentRunner = Callable[[Path, list[str]], None]
_experiment_runner: ExperimentRunner | None = None


def set_experiment_runner(runner: ExperimentRunner) -> None:
    global _experiment_runner
    _experiment_runner = runner


class _FitByDefault(TyperGroup):
    """`mdkif route CONFIG ...` stays `mdkif route fit CONFIG ...`; `mdkif route export ...` is the other verb."""

    default_command = "fit"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Anything but a verb or a bare --help is fit's: `mdkif route CONFIG`, `mdkif route --experiment X`.
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_FitByDefault,
    no_args_is_help=True,
    help="Fit a skill router for a task (`mdkif route CONFIG`), or export a routed mixture as one LoRA.",
)


def _parse_weights(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"{part!r} is not skill=weight (give a router folder, a JSON file or 'nli=0.5,qa=0.5')"
            ) from None
    return out


@app.command("export")
def export(
    source: Annotated[
        str,
        typer.Argument(
            help="a static router folder (router.json), a JSON {skill: weight} file, or 'nli=0.7,qa=0.3'"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="adapter folder to write (peft LoRA)")],
    skills: Annotated[Path, typer.Option("--skills", help="the skill adapters folder")] = Path(
        "runs/demo/adapters"
    ),
    rank: Annotated[
        int | None,
        typer.Option(help="recompress to this rank by truncated SVD (default: exact, stacked rank)"),
    ] = None,
    base_model: Annotated[
        str | None, typer.Option(help="base_model_name_or_path to record (default: the skills' base)")
    ] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 factors")] = "float32",
    vllm_check: Annotated[bool, typer.Option(help="refuse an adapter vLLM could not load")] = True,
) -> None:
    """Write `sum_i w_i dW_i` of a routed mixture as one standard LoRA adapter (PeftModel, vLLM, Ray Serve LLM)."""
    import torch

    from mdkif.fusion import FusionError, SkillBank
    from mdkif.fusion.export import export_lora

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise typer.BadParameter(f"dtype {dtype!r}: choose one of {sorted(dtypes)}", param_hint="--dtype")
    path = Path(source)
    try:
        if path.is_dir() or path.name == ROUTER_FILE:
            from mdkif.routing.router import router_weights

            folder = router_folder(path)
            names = read_router_info(folder)["skills"]
            bank = SkillBank.from_dir(skills, names)
            weights, info = router_weights(folder, bank)
            groups = info["layer_groups"] if weights.dim() == 2 else None
            origin = {"router": str(folder)}
        else:
            mix = json.loads(path.read_text()) if path.is_file() else _parse_weights(source)
            if not isinstance(mix, dict) or not all(isinstance(v, int | float) for v in mix.values()):
                raise typer.BadParameter(f"{source}: a JSON object of skill -> weight is needed")
            bank = SkillBank.from_dir(skills, list(mix))
            weights, groups, origin = (
                torch.tensor([float(mix[n]) for n in bank.names]),
                None,
                {"weights": mix},
            )
        report = export_lora(
            bank,
            weights,
            out,
            groups=groups,
            rank=rank,
            base_model=base_model,
            dtype=dtypes[dtype],
            source=origin,
            vllm_check=vllm_check,
        )
    except FusionError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    summary = report.to_dict()
    summary.pop("module_errors")
    typer.echo(json.dumps(summary, indent=2))


@app.command("fit")
def route(
    config: Annotated[Path, typer.Argument(help="route config YAML (see route/*.yaml)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="config overrides, key=value")] = None,
    experiment: Annotated[
        bool, typer.Option(help="CONFIG is an unseen-task experiment (tune/unseen_task.yaml)")
    ] = False,
) -> None:
    """Fit a skill router for one task (gradient, CMA-ES or input-conditioned gate) and save the artifact;
    `method: arrow` fits nothing (zero-shot, per token) and writes its artifact, scored when a task is given."""
    from mdkif.config import load_config
    from mdkif.routing.config import RouteConfig

    if experiment:
        if _experiment_runner is None:
            raise typer.BadParameter("--experiment needs the mdkif CLI (mdkif.cli registers its runner)")
        _experiment_runner(config, overrides or [])
        return
    cfg = load_config(config, RouteConfig, overrides or [])
    from mdkif.routing.pipeline import run_route

    summary = run_route(cfg)
    typer.echo(json.dumps(summary, indent=2))
