"""Experiment tracking with MLflow: one run per stage, nested under one parent for `mdkif demo` / `reference`.

Every stage config has a `tracking` block (:class:`TrackingConfig`). The embedded default is a SQLite store
under `runs/mlruns` (`mlflow.db`, artifacts in `artifacts/`; MLflow 3 no longer writes plain-file stores);
`tracking_uri` points a stage at a real server instead, and `MLFLOW_TRACKING_URI` in the environment is
honoured when the config leaves it unset. Open the default store with

    mlflow ui --backend-store-uri sqlite:///runs/mlruns/mlflow.db

Stages run inside a parent (:func:`parent_run`: the demo, the reference run, the unseen-task experiment)
write to the parent's store and experiment and are off when the parent is. A stage run on its own nests
under $MDKIF_MLFLOW_PARENT_RUN_ID when that is set (stages a cluster script runs one by one).

Only the driver logs: Ray workers report to the driver as they already do, and the stage writes the
curves (loss, lr, AdaLoRA rank per step; the objective per CMA-ES generation) from their records, so one
writer touches the store and a training job never waits on it. A tracking failure (a server that went
away, a locked database) is logged as a warning and never fails the stage whose work it records.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from mdkif.config import StrictModel

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("runs/mlruns")
DB_NAME = "mlflow.db"
PARENT_ENV = "MDKIF_MLFLOW_PARENT_RUN_ID"  # a stage run on its own nests under this run
STAGE_TAG = "mdkif.stage"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
MAX_PARAM = 6000  # MLflow's limit on a parameter value
BATCH = 1000  # MLflow's limit on metrics per log_batch call


class TrackingConfig(StrictModel):
    """Where a stage records its run (`tracking_uri` unset: $MLFLOW_TRACKING_URI, else runs/mlruns)."""

    enabled: bool = True
    tracking_uri: str | None = Field(
        None, description="an MLflow server (http://host:5000) or database URI; unset: the local store"
    )
    experiment: str = Field("mdkif", min_length=1, description="MLflow experiment the runs go to")
    log_artifacts: bool = Field(
        True, description="copy adapters, manifests, reports and charts into the run (off for 8B banks)"
    )


def store_uri(cfg: TrackingConfig) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment): a local SQLite store keeps its artifacts
    beside the database; a server or other URI decides for itself (None)."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///"))
            return uri, (db.parent / "artifacts").resolve().as_uri()
        return uri, None
    store = DEFAULT_STORE.resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / DB_NAME}", (store / "artifacts").as_uri()


def _key(name: str) -> str:
    """A metric or parameter name MLflow accepts (letters, digits, `_-. /`)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(name))[:250]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted parameter names (`optim.lr`), lists and None as text."""
    flat: dict[str, Any] = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(flatten(v, f"{name}."))
        else:
            flat[name] = v
    return flat


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


@dataclass
class Run:
    """One MLflow run (or a no-op when tracking is off); every method is safe to call either way."""

    client: Any = None
    run_id: str | None = None
    log_artifacts: bool = True
    uri: str | None = None
    artifact_location: str | None = None
    experiment: str | None = None
    _warned: bool = False

    @property
    def active(self) -> bool:
        return self.client is not None and self.run_id is not None

    def _do(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # tracking never fails the stage it records
            if not self._warned:
                log.warning(
                    "MLflow %s failed (run %s): %s; later failures are not repeated", what, self.run_id, exc
                )
                self._warned = True

    def params(self, params: Mapping[str, Any]) -> None:
        """Settings, flattened (`adapter.init_r`); values longer than MLflow's limit are cut."""
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(_key(k), str(v)[:MAX_PARAM]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow's limit on params per batch
            self._do("log params", self.client.log_batch, self.run_id, params=items[i : i + 100])

    def metrics(self, values: Mapping[str, Any], step: int = 0) -> None:
        """Numeric values (others are skipped) at one step."""
        now = int(time.time() * 1000)
        self._log_metrics([(k, v, step, now) for k, v in flatten(values).items()])

    def series(self, key: str, values: Iterable[Any], steps: Iterable[int] | None = None) -> None:
        """A curve: one metric at successive steps (1, 2, ... unless `steps` is given)."""
        values = list(values)
        steps = list(steps) if steps is not None else list(range(1, len(values) + 1))
        now = int(time.time() * 1000)
        self._log_metrics([(key, v, s, now) for v, s in zip(values, steps, strict=True)])

    def _log_metrics(self, rows: list[tuple[str, Any, int, int]]) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        items = [
            Metric(_key(k), x, ts, int(step)) for k, v, step, ts in rows if (x := _number(v)) is not None
        ]
        for i in range(0, len(items), BATCH):
            self._do("log metrics", self.client.log_batch, self.run_id, metrics=items[i : i + BATCH])

    def tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        for k, v in tags.items():
            self._do("set tag", self.client.set_tag, self.run_id, _key(k), str(v)[:MAX_PARAM])

    def artifact(self, path: str | Path, under: str | None = None) -> None:
        """Copy a file or a directory into the run's artifacts (when `log_artifacts`; missing: skipped)."""
        if not self.active:
            return
        path = Path(path)
        if not self.log_artifacts or not path.exists():
            return
        if path.is_dir():
            self._do("log artifacts", self.client.log_artifacts, self.run_id, str(path), under)
        else:
            self._do("log artifact", self.client.log_artifact, self.run_id, str(path), under)


@dataclass(frozen=True)
class _Parent:
    """The parent run stage runs nest under; `run_id` None: the parent has tracking off, so do they."""

    run_id: str | None
    uri: str | None = None
    artifact_location: str | None = None
    experiment: str | None = None


_parent: _Parent | None = None


def _experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def ensure_experiment(cfg: TrackingConfig) -> tuple[str, str]:
    """(tracking URI, experiment name) with the experiment created (artifacts beside a local store), for
    writers other than :class:`Run` such as Ray Tune's MLflow callback."""
    from mlflow.tracking import MlflowClient

    if _parent is not None and _parent.run_id is not None:
        uri, artifacts, experiment = _parent.uri, _parent.artifact_location, _parent.experiment
    else:
        (uri, artifacts), experiment = store_uri(cfg), cfg.experiment
    _experiment_id(MlflowClient(tracking_uri=uri), experiment, artifacts)
    return uri, experiment


def _open(cfg: TrackingConfig | None, stage: str, name: str | None, parent: bool) -> Run:
    """Create the run: a stage inside a parent goes to the parent's store and experiment, and is off when
    the parent is; a no-op Run when tracking is off or the store cannot be opened."""
    if cfg is None or not cfg.enabled:
        return Run()
    inherited = None if parent else _parent
    if inherited is not None and inherited.run_id is None:
        return Run()
    if inherited is not None:
        uri, artifacts, experiment = inherited.uri, inherited.artifact_location, inherited.experiment
        parent_id: str | None = inherited.run_id
    else:
        (uri, artifacts), experiment = store_uri(cfg), cfg.experiment
        parent_id = None if parent else os.environ.get(PARENT_ENV)
    tags = {STAGE_TAG: stage}
    if parent_id:
        tags[PARENT_TAG] = parent_id
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp_id = _experiment_id(client, experiment, artifacts)
        run = client.create_run(exp_id, run_name=name or stage, tags=tags)
    except Exception as exc:
        log.warning("MLflow tracking off for %s: could not open a run at %s: %s", stage, uri, exc)
        return Run()
    log.info("MLflow run %s (%s) at %s", run.info.run_id, stage, uri)
    return Run(
        client,
        run.info.run_id,
        cfg.log_artifacts,
        uri=uri,
        artifact_location=artifacts,
        experiment=experiment,
    )


def _close(run: Run, failed: bool) -> None:
    if run.active:
        run._do("end run", run.client.set_terminated, run.run_id, "FAILED" if failed else "FINISHED")


@contextmanager
def stage_run(cfg: TrackingConfig | None, stage: str, name: str | None = None) -> Iterator[Run]:
    """The run of one stage (`skills`, `route`, `eval`, ...), a child of the active parent if there is one
    (or of $MDKIF_MLFLOW_PARENT_RUN_ID). Marked FAILED when the stage raises (the exception propagates)."""
    run = _open(cfg, stage, name, parent=False)
    failed = True
    try:
        yield run
        failed = False
    finally:
        _close(run, failed)


@contextmanager
def parent_run(cfg: TrackingConfig | None, name: str) -> Iterator[Run]:
    """The parent of every stage run started inside it in this process, e.g. one `mdkif demo`; with
    tracking off, the stages inside are off too."""
    global _parent
    run = _open(cfg, name, name, parent=True)
    previous = _parent
    _parent = _Parent(run.run_id, run.uri, run.artifact_location, run.experiment)
    failed = True
    try:
        yield run
        failed = False
    finally:
        _parent = previous
        _close(run, failed)


def active_parent() -> str | None:
    """The run id stage runs nest under now, if any."""
    if _parent is not None:
        return _parent.run_id
    return os.environ.get(PARENT_ENV)
