"""`mdkif eval` through the CLI on the MIRAGE sample with the tiny model, sharded over 2 local Ray actors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mdkif.cli import app


@pytest.mark.shared_data
def test_mdkif_eval_on_mirage_sample_with_ray(local_ray, shared_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"""
out: {tmp_path / "out"}
shard_size: 10
num_workers: 2
variants:
  - name: tiny-ll
    model: {{name: tiny}}
  - name: tiny-voc
    model: {{name: tiny}}
    scoring: {{method: voc}}
benchmarks:
  - source: {shared_data / "mcq" / "mirage_sample.json"}
"""
    )
    result = CliRunner().invoke(app, ["eval", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"] == ["medqa", "medmcqa", "mmlu_med"]
    assert summary["shards"] == {"computed": 18, "reused": 0}  # 2 variants x 3 benchmarks x ceil(25 / 10)
    assert (out / "report.md").read_text().count("| tiny-") >= 2
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    for r in summary["results"]:
        folder = out / r["variant"] / r["benchmark"]
        rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == r["n"] == 25
        assert len(list(folder.glob("shard-*.jsonl"))) == 3
        assert all(row["correct"] == (row["prediction"] == row["gold"]) for row in rows)
        assert r["accuracy"] == pytest.approx(sum(row["correct"] for row in rows) / 25)
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    # A second run (in-process this time) finds every shard finished and recomputes nothing.
    again = CliRunner().invoke(app, ["eval", str(config), "--no-progress", "--no-ray"])
    assert again.exit_code == 0, again.output
    assert "computed 0, reused 18" in again.output
