"""`mdkif tune` with the CMA-ES searcher: a small router search on local Ray whose best trial beats its first."""

from __future__ import annotations

import csv
import json

import pytest

from mdkif.testing.synthetic import make_synthetic_skills


@pytest.fixture()
def no_ray_leak():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def test_tune_router_search_with_cmaes_improves(tmp_path, no_ray_leak, monkeypatch):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from mdkif.cli import app

    skills = make_synthetic_skills(tmp_path / "skills", tasks=("triage_yes", "triage_no"))
    base = tmp_path / "route.yaml"
    base.write_text(
        f"model: {{name: tiny}}\nskills: {{root: {skills}}}\n"
        f"task: {{source: {skills / 'tasks' / 'triage_yes.jsonl'}, k: 8, n_val: 12}}\n"
        "method: gradient\ngradient: {steps: 4, batch_size: 8}\n"
    )
    cfg = tmp_path / "search.yaml"
    cfg.write_text(
        f"kind: router\nbase: {base}\nnum_samples: 6\nnum_cpus: 2\ncpus_per_trial: 1\n"
        # Start from a known weak setting (an lr too small to move the router in 4 steps), run first as
        # trial 1 and used as CMA-ES's mean: the search must find a better one.
        "searcher: {name: cmaes, popsize: 3, sigma0: 0.3, seed: 0,\n"
        "  points_to_evaluate: [{gradient.lr: 0.002, router.temperature: 1.0}]}\n"
        "space:\n  gradient.lr: {type: loguniform, low: 0.001, high: 1.0}\n"
        "  router.temperature: {type: loguniform, low: 0.1, high: 10.0}\n"
        f"output: {tmp_path / 'out'}\n"
    )
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    result = CliRunner().invoke(app, ["tune", str(cfg)])
    assert result.exit_code == 0, result.output
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["trials"] == 6 and best["errors"] == 0
    assert best["best"] < best["first"] - 0.01, best  # clearly better, not a rounding difference
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    first = min(rows, key=lambda r: int(r["launch"]))
    assert float(first["config.gradient.lr"]) == 0.002 and float(first["val_loss"]) == best["first"]
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == 7
    # MLflow: the search is one run; Ray's callback wrote each trial as its child, with its settings and
    # the metrics it reported; the trials themselves open no stage runs.
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("mdkif").experiment_id])
    search = [r for r in runs if r.data.tags.get("mdkif.stage") == "tune"]
    assert len(search) == 1 and search[0].data.metrics["best"] == best["best"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == search[0].info.run_id]
    assert len(trials) == 6 and len(runs) == 7
    assert {float(r.data.params["gradient/lr"]) for r in trials} == {
        float(r["config.gradient.lr"]) for r in rows
    }
    assert min(r.data.metrics["val_loss"] for r in trials) == pytest.approx(best["best"])
