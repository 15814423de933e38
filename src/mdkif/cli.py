"""The `mdkif` command line: one sub-command group per domain package, each doing real work.

A group lives in its own package (`mdkif.<pkg>.commands`) as a `typer.Typer` and is added here with one
line, so the commands read next to the code they drive.
"""

from __future__ import annotations

import sys

import typer

from mdkif.config import ConfigError
from mdkif.data.errors import DataError

app = typer.Typer(
    name="mdkif",
    help="Medical domain knowledge injection for general LLMs, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # One line per command group. Imports are local so `mdkif --help` stays fast.
    from mdkif.data.commands import app as data_app
    from mdkif.demo import demo_command
    from mdkif.evaluation.commands import eval_command
    from mdkif.experiments.reference import reference_command
    from mdkif.experiments.unseen import unseen_command
    from mdkif.models.commands import app as models_app
    from mdkif.rag.commands import app as rag_app
    from mdkif.routing.commands import app as route_app
    from mdkif.routing.commands import set_experiment_runner
    from mdkif.serving.commands import serve as serve_command
    from mdkif.skills.commands import train as train_command
    from mdkif.tuning.commands import tune

    app.add_typer(data_app, name="data", help="Build and inspect unified skill data and benchmarks.")
    app.add_typer(models_app, name="models", help="Load and check base models.")
    app.add_typer(route_app, name="route")
    set_experiment_runner(unseen_command)  # `mdkif route --experiment CONFIG`
    app.command("tune")(tune)
    app.command("train", help="Train a stage from a YAML config (skills, cpt, sft, task, pipeline).")(
        train_command
    )
    app.command("eval")(eval_command)
    app.add_typer(rag_app, name="rag", help="Build the Chroma RAG index and query it.")
    app.command("serve")(serve_command)
    app.command("demo")(demo_command)
    app.command("reference")(reference_command)


_register()


def main() -> None:
    """Entry point: run the app, turning config and data errors into one clear line and exit code 2."""
    try:
        app()
    except (ConfigError, DataError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()
