"""The offline demo MCQ file that ships in the package: parses as MIRAGE, 40 + 40 items, balanced answers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mdkif
from mdkif.data.mcq import detect_format, load_benchmark

DEMO_MCQ = Path(mdkif.__file__).resolve().parent / "assets" / "demo_mcq" / "demo_mcq.json"


def test_demo_mcq_parses_as_mirage() -> None:
    assert detect_format(DEMO_MCQ) == "mirage"
    records = load_benchmark(DEMO_MCQ)
    assert Counter(r.benchmark for r in records) == {"pubmedqa": 40, "medqa": 40}
    ids = [r.id for r in records]
    assert len(set(ids)) == len(ids)
    for r in records:
        assert r.answer in r.options
        assert r.question.strip()


def test_demo_mcq_pubmedqa_part_is_yes_no_maybe() -> None:
    records = load_benchmark(DEMO_MCQ, split="pubmedqa")
    assert len(records) == 40
    for r in records:
        assert r.id.startswith("pubmedqa-demo-pubmedqa-")
        assert r.options == {"yes": "yes", "no": "no", "maybe": "maybe"}
    assert Counter(r.answer for r in records) == {"yes": 20, "no": 14, "maybe": 6}


def test_demo_mcq_medqa_part_has_four_options_and_balanced_letters() -> None:
    records = load_benchmark(DEMO_MCQ, split="medqa")
    assert len(records) == 40
    for r in records:
        assert r.id.startswith("medqa-demo-medqa-")
        assert sorted(r.options) == ["A", "B", "C", "D"]
        assert len(set(r.options.values())) == 4
    letters = Counter(r.answer for r in records)
    assert set(letters) == {"A", "B", "C", "D"}
    assert all(8 <= n <= 12 for n in letters.values()), letters
