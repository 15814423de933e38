"""Task columns in the evaluation matrix: config errors, the task scorer on a tiny model, paired tests in
the report, and the by-id check that no scored item was in a skill's training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdkif.config import ConfigError, validate
from mdkif.data.tasks import TaskRecord
from mdkif.evaluation.config import EvalConfig
from mdkif.evaluation.report import build_summary, render_markdown
from mdkif.evaluation.runner import Column, EvalError, check_unseen
from mdkif.evaluation.task_scoring import score_task_records

TINY = {"name": "tiny"}


def _cfg(**body):
    base = {"out": "/tmp/x", "variants": [{"name": "base", "model": TINY}], "tasks": [{"task": "healthver"}]}
    return validate(EvalConfig, {**base, **body}, "test eval")


def test_config_names_the_bad_task_and_the_conflicts() -> None:
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        _cfg(tasks=[{"task": "nope"}])
    with pytest.raises(ConfigError, match="at least one entry in `benchmarks`"):
        _cfg(tasks=[])
    with pytest.raises(ConfigError, match="compare_to names unknown variants"):
        _cfg(compare_to=["ghost"])
    rag = {"name": "rag", "model": TINY, "retriever": {"index": "x"}}
    with pytest.raises(ConfigError, match="retriever, which applies to MCQ benchmarks only"):
        _cfg(variants=[{"name": "base", "model": TINY}, rag])
    assert _cfg().references() == ["base"]


def _records() -> list[TaskRecord]:
    return [
        TaskRecord(
            id=f"c{i}",
            task="healthver",
            kind="classification",
            instruction="Supports, Refutes or Neutral?",
            input=f"Evidence: e{i}\nClaim: c{i}",
            output=["Supports", "Refutes", "Neutral"][i % 3],
            labels=("Supports", "Refutes", "Neutral"),
        )
        for i in range(4)
    ]


@pytest.fixture(scope="module")
def tiny():
    from mdkif.models import ModelConfig, load_model

    loaded = load_model(ModelConfig(name="tiny"))
    return loaded.model, loaded.tokenizer


def test_classification_scores_every_label_and_keeps_stats(tiny) -> None:
    model, tok = tiny
    cfg = _cfg()
    rows = score_task_records(model, tok, _records(), cfg.variants[0].scoring)
    assert [r["id"] for r in rows] == ["c0", "c1", "c2", "c3"]
    for r in rows:
        assert set(r["scores"]) == {"Supports", "Refutes", "Neutral"}
        assert r["prediction"] == max(r["scores"], key=r["scores"].get)
        assert r["correct"] == (r["prediction"] == r["gold"])
        assert len(r["stats"]) == 1 + 3 * 3 and r["stats"][0] == float(r["correct"])


def test_generation_kinds_parse_strictly(tiny) -> None:
    model, tok = tiny
    cfg = _cfg(variants=[{"name": "base", "model": TINY, "scoring": {"max_new_tokens": 3}}])
    ner = TaskRecord(
        id="n1",
        task="bc5cdr_ner",
        kind="ner",
        instruction="Find entities.",
        input="aspirin causes ulcers",
        output="Chemical: aspirin\nDisease: ulcers",
        tokens=("aspirin", "causes", "ulcers"),
        tags=("B-Chemical", "O", "B-Disease"),
        types=("Chemical", "Disease"),
    )
    [row] = score_task_records(model, tok, [ner], cfg.variants[0].scoring)
    assert row["gold_tags"] == ["B-Chemical", "O", "B-Disease"]
    assert len(row["pred_tags"]) == 3 and len(row["stats"]) == 3
    no_tags = ner.model_copy(update={"tokens": None, "tags": None})
    with pytest.raises(ValueError, match="no gold tokens/tags"):
        score_task_records(model, tok, [no_tags], cfg.variants[0].scoring)


def _rows(correct: list[bool]) -> list[dict]:
    return [
        {
            "id": f"i{i}",
            "kind": "classification",
            "gold": "a",
            "prediction": "a" if c else "b",
            "correct": c,
            "stats": [float(c), float(c), float(not c), float(not c), float(not c), 0.0, 0.0],
        }
        for i, c in enumerate(correct)
    ]


def test_paired_tests_in_the_summary_and_report() -> None:
    base = [False] * 10 + [True] * 10
    flipped = [True] * 20  # ten wrong answers of the base turned right, nothing else changed
    predictions = {("base", "t"): _rows(base), ("same", "t"): _rows(base), ("better", "t"): _rows(flipped)}
    summary = build_summary(
        predictions,
        ["base", "same", "better"],
        ["t"],
        resamples=500,
        seed=0,
        references=["base"],
        labels={"t": ["a", "b"]},
    )
    paired = {p["variant"]: p for p in summary["paired"]}
    assert paired["same"]["p"] == 1.0 and paired["same"]["diff"] == 0 and not paired["same"]["significant"]
    assert paired["better"]["test"] == "mcnemar"
    assert paired["better"]["p"] == pytest.approx(2 * 0.5**10)
    assert paired["better"]["b_only"] == 10 and paired["better"]["a_only"] == 0
    assert paired["better"]["significant"] and paired["better"]["diff"] == pytest.approx(0.5)
    text = render_markdown(summary)
    better_line = next(line for line in text.splitlines() if line.startswith("| better | 100.0"))
    assert "n=20 * |" in better_line
    assert "| better | base | +50.0" in text and "(10/0) *" in text
    same_line = next(line for line in text.splitlines() if line.startswith("| same | 50.0"))
    assert "*" not in same_line


def test_scoring_an_item_a_skill_trained_on_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "skilldata"
    (data / "nli").mkdir(parents=True)
    (data / "nli" / "train.jsonl").write_text(json.dumps({"id": "c2"}) + "\n")
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "skills.json").write_text(json.dumps({"data_dir": str(data)}))
    routed = {"name": "routed", "model": TINY, "router": {"adapters": str(adapters), "weights": {"nli": 1.0}}}
    cfg = _cfg(variants=[{"name": "base", "model": TINY}, routed])
    columns = {"healthver": Column(cfg.tasks[0], _records(), _records())}
    with pytest.raises(
        EvalError, match=r"variant routed: 1 of the 4 healthver items scored were in the skills"
    ):
        check_unseen(cfg, columns)
    (data / "nli" / "train.jsonl").write_text(json.dumps({"id": "other"}) + "\n")
    assert check_unseen(cfg, columns) == {"routed": str(data)}


def test_shared_continuations_equal_separate_requests(tiny) -> None:
    from mdkif.evaluation.loglik import Request, score_requests, score_shared_continuations

    model, tok = tiny
    prompts = [tok(t)["input_ids"] for t in ["short", "a much longer prompt about aspirin and fever", "x y"]]
    conts = [
        tok(w, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        for w in ("Supports", "no", "Neutral claim")
    ]
    shared = score_shared_continuations(model, prompts, conts, pad_id=0, batch_size=2)
    separate = score_requests(model, [Request(tuple(p), tuple(c)) for p in prompts for c in conts], pad_id=0)
    flat = [v for row in shared for v in row]
    assert flat == pytest.approx([s for s, _ in separate], abs=1e-4)
