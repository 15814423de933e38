"""`mdkif demo` at toy size (tiny model, packaged data, no serving) leaves one MLflow parent run with a
child run per stage, each holding what its stage measured, read back through the MLflow client."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from mdkif.demo import DemoConfig, run_demo
from mdkif.tracking import PARENT_TAG, STAGE_TAG

REPO = Path(__file__).resolve().parents[2]


def test_demo_leaves_a_parent_run_with_a_child_per_stage(tmp_path: Path, monkeypatch) -> None:
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MDKIF_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)  # the demo reads the shipped stage configs
    cfg = DemoConfig(
        out=tmp_path / "demo",
        data_root=None,  # the packaged illustrative data
        model="tiny",
        skills_epochs=1,
        router_k=3,
        router_val=2,
        router_evals=4,
        eval_items=5,
        serve=False,
    )
    try:
        run_demo(cfg)
    finally:
        import ray

        ray.shutdown()  # the demo leaves Ray up for serving; the next test module starts its own

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("mdkif")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags[STAGE_TAG] == "demo"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    pid = parents[0].info.run_id
    children = {r.data.tags[STAGE_TAG]: r for r in runs if r.data.tags.get(PARENT_TAG) == pid}
    assert set(children) == {"data", "skills", "rag", "route", "eval"}
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    assert parents[0].data.params["model"] == "tiny"

    skills = children["skills"]
    assert skills.data.params["adapter.kind"] == "adalora" and skills.data.params["model.name"] == "tiny"
    curve = client.get_metric_history(skills.info.run_id, "qa/loss")
    assert len(curve) >= 2 and [m.step for m in curve] == sorted(m.step for m in curve)
    ranks = client.get_metric_history(skills.info.run_id, "qa/adalora_rank")
    # Non-zero singular values by step (AdaLoRA starts E at zero, so the first steps may read 0).
    assert len(ranks) == len(curve) and ranks[-1].value > 0
    assert client.get_metric_history(skills.info.run_id, "qa/lr")
    assert "qa/val_loss_after" in skills.data.metrics
    artifacts = {a.path for a in client.list_artifacts(skills.info.run_id)}
    assert {"skills.json", "loss_curves.png", "adapters"} <= artifacts
    assert "adapters/qa/adapter_config.json" in {
        a.path for a in client.list_artifacts(skills.info.run_id, "adapters/qa")
    }

    route = children["route"]
    objective = client.get_metric_history(route.info.run_id, "objective")
    assert len(objective) >= 1  # the best loss per CMA-ES generation
    assert route.data.params["method"] == "cmaes"
    assert {k for k in route.data.metrics if k.startswith("weight/")} == {f"weight/{s}" for s in _skills()}
    assert {"val_loss", "val_loss_base"} <= set(route.data.metrics)

    evaluation = children["eval"]
    metrics = evaluation.data.metrics
    for variant in ("base", "base-rag", "skills-router", "skills-router-rag"):
        assert 0.0 <= metrics[f"{variant}/pubmedqa/accuracy"] <= 1.0
        assert metrics[f"{variant}/pubmedqa/ci_low"] <= metrics[f"{variant}/pubmedqa/ci_high"]
    assert {"report.md", "summary.json", "accuracy.png"} <= {
        a.path for a in client.list_artifacts(evaluation.info.run_id)
    }
    assert children["rag"].data.metrics["total"] > 0
    assert children["data"].data.metrics["qa/train"] > 0


def _skills() -> list[str]:
    from mdkif.data.records import SKILLS

    return list(SKILLS)
