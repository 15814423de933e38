"""bench/_harness.py writes every benchmark's JSON the same way (machine under one key, its figures), and
bench/summary.py turns those figures into one table with baselines, ratios and targets, with no reader per
benchmark."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # as when a benchmark runs: bench/ is sys.path[0]
    spec = importlib.util.spec_from_file_location(f"bench_{name}_mod", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_summary_of_shipped_results_names_every_figure(tmp_path):
    summary = load("summary")
    for p in (BENCH / "results").glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    rows, missing = summary.collect(tmp_path)
    assert missing == [
        f"{n}.json" for n in summary.EXPECTED if not (BENCH / "results" / f"{n}.json").is_file()
    ]
    assert {r.bench for r in rows} >= {"fusion", "rag", "serve", "train", "eval_scoring"}
    for r in rows:
        if r.baseline:
            assert r.ratio == pytest.approx(r.value / r.baseline)
    text = summary.render(rows, missing)
    assert text.count("\n| ") == len(rows) + 2  # header, rule, one line per figure
    for p in (BENCH / "results").glob("*.json"):  # machine facts under one key in every file
        assert isinstance(json.loads(p.read_text())["machine"], dict), p.name


def test_write_results_then_summary_judges_targets_and_lists_what_is_missing(tmp_path):
    harness, summary = load("_harness"), load("summary")
    figures = [
        harness.Figure("serve", "p50 through Serve", 24.0, 20.0, "in-process", "ms", "< 30 ms", True),
        harness.Figure("serve", "batching at c=32", 31.0, 10.0, "batching off", "req/s", ">= 3x", True),
        harness.Figure("serve", "report per step", 6.0, None, "", "ms", "0.4% of a step"),
    ]
    path = harness.write_results("serve", {"settings": {"c": [1, 8]}}, "# serve", figures, results=tmp_path)
    doc = json.loads(path.read_text())
    assert doc["settings"] == {"c": [1, 8]} and (tmp_path / "serve.md").read_text() == "# serve\n"
    assert doc["machine"]["cpus"] >= 1 and "platform" in doc["machine"]
    assert [f["ratio"] for f in doc["figures"]] == [pytest.approx(1.2), pytest.approx(3.1), None]
    (tmp_path / "old.json").write_text(json.dumps({"model": "tiny"}))  # written before the harness
    rows, missing = summary.collect(tmp_path)
    assert [r.figure for r in rows] == ["p50 through Serve", "batching at c=32", "report per step"]
    assert "fusion.json" in missing and "serve.json" not in missing
    assert "old.json (no figures: re-run its benchmark)" in missing
    text = summary.render(rows, missing)
    assert (
        "| serve | batching at c=32 | 31.00 req/s | 10.00 req/s (batching off) | 3.10 | >= 3x | yes |" in text
    )
    assert "Not run or without figures: eval_scoring.json, fusion.json" in text


def test_a_benchmark_keeps_its_own_machine_facts_and_a_text_note(tmp_path):
    harness = load("_harness")
    own = harness.write_results("a", {"machine": {"threads": 1}}, None, results=tmp_path)
    assert json.loads(own.read_text())["machine"]["threads"] == 1
    assert not (tmp_path / "a.md").exists()
    note = json.loads(
        harness.write_results("b", {"machine": "shared box"}, None, results=tmp_path).read_text()
    )
    assert note["machine_note"] == "shared box" and isinstance(note["machine"], dict)


def test_unexpected_layout_names_the_file(tmp_path):
    summary = load("summary")
    (tmp_path / "fusion.json").write_text(json.dumps({"figures": [{"bench": "fusion"}]}))
    with pytest.raises(SystemExit, match="fusion.json: unexpected layout"):
        summary.collect(tmp_path)


def test_serve_figures_judge_latency_only_with_four_cores():
    serve = load("bench_serve")
    d = {
        "model": "smollm2-135m-instruct",
        "cpus": 2,
        "summary": {"serve_added_p50_ms_c1": 4.0},
        "settings": {
            "in-process": [{"concurrency": 1, "p50_ms": 20.0, "throughput_rps": 50.0}],
            "serve, batch off": [{"concurrency": 32, "p50_ms": 900.0, "throughput_rps": 10.0}],
            "serve, batch on": [{"concurrency": 32, "p50_ms": 300.0, "throughput_rps": 31.0}],
            "serve, batch on, stacked profile": [
                {"concurrency": 32, "p50_ms": 400.0, "throughput_rps": 20.0}
            ],
        },
    }
    rows = serve.figures(d)
    assert [r.met for r in rows] == [None, True, None]  # 2 cores: latency not judged
    assert rows[0].value == pytest.approx(24.0) and rows[1].ratio == pytest.approx(3.1)
    assert rows[2].ratio == pytest.approx(20.0 / 31.0) and "stacked" in rows[2].figure
    assert [r.met for r in serve.figures({**d, "cpus": 8})][:2] == [True, True]
