"""The in-process runner: outputs agree with predictions, shards resume, k-shot and RAG stay fair, YAMLs load."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from mdkif.config import ConfigError, load_config
from mdkif.data.records import MCQRecord
from mdkif.evaluation import worker
from mdkif.evaluation.config import EvalConfig
from mdkif.evaluation.fewshot import FewshotError, select_shots
from mdkif.evaluation.metrics import bootstrap_ci, summarize
from mdkif.evaluation.runner import run_eval
from mdkif.evaluation.worker import EvalError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _model_cache(monkeypatch, tmp_path_factory):
    # The tiny model is built once into a cache; keep it out of the home folder when none is set.
    import os

    if "MDKIF_CACHE" not in os.environ:
        monkeypatch.setenv("MDKIF_CACHE", str(tmp_path_factory.getbasetemp() / "mdkif-cache"))


def _mirage(path: Path, n: int, prefix: str = "q") -> Path:
    """A hand-made MIRAGE-format file: n lettered medqa items and n pubmedqa items."""
    medqa = {
        f"{prefix}{i}": {
            "question": f"Toy question {prefix}{i} about drug {i}?",
            "options": {"A": f"alpha {i}", "B": f"beta {i}", "C": f"gamma {i}", "D": f"delta {i}"},
            "answer": "ABCD"[i % 4],
        }
        for i in range(n)
    }
    pubmedqa = {
        f"{prefix}{i}": {
            "question": f"Does toy {prefix}{i} work?",
            "options": {"A": "yes", "B": "no", "C": "maybe"},
            "answer": "A",
        }
        for i in range(n)
    }
    path.write_text(json.dumps({"medqa": medqa, "pubmedqa": pubmedqa}))
    return path


def _config(tmp_path: Path, **extra) -> EvalConfig:
    data = {
        "out": str(tmp_path / "out"),
        "use_ray": False,
        "shard_size": 3,
        "variants": [{"name": "base", "model": {"name": "tiny"}}],
        "benchmarks": [{"source": str(_mirage(tmp_path / "bench.json", 7))}],
    }
    data.update(extra)
    return EvalConfig.model_validate(data)


@pytest.fixture
def counted(monkeypatch):
    """Count scorer calls (one per shard) made by workers."""
    calls = []
    real = worker.score_records

    def wrapped(model, tokenizer, records, *args, **kwargs):
        calls.append([r.id for r in records])
        return real(model, tokenizer, records, *args, **kwargs)

    monkeypatch.setattr(worker, "score_records", wrapped)
    return calls


def test_outputs_are_consistent_with_predictions(tmp_path, counted) -> None:
    cfg = _config(tmp_path)
    summary = run_eval(cfg, progress=False)
    out = cfg.out
    for name in ("summary.json", "report.md", "accuracy.png", "config.json"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert {(r["variant"], r["benchmark"]) for r in summary["results"]} == {
        ("base", "medqa"),
        ("base", "pubmedqa"),
    }
    for result in summary["results"]:
        rows = [
            json.loads(x)
            for x in (out / "base" / result["benchmark"] / "predictions.jsonl").read_text().splitlines()
        ]
        assert len(rows) == result["n"] == 7
        assert all(r["correct"] == (r["prediction"] == r["gold"]) for r in rows)
        assert result["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
        assert result["ci_low"] <= result["accuracy"] <= result["ci_high"]
    report = (out / "report.md").read_text()
    assert "| base |" in report and "medqa" in report and "n=7" in report
    assert len(counted) == 6  # 2 benchmarks x ceil(7 / 3) shards


def test_resume_skips_finished_shards(tmp_path, counted) -> None:
    cfg = _config(tmp_path)
    run_eval(cfg, progress=False)
    assert len(counted) == 6
    (cfg.out / "base" / "medqa" / "shard-0001.jsonl").unlink()
    counted.clear()
    summary = run_eval(cfg, progress=False)
    assert counted == [["medqa-q3", "medqa-q4", "medqa-q5"]]
    assert summary["shards"] == {"computed": 1, "reused": 5}
    counted.clear()
    run_eval(cfg, progress=False)
    assert counted == []


def test_resume_refuses_shards_made_with_other_settings(tmp_path) -> None:
    cfg = _config(tmp_path)
    run_eval(cfg, progress=False)
    changed = cfg.model_copy(deep=True)
    changed.variants[0].scoring.target = "text"
    with pytest.raises(EvalError, match="different variant"):
        run_eval(changed, progress=False)


def test_bootstrap_ci_is_seeded_and_contains_the_accuracy() -> None:
    correct = [True] * 13 + [False] * 12
    a = bootstrap_ci(correct, resamples=1000, seed=3)
    assert a == bootstrap_ci(correct, resamples=1000, seed=3)
    assert a[0] < 13 / 25 < a[1]
    assert 0.25 < a[1] - a[0] < 0.5  # about +-2 standard errors of a 25-item mean
    s = summarize(
        [{"correct": c, "status": "ok"} for c in correct] + [{"correct": False, "status": "unparsable"}]
    )
    assert (s["n"], s["correct"], s["unparsable"]) == (26, 13, 1)


def _rec(i: int, bench: str = "medqa", question: str | None = None) -> MCQRecord:
    return MCQRecord(
        id=f"{bench}-{i}",
        benchmark=bench,
        question=question or f"Question {i}?",
        options={"A": "x", "B": "y"},
        answer="A",
    )


def test_kshot_never_draws_from_the_evaluated_items() -> None:
    evaluated = [_rec(i) for i in range(5)]
    # The pool repeats two evaluated items: one by id, one by question text under another id.
    pool = [_rec(0), _rec(100, question="  question 1? "), *(_rec(i) for i in range(10, 14))]
    for seed in range(20):
        shots = select_shots(pool, evaluated, 3, seed=seed)
        assert not {s.id for s in shots} & {r.id for r in evaluated}
        assert "medqa-100" not in {s.id for s in shots}
    assert select_shots(pool, evaluated, 3, seed=1) == select_shots(
        pool, list(reversed(evaluated)), 3, seed=1
    )
    with pytest.raises(FewshotError):
        select_shots(pool, evaluated, 5)


def test_kshot_config_refuses_the_evaluated_split(tmp_path) -> None:
    with pytest.raises(ValueError, match="another split"):
        _config(
            tmp_path,
            benchmarks=[
                {"source": "mmlu_med", "split": "val", "fewshot": {"source": "mmlu_med", "split": "val"}}
            ],
        )
    with pytest.raises(ValueError, match="no `fewshot` source"):
        _config(tmp_path, variants=[{"name": "s", "model": {"name": "tiny"}, "scoring": {"shots": 2}}])


def test_kshot_prompts_use_dev_examples(tmp_path, counted) -> None:
    dev = _mirage(tmp_path / "dev.json", 4, prefix="dev")
    cfg = _config(
        tmp_path,
        variants=[{"name": "shots", "model": {"name": "tiny"}, "scoring": {"shots": 2}}],
        benchmarks=[{"source": str(_mirage(tmp_path / "bench.json", 3)), "fewshot": {"source": str(dev)}}],
    )
    run_eval(cfg, progress=False)
    rows = [
        json.loads(x) for x in (cfg.out / "shots" / "medqa" / "predictions.jsonl").read_text().splitlines()
    ]
    assert all(r["shots"] == 2 for r in rows)
    meta = json.loads((cfg.out / "shots" / "medqa" / "meta.json").read_text())
    assert all(s.startswith("medqa-dev") for s in meta["shots"])


def test_kshot_avoids_the_whole_evaluated_split_not_just_the_limited_items(tmp_path, counted) -> None:
    bench = _mirage(tmp_path / "bench.json", 7)
    copy = tmp_path / "copy.json"  # another path, same questions: e.g. a dev file that leaked test items
    copy.write_text(bench.read_text())
    cfg = _config(
        tmp_path,
        variants=[{"name": "shots", "model": {"name": "tiny"}, "scoring": {"shots": 1}}],
        benchmarks=[{"source": str(bench), "limit": 3, "fewshot": {"source": str(copy)}}],
    )
    with pytest.raises(FewshotError, match="disjoint"):
        run_eval(cfg, progress=False)
    assert counted == []


FAKE_RAG = textwrap.dedent(
    """
    from mdkif.rag.types import Passage
    QUERIES = []
    EXCLUDED = {}

    class Fake:
        def retrieve(self, question, k=5, where=None, exclude=None):
            QUERIES.append(question)
            if exclude:
                EXCLUDED[question] = exclude
            return [Passage(id=f"p{i}", text=f"passage {i} for {question}", title="Doc") for i in range(k)]

    def make(index, mode="dense"):
        assert (index, mode) == ("fake-index", "hybrid")
        return Fake()
    """
)


def test_rag_variant_retrieves_with_the_question_only(tmp_path, monkeypatch, counted) -> None:
    (tmp_path / "fake_rag_mod.py").write_text(FAKE_RAG)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _config(
        tmp_path,
        variants=[
            {"name": "base", "model": {"name": "tiny"}},
            {
                "name": "rag",
                "model": {"name": "tiny"},
                "retriever": {
                    "index": "fake-index",
                    "factory": "fake_rag_mod:make",
                    "options": {"mode": "hybrid"},
                    "k": 2,
                },
            },
        ],
    )
    run_eval(cfg, progress=False)
    import fake_rag_mod

    questions = {f"Toy question q{i} about drug {i}?" for i in range(7)} | {
        f"Does toy q{i} work?" for i in range(7)
    }
    assert set(fake_rag_mod.QUERIES) == questions  # the question alone, never options
    # PubMedQA items never retrieve their own abstract (MIRAGE's PubMedQA*); others exclude nothing.
    assert {f"Does toy q{i} work?": {"pmid": f"q{i}"} for i in range(7)} == fake_rag_mod.EXCLUDED
    rows = [json.loads(x) for x in (cfg.out / "rag" / "medqa" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["passage_ids"] == ["p0", "p1"] and r["passages"] == 2 for r in rows)
    assert "RAG k=2" in (cfg.out / "report.md").read_text()


def test_missing_retriever_factory_fails_before_scoring(tmp_path, counted) -> None:
    cfg = _config(
        tmp_path,
        variants=[
            {
                "name": "rag",
                "model": {"name": "tiny"},
                "retriever": {"index": "x", "factory": "mdkif.rag:no_such_fn"},
            }
        ],
    )
    with pytest.raises(EvalError, match="no_such_fn"):
        run_eval(cfg, progress=False)
    assert counted == []


@pytest.mark.parametrize("path", sorted((REPO / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_eval_yaml_loads(path: Path) -> None:
    assert path.read_text().startswith(f"# mdkif eval eval/{path.name}")
    cfg = load_config(path, EvalConfig)
    assert cfg.variants and (cfg.benchmarks or cfg.tasks)


def test_bad_config_names_the_field(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: [{name: a, scoring: {metod: loglik}}]\nbenchmarks: [{source: x}]\n")
    with pytest.raises(ConfigError, match=r"variants\.0\.scoring\.metod"):
        load_config(bad, EvalConfig)
