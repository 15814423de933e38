"""One pipeline plan: the declared stages a run goes through, in order, each reused when it already ran.

`mdkif demo`, `mdkif reference` and the unseen-task experiment are three plans over the same building
blocks (skill data, skills, routers, evaluation, report, serve). A plan is a list of `Stage`s; each stage
says which settings its output depends on (`settings`) and which earlier stages feed it (`needs`). The
stage's key is a hash of both (the skills' `job_key` idea, one level up), so a stage is reused when its key
is the one recorded in `OUT/plan.json` and its output is still there, and runs again when a setting it
depends on, or anything upstream, changed. Stages also reuse their own finished parts (a trained skill, a
saved router, a scored shard), so an interrupted stage loses only the part it was in.

`OUT/plan.json` is the run's record: per stage its key, output, seconds and when it finished; a run's
`stages` setting picks which stages to run this time (the others must have run before, when a selected
stage needs them).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from mdkif.config import ConfigError
from mdkif.io import write_json_atomic
from mdkif.tracking import Run, TrackingConfig, parent_run, stage_run

C = TypeVar("C")


@dataclass
class StageContext:
    """What a stage's function gets besides the run's config: earlier stages' outputs and its tracking run."""

    got: dict[str, Any]
    run: Run | None = None  # the stage's own child run (`tracked` stages), else None
    parent: Run | None = None  # the plan's parent run (a report logs its files there)
    seconds: dict[str, float] = field(default_factory=dict)  # earlier stages' wall seconds, "total" so far
    params: Mapping[str, Any] = field(default_factory=dict)  # what the plan was run with (its parent run's)


def _path_output_exists(output: Any) -> bool:
    return not isinstance(output, str) or Path(output).exists()


@dataclass(frozen=True)
class Stage(Generic[C]):
    """One step of a plan.

    `run(cfg, ctx)` returns the stage's output (JSON: a path as a string, a dict of fits, a summary), which
    later stages read from `ctx.got[name]`. `settings(cfg)` is what that output depends on besides the stages
    in `needs`; `None` (the default) marks a stage that always runs (a report, the server). `exists(output)`
    checks that a recorded output is still there (default: a string output is a path that exists).
    `tracked` opens an MLflow child run named after the stage around it (stages whose library code records
    its own child run leave it False). `after_run` stages (a server that runs until Ctrl-C) come last and run
    after the plan's parent run is finished, so the tracking store is complete while they run.
    """

    name: str
    title: str
    run: Callable[[C, StageContext], Any]
    settings: Callable[[C], Any] | None = None
    needs: tuple[str, ...] = ()
    tracked: bool = False
    exists: Callable[[Any], bool] = _path_output_exists
    after_run: bool = False
    on_reuse: Callable[[C, Any], None] | None = None  # shows a reused output (a table) as a run would


