"""The skill-data build: split, dedupe, exclusion, bad rows, atomic output, reader, demo data and CLI."""

from __future__ import annotations

import json
import time
from importlib.resources import files
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mdkif.data.build import build_skill_data, load_manifest, load_skill_split
from mdkif.data.builders import REGISTRY
from mdkif.data.commands import app
from mdkif.data.errors import DataError
from mdkif.data.records import SKILLS

MY_SOURCES = [
    "medquad",
    "medicationqa",
    "medalpaca_wikidoc",
    "mediqa2019",
    "healthver",
    "meqsum",
    "mts_dialog",
    "chatdoctor",
    "hoc",
]
MY_SKILLS = {"qa", "dialogue", "multilabel_classification", "reading_comprehension", "nli", "summarization"}
DEMO = Path(str(files("mdkif") / "assets" / "demo_skills"))


def _write_jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """A source root with small MeQSum and HoC files: 20 + 1 duplicate summaries, 4 abstracts."""
    root = tmp_path / "src"
    rows = [
        {"CHQ": f"My knee hurts after running {i} km, what should I do?", "Summary": f"Knee pain {i}?"}
        for i in range(20)
    ]
    _write_jsonl(root / "meqsum" / "meqsum.jsonl", [*rows, rows[3]])
    labels = [
        ["Resisting cell death"],
        [],
        ["Inducing angiogenesis", "Sustaining proliferative signaling"],
        [],
    ]
    docs = [
        {
            "pmid": str(i),
            "sentences": [f"Abstract {i} on tumour growth ."],
            "sentence_labels": [[]],
            "doc_hallmarks": lab,
        }
        for i, lab in enumerate(labels)
    ]
    _write_jsonl(root / "hoc" / "hoc.jsonl", docs)
    return root


