"""bench/summary.py turns the benchmarks' JSON into one table with baselines, ratios and targets."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_summary():
    spec = importlib.util.spec_from_file_location("bench_summary", BENCH / "summary.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_summary_of_shipped_results_names_every_figure(tmp_path):
    summary = load_summary()
    for p in (BENCH / "results").glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    rows, missing = summary.collect(tmp_path)
    assert missing == [n for n in summary.READERS if not (BENCH / "results" / n).is_file()]
    for r in rows:
        if r.baseline:
            assert r.ratio == pytest.approx(r.value / r.baseline)
    text = summary.render(rows, missing)
    assert text.count("\n| ") == len(rows) + 2  # header, rule, one line per figure


def test_targets_are_judged_and_missing_results_listed(tmp_path):
    summary = load_summary()
    serve = {
        "summary": {"serve_added_p50_ms_c1": 4.0},
        "settings": {
            "in-process": [{"concurrency": 1, "p50_ms": 20.0, "throughput_rps": 50.0}],
            "serve, batch off": [{"concurrency": 32, "p50_ms": 900.0, "throughput_rps": 10.0}],
            "serve, batch on": [{"concurrency": 32, "p50_ms": 300.0, "throughput_rps": 31.0}],
        },
    }
    (tmp_path / "serve.json").write_text(json.dumps(serve))
    rows, missing = summary.collect(tmp_path)
    assert [r.met for r in rows] == [True, True]
    assert rows[0].value == pytest.approx(24.0) and rows[1].ratio == pytest.approx(3.1)
    assert "serve.json" not in missing and "fusion.json" in missing
    assert (
        "Not run (no results file): eval_scoring.json, fusion.json, answer_loss.json, rag.json, train.json"
        in summary.render(rows, missing)
    )


def test_unexpected_layout_names_the_file(tmp_path):
    summary = load_summary()
    (tmp_path / "fusion.json").write_text("{}")
    with pytest.raises(SystemExit, match="fusion.json: unexpected layout"):
        summary.collect(tmp_path)
