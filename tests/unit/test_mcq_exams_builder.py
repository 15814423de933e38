"""The `mcqa` skill comes from exam questions whose evaluated splits are never read."""

from __future__ import annotations

from collections import Counter

from mdkif.data.builders import mcq_exams
from mdkif.data.builders.base import BuildContext


def test_headqa_train_and_mmlu_dev_become_mcqa_records(shared_data):
    records = list(mcq_exams.build(BuildContext(root=shared_data)))
    assert Counter(r.task for r in records) == {"headqa_mcq": 2657, "mmlu_med_dev_mcq": 45}
    first = records[0]
    assert first.skill == "mcqa" and first.output == "Answer: C"
    assert first.input == (
        "Question: The excitatory postsynaptic potentials:\nOptions:\n"
        "A. They are all or nothing.\nB. They are hyperpolarizing.\nC. They can be added.\n"
        "D. They spread long distances.\nE. They present a refractory period."
    )
    assert first.instruction in mcq_exams.INSTRUCTIONS
    # The files the builder declares are train/dev only: evaluated splits stay out of training.
    assert all("dev_HEAD_EN" not in f and "/val" not in f for f in mcq_exams.SPEC.files)


def test_source_root_may_be_the_data_root_or_its_skills_folder(shared_data):
    from mdkif.data.builders import meqsum

    a = list(meqsum.build(BuildContext(root=shared_data)))
    b = list(meqsum.build(BuildContext(root=shared_data / "skills")))
    assert a == b and len(a) == 1000
