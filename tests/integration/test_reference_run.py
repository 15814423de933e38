"""`mdkif reference` end to end at toy size (tiny model, 2 skills, 2 tasks): data without the held-out
items, skills on Ray Train, routers on the train split, paired evaluation, the results folder; a re-run
reuses every stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mdkif.cli import app
from mdkif.data.tasks import heldout_ids

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.shared_data
def test_reference_run_at_toy_size(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MDKIF_CACHE", str(tmp_path / "cache"))
    skills = tmp_path / "skills_tiny.yaml"
    base = (REPO / "train" / "skills_cpu.yaml").read_text()
    skills.write_text(base)
    out, results = tmp_path / "run", tmp_path / "results"
    config = tmp_path / "reference.yaml"
    config.write_text(
        f"""
out: {out}
results: {results}
data_root: {shared_data}
skills_config: {skills}
skills_overrides: [model.name=tiny, "skills=[nli,summarization]", max_train_records=8, max_val_records=4,
                   optim.max_steps=2, ray.num_workers=1, checkpoint_every=2]
tasks:
  - {{name: healthver}}
  - {{name: meqsum, unseen: true}}
n_test: 4
routers: {{k_gradient: 8, gradient_steps: 2, batch_size: 4, cmaes_ks: [2, 3], cmaes_max_evals: 4}}
arrow: {{top_k: 2}}
num_workers: 1
shard_size: 4
"""
    )
    # Arrow's top_k above the number of skills is refused before anything is built.
    refused = CliRunner().invoke(app, ["reference", str(config), "arrow.top_k=3"])
    assert refused.exit_code != 0 and not out.exists()
    assert "reference: arrow.top_k" in str(refused.exception) + refused.output
    result = CliRunner().invoke(app, ["reference", str(config)])
    assert result.exit_code == 0, result.output
    doc = json.loads((results / "reference.json").read_text())
    rows = {(r["task"], r["row"]) for r in doc["table"]}
    expected = ["base", "best_single", "uniform", "routed_gradient", "routed_cmaes_k2", "routed_cmaes_k3"]
    expected.append("routed_arrow")  # zero-shot: one artifact for both tasks, no train items
    expected.append("task_lora")  # a plain LoRA per task on the routers' train items
    assert rows == {(t, r) for t in ("healthver", "meqsum") for r in expected}
    by = {(r["task"], r["row"]): r for r in doc["table"]}
    assert by[("healthver", "base")]["metric"] == "accuracy" and by[("meqsum", "base")]["metric"] == "rougeL"
    assert by[("healthver", "base")]["vs_base"] is None
    assert by[("healthver", "uniform")]["vs_base"]["test"] == "mcnemar"
    assert {g["row"] for g in doc["targets"]} == {
        "routed_gradient",
        "routed_cmaes_k2",
        "routed_cmaes_k3",
        "routed_arrow",
    }
    arrow = json.loads((out / "arrow" / "router.json").read_text())
    assert arrow["kind"] == "arrow" and not (out / "routers" / "arrow").exists()
    assert doc["fits"]["healthver"]["best_single_skill"] in ("nli", "summarization")
    assert (results / "reference.png").stat().st_size > 0
    md = (results / "reference.md").read_text()
    assert "| routed_cmaes_k3 |" in md and "| routed_arrow |" in md and "## Targets" in md
    # task_lora: trained on exactly the routers' first k_gradient train items, paired in the table
    lora = json.loads((out / "task_lora" / "healthver" / "adapter" / "metrics.json").read_text())
    assert lora["train_examples"] == 8 and by[("healthver", "uniform")]["vs_task_lora"] is not None
    assert {d["task"] for d in doc["to_task_lora"]} == {"healthver", "meqsum"}
    assert "## Distance to task_lora" in md
    # No held-out item reached the skill data: test + dev of healthver, every meqsum item.
    ids = set()
    for path in (out / "skilldata").glob("*/*.jsonl"):
        ids |= {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}
    assert not ids & set(heldout_ids("healthver", root=shared_data))
    assert not ids & set(heldout_ids("meqsum", root=shared_data, whole=True))
    # Everything is reused on a second run: no training, no fitting, no scoring (the plan's record).
    record = json.loads((out / "plan.json").read_text())
    assert set(record["stages"]) == {"data", "skills", "routers", "arrow", "task_lora", "eval"}
    scored = (out / "eval" / "healthver" / "summary.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["reference", str(config)])
    assert again.exit_code == 0, again.output
    for name in record["stages"]:
        assert f"[reference] {name}: finished" in again.output and "reusing it" in again.output
    assert (out / "eval" / "healthver" / "summary.json").stat().st_mtime_ns == scored
    assert json.loads((results / "reference.json").read_text())["table"] == doc["table"]
    # A row subset that needs no train split (base + Arrow) reuses the scores and writes a table of its own.
    subset = tmp_path / "subset"
    few = CliRunner().invoke(app, ["reference", str(config), "rows=[base,routed_arrow]", f"results={subset}"])
    assert few.exit_code == 0, few.output
    sub = json.loads((subset / "reference.json").read_text())
    assert {r["row"] for r in sub["table"]} == {"base", "routed_arrow"} and sub["fits"] == {}
    summary = json.loads((out / "eval" / "healthver" / "summary.json").read_text())
    assert summary["shards"]["computed"] == 0  # the subset's evaluation re-read every scored shard
    assert "What the routers chose" not in (subset / "reference.md").read_text()
    # The label objective refits only the classification task; meqsum's routers and scores are reused.
    label = CliRunner().invoke(app, ["reference", str(config), "routers.loss=label"])
    assert label.exit_code == 0, label.output
    fit = json.loads((out / "routers-label" / "healthver" / "fit.json").read_text())
    assert fit["loss"] == "label" and set(fit["routers"]) == {"gradient", "cmaes-k2", "cmaes-k3"}
    assert not (out / "routers-label" / "meqsum").exists()
    assert (
        json.loads((out / "eval-label" / "healthver" / "summary.json").read_text())["shards"]["computed"] > 0
    )
    assert json.loads((out / "eval" / "meqsum" / "summary.json").read_text())["shards"]["computed"] == 0
    # The run stopped the Ray instances it started, so the next module can start its own.
    import ray

    assert not ray.is_initialized()
