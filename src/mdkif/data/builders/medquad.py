"""MedQuAD (NIH question-answer pairs) -> `qa`, plus question-type classification.

Besides free-text answers, every MedQuAD question carries a curated question type (treatment,
symptoms, inheritance...). That label is a property of the *question*, not of a medical entity, so it
does not fit `entity_attribute`; it is a text classification over a fixed label set. The skill set has
no single-label classification skill, and single-label is the one-label case of the multi-label format
every classification task here shares (pick labels from the set given in the instruction, join them with
'; '), so it goes to `multilabel_classification`, next to HoC and MedicationQA's genuinely multi-label
types. It is large (about 15k distinct questions): `--max-per-task` keeps it from outweighing HoC.
"""

from __future__ import annotations

from collections.abc import Iterator

from mdkif.data.builders.base import BuildContext, SourceSpec, clean
from mdkif.data.builders.instructions import BuilderTask, join_labels
from mdkif.data.records import SkillRecord

FILE = "medquad/medquad_answered.jsonl"
SPEC = SourceSpec(
    name="medquad",
    skills=("qa", "multilabel_classification"),
    files=(FILE,),
    description="MedQuAD: 16k answered consumer-health questions from NIH sites, with question types.",
)

# The question types present in the answered subset, in a fixed order so instructions never change.
QUESTION_TYPES: tuple[str, ...] = (
    "information",
    "symptoms",
    "treatment",
    "inheritance",
    "frequency",
    "genetic changes",
    "causes",
    "exams and tests",
    "research",
    "outlook",
    "susceptibility",
    "considerations",
    "prevention",
    "stages",
    "complications",
    "support groups",
)

QA_INSTRUCTIONS = (
    "Answer the following medical question.",
    "Answer this health question accurately and completely.",
    "You are a medical expert. Provide a clear, factual answer to the question below.",
    "Give a patient-friendly but accurate answer to this medical question.",
)
QA_TASK = BuilderTask("medquad", "qa", "medquad_qa", QA_INSTRUCTIONS)

_TYPES = ", ".join(QUESTION_TYPES)
QTYPE_INSTRUCTIONS = (
    f"Classify the medical question by what it asks about. Possible types: {_TYPES}. "
    "Answer with every type that applies, separated by '; '.",
    f"Which of these question types describe the question below? Types: {_TYPES}. "
    "List the matching types separated by '; '.",
    f"Assign question-type labels to this consumer health question, choosing from: {_TYPES}. "
    "Output the labels separated by '; '.",
)
QTYPE_TASK = BuilderTask("medquad", "multilabel_classification", "medquad_question_type", QTYPE_INSTRUCTIONS)


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One `qa` record per answered question and one question-type record per question."""
    path = ctx.path(FILE)
    for line, row in ctx.read_jsonl(FILE):
        question, answer, qtype = (
            clean(row.get("question")),
            clean(row.get("answer")),
            clean(row.get("qtype")),
        )
        if not question or not answer:
            ctx.bad_row(path, line, "missing 'question' or 'answer'")
            continue
        if qtype not in QUESTION_TYPES:
            ctx.bad_row(path, line, f"unknown qtype {qtype!r}")
            continue
        yield QA_TASK.record(ctx, ("qa", question, answer), input=question, output=answer)
        # The id leaves out the answer: a question asked twice (two sites) is one classification item.
        yield QTYPE_TASK.record(ctx, ("qtype", question, qtype), input=question, output=join_labels([qtype]))
