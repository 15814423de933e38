"""Medical exam questions (HEAD-QA train, MMLU medical dev) -> `mcqa`.

The MedQA and MedMCQA training splits live only on dataset hubs, so the multiple-choice skill learns from
the exam questions that are at hand locally: HEAD-QA's train split (Spanish healthcare specialisation
exams, English version) and MMLU's medical `dev` split (MMLU's few-shot pool). The evaluated splits
(HEAD-QA dev, MMLU val) are never read here. Parsing is the benchmark loaders' (`mdkif.data.mcq`), so a
training item looks exactly like an evaluated one; the answer is written as `Answer: X`, the format the
strict evaluation parser reads.
"""

from __future__ import annotations

from collections.abc import Iterator

from mdkif.data.builders.base import BuildContext, SourceSpec
from mdkif.data.builders.instructions import skill_record
from mdkif.data.mcq import headqa, mmlu
from mdkif.data.records import MCQRecord, SkillRecord

HEADQA = "mcq/headqa_en/train_HEAD_EN.json"
MMLU_DEV = "mcq/mmlu_med/dev"
SPEC = SourceSpec(
    name="mcq_exams",
    skills=("mcqa",),
    files=(HEADQA, MMLU_DEV),
    description="HEAD-QA train (2,657) and MMLU medical dev (45) multiple-choice exam questions.",
)

INSTRUCTIONS = (
    "Answer the following multiple-choice medical question. Reply with 'Answer: ' and the letter.",
    "Choose the single best option for this medical exam question and give it as 'Answer: <letter>'.",
    "Read the question and the options, then state the correct option as 'Answer: <letter>'.",
)


def mcq_input(item: MCQRecord) -> str:
    """`Question: ...` then `Options:` and one `X. option` line each: the layout the evaluation renders."""
    options = "\n".join(f"{key}. {text}" for key, text in item.options.items())
    return f"Question: {item.question.strip()}\nOptions:\n{options}"


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One record per exam item; the task names the exam collection."""
    for task, items in (
        ("headqa_mcq", headqa.load(ctx.path(HEADQA))),
        ("mmlu_med_dev_mcq", mmlu.load(ctx.path(MMLU_DEV))),
    ):
        for item in items:
            text = mcq_input(item)
            yield skill_record(
                ctx,
                "mcq_exams",
                (item.id, text),
                skill="mcqa",
                task=task,
                instructions=INSTRUCTIONS,
                input=text,
                output=f"Answer: {item.answer}",
            )
