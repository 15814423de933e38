"""The pipeline plan: stages run in order, are reused when their settings and upstream are unchanged, run
again when either changed, and a partial selection takes what it needs from the run's record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdkif.config import ConfigError
from mdkif.plan import Plan, Stage


class Cfg:
    def __init__(self, **settings: int) -> None:
        self.a = settings.get("a", 1)
        self.b = settings.get("b", 1)


def make_plan(out: Path, calls: list[str]) -> Plan[Cfg]:
    def first(cfg: Cfg, ctx) -> str:
        calls.append("first")
        path = out / f"first-{cfg.a}.txt"
        path.write_text(str(cfg.a))
        return str(path)

    def second(cfg: Cfg, ctx) -> dict:
        calls.append("second")
        return {"from": Path(ctx.got["first"]).read_text(), "b": cfg.b}

    def report(cfg: Cfg, ctx) -> str:
        calls.append("report")
        return f"{ctx.got['second']} after {sorted(ctx.seconds)}"

    def serve(cfg: Cfg, ctx) -> None:
        calls.append("serve")
        assert ctx.parent is None  # after the parent run ended

    return Plan(
        "toy",
        [
            Stage("first", "first stage", first, lambda c: {"a": c.a}),
            Stage("second", "second stage", second, lambda c: {"b": c.b}, needs=("first",)),
            Stage("report", "report", report, needs=("second",)),
            Stage("serve", "serve", serve, needs=("first",), after_run=True),
        ],
    )


def test_stages_run_in_order_then_are_reused(tmp_path: Path, capsys) -> None:
    calls: list[str] = []
    plan = make_plan(tmp_path, calls)
    ends: list[str] = []
    first = plan.run(Cfg(), tmp_path, on_run_end=lambda parent: ends.append(",".join(calls)))
    assert calls == ["first", "second", "report", "serve"]
    assert ends == ["first,second,report"]  # the parent run ends before the after_run stage
    assert first.outputs["second"] == {"from": "1", "b": 1}
    assert first.outputs["report"] == "{'from': '1', 'b': 1} after ['first', 'second', 'total']"
    record = json.loads((tmp_path / "plan.json").read_text())
    assert record["plan"] == "toy" and set(record["stages"]) == {"first", "second"}  # report/serve always run
    assert record["stages"]["first"]["output"] == str(tmp_path / "first-1.txt")
    out = capsys.readouterr().out
    assert "=== 1/4 first stage" in out and "=== 4/4 serve" in out

    calls.clear()
    again = plan.run(Cfg(), tmp_path)
    assert calls == ["report", "serve"] and again.reused == ["first", "second"]
    assert again.outputs["second"] == first.outputs["second"]
    assert "first: finished" in capsys.readouterr().out


def test_a_changed_setting_reruns_its_stage_and_everything_downstream(tmp_path: Path) -> None:
    calls: list[str] = []
    plan = make_plan(tmp_path, calls)
    plan.run(Cfg(), tmp_path)
    calls.clear()
    plan.run(Cfg(b=2), tmp_path)  # only the second stage's setting
    assert calls == ["second", "report", "serve"]
    calls.clear()
    result = plan.run(Cfg(a=5, b=2), tmp_path)  # upstream: the second stage's key changes with it
    assert calls == ["first", "second", "report", "serve"] and result.outputs["second"]["from"] == "5"


def test_a_deleted_output_is_built_again(tmp_path: Path) -> None:
    calls: list[str] = []
    plan = make_plan(tmp_path, calls)
    plan.run(Cfg(), tmp_path)
    (tmp_path / "first-1.txt").unlink()
    calls.clear()
    plan.run(Cfg(), tmp_path)
    assert calls[0] == "first" and (tmp_path / "first-1.txt").is_file()


def test_a_selection_reuses_what_it_needs_or_says_what_is_missing(tmp_path: Path) -> None:
    calls: list[str] = []
    plan = make_plan(tmp_path, calls)
    with pytest.raises(ConfigError, match=r"stage 'second' needs \['first'\].*add \['first'\] to 'stages'"):
        plan.run(Cfg(), tmp_path, selected=["second"])
    plan.run(Cfg(), tmp_path, selected=["first"])
    assert calls == ["first"]
    calls.clear()
    result = plan.run(Cfg(b=3), tmp_path, selected=["second", "report"])
    assert calls == ["second", "report"] and result.outputs["second"] == {"from": "1", "b": 3}
    with pytest.raises(
        ConfigError, match=r"field 'stages': unknown stage\(s\) \['secnd'\]; the toy plan has"
    ):
        plan.check(["secnd"])


def test_a_torn_record_starts_afresh(tmp_path: Path) -> None:
    calls: list[str] = []
    plan = make_plan(tmp_path, calls)
    (tmp_path / "plan.json").write_text('{"plan": "toy", "stag')
    plan.run(Cfg(), tmp_path)
    assert calls == ["first", "second", "report", "serve"]
    assert json.loads((tmp_path / "plan.json").read_text())["stages"]["first"]["key"]


def test_the_three_drivers_are_plans_with_checked_stage_lists() -> None:
    from mdkif.demo import PLAN as DEMO
    from mdkif.demo import load_demo_config
    from mdkif.experiments.reference import PLAN as REFERENCE
    from mdkif.experiments.unseen import PLAN as UNSEEN

    assert DEMO.names() == ["data", "skills", "rag", "router", "eval", "answers", "serve"]
    assert REFERENCE.names() == ["data", "skills", "routers", "arrow", "task_lora", "eval", "report"]
    assert UNSEEN.names() == ["routers", "eval", "report"]
    assert load_demo_config(["stages=[data,skills]"]).stages == ["data", "skills"]
    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['trian'\]"):
        load_demo_config(["stages=[data,trian]"])


def test_a_reused_stage_can_show_its_output(tmp_path: Path, capsys) -> None:
    shown: list[str] = []
    plan = Plan(
        "shown",
        [
            Stage(
                "table",
                "table",
                lambda cfg, ctx: "| a | b |",
                lambda cfg: {},
                exists=lambda out: True,
                on_reuse=lambda cfg, out: shown.append(out),
            )
        ],
    )
    plan.run(Cfg(), tmp_path)
    assert shown == []
    plan.run(Cfg(), tmp_path)
    assert shown == ["| a | b |"]  # the demo prints its evaluation table again on a re-run
