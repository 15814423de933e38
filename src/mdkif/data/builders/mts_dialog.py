"""MTS-Dialog (doctor-patient conversations with clinical-note sections) -> three skills.

- `summarization`: conversation -> the note section it documents (the dataset's own task).
- `multilabel_classification`: which of the 20 note sections the conversation documents. It is single
  label; like MedQuAD's question types it uses the shared "labels from a given set, '; '-joined" format.
- `dialogue`: conversation so far -> the doctor's next turn, cut before one doctor turn per conversation.
Both the training and validation files are read; the build makes its own split like for every source.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mdkif.data.builders.base import BuildContext, SourceSpec, clean
from mdkif.data.builders.instructions import BuilderTask, join_labels
from mdkif.data.records import SkillRecord, make_id

FILES = ("mts_dialog/MTS-Dialog-TrainingSet.csv", "mts_dialog/MTS-Dialog-ValidationSet.csv")
SPEC = SourceSpec(
    name="mts_dialog",
    skills=("summarization", "multilabel_classification", "dialogue"),
    files=FILES,
    description="MTS-Dialog: 1,301 short doctor-patient conversations with their clinical-note sections.",
)

# Native header code -> the section name a clinician would use (from the dataset README).
SECTIONS: dict[str, str] = {
    "FAM/SOCHX": "family history/social history",
    "GENHX": "history of present illness",
    "PASTMEDICALHX": "past medical history",
    "CC": "chief complaint",
    "PASTSURGICAL": "past surgical history",
    "ALLERGY": "allergy",
    "ROS": "review of systems",
    "MEDICATIONS": "medications",
    "ASSESSMENT": "assessment",
    "EXAM": "exam",
    "DIAGNOSIS": "diagnosis",
    "DISPOSITION": "disposition",
    "PLAN": "plan",
    "EDCOURSE": "emergency department course",
    "IMMUNIZATIONS": "immunizations",
    "IMAGING": "imaging",
    "GYNHX": "gynecologic history",
    "PROCEDURES": "procedures",
    "OTHER_HISTORY": "other history",
    "LABS": "labs",
}
# Speaker tags as written (typos included) -> one spelling.
SPEAKERS = {
    "doctor": "Doctor",
    "patient": "Patient",
    "guest_family": "Family member",
    "gest_family": "Family member",
    "guest_clinician": "Clinician",
    "guest_clinican": "Clinician",
}
_TURN = re.compile(r"^\s*([A-Za-z_]+)\s*:\s*(.*)$")

SUMMARY_INSTRUCTIONS = (
    "Write the '{section}' section of the clinical note for this doctor-patient conversation.",
    "Summarize the conversation as the '{section}' section of a clinical note.",
    "From the dialogue below, draft the clinical note's {section} section in professional language.",
)
SUMMARY_TASK = BuilderTask("mts_dialog", "summarization", "mts_dialog_note_section", SUMMARY_INSTRUCTIONS)
_NAMES = ", ".join(SECTIONS.values())
SECTION_INSTRUCTIONS = (
    f"Which section of the clinical note does this conversation document? Sections: {_NAMES}. "
    "Answer with the section name(s), separated by '; '.",
    f"Classify the doctor-patient conversation by the clinical-note section it belongs to. Choose from: "
    f"{_NAMES}. Output the label(s) separated by '; '.",
)
SECTION_TASK = BuilderTask(
    "mts_dialog", "multilabel_classification", "mts_dialog_section_header", SECTION_INSTRUCTIONS
)
DIALOGUE_INSTRUCTIONS = (
    "You are the doctor in this consultation. Write your next turn.",
    "Continue the conversation with the doctor's next question or reply.",
    "Given the conversation so far, what should the doctor say next?",
)
DIALOGUE_TASK = BuilderTask("mts_dialog", "dialogue", "mts_dialog_next_turn", DIALOGUE_INSTRUCTIONS)


def parse_turns(dialogue: str) -> list[tuple[str, str]] | None:
    """(speaker, text) turns; a line without a speaker tag continues the previous turn. None if untagged."""
    turns: list[tuple[str, str]] = []
    for raw in dialogue.splitlines():
        if not raw.strip():
            continue
        m = _TURN.match(raw)
        if m and m.group(1).lower() in SPEAKERS:
            turns.append((SPEAKERS[m.group(1).lower()], clean(m.group(2))))
        elif turns:
            turns[-1] = (turns[-1][0], clean(f"{turns[-1][1]} {raw}"))
        else:
            return None
    return [t for t in turns if t[1]] or None


def _render(turns: list[tuple[str, str]]) -> str:
    return "\n".join(f"{who}: {text}" for who, text in turns)


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """Per conversation: a section summary, a section label and (when it has one) a next-doctor-turn item."""
    for rel in FILES:
        path = ctx.path(rel)
        for line, row in ctx.read_csv(rel):
            header, note = clean(row.get("section_header")).upper(), clean(row.get("section_text"))
            turns = parse_turns(row.get("dialogue") or "")
            if header not in SECTIONS or not note or turns is None:
                ctx.bad_row(path, line, f"needs a known section_header (got {header!r}), text and a dialogue")
                continue
            section, conversation = SECTIONS[header], _render(turns)

            yield SUMMARY_TASK.record(
                ctx, ("note", conversation, note), input=conversation, output=note, fill=dict(section=section)
            )
            yield SECTION_TASK.record(
                ctx, ("section", conversation, section), input=conversation, output=join_labels([section])
            )
            # A doctor turn that answers something: never the opening line, which has no context.
            cuts = [i for i, (who, _) in enumerate(turns) if who == "Doctor" and i > 0]
            if cuts:
                i = ctx.rng(make_id("mts_dialog", "turn", conversation) + ":cut").choice(cuts)
                yield DIALOGUE_TASK.record(
                    ctx, ("turn", conversation), input=_render(turns[:i]), output=turns[i][1]
                )
