"""Medical Meadow WikiDoc patient information (medalpaca) -> `qa`.

The native file is already instruction-shaped, but every row has the same instruction ("Answer this
question truthfully"); we keep the question and answer and draw the instruction from our own
paraphrases, like every other QA source.
"""

from __future__ import annotations

from collections.abc import Iterator

from mdkif.data.builders.base import BuildContext, SourceSpec, clean
from mdkif.data.builders.instructions import choose
from mdkif.data.errors import DataError
from mdkif.data.records import SkillRecord, make_id

FILE = "medalpaca_wikidoc/medical_meadow_small.json"
SPEC = SourceSpec(
    name="medalpaca_wikidoc",
    skills=("qa",),
    files=(FILE,),
    description="WikiDoc patient-information Q/A pairs from medalpaca's Medical Meadow (5,942).",
)

INSTRUCTIONS = (
    "Answer this medical question truthfully.",
    "Answer the following question about a health condition.",
    "Explain the answer to this patient-information question.",
    "Respond to the medical question below with accurate information.",
)


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One `qa` record per question/answer pair; the position in the JSON list is the row number."""
    path = ctx.path(FILE)
    rows = ctx.read_json(FILE)
    if not isinstance(rows, list):
        raise DataError(path, "expected a JSON list of {instruction, input, output} objects")
    for n, row in enumerate(rows, start=1):
        question = clean(row.get("input")) if isinstance(row, dict) else ""
        answer = clean(row.get("output")) if isinstance(row, dict) else ""
        if not question or not answer:
            ctx.bad_row(path, None, f"item {n}: missing 'input' (question) or 'output' (answer)")
            continue
        rid = make_id("medalpaca_wikidoc", question, answer)
        yield SkillRecord(
            id=rid,
            skill="qa",
            task="wikidoc_patient_qa",
            instruction=choose(ctx, rid, INSTRUCTIONS),
            input=question,
            output=answer,
            source="medalpaca_wikidoc",
        )
