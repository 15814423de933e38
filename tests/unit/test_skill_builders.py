"""Each skill-data builder converts a known native item into exactly the expected unified record."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mdkif.data.builders import (
    REGISTRY,
    chatdoctor,
    healthver,
    hoc,
    medalpaca_wikidoc,
    medicationqa,
    mediqa2019,
    medquad,
    meqsum,
    mts_dialog,
)
from mdkif.data.builders.base import BuildContext
from mdkif.data.builders.instructions import BuilderTask, skill_record
from mdkif.data.errors import DataError
from mdkif.data.records import SKILLS, SkillRecord, make_id

MINE = (medquad, medicationqa, medalpaca_wikidoc, mediqa2019, healthver, meqsum, mts_dialog, chatdoctor, hoc)


@pytest.fixture(scope="module")
def built(shared_data: Path) -> dict[str, list[SkillRecord]]:
    """Every record of each of these builders over the real data, seed 0 (about 3 s in all)."""
    out = {}
    for module in MINE:
        ctx = BuildContext(root=shared_data / "skills", seed=0, skip_bad=True)
        out[module.SPEC.name] = list(module.build(ctx))
    return out


def _by_id(records: list[SkillRecord], rid: str) -> SkillRecord:
    hits = [r for r in records if r.id == rid]
    assert hits, f"no record {rid}"
    return hits[0]


def test_registry_holds_every_builder_with_a_valid_spec() -> None:
    for module in MINE:
        assert REGISTRY[module.SPEC.name] is module
    for name, module in REGISTRY.items():
        assert module.SPEC.name == name and callable(module.build)
        assert set(module.SPEC.skills) <= set(SKILLS), name


def test_builders_only_emit_their_declared_skills(built: dict[str, list[SkillRecord]]) -> None:
    for name, records in built.items():
        assert records, name
        assert {r.skill for r in records} <= set(REGISTRY[name].SPEC.skills), name
        assert {r.source for r in records} == {name}


def test_medquad_first_row(built: dict[str, list[SkillRecord]]) -> None:
    q = "What is (are) Adult Acute Lymphoblastic Leukemia ?"
    records = built["medquad"]
    qa = records[0]
    assert qa.skill == "qa" and qa.task == "medquad_qa" and qa.input == q
    assert qa.output.startswith("Key Points - Adult acute lymphoblastic leukemia (ALL) is a type of cancer")
    assert "\n" not in qa.output and "  " not in qa.output  # hard wraps and indentation collapsed
    assert qa.id == make_id("medquad", "qa", q, qa.output)
    assert qa.instruction in medquad.QA_INSTRUCTIONS
    qtype = records[1]
    assert (qtype.skill, qtype.task, qtype.input, qtype.output) == (
        "multilabel_classification",
        "medquad_question_type",
        q,
        "information",
    )
    assert qtype.id == make_id("medquad", "qtype", q, "information")
    assert qtype.instruction in medquad.QTYPE_INSTRUCTIONS


def test_medicationqa_first_row_and_compound_types(built: dict[str, list[SkillRecord]]) -> None:
    records = built["medicationqa"]
    qa, qtype = records[0], records[1]
    assert qa.input == "how does rivatigmine and otc sleep medicine interact"
    assert qa.output.startswith("tell your doctor and pharmacist what prescription and nonprescription")
    assert qa.task == "medicationqa_qa" and qa.instruction in medicationqa.QA_INSTRUCTIONS
    assert (qtype.task, qtype.output) == ("medicationqa_question_type", "interaction")
    # "Usage/time" is two labels, in the fixed label order.
    outputs = {r.output for r in records if r.task == "medicationqa_question_type"}
    assert "usage; time" in outputs and "stopping; tapering" in outputs
    # Placeholder answers ("n/a", "No Answers") never become QA targets.
    assert not any(r.output.lower() in {"n/a", "no answers"} for r in records)


def test_medalpaca_wikidoc_first_item(built: dict[str, list[SkillRecord]]) -> None:
    r = built["medalpaca_wikidoc"][0]
    assert (r.skill, r.task, r.input) == ("qa", "wikidoc_patient_qa", "What are the symptoms of Allergy?")
    assert r.output.startswith("Allergy symptoms vary, but may include: Breathing problems (coughing,")
    assert r.instruction in medalpaca_wikidoc.INSTRUCTIONS
    assert len(built["medalpaca_wikidoc"]) == 5942


def test_mediqa2019_rqe_and_qa(built: dict[str, list[SkillRecord]], shared_data: Path) -> None:
    records = built["mediqa2019"]
    first = records[0]
    q = "How should I treat polymenorrhea in a 14-year-old girl?"
    assert (first.skill, first.task, first.output) == ("nli", "mediqa_rqe", "yes")
    assert first.input == f"Question A: {q}\nQuestion B: {q}"
    assert first.id == make_id("mediqa2019", "rqe", q, q)
    # pid 3 pairs the heparin question with an unrelated FAQ: not entailed.
    third = records[2]
    assert third.output == "no" and "Florinef" in third.input
    assert sum(r.task == "mediqa_rqe" for r in records) == 8588 + 302 - 1  # one pair has an empty <faq>

    relevance = [r for r in records if r.task == "mediqa_answer_relevance"]
    noonan = relevance[0]
    assert noonan.skill == "reading_comprehension"
    assert noonan.input.startswith(
        "Question: Noonan syndrome. What are the references with noonan syndrome and polycystic renal "
        "disease\n\nPassage: Noonan syndrome: Noonan syndrome is a genetic disorder"
    )
    assert noonan.output == "yes"  # ReferenceScore 4
    assert "It's the most common" in noonan.input  # &apos; entities decoded
    assert {r.output for r in relevance} == {"yes", "no"}

    best = [r for r in records if r.task == "mediqa_best_answer"]
    assert best and {r.output for r in best} == {"A", "B"}
    b = best[0]
    assert "Passage A: " in b.input and "Passage B: " in b.input
    chosen = b.input.split(f"Passage {b.output}: ", 1)[1]
    # The right passage is question 1's ReferenceRank 1 answer, read straight from the native XML.
    root = ET.parse(shared_data / "skills" / mediqa2019.QA_FILES[0]).getroot()
    top = next(a for a in root.find("Question").iter("Answer") if a.get("ReferenceRank") == "1")
    assert chosen[:200] == " ".join(top.findtext("AnswerText").split())[:200]


def test_mediqa2019_empty_pair_is_a_bad_row_with_its_line(shared_data: Path) -> None:
    ctx = BuildContext(root=shared_data / "skills")
    with pytest.raises(DataError, match=r"RQE-TrainingSet-AMIA2016\.xml:46875: malformed record"):
        list(mediqa2019.build(ctx))


def test_healthver_first_row(built: dict[str, list[SkillRecord]]) -> None:
    r = built["healthver"][0]
    evidence = "Covid19 infection began in Wuhan (Hubei, China) in December, 2019."
    claim = "The CORONAVIRUS is not of natural origin"
    assert (r.skill, r.task, r.output) == ("nli", "healthver_claim_verification", "Neutral")
    assert r.input == f"Evidence: {evidence}\nClaim: {claim}"
    assert r.id == make_id("healthver", evidence, claim)
    assert r.instruction in healthver.INSTRUCTIONS
    assert {x.output for x in built["healthver"]} == {"Supports", "Refutes", "Neutral"}


def test_meqsum_first_row(built: dict[str, list[SkillRecord]]) -> None:
    r = built["meqsum"][0]
    assert (r.skill, r.task, r.output) == (
        "summarization",
        "meqsum_question_summary",
        "Who manufactures cetirizine?",
    )
    assert r.input == (
        "SUBJECT: who and where to get cetirizine - D MESSAGE: I need/want to know who manufscturs "
        "Cetirizine. My Walmart is looking for a new supply and are not getting the recent"
    )
    assert r.instruction in meqsum.INSTRUCTIONS


def test_mts_dialog_first_row(built: dict[str, list[SkillRecord]]) -> None:
    records = built["mts_dialog"]
    note, section, turn = records[0], records[1], records[2]
    assert note.input.startswith(
        "Doctor: What brings you back into the clinic today, miss?\n"
        "Patient: I came in for a refill of my blood pressure medicine.\n"
    )
    assert note.output.startswith(
        "The patient is a 76-year-old white female who presents to the clinic today"
    )
    assert (note.skill, note.task) == ("summarization", "mts_dialog_note_section")
    assert "history of present illness" in note.instruction
    assert (section.skill, section.output) == ("multilabel_classification", "history of present illness")
    assert (turn.skill, turn.task) == ("dialogue", "mts_dialog_next_turn")
    # The target is a doctor turn of the conversation and the input is everything before it.
    assert f"{turn.input}\nDoctor: {turn.output}" in note.input
    assert turn.input.splitlines()[-1].split(":")[0] in {"Patient", "Family member", "Clinician", "Doctor"}
    speakers = {
        line.split(":")[0]
        for r in records
        if r.task == "mts_dialog_next_turn"
        for line in r.input.splitlines()
    }
    assert speakers <= {"Doctor", "Patient", "Family member", "Clinician"}


def test_chatdoctor_first_item(built: dict[str, list[SkillRecord]]) -> None:
    r = built["chatdoctor"][0]
    assert (r.skill, r.task) == ("dialogue", "chatdoctor_consultation")
    assert r.input == (
        "Patient: Doctor, I have been experiencing sudden and frequent panic attacks. I don't know what to do."
    )
    assert r.output.startswith(
        "Well, based on what you're telling me, it sounds like you may be suffering from panic"
    )
    assert r.instruction in chatdoctor.INSTRUCTIONS


def test_hoc_first_row_and_empty_labels(built: dict[str, list[SkillRecord]]) -> None:
    records = built["hoc"]
    r = records[0]
    assert (r.skill, r.task, r.output) == (
        "multilabel_classification",
        "hoc_hallmarks",
        "Sustaining proliferative signaling",
    )
    assert r.input.startswith(
        "Ghrelin was identified in the stomach as an endogenous ligand specific for the growth hormone "
        "secretagogue receptor (GHS-R). GHS-R is found in various tissues, but its function is unknown."
    )
    assert sum(x.output == "none" for x in records) == 272
    multi = [x.output.split("; ") for x in records if ";" in x.output]
    assert multi and all(labels == [h for h in hoc.HALLMARKS if h in labels] for labels in multi)


# --- no real data needed: tiny native files in tmp_path --------------------------------------------


def test_bad_row_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "medquad").mkdir()
    good = {"question": "What is gout?", "answer": "A form of arthritis.", "qtype": "information"}
    lines = [json.dumps(good), json.dumps({**good, "answer": "  "}), "{not json"]
    (tmp_path / "medquad" / "medquad_answered.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"medquad_answered\.jsonl:2: malformed record: missing"):
        list(medquad.build(BuildContext(root=tmp_path)))
    ctx = BuildContext(root=tmp_path, skip_bad=True)
    records = list(medquad.build(ctx))
    assert [r.task for r in records] == ["medquad_qa", "medquad_question_type"]
    assert [(b.line, b.message.split(" ")[0]) for b in ctx.bad_rows] == [(2, "missing"), (3, "invalid")]


def test_instruction_choice_is_seeded_and_stable(tmp_path: Path) -> None:
    (tmp_path / "meqsum").mkdir()
    rows = [
        {"CHQ": f"Message number {i} about my knee pain?", "Summary": f"Question {i}?"} for i in range(30)
    ]
    (tmp_path / "meqsum" / "meqsum.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = list(meqsum.build(BuildContext(root=tmp_path, seed=0)))
    b = list(meqsum.build(BuildContext(root=tmp_path, seed=0)))
    c = list(meqsum.build(BuildContext(root=tmp_path, seed=1)))
    assert a == b
    assert [r.id for r in a] == [r.id for r in c]  # ids do not depend on the seed
    assert [r.instruction for r in a] != [r.instruction for r in c]
    assert len({r.instruction for r in a}) > 1


def test_a_builder_task_record_draws_its_instruction_by_the_content_id(tmp_path: Path) -> None:
    task = BuilderTask("src", "nli", "src_pairs", ("Compare {a} and {b}.", "Are {a} and {b} alike?"))
    ctx = BuildContext(root=tmp_path, seed=3)
    r = task.record(ctx, ("x", "y"), input="X vs Y", output="yes", fill={"a": "X", "b": "Y"})
    assert r.id == make_id("src", "x", "y") and (r.skill, r.task, r.source) == ("nli", "src_pairs", "src")
    assert r.instruction in ("Compare X and Y.", "Are X and Y alike?") and (r.input, r.output) == (
        "X vs Y",
        "yes",
    )
    # One rule whichever way it is called: the same key gives the same record, and no fill leaves braces alone.
    same = skill_record(
        ctx, "src", ("x", "y"), skill="nli", task="src_pairs", instructions=task.instructions, output="yes"
    )
    assert same.id == r.id and same.instruction.format(a="X", b="Y") == r.instruction and same.input == ""
    drawn = {
        task.record(BuildContext(root=tmp_path, seed=s), ("x", "y"), output="-").instruction
        for s in range(20)
    }
    assert drawn == set(task.instructions)  # the build seed varies the wording, the id does not
