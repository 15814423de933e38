"""Downstream tasks read from the real data: splits, held-out ids, NER gold tags, the skills' prompt format."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdkif.data.builders import REGISTRY
from mdkif.data.builders.base import BuildContext
from mdkif.data.tasks import TASKS, heldout_ids, load_task, load_task_splits

pytestmark = pytest.mark.shared_data


@pytest.mark.parametrize("name", ["healthver", "mediqa_rqe", "pubmedqa", "hoc", "meqsum", "bc5cdr_cdr"])
def test_splits_are_disjoint_sized_and_deterministic(shared_data: Path, name: str) -> None:
    splits = load_task_splits(name, root=shared_data)
    spec = TASKS[name]
    assert len(splits["test"]) == spec.test_size
    assert len(splits["dev"]) == spec.dev_size
    ids = [set(r.id for r in splits[s]) for s in ("train", "dev", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    again = spec.load(BuildContext(root=shared_data, seed=0, skip_bad=True))
    assert [r.id for r in again["test"]] == [r.id for r in splits["test"]]
    first = splits["test"][0]
    assert first.kind == spec.kind and first.task == name
    assert first.prompt().startswith("### Instruction:\n") and first.prompt().endswith("### Response:\n")
    if spec.labels:
        assert all(r.output in spec.labels for r in splits["test"]) or spec.kind == "multilabel"


def test_builder_tasks_keep_the_builder_ids(shared_data: Path) -> None:
    # The held-out ids must be the very ids the skill build produces, or excluding them would do nothing.
    ctx = BuildContext(root=shared_data, seed=0, skip_bad=True)
    built = {r.id for r in REGISTRY["healthver"].build(ctx)}
    test = load_task("healthver", "test", root=shared_data)
    assert {r.id for r in test} <= built


def test_ner_test_items_carry_aligned_gold_tags(shared_data: Path) -> None:
    test = load_task("bc5cdr_ner", "test", root=shared_data, limit=50)
    assert len(test) == 50
    for r in test:
        assert r.tokens is not None and r.tags is not None and len(r.tokens) == len(r.tags)
        assert r.types == ("Chemical", "Disease")
        assert r.output.startswith("Chemical: ") and "\nDisease: " in r.output
    # The official test file is not read by the skill build: its sentences are not in the builder's stream
    # unless the very same sentence also appears in train/devel (then the id is identical and excluded).
    train_ids = {r.id for r in load_task("bc5cdr_ner", "train", root=shared_data)}
    overlap = {r.id for r in test} & train_ids
    assert len(overlap) < 5


def test_heldout_ids_cover_test_and_dev_or_the_whole_task(shared_data: Path) -> None:
    splits = load_task_splits("mediqa_rqe", root=shared_data)
    part = set(heldout_ids("mediqa_rqe", root=shared_data))
    assert part == {r.id for s in ("test", "dev") for r in splits[s]}
    whole = set(heldout_ids("mediqa_rqe", root=shared_data, whole=True))
    assert len(whole) == sum(len(v) for v in splits.values())


def test_unknown_task_and_split_are_named() -> None:
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        TASKS["nope"]
    with pytest.raises(ValueError, match="unknown task split 'validation'"):
        load_task("healthver", "validation", root=".")
