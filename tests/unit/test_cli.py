"""The `mdkif` entry point: real sub-commands, and one clear line (exit 2) for config and data errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mdkif.cli import app


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MDKIF_CACHE", str(tmp_path / "cache"))


def test_models_check_answers_and_reports_speed(cache):
    result = CliRunner().invoke(app, ["models", "check", "--name", "tiny", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "model: tiny" in result.output and "M parameters" in result.output
    assert "Q: What are the common symptoms of type 2 diabetes?" in result.output
    assert "generated 8 tokens" in result.output and "tokens/s" in result.output


def test_models_check_bad_override_is_one_clear_line(cache):
    cmd = [sys.executable, "-m", "mdkif.cli", "models", "check", "--name", "tiny", "quantization=4bit"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: models check: field 'quantization': Input should be 'none', 'nf4' or 'int8'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_data_build_missing_source_is_one_clear_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "mdkif.cli",
        "data",
        "build",
        "--source",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "source file not found (is --source the data root?)" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_route_fits_by_default_and_exports_as_a_verb():
    """`mdkif route CONFIG` and `mdkif route --experiment FILE` are the fit verb; `export` is its own."""
    from typer.testing import CliRunner

    from mdkif.cli import app

    for argv, verb in (
        (["route/pubmedqa_gradient.yaml", "--help"], "fit"),
        (["--experiment", "tune/unseen_task.yaml", "--help"], "fit"),
        (["export", "--help"], "export"),
    ):
        out = CliRunner().invoke(app, ["route", *argv]).output
        assert f"mdkif route {verb} [OPTIONS]" in out, (argv, out[:300])
    missing = CliRunner().invoke(app, ["route", "--experiment"])
    assert missing.exit_code == 2 and "mdkif route fit" in missing.output  # fit's own usage error


def test_route_experiment_runs_the_runner_the_cli_hands_in(monkeypatch):
    """routing.commands imports nothing from mdkif.experiments (a higher layer): mdkif.cli hands it the
    unseen-task runner, and `--experiment` calls that with the config path and the overrides."""
    from typer.testing import CliRunner

    from mdkif.cli import app
    from mdkif.experiments.unseen import unseen_command
    from mdkif.routing import commands

    assert commands._experiment_runner is unseen_command
    calls = []
    monkeypatch.setattr(
        commands, "_experiment_runner", lambda config, overrides: calls.append((config, overrides))
    )
    result = CliRunner().invoke(app, ["route", "--experiment", "tune/unseen_task.yaml", "seed=3"])
    assert result.exit_code == 0, result.output
    assert [(str(c), o) for c, o in calls] == [("tune/unseen_task.yaml", ["seed=3"])]