def _key(settings: Any, upstream: Mapping[str, str]) -> str:
    blob = json.dumps({"settings": settings, "needs": dict(upstream)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(4, 66 - len(text)), flush=True)


@dataclass
class PlanResult:
    """Every stage's output (run now or reused) and seconds (this run's, or the recorded run's when reused)."""

    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan(Generic[C]):
    """A named, ordered list of stages."""

    name: str
    stages: Sequence[Stage[C]]

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def check(self, selected: Sequence[str] | None, field_name: str = "stages") -> list[str]:
        """The selected stage names in plan order; unknown names are a ConfigError naming the field."""
        if selected is None:
            return self.names()
        unknown = [s for s in selected if s not in self.names()]
        if unknown:
            raise ConfigError(
                f"field '{field_name}': unknown stage(s) {unknown}; the {self.name} plan has {self.names()}"
            )
        return [n for n in self.names() if n in selected]

    def run(
        self,
        cfg: C,
        out: Path,
        *,
        selected: Sequence[str] | None = None,
        tracking: TrackingConfig | None = None,
        params: Mapping[str, Any] | None = None,
        on_run_end: Callable[[Run], None] | None = None,
    ) -> PlanResult:
        """Run the selected stages in order under one MLflow parent run (named after the plan), recording
        each finished stage in `out/plan.json`; `on_run_end(parent)` is called as the parent run ends,
        before any `after_run` stage."""
        chosen = self.check(selected)
        out.mkdir(parents=True, exist_ok=True)
        state = _State(self, cfg, out, chosen, tracking, dict(params or {}))
        inside = [s for s in self.stages if not s.after_run]
        with parent_run(tracking, self.name) as parent:
            parent.params(state.params)
            for stage in inside:
                state.step(stage, parent)
            state.result.seconds["total"] = round(time.perf_counter() - state.t0, 1)
            parent.metrics({f"seconds/{k}": v for k, v in state.result.seconds.items()})
            if on_run_end is not None:
                on_run_end(parent)
        for stage in self.stages:
            if stage.after_run:
                state.step(stage, None)
        return state.result


class _State(Generic[C]):
    """One run of a plan: the record, the keys computed so far, the outputs."""

    def __init__(
        self,
        plan: Plan[C],
        cfg: C,
        out: Path,
        chosen: list[str],
        tracking: TrackingConfig | None,
        params: dict[str, Any],
    ) -> None:
        self.plan, self.cfg, self.out, self.chosen = plan, cfg, out, chosen
        self.tracking, self.params = tracking, params
        self.record_path = out / "plan.json"
        self.record = _read_record(self.record_path, plan.name)
        self.result = PlanResult()
        self.keys: dict[str, str] = {}
        self.t0 = time.perf_counter()

    def step(self, stage: Stage[C], parent: Run | None) -> None:
        result = self.result
        missing = [n for n in stage.needs if n not in result.outputs]
        settings = stage.settings(self.cfg) if stage.settings is not None else None
        key = _key(settings, {n: self.keys.get(n, "") for n in stage.needs})
        self.keys[stage.name] = key
        done = self.record["stages"].get(stage.name)
        reusable = (
            not missing
            and stage.settings is not None
            and done is not None
            and done.get("key") == key
            and stage.exists(done.get("output"))
        )
        if stage.name not in self.chosen:
            if reusable:
                result.outputs[stage.name] = done["output"]
                result.seconds[stage.name] = done.get("seconds", 0.0)
            return
        if missing:
            raise ConfigError(
                f"stage '{stage.name}' needs {missing}, which did not run in {self.out} with these settings: "
                f"add {missing} to 'stages'"
            )
        i = self.plan.names().index(stage.name) + 1
        banner(f"{i}/{len(self.plan.stages)} {stage.title}")
        if reusable:
            print(
                f"[{self.plan.name}] {stage.name}: finished {done.get('finished', '?')} with the same settings "
                f"({done.get('seconds', 0):.0f} s): reusing it",
                flush=True,
            )
            result.outputs[stage.name] = done["output"]
            result.seconds[stage.name] = done.get("seconds", 0.0)
            result.reused.append(stage.name)
            if stage.on_reuse is not None:
                stage.on_reuse(self.cfg, done["output"])
            return
        t = time.perf_counter()
        seconds_so_far = {**result.seconds, "total": round(t - self.t0, 1)}
        ctx = StageContext(dict(result.outputs), None, parent, seconds_so_far, self.params)
        if stage.tracked:
            with stage_run(self.tracking, stage.name) as run:
                ctx.run = run
                output = _jsonable(stage.run(self.cfg, ctx))
        else:
            output = _jsonable(stage.run(self.cfg, ctx))
        seconds = round(time.perf_counter() - t, 1)
        result.outputs[stage.name] = output
        result.seconds[stage.name] = seconds
        if stage.settings is not None:
            self.record["stages"][stage.name] = {
                "key": key,
                "output": output,
                "seconds": seconds,
                "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            }
            write_json_atomic(self.record_path, self.record)


def _jsonable(output: Any) -> Any:
    return json.loads(json.dumps(output, default=str))


def _read_record(path: Path, plan: str) -> dict[str, Any]:
    """The run folder's plan record; a torn or foreign one is started afresh (stages then reuse their parts)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"plan": plan, "stages": {}}
    if (
        not isinstance(record, dict)
        or record.get("plan") != plan
        or not isinstance(record.get("stages"), dict)
    ):
        return {"plan": plan, "stages": {}}
    return record
