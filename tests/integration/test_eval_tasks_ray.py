"""A 3-task matrix (classification, multi-label, generation) on the tiny model through 2 Ray actors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mdkif.cli import app


@pytest.mark.shared_data
def test_task_matrix_through_ray_actors(local_ray, shared_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "eval.yaml"
    out = tmp_path / "out"
    config.write_text(
        f"""
out: {out}
data_root: {shared_data}
shard_size: 3
num_workers: 2
bootstrap_resamples: 200
variants:
  - name: base
    model: {{name: tiny}}
    scoring: {{max_new_tokens: 4}}
  - name: other
    model: {{name: tiny, tiny: {{seed: 1}}}}
    scoring: {{max_new_tokens: 4}}
tasks:
  - {{task: healthver, limit: 6}}
  - {{task: hoc, limit: 4}}
  - {{task: meqsum, limit: 4}}
"""
    )
    result = CliRunner().invoke(app, ["eval", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    by = {(r["variant"], r["benchmark"]): r for r in summary["results"]}
    assert {b: by[("base", b)]["metric"] for b in ("healthver", "hoc", "meqsum")} == {
        "healthver": "accuracy",
        "hoc": "micro_f1",
        "meqsum": "rougeL",
    }
    assert by[("base", "healthver")]["n"] == 6 and by[("other", "meqsum")]["n"] == 4
    assert set(by[("base", "meqsum")]["metrics"]) == {"rouge1", "rouge2", "rougeL"}
    assert set(by[("base", "healthver")]["metrics"]) == {"accuracy", "macro_f1"}
    # 6 + 4 + 4 items in shards of 3, per variant: 2 + 2 + 2 shards, twice.
    assert summary["shards"] == {"computed": 12, "reused": 0}
    paired = {(p["variant"], p["benchmark"]): p for p in summary["paired"]}
    assert set(paired) == {("other", b) for b in ("healthver", "hoc", "meqsum")}
    assert paired[("other", "healthver")]["test"] == "mcnemar"
    assert paired[("other", "hoc")]["test"] == "bootstrap"
    rows = [json.loads(x) for x in (out / "other" / "meqsum" / "predictions.jsonl").read_text().splitlines()]
    assert all("generation" in r and len(r["stats"]) == 3 for r in rows)
    assert "## Paired comparisons" in (out / "report.md").read_text()
    assert (out / "accuracy.png").stat().st_size > 0
    # A second run reuses every shard.
    again = CliRunner().invoke(app, ["eval", str(config)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["shards"] == {"computed": 0, "reused": 12}
