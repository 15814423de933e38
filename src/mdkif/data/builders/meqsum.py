"""MeQSum (consumer health questions and their expert one-line summaries) -> `summarization`."""

from __future__ import annotations

from collections.abc import Iterator

from mdkif.data.builders.base import BuildContext, SourceSpec, clean
from mdkif.data.builders.instructions import BuilderTask
from mdkif.data.records import SkillRecord

FILE = "meqsum/meqsum.jsonl"
SPEC = SourceSpec(
    name="meqsum",
    skills=("summarization",),
    files=(FILE,),
    description="MeQSum: 1,000 long consumer health questions with short expert summaries.",
)

INSTRUCTIONS = (
    "Summarize the patient's message as one short medical question.",
    "Rewrite this consumer health question as a concise question that keeps only what is asked.",
    "Condense the following message into the single question the person needs answered.",
)
TASK = BuilderTask("meqsum", "summarization", "meqsum_question_summary", INSTRUCTIONS)


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One summarization record per question; the `File` field names the native item."""
    path = ctx.path(FILE)
    for line, row in ctx.read_jsonl(FILE):
        message, summary = clean(row.get("CHQ")), clean(row.get("Summary"))
        if not message or not summary:
            ctx.bad_row(path, line, "missing 'CHQ' or 'Summary'")
            continue
        yield TASK.record(ctx, (message, summary), input=message, output=summary)
