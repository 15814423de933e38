"""MLflow tracking (mdkif.tracking): stage runs nest under a parent, what they log reads back through the
MLflow client, tracking off writes nothing, and a broken store never fails the stage."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mdkif.config import ConfigError, validate
from mdkif.tracking import (
    PARENT_TAG,
    STAGE_TAG,
    TrackingConfig,
    active_parent,
    ensure_experiment,
    parent_run,
    stage_run,
    store_uri,
)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> str:
    # One database for the module (creating one costs ~3 s); each test writes its own experiment.
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


@pytest.fixture
def store(shared_store: str, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_store)
    return shared_store


@pytest.fixture
def cfg(request) -> TrackingConfig:
    return TrackingConfig(experiment=request.node.name)


def runs(uri: str, experiment: str) -> dict[str, object]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])} if exp else {}


def test_stage_runs_nest_under_the_parent_and_read_back(
    store: str, cfg: TrackingConfig, tmp_path: Path
) -> None:
    report = tmp_path / "report.md"
    report.write_text("# table\n")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with parent_run(cfg, "demo") as parent:
        assert active_parent() == parent.run_id
        parent.params({"out": "runs/demo", "sizes": {"k": 12, "val": [1, 2]}})
        with stage_run(cfg, "skills") as run:
            run.series("qa/loss", [2.5, 2.0, 1.5], [1, 2, 3])
            run.metrics({"qa/val_loss_after": 1.4, "note": "text is skipped", "nan": float("nan")})
            run.artifact(adapter, "adapters/qa")
        with stage_run(cfg, "eval", "eval:demo") as run:
            run.metrics({"base/pubmedqa/accuracy": 0.5, "base/pubmedqa/ci_low": 0.3})
            run.artifact(report)
            run.artifact(tmp_path / "missing.png")  # absent: skipped
    assert active_parent() is None
    found = runs(store, cfg.experiment)
    assert set(found) == {"demo", "skills", "eval:demo"}
    pid = found["demo"].info.run_id
    assert found["skills"].data.tags[PARENT_TAG] == pid and found["eval:demo"].data.tags[PARENT_TAG] == pid
    assert PARENT_TAG not in found["demo"].data.tags
    assert found["skills"].data.tags[STAGE_TAG] == "skills"
    assert {r.info.status for r in found.values()} == {"FINISHED"}
    assert found["demo"].data.params == {"out": "runs/demo", "sizes.k": "12", "sizes.val": "[1, 2]"}
    client = MlflowClient(store)
    curve = client.get_metric_history(found["skills"].info.run_id, "qa/loss")
    assert [(m.step, m.value) for m in curve] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert found["skills"].data.metrics == {"qa/loss": 1.5, "qa/val_loss_after": 1.4}
    assert found["eval:demo"].data.metrics == {"base/pubmedqa/accuracy": 0.5, "base/pubmedqa/ci_low": 0.3}
    assert [a.path for a in client.list_artifacts(found["skills"].info.run_id, "adapters/qa")] == [
        "adapters/qa/adapter_config.json"
    ]
    assert [a.path for a in client.list_artifacts(found["eval:demo"].info.run_id)] == ["report.md"]
    # The local store keeps its artifacts beside the database.
    assert (Path(store.removeprefix("sqlite:///")).parent / "artifacts").is_dir()


def test_a_stage_that_raises_is_marked_failed_and_the_error_propagates(
    store: str, cfg: TrackingConfig
) -> None:
    with pytest.raises(RuntimeError, match="boom"), stage_run(cfg, "route"):
        raise RuntimeError("boom")
    assert runs(store, cfg.experiment)["route"].info.status == "FAILED"


def test_tracking_off_writes_nothing_and_turns_off_the_stages_of_its_parent(
    store: str, cfg: TrackingConfig
) -> None:
    off = cfg.model_copy(update={"enabled": False})
    with parent_run(off, "demo") as parent:
        assert not parent.active
        with stage_run(cfg, "skills") as run:  # the stage's own config says on
            assert not run.active
            run.metrics({"x": 1.0})  # a no-op, not an error
    with stage_run(off, "eval") as run:
        assert not run.active
    assert runs(store, cfg.experiment) == {}


def test_an_unusable_store_warns_and_the_stage_still_runs(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{blocker / 'sub' / 'mlflow.db'}")
    with caplog.at_level(logging.WARNING, logger="mdkif.tracking"), stage_run(cfg, "eval") as run:
        assert not run.active
        done = True
    assert done
    assert "MLflow tracking off for eval" in caplog.text


def test_default_store_is_sqlite_under_runs_mlruns(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    uri, artifacts = store_uri(TrackingConfig())
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlruns' / 'mlflow.db'}"
    assert artifacts == (tmp_path / "runs" / "mlruns" / "artifacts").as_uri()
    # An explicit server wins over the environment and keeps its own artifact store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    assert store_uri(TrackingConfig(tracking_uri="http://mlflow:5000")) == ("http://mlflow:5000", None)


def test_ensure_experiment_creates_it_once(store: str) -> None:
    assert ensure_experiment(TrackingConfig(experiment="tune-x")) == (store, "tune-x")
    assert ensure_experiment(TrackingConfig(experiment="tune-x")) == (store, "tune-x")
    assert MlflowClient(store).get_experiment_by_name("tune-x") is not None


def test_every_stage_config_has_a_tracking_block() -> None:
    from mdkif.demo import DemoConfig
    from mdkif.evaluation.config import EvalConfig
    from mdkif.experiments.reference import ReferenceConfig
    from mdkif.experiments.unseen import ExperimentConfig
    from mdkif.rag.config import RagIndexConfig
    from mdkif.routing.config import RouteConfig
    from mdkif.skills.config import CommonStage
    from mdkif.tuning.search import SearchConfig

    for schema in (DemoConfig, EvalConfig, RagIndexConfig, ReferenceConfig, RouteConfig, ExperimentConfig):
        assert schema.model_fields["tracking"].annotation is TrackingConfig, schema
    assert SearchConfig.model_fields["tracking"].annotation is TrackingConfig
    assert CommonStage.model_fields["tracking"].annotation is TrackingConfig
    with pytest.raises(ConfigError, match="field 'tracking.experiment'"):
        validate(RouteConfig, {"skills": {"root": "x"}, "tracking": {"experiment": ""}}, "route.yaml")
