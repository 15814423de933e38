"""`mdkif tune CONFIG`: Ray Tune searches over router settings or a skill's AdaLoRA settings.

- `kind: router`: each trial fits a router (`mdkif route`'s pipeline) with the trial's settings and
  reports its held-out task loss. The trial does the work itself, so it asks for real CPUs.
- `kind: adalora`: each trial trains one skill with the skills stage's `train_loop_per_worker` on a
  `TorchTrainer` launched from inside the function trainable (Ray 2.60 refuses `Tuner(TorchTrainer)`),
  and reports the skill's validation loss. The trial only waits on its trainer, so it asks for a
  token CPU share (0.01; zero would never be scheduled) and the trainer's workers hold the real CPUs.

The search space's keys are dotted paths into the base config (`router.temperature`, `adapter.r`), so
whatever the base config can set, a search can vary. Writes `results.csv` (one row per trial, in
launch order) and `best.json` (best config, its metric, the first trial's metric).
"""

from __future__ import annotations

import copy
import csv
import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mdkif.config import StrictModel, apply_overrides, load_yaml, validate
from mdkif.ray_session import ray_session
from mdkif.tracking import PARENT_TAG, STAGE_TAG, TrackingConfig, ensure_experiment, stage_run


class SearchDim(StrictModel):
    """One searched setting: a Tune domain."""

    type: Literal["uniform", "loguniform", "quniform", "randint", "choice"]
    low: float | None = None
    high: float | None = Field(None, description="randint: excluded, as in tune.randint")
    q: float | None = Field(None, gt=0, description="quniform step")
    values: list[Any] | None = Field(None, description="choice: the options")

    @model_validator(mode="after")
    def _complete(self) -> SearchDim:
        if self.type == "choice":
            if not self.values:
                raise ValueError("choice needs values")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"{self.type} needs low < high")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        if self.type == "quniform" and self.q is None:
            raise ValueError("quniform needs q")
        return self

    def ends(self) -> list[Any]:
        """The values at the two ends of the domain (every value of a choice): what `check_space` tries."""
        if self.type == "choice":
            return list(self.values or [])
        if self.type == "randint":  # high is excluded
            return [int(self.low), int(self.high) - 1]
        return [self.low, self.high]

    def domain(self) -> Any:
        from ray import tune

        if self.type == "choice":
            return tune.choice(self.values)
        if self.type == "randint":
            return tune.randint(int(self.low), int(self.high))
        if self.type == "quniform":
            return tune.quniform(self.low, self.high, self.q)
        return getattr(tune, self.type)(self.low, self.high)


class SearcherSettings(StrictModel):
    name: Literal["cmaes", "random"] = Field(
        "cmaes", description="cmaes: mdkif's CmaEsSearcher; random: Tune's"
    )
    popsize: int | None = Field(None, ge=2, description="CMA-ES candidates per generation")
    sigma0: float = Field(0.3, gt=0, description="CMA-ES initial step in the unit box")
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list,
        description="configs run first, e.g. [{gradient.lr: 0.01, router.temperature: 1.0}]; with cmaes the "
        "first one is also the starting mean",
    )
    seed: int = 0


class AdaloraTrial(StrictModel):
    """kind: adalora: which skill each trial trains and on how many Train workers.

    GPUs come from the base config's `ray:` block (`use_gpu`, `gpus_per_worker`, `accelerator_type`),
    e.g. `base_overrides: [ray.use_gpu=true]`.
    """

    skill: str = Field(description="the skill whose adapter is searched")
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)


class SearchConfig(StrictModel):
    """A Ray Tune search over a base stage config."""

    kind: Literal["router", "adalora"]
    base: Path = Field(
        description="the base config: a route config (router) or a skills stage config (adalora)"
    )
    base_overrides: list[str] = Field(default_factory=list, description="key=value applied to the base first")
    space: dict[str, SearchDim] = Field(description="dotted path in the base config -> domain")
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(8, ge=1, description="trials in all")
    max_concurrent: int = Field(1, ge=1, description="trials at once")
    searcher: SearcherSettings = Field(default_factory=SearcherSettings)
    cpus_per_trial: float = Field(
        1.0, gt=0, description="router trials; adalora trials take 0.01 + their trainer"
    )
    adalora: AdaloraTrial | None = None
    ray_address: str | None = Field(None, description="None starts (or joins) a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray started here")
    output: Path = Field(Path("runs/tune"), description="results.csv, best.json and Ray's own files")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="the search's run; each trial is a child (Ray's callback)"
    )

    @model_validator(mode="after")
    def _kind(self) -> SearchConfig:
        if self.kind == "adalora" and self.adalora is None:
            raise ValueError("kind adalora needs an `adalora:` block (skill, workers)")
        for i, point in enumerate(self.searcher.points_to_evaluate):
            keys = set(_flat_params(point))
            if keys != set(self.space):
                raise ValueError(
                    f"searcher.points_to_evaluate[{i}] sets {sorted(keys)}; it must set exactly the space's "
                    f"keys {sorted(self.space)}"
                )
        return self


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _nested(point: dict[str, Any]) -> dict[str, Any]:
    """`{"gradient.lr": 0.01}` or `{"gradient": {"lr": 0.01}}` -> the nested config Tune trials receive."""
    out: dict[str, Any] = {}
    for key, value in _flat_params(point).items():
        _set(out, key, value)
    return out


