"""ChatDoctor (patient message -> doctor reply, 5k generated consultations) -> `dialogue`."""

from __future__ import annotations

from collections.abc import Iterator

from mdkif.data.builders.base import BuildContext, SourceSpec
from mdkif.data.builders.instructions import BuilderTask
from mdkif.data.records import SkillRecord

FILE = "chatdoctor/chatdoctor5k.json"
SPEC = SourceSpec(
    name="chatdoctor",
    skills=("dialogue",),
    files=(FILE,),
    description="ChatDoctor 5k: single-turn patient-doctor consultations (research use only).",
)

INSTRUCTIONS = (
    "You are a doctor. Reply to the patient's message.",
    "Act as a physician: respond to the patient, explaining the likely problem and next steps.",
    "If you are a doctor, please answer the medical questions based on the patient's description.",
    "Continue the consultation with the doctor's reply to this patient.",
)
TASK = BuilderTask("chatdoctor", "dialogue", "chatdoctor_consultation", INSTRUCTIONS)


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One dialogue record per patient message/doctor reply pair (row = position in the JSON list)."""
    for patient, doctor in ctx.read_input_output_pairs(FILE, ("patient", "doctor")):
        yield TASK.record(ctx, (patient, doctor), input=f"Patient: {patient}", output=doctor)