def _build(root: Path, out: Path, **kw):
    return build_skill_data(root, out, sources=["meqsum", "hoc"], **kw)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_layout_counts_and_split(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    m = _build(tiny_root, out)
    assert sorted(p.name for p in out.iterdir()) == sorted([*SKILLS, "manifest.json"])
    for skill in SKILLS:
        for split in ("train", "validation"):
            assert len(load_skill_split(out, skill, split)) == getattr(m.skills[skill], split)
    # 20 summaries -> 1 validation (5%); 4 abstracts -> still at least 1 validation.
    assert (m.skills["summarization"].train, m.skills["summarization"].validation) == (19, 1)
    assert (
        m.skills["multilabel_classification"].train,
        m.skills["multilabel_classification"].validation,
    ) == (3, 1)
    assert m.duplicates == 1 and m.excluded == 0 and m.bad_rows == 0
    assert set(m.source_files) == {"meqsum/meqsum.jsonl", "hoc/hoc.jsonl"}
    assert all(len(h) == 64 for h in m.source_files.values())
    assert m.tasks["hoc_hallmarks"].available == 4 and m.sources["meqsum"].train == 19
    assert load_manifest(out) == m
    hoc = load_skill_split(out, "multilabel_classification", "train") + load_skill_split(
        out, "multilabel_classification", "validation"
    )
    assert sorted(r.output for r in hoc) == sorted(
        ["Resisting cell death", "none", "none", "Sustaining proliferative signaling; Inducing angiogenesis"]
    )


def test_same_seed_same_files_other_seed_other_order(tiny_root: Path, tmp_path: Path) -> None:
    _build(tiny_root, tmp_path / "a", seed=3)
    _build(tiny_root, tmp_path / "b", seed=3)
    _build(tiny_root, tmp_path / "c", seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    a = load_skill_split(tmp_path / "a", "summarization", "train")
    c = load_skill_split(tmp_path / "c", "summarization", "train")
    assert [r.id for r in a] != [r.id for r in c]


def test_max_per_task_and_skill_filter(tiny_root: Path, tmp_path: Path) -> None:
    m = _build(tiny_root, tmp_path / "out", max_per_task=5, skills=["summarization"])
    assert m.skills["summarization"].train + m.skills["summarization"].validation == 5
    assert m.tasks["meqsum_question_summary"].available == 20
    assert m.skills["multilabel_classification"].train == 0 and "hoc_hallmarks" not in m.tasks
    assert m.settings["skills"] == ["summarization"]


def test_exclusion_list_removes_ids_and_question_texts(tiny_root: Path, tmp_path: Path) -> None:
    full = _build(tiny_root, tmp_path / "full")
    victim = load_skill_split(tmp_path / "full", "multilabel_classification", "train")[0]
    exclude = tmp_path / "exclude.txt"
    # Different case and punctuation still match: texts are compared normalised.
    exclude.write_text(f"# evaluation items\n{victim.id}\nMY KNEE HURTS after running 7 km -- what should\n")
    m = _build(tiny_root, tmp_path / "out", exclude=[exclude])
    assert m.excluded == 2
    kept = [
        r for s in SKILLS for sp in ("train", "validation") for r in load_skill_split(tmp_path / "out", s, sp)
    ]
    assert victim.id not in {r.id for r in kept}
    assert not any("running 7 km" in r.input for r in kept)
    assert any("running 17 km" in r.input for r in kept)  # word boundaries: 7 is not 17
    assert len(kept) == sum(c.train + c.validation for c in full.skills.values()) - 2
    assert str(exclude) in m.settings["exclude"]


def test_exclusion_jsonl_of_benchmark_items(tiny_root: Path, tmp_path: Path) -> None:
    exclude = tmp_path / "bench.jsonl"
    _write_jsonl(
        exclude, [{"id": "medqa-1", "question": "My knee hurts after running 0 km, what should I do?"}]
    )
    assert _build(tiny_root, tmp_path / "out", exclude=[exclude]).excluded == 1
    # An exam stem like "Knee pain:" would match every knee record: ignored as text, counted.
    _write_jsonl(exclude, [{"id": "headqa-7", "question": "Knee pain:"}, "not json", 5])
    exclude.write_text(exclude.read_text().replace('"not json"', "{oops"))
    with pytest.raises(DataError, match=r"bench\.jsonl:2: invalid JSON"):
        _build(tiny_root, tmp_path / "out2", exclude=[exclude])
    _write_jsonl(exclude, [{"id": "headqa-7", "question": "Knee pain:"}])
    m = _build(tiny_root, tmp_path / "out2", exclude=[exclude])
    assert m.excluded == 0 and m.settings["exclude_short_texts_ignored"] == 1


def test_bad_row_fails_by_default_and_is_counted_with_skip_bad(tiny_root: Path, tmp_path: Path) -> None:
    path = tiny_root / "meqsum" / "meqsum.jsonl"
    path.write_text(path.read_text() + '{"CHQ": "truncated\n')
    with pytest.raises(DataError, match=r"meqsum\.jsonl:22: malformed record: invalid JSON"):
        _build(tiny_root, tmp_path / "out")
    m = _build(tiny_root, tmp_path / "out", skip_bad=True)
    assert m.bad_rows == 1 and m.bad_row_examples[0].startswith(f"{path}:22: invalid JSON")


def test_failed_build_leaves_no_output_and_no_temp_dir(tiny_root: Path, tmp_path: Path) -> None:
    (tiny_root / "hoc" / "hoc.jsonl").write_text(
        '{"pmid": "1", "sentences": "not a list", "doc_hallmarks": []}\n'
    )
    parent = tmp_path / "outs"
    parent.mkdir()
    with pytest.raises(DataError, match=r"hoc\.jsonl:1"):
        _build(tiny_root, parent / "out")
    assert list(parent.iterdir()) == []
    # An existing output survives a failed rebuild untouched.
    build_skill_data(tiny_root, parent / "out", sources=["meqsum"])
    before = _files(parent / "out")
    with pytest.raises(DataError):
        _build(tiny_root, parent / "out")
    assert _files(parent / "out") == before and [p.name for p in parent.iterdir()] == ["out"]


def test_missing_files_only_matter_for_requested_sources(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"healthver_dev\.csv: source file not found"):
        build_skill_data(tiny_root, tmp_path / "out", sources=["meqsum", "healthver"])
    assert not (tmp_path / "out").exists()
    build_skill_data(tiny_root, tmp_path / "out", sources=["meqsum"])
    with pytest.raises(ValueError, match="unknown source"):
        build_skill_data(tiny_root, tmp_path / "out", sources=["nope"])


def test_refuses_to_replace_a_folder_that_is_not_skill_data(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    with pytest.raises(DataError, match="not a skill-data folder"):
        _build(tiny_root, out)
    assert (out / "thesis.txt").read_text() == "do not delete"


def test_reader_names_file_and_line_of_a_bad_record(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(tiny_root, out)
    path = out / "summarization" / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace('"skill":"summarization"', '"skill":"astrology"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl:5: invalid skill record \(skill: .*unknown skill"):
        load_skill_split(out, "summarization", "train")


def test_demo_data_covers_all_twelve_skills() -> None:
    manifest = load_manifest(DEMO)
    assert (DEMO / "README.md").read_text().startswith("# Demo skill data (illustrative only)")
    for skill in SKILLS:
        train, val = load_skill_split(DEMO, skill, "train"), load_skill_split(DEMO, skill, "validation")
        assert len(train) == manifest.skills[skill].train >= 8
        assert len(val) == manifest.skills[skill].validation >= 1
        assert {r.source for r in train + val} == {"demo"}
        assert not {r.id for r in train} & {r.id for r in val}


def test_cli_build_and_stats(tiny_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        ["build", "--source", str(tiny_root), "--out", str(out), "--sources", "meqsum,hoc", "--seed", "1"],
    )
    assert res.exit_code == 0, res.output
    assert (
        "summarization" in res.output
        and "duplicates dropped: 1" in res.output
        and "bad rows skipped: 0" in res.output
    )
    assert load_manifest(out).seed == 1
    res = runner.invoke(app, ["stats", str(out)])
    assert res.exit_code == 0, res.output
    assert "meqsum 19" in res.output and "hoc 3" in res.output
    res = runner.invoke(app, ["build", "--source", str(tiny_root), "--out", str(out), "--sources", "nope"])
    assert res.exit_code == 2 and "unknown source" in res.output


# --- real data -----------------------------------------------------------------------------------


def test_full_real_build_matches_manifest(shared_data: Path, tmp_path: Path) -> None:
    """Every source of this module; capped per task so writing stays fast (a full build takes ~6 s)."""
    out = tmp_path / "real"
    start = time.perf_counter()
    m = build_skill_data(shared_data / "skills", out, sources=MY_SOURCES, max_per_task=300, skip_bad=True)
    assert time.perf_counter() - start < 120
    for skill in SKILLS:
        for split in ("train", "validation"):
            assert len(load_skill_split(out, skill, split)) == getattr(m.skills[skill], split)
        total = m.skills[skill].train + m.skills[skill].validation
        assert (total > 0) == (skill in MY_SKILLS), skill
    assert set(m.sources) == set(MY_SOURCES)
    assert all(t.train + t.validation == min(300, t.available) for t in m.tasks.values())
    assert set(m.source_files) == {f for s in MY_SOURCES for f in REGISTRY[s].SPEC.files}
    assert m.bad_rows == 1  # the MEDIQA RQE pair with an empty <faq>


def test_real_exclusion_removes_a_known_medquad_question(shared_data: Path, tmp_path: Path) -> None:
    exclude = tmp_path / "eval.txt"
    exclude.write_text("What is (are) Adult Acute Lymphoblastic Leukemia?\n")
    m = build_skill_data(shared_data / "skills", tmp_path / "out", sources=["medquad"], exclude=[exclude])
    assert m.excluded >= 2  # its answer (qa) and its question type (classification)
    for skill in ("qa", "multilabel_classification"):
        for split in ("train", "validation"):
            inputs = {r.input for r in load_skill_split(tmp_path / "out", skill, split)}
            assert "What is (are) Adult Acute Lymphoblastic Leukemia ?" not in inputs
