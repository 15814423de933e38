"""Medical Meadow WikiDoc patient information (medalpaca) -> `qa`.

The native file is already instruction-shaped, but every row has the same instruction ("Answer this
question truthfully"); we keep the question and answer and draw the instruction from our own
paraphrases, like every other QA source.
"""

from __future__ import annotations

from collections.abc import Iterator

from mdkif.data.builders.base import BuildContext, SourceSpec
from mdkif.data.builders.instructions import BuilderTask
from mdkif.data.records import SkillRecord

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
TASK = BuilderTask("medalpaca_wikidoc", "qa", "wikidoc_patient_qa", INSTRUCTIONS)


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One `qa` record per question/answer pair; the position in the JSON list is the row number."""
    for question, answer in ctx.read_input_output_pairs(FILE, ("question", "answer")):
        yield TASK.record(ctx, (question, answer), input=question, output=answer)