def _flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The base config with a trial's values written at their dotted paths."""
    data = copy.deepcopy(base)
    for key, value in _flat_params(params).items():
        _set(data, key, value)
    return data


def search_base(cfg: SearchConfig) -> tuple[type, dict[str, Any]]:
    """The base config's schema and its data with `base_overrides` applied, validated (ConfigError names
    the base file and the field)."""
    schema: Any
    if cfg.kind == "router":
        from mdkif.routing.config import RouteConfig as schema
    else:
        from mdkif.skills.config import SkillsStage as schema
    base = apply_overrides(load_yaml(cfg.base), cfg.base_overrides, origin=f"{cfg.base}: ")
    validate(schema, base, str(cfg.base))
    return schema, base


def check_space(cfg: SearchConfig, origin: str = "search space") -> None:
    """Validate the trial configs the space can produce before any trial runs (before Ray starts).

    Each searched key is set, one at a time, to each end of its domain in the base config and the result is
    validated against the base's schema, so a misspelt key (`optim.lrr`) or an end the schema refuses
    (`adapter.r: 0`) stops the search with the search file, the key and the value named, instead of failing
    every trial inside Ray.
    """
    schema, base = search_base(cfg)
    for key, dim in cfg.space.items():
        for value in dim.ends():
            data = trial_config(base, {key: value})
            if cfg.kind == "adalora" and cfg.adalora is not None:
                data["skills"] = [cfg.adalora.skill]
            validate(schema, data, f"{origin}: space key '{key}' = {value!r} in {cfg.base}")


def router_trial(params: dict[str, Any], base: dict[str, Any]) -> None:
    """Tune function trainable: fit a router with the trial's settings, report its held-out loss."""
    from ray import tune

    from mdkif.routing.config import RouteConfig
    from mdkif.routing.pipeline import run_route

    cfg = validate(RouteConfig, trial_config(base, params), "router trial")
    s = run_route(cfg, save=False)
    tune.report(
        {k: s[k] for k in ("val_loss", "fit_loss", "val_loss_base", "val_loss_uniform", "evaluations")}
    )


def adalora_trial(params: dict[str, Any], base: dict[str, Any], trial: dict[str, Any]) -> None:
    """Tune function trainable: train one skill on a TorchTrainer launched here, report its validation loss.

    The trainer is the skills stage's own (`fit_trainer`): its workers take the trial block's
    `num_workers` and `cpus_per_worker`, and the GPUs of the base config's `ray:` block.
    """
    from ray import tune

    from mdkif.skills.config import SkillsStage
    from mdkif.skills.loop import METRICS
    from mdkif.skills.runner import fit_trainer, skill_jobs

    trial_dir = Path(tune.get_context().get_trial_dir())
    data = trial_config(base, params)
    data["skills"] = [trial["skill"]]
    data["output_dir"] = str(trial_dir / "adapters")
    ray_block = {**data.get("ray", {}), "storage_path": str(trial_dir / "train")}
    ray_block.update(num_workers=trial["num_workers"], cpus_per_worker=trial["cpus_per_worker"])
    data["ray"] = ray_block
    cfg = validate(SkillsStage, data, "adalora trial")
    jobs, left_out = skill_jobs(cfg)
    if not jobs:
        raise RuntimeError(f"skill {trial['skill']} has no data: {left_out}")
    job = jobs[0]
    fit_trainer({"job": job}, trial["num_workers"], cfg, "train")
    metrics = json.loads((job.out_dir / METRICS).read_text())
    tune.report({"val_loss": metrics["val_loss_after"], "val_loss_before": metrics.get("val_loss_before")})


def _launch_index(path: str | None, trial_id: str | None) -> int | None:
    """Tune's launch counter for a trial, read from its directory name `<trainable>_<id>_<n>_<params>_<date>`.

    Trial ids are random hex in Ray 2.60, so sorting by id says nothing about which trial ran first.
    """
    if not path or not trial_id:
        return None
    found = re.search(rf"_{re.escape(str(trial_id))}_(\d+)_", Path(path).name)
    return int(found.group(1)) if found else None


