"""MedicationQA (consumer questions about drugs, MedInfo 2019) -> `qa` and question-type labels.

The annotated question types are often compound ("Usage/time", "Stopping/tapering"): split on '/',
they are a real multi-label target, so they feed `multilabel_classification` as well as the answers
feeding `qa`.
"""

from __future__ import annotations

from collections.abc import Iterator

from mdkif.data.builders.base import BuildContext, SourceSpec, clean
from mdkif.data.builders.instructions import BuilderTask, join_labels
from mdkif.data.records import SkillRecord

FILE = "medicationqa/medicationqa.jsonl"
SPEC = SourceSpec(
    name="medicationqa",
    skills=("qa", "multilabel_classification"),
    files=(FILE,),
    description="MedicationQA: 690 consumer medication questions with trusted answers and question types.",
)

# Atomic question types (the parts of the compound annotations), in a fixed order.
QUESTION_TYPES: tuple[str, ...] = (
    "information",
    "dose",
    "usage",
    "side effects",
    "indication",
    "interaction",
    "appearance",
    "action",
    "time",
    "duration",
    "stopping",
    "tapering",
    "ingredient",
    "storage and disposal",
    "comparison",
    "contraindication",
    "overdose",
    "alternatives",
    "effectiveness",
    "pronounce name",
    "brand names",
    "combination",
    "manufacturer",
    "availability",
    "potency",
    "forget a dose",
    "special populations",
    "long term consequences",
)
# Annotations that say the item is not a medication question at all: no question type to learn.
NOT_A_TYPE = {"not_drug_question", "other_drug_question", "unanswerable"}
# Placeholder answers in the corpus; a QA record must teach an answer, so these give none.
NON_ANSWERS = {"", "n/a", "no answers"}

QA_INSTRUCTIONS = (
    "Answer the patient's question about a medication.",
    "You are a pharmacist. Answer the following question about a drug accurately.",
    "Provide a reliable answer to this consumer medication question.",
)
QA_TASK = BuilderTask("medicationqa", "qa", "medicationqa_qa", QA_INSTRUCTIONS)
_TYPES = ", ".join(QUESTION_TYPES)
QTYPE_INSTRUCTIONS = (
    f"Classify what this medication question asks about. Possible types: {_TYPES}. "
    "Answer with every type that applies, separated by '; '.",
    f"Which question types apply to this question about a drug? Choose from: {_TYPES}. "
    "List all that apply, separated by '; '.",
)
QTYPE_TASK = BuilderTask(
    "medicationqa", "multilabel_classification", "medicationqa_question_type", QTYPE_INSTRUCTIONS
)


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """A `qa` record per answered question and a question-type record per typed question."""
    path = ctx.path(FILE)
    for line, row in ctx.read_jsonl(FILE):
        question, answer = clean(row.get("Question")), clean(row.get("Answer"))
        raw_type = clean(row.get("Question Type"))
        if not question:
            ctx.bad_row(path, line, "missing 'Question'")
            continue
        if answer.lower() not in NON_ANSWERS:
            yield QA_TASK.record(ctx, ("qa", question, answer), input=question, output=answer)
        if raw_type in NOT_A_TYPE:
            continue
        parts = {p.strip().lower() for p in raw_type.split("/")}
        unknown = parts - set(QUESTION_TYPES)
        if unknown:
            ctx.bad_row(path, line, f"unknown question type(s) {sorted(unknown)} in {raw_type!r}")
            continue
        yield QTYPE_TASK.record(
            ctx,
            ("qtype", question, raw_type),
            input=question,
            output=join_labels([t for t in QUESTION_TYPES if t in parts]),
        )
