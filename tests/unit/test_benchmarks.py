"""Benchmark loaders: each native sample parses to the right count and letters, bad rows name their place."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mdkif.data.errors import DataError
from mdkif.data.mcq import detect_format, exclusion_list, load_benchmark, write_exclusions
from mdkif.data.records import MCQRecord

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BIOASQ = ASSETS / "bioasq_yesno_tiny.json"


def by_id(records: list[MCQRecord]) -> dict[str, MCQRecord]:
    ids = [r.id for r in records]
    assert len(set(ids)) == len(ids), "ids must be unique"
    return {r.id: r for r in records}


# --- the real samples (skipped without ../shared/data) ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "split", "count", "fmt"),
    [
        ("medqa", None, 25, "medqa"),
        ("medmcqa", None, 25, "medmcqa"),
        ("pubmedqa", None, 500, "pubmedqa"),
        ("mmlu_med", "dev", 45, "mmlu_med"),
        ("mmlu_med", "val", 208, "mmlu_med"),
        ("headqa", "dev", 1366, "headqa"),
        ("headqa", "train", 2657, "headqa"),
        ("mirage", None, 75, "mirage"),
    ],
)
def test_sample_counts_and_format_detection(shared_data, name, split, count, fmt):
    from mdkif.data.mcq import DEFAULT_PATHS

    records = load_benchmark(name, split=split, root=shared_data)
    assert len(records) == count
    by_id(records)
    path = shared_data / DEFAULT_PATHS[name][split or next(iter(DEFAULT_PATHS[name]))]
    assert detect_format(path) == fmt
    assert len(load_benchmark(path)) == count  # the same file, found by content instead of by name


def test_medqa_first_item(shared_data):
    first = load_benchmark("medqa", root=shared_data)[0]
    assert first.question.startswith("A 67-year-old man who was diagnosed with arthritis")
    assert first.answer == "A" and first.options["A"] == "Psoriatic arthritis"
    assert sorted(first.options) == ["A", "B", "C", "D"] and first.benchmark == "medqa"


def test_medmcqa_cop_is_one_based(shared_data):
    records = by_id(load_benchmark("medmcqa", root=shared_data))
    # cop 4 -> D; its explanation says "Ans: D. Sensorineural hearing loss".
    item = records["medmcqa-913d6913-f5de-41a9-8159-d7ac61d57c47"]
    assert item.answer == "D" and item.options["D"] == "Sensorineural hearing loss"
    # cop 1 -> A (the explanation confirms ADH).
    assert records["medmcqa-e1cf9f3f-2fd8-40e3-96c3-1a6ecb016b22"].answer == "A"
    assert records["medmcqa-e1cf9f3f-2fd8-40e3-96c3-1a6ecb016b22"].options["A"] == "ADH"


def test_medmcqa_agrees_with_mirage_copy(shared_data):
    native = by_id(load_benchmark("medmcqa", root=shared_data))
    mirage = load_benchmark("mirage", split="medmcqa", root=shared_data)
    assert len(mirage) == 25
    for item in mirage:  # all 25 MIRAGE items are in the native sample: the cop mapping must agree
        assert native[item.id].answer == item.answer and native[item.id].options == item.options


def test_pubmedqa_decisions_and_context_rule(shared_data):
    records = by_id(load_benchmark("pubmedqa", root=shared_data))
    assert records["pubmedqa-10808977"].answer == "yes"
    assert records["pubmedqa-17113061"].answer == "no"
    assert records["pubmedqa-24183388"].answer == "maybe"
    assert Counter(r.answer for r in records.values()) == {"yes": 276, "no": 169, "maybe": 55}
    assert set(records["pubmedqa-10808977"].options) == {"yes", "no", "maybe"}
    assert all(r.context is None for r in records.values())  # MIRAGE: no gold context by default
    with_ctx = load_benchmark("pubmedqa", root=shared_data, with_context=True, limit=1)[0]
    assert with_ctx.context.startswith("Telephone counseling and tailored print communications")


def test_mmlu_rows(shared_data):
    records = by_id(load_benchmark("mmlu_med", split="dev", root=shared_data))
    first = records["mmlu_med-anatomy-dev-000"]
    assert first.question == "What is the embryological origin of the hyoid bone?"
    assert first.answer == "D" and first.options["D"] == "The second and third pharyngeal arches"
    val = by_id(load_benchmark("mmlu_med", split="val", root=shared_data))
    virology = val["mmlu_med-virology-val-002"]  # third row of virology_val.csv
    assert virology.answer == "B" and virology.options["B"] == "The first viruses came from outer space"
    assert len({r.id.split("-")[1] for r in val.values()}) == 9  # nine subjects


def test_headqa_ra_maps_aid_to_letter(shared_data):
    dev = by_id(load_benchmark("headqa", split="dev", root=shared_data))
    item = dev["headqa-Cuaderno_2015_1_B-1"]  # ra "4" -> fourth answer
    assert item.answer == "D" and item.options["D"] == "The Nernst equation."
    train = by_id(load_benchmark("headqa", split="train", root=shared_data))
    five = train["headqa-Cuaderno_2013_1_B-9"]  # ra "5" -> E; train exams have five answers
    assert five.answer == "E" and five.options["E"].startswith("They receive sensory innervation")


def test_mirage_sources_and_ids(shared_data):
    records = load_benchmark("mirage", root=shared_data)
    assert Counter(r.benchmark for r in records) == {"medqa": 25, "medmcqa": 25, "mmlu_med": 25}
    ids = by_id(records)
    assert ids["medqa-0035"].answer == "A" and ids["medqa-0035"].options["A"] == "Psoriatic arthritis"
    assert (
        ids["mmlu_med-anatomy-032"].answer == "B" and ids["mmlu_med-anatomy-032"].options["B"] == "Duodenum"
    )
    assert len(load_benchmark("mirage", split="mmlu", root=shared_data)) == 25
    assert Counter(r.benchmark for r in load_benchmark("mirage", root=shared_data, limit=2)) == {
        "medqa": 2,
        "medmcqa": 2,
        "mmlu_med": 2,
    }


# --- BioASQ fixture and MIRAGE yes/no entries -----------------------------------------------------------


def test_bioasq_fixture_keeps_yesno_only():
    records = load_benchmark(BIOASQ)
    assert [(r.id, r.answer) for r in records] == [
        ("bioasq-5e2a1b0c8b3851296d000001", "yes"),
        ("bioasq-5e2a1b0c8b3851296d000003", "no"),  # ["No"] unwrapped and lower-cased
    ]
    assert all(r.options == {"yes": "yes", "no": "no"} and r.context is None for r in records)
    ctx = load_benchmark(BIOASQ, with_context=True)[1].context
    assert ctx == "Pancreatic beta cells secrete insulin.\nAlpha cells secrete glucagon."


def test_mirage_yes_no_entries_use_words(tmp_path):
    path = tmp_path / "benchmark.json"
    data = {
        "pubmedqa": {
            "12345": {
                "question": "Does X help?",
                "options": {"A": "yes", "B": "no", "C": "maybe"},
                "answer": "C",
            }
        },
        "bioasq": {"5e2a": {"question": "Is Y a kinase?", "options": {"A": "yes", "B": "no"}, "answer": "B"}},
    }
    path.write_text(json.dumps(data))
    records = by_id(load_benchmark(path))
    assert records["pubmedqa-12345"].answer == "maybe" and set(records["pubmedqa-12345"].options) == {
        "yes",
        "no",
        "maybe",
    }
    assert records["bioasq-5e2a"].answer == "no" and records["bioasq-5e2a"].benchmark == "bioasq"


# --- malformed rows name file and line (or record key) ------------------------------------------------

MEDQA_OK = {"question": "Q?", "options": {"A": "a", "B": "b"}, "answer_idx": "A", "answer": "a"}
MEDMCQA_OK = {"id": "x1", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1}


@pytest.mark.parametrize(
    ("rows", "fmt", "bad_line", "message"),
    [
        ([MEDQA_OK, {**MEDQA_OK, "answer_idx": "E"}], "medqa", 2, "not one of the options"),
        ([MEDQA_OK, {**MEDQA_OK, "answer": "b"}], "medqa", 2, "answer says"),
        ([MEDQA_OK, MEDQA_OK, {"question": "Q?", "answer_idx": "A"}], "medqa", 3, "missing field"),
        ([MEDMCQA_OK, {**MEDMCQA_OK, "cop": 0}], "medmcqa", 2, "outside 1..4"),
        ([MEDMCQA_OK, {**MEDMCQA_OK, "question": " "}], "medmcqa", 2, "non-empty string"),
    ],
)
def test_bad_jsonl_row_names_file_and_line(tmp_path, rows, fmt, bad_line, message):
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=message) as err:
        load_benchmark(path, fmt=fmt)
    assert err.value.path == str(path) and err.value.line == bad_line


def test_invalid_json_line(tmp_path):
    path = tmp_path / "medqa.jsonl"
    path.write_text(json.dumps(MEDQA_OK) + "\n\n{not json\n")
    with pytest.raises(DataError, match="not valid JSON") as err:
        load_benchmark(path)
    assert err.value.line == 3


def test_bad_mmlu_row_names_line(tmp_path):
    path = tmp_path / "anatomy_test.csv"
    path.write_text('Q1,a,b,c,d,A\n"Q2 spans\ntwo lines",a,b,c,d,A\nQ3,a,b,c,d,F\n')
    with pytest.raises(DataError, match="answer must be one of A-D") as err:
        load_benchmark(path)
    assert err.value.line == 4  # the quoted field on line 2 ends on line 3
    path.write_text("Q1,a,b,c,d\n")
    with pytest.raises(DataError, match="expected 6 columns") as err:
        load_benchmark(path)
    assert err.value.line == 1


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        ({"111": {"QUESTION": "Q?", "final_decision": "probably"}}, "pubmedqa", "record '111'"),
        (
            {
                "exams": {
                    "E1": {
                        "name": "E1",
                        "data": [
                            {
                                "qid": "7",
                                "qtext": "Q?",
                                "ra": "9",
                                "answers": [{"aid": 1, "atext": "a"}, {"aid": 2, "atext": "b"}],
                            }
                        ],
                    }
                }
            },
            "headqa",
            "record 'E1/7': ra '9' is not one of the aids",
        ),
        (
            {"questions": [{"id": "q1", "type": "yesno", "body": "Q?", "exact_answer": "perhaps"}]},
            "bioasq",
            "record 'q1'",
        ),
        (
            {"medqa": {"0001": {"question": "Q?", "options": {"A": "a"}, "answer": "B"}}},
            "mirage",
            "record 'medqa/0001'",
        ),
        ({"medqa": {}, "nejm": {}}, "mirage", "unknown MIRAGE source 'nejm'"),
    ],
)
def test_bad_json_record_names_file_and_key(tmp_path, data, fmt, message):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message) as err:
        load_benchmark(path, fmt=fmt)
    assert str(path) in str(err.value)


def test_unknown_names_and_splits(tmp_path):
    with pytest.raises(DataError, match="unknown split"):
        load_benchmark("headqa", split="test", root=tmp_path)
    with pytest.raises(DataError, match="not found under the data root"):
        load_benchmark("medqa", root=tmp_path)
    odd = tmp_path / "odd.json"
    odd.write_text('{"rows": []}')
    with pytest.raises(DataError, match="cannot tell which benchmark format"):
        load_benchmark(odd)
    with pytest.raises(DataError, match="unknown hub benchmark"):
        load_benchmark("hub:someone/unknown")


# --- exclusions ------------------------------------------------------------------------------------


def test_exclusion_list_and_jsonl(tmp_path):
    records = load_benchmark(BIOASQ)
    entries = exclusion_list(records + records)  # duplicates are dropped by id
    assert entries == [{"id": r.id, "question": r.question} for r in records]
    out = tmp_path / "sub" / "exclude.jsonl"
    assert write_exclusions(records, out) == 2
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == entries and set(lines[0]) == {"id", "question"}


# --- hub conversion, with `datasets.load_dataset` faked (nothing downloads in tests) ----------------

HUB_ROWS = {
    "GBaker/MedQA-USMLE-4-options": [{**MEDQA_OK, "meta_info": "step1", "metamap_phrases": []}],
    "openlifescienceai/medmcqa": [
        {**MEDMCQA_OK, "cop": 3, "exp": None, "subject_name": "x", "choice_type": "single"}
    ],
    "qiaojin/PubMedQA": [
        {
            "pubid": 42,
            "question": "Does it work?",
            "context": {"contexts": ["One.", "Two."], "labels": ["A", "B"], "meshes": []},
            "long_answer": "It does.",
            "final_decision": "yes",
        }
    ],
    "cais/mmlu": [{"question": "Q?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 2}],
    "dvilares/head_qa": [
        {
            "name": "Cuaderno_2013_1_B",
            "qid": 3,
            "qtext": "Q?",
            "ra": 2,
            "image": None,
            "answers": [{"aid": 2, "atext": "second"}, {"aid": 1, "atext": "first"}],
        }
    ],
}


@pytest.fixture
def fake_hub(monkeypatch):
    import sys
    import types

    calls = []

    def load_dataset(repo, config=None, split=None):
        calls.append((repo, config, split))
        return HUB_ROWS[repo]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_rows_convert_like_native(fake_hub):
    medqa = load_benchmark("hub:GBaker/MedQA-USMLE-4-options")
    assert medqa[0].answer == "A" and fake_hub[-1] == ("GBaker/MedQA-USMLE-4-options", None, "test")
    medmcqa = load_benchmark("hub:openlifescienceai/medmcqa")[0]
    assert medmcqa.answer == "D" and medmcqa.id == "medmcqa-x1"  # hub cop is 0-based: 3 -> D
    pubmed = load_benchmark("hub:qiaojin/PubMedQA", with_context=True)[0]
    assert (pubmed.id, pubmed.answer, pubmed.context) == ("pubmedqa-42", "yes", "One.\nTwo.")
    assert fake_hub[-1] == ("qiaojin/PubMedQA", "pqa_labeled", "train")
    mmlu = load_benchmark("hub:cais/mmlu:anatomy")
    assert [(r.id, r.answer) for r in mmlu] == [("mmlu_med-anatomy-test-000", "C")]
    assert len(load_benchmark("hub:cais/mmlu")) == 6  # no config: the six MIRAGE medical subjects
    head = load_benchmark("hub:dvilares/head_qa", split="validation")[0]
    assert head.options == {"A": "first", "B": "second"} and head.answer == "B"
    assert fake_hub[-1] == ("dvilares/head_qa", "en", "validation")


def test_hub_bad_row_names_row(fake_hub, monkeypatch):
    monkeypatch.setitem(HUB_ROWS, "openlifescienceai/medmcqa", [MEDMCQA_OK, {**MEDMCQA_OK, "cop": -1}])
    with pytest.raises(DataError, match=r"hub:openlifescienceai/medmcqa\[validation\]: row 1: cop -1"):
        load_benchmark("hub:openlifescienceai/medmcqa")