def make_searcher(cfg: SearchConfig) -> Any:
    from mdkif.tuning.searcher import CmaEsSearcher

    s = cfg.searcher
    if s.name == "random":  # Tune's default: random / grid sampling of the param space
        if not s.points_to_evaluate:
            return None
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=[_nested(p) for p in s.points_to_evaluate])
    return CmaEsSearcher(
        metric=cfg.metric,
        mode=cfg.mode,
        popsize=s.popsize,
        sigma0=s.sigma0,
        seed=s.seed,
        points_to_evaluate=s.points_to_evaluate or None,
    )


def run_tune(cfg: SearchConfig) -> dict[str, Any]:
    """Run the search `cfg` describes on Ray Tune; write results.csv and best.json; return the summary.

    The search is one MLflow run (its space, best value and config, results.csv); each trial is a child
    run written by Ray's own `MLflowLoggerCallback` (the trial's settings and reported metrics)."""
    with stage_run(cfg.tracking, "tune", f"tune-{cfg.kind}") as run:
        callbacks = []
        if run.active:
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            uri, experiment = ensure_experiment(cfg.tracking)
            callbacks.append(
                MLflowLoggerCallback(
                    tracking_uri=uri,
                    experiment_name=experiment,
                    tags={PARENT_TAG: run.run_id, STAGE_TAG: "tune-trial"},
                )
            )
            run.params(
                {
                    "kind": cfg.kind,
                    "base": str(cfg.base),
                    "searcher": cfg.searcher.name,
                    "metric": cfg.metric,
                    "mode": cfg.mode,
                    "num_samples": cfg.num_samples,
                    "space": {k: v.model_dump(mode="json") for k, v in cfg.space.items()},
                }
            )
        summary = _run_tune(cfg, callbacks)
        run.metrics({k: summary[k] for k in ("trials", "errors", "first", "best", "seconds")})
        run.params({"best_config": summary["best_config"] or {}})
        run.artifact(summary["results"])
        run.artifact(Path(summary["results"]).with_name("best.json"))
    return summary


def _run_tune(cfg: SearchConfig, callbacks: list[Any]) -> dict[str, Any]:
    from ray import tune

    check_space(cfg)  # fail before Ray starts: the base and every key of the space
    _, base = search_base(cfg)
    base["tracking"] = {"enabled": False}  # a trial's own run is the callback's, not a stage run
    if cfg.kind == "router":
        trainable = tune.with_resources(
            tune.with_parameters(router_trial, base=base), {"cpu": cfg.cpus_per_trial}
        )
    else:
        trainable = tune.with_resources(
            tune.with_parameters(adalora_trial, base=base, trial=cfg.adalora.model_dump()), {"cpu": 0.01}
        )
    space: dict[str, Any] = {}
    for key, dim in cfg.space.items():
        _set(space, key, dim.domain())
    out = cfg.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # num_cpus sizes a Ray started here only; AdaLoRA trials run a TorchTrainer (fast Train reports).
    with ray_session(cfg.ray_address, cfg.num_cpus, train=True):
        t0 = time.perf_counter()
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(cfg),
                metric=cfg.metric,
                mode=cfg.mode,
                num_samples=cfg.num_samples,
                max_concurrent_trials=cfg.max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=f"{cfg.kind}-search", storage_path=str(out / "ray"), verbose=0, callbacks=callbacks
            ),
        )
        grid = tuner.fit()
    rows = []
    for r in grid:
        trial_id = r.metrics.get("trial_id") if r.metrics else None
        row = {"trial_id": trial_id, "launch": _launch_index(r.path, trial_id), "error": bool(r.error)}
        row.update({f"config.{k}": v for k, v in _flat_params(r.config or {}).items()})
        row.update(
            {
                k: v
                for k, v in (r.metrics or {}).items()
                if isinstance(v, (int, float)) and k not in ("trial_id",)
            }
        )
        rows.append(row)
    rows.sort(key=lambda r: (r["launch"] is None, r["launch"] or 0, str(r["trial_id"])))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    ok = [r for r in rows if not r["error"] and r.get(cfg.metric) is not None]
    pick = min if cfg.mode == "min" else max
    best = pick(ok, key=lambda r: r[cfg.metric]) if ok else None
    summary = {
        "kind": cfg.kind,
        "searcher": cfg.searcher.name,
        "trials": len(rows),
        "errors": sum(r["error"] for r in rows),
        "metric": cfg.metric,
        "first": ok[0][cfg.metric] if ok else None,
        "best": best[cfg.metric] if best else None,
        "best_config": {k[7:]: v for k, v in best.items() if k.startswith("config.")} if best else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "results": str(out / "results.csv"),
    }
    (out / "best.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
