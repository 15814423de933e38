"""Choosing an instruction wording per record, reproducibly.

Each task carries several paraphrased instructions; training on a mix keeps a skill adapter from
keying on one exact sentence, which matters when the router reuses it for tasks phrased differently.
The choice is seeded by the build seed and the record's own key (not by row order), so an identical
native item always gets the identical record and exact duplicates stay exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mdkif.data.builders.base import BuildContext
from mdkif.data.records import SkillRecord, make_id


def choose(ctx: BuildContext, key: str, templates: Sequence[str]) -> str:
    """One of `templates`, picked by a RNG seeded from the build seed and `key` (usually the record id)."""
    return ctx.rng(key).choice(list(templates))


def join_labels(labels: Sequence[str]) -> str:
    """The one output format of every classification task: labels joined by '; ', or 'none'."""
    return "; ".join(labels) if labels else "none"


def skill_record(
    ctx: BuildContext,
    source: str,
    key: Sequence[str],
    *,
    skill: str,
    task: str,
    instructions: Sequence[str],
    output: str,
    input: str = "",
    fill: Mapping[str, str] | None = None,
) -> SkillRecord:
    """The record a builder yields: id `make_id(source, *key)`, instruction drawn by that id.

    `key` is the content that makes the item itself (so rebuilds give the same ids and exact duplicates stay
    exact); `fill` fills the `{names}` of the drawn template, when it has any.
    """
    rid = make_id(source, *key)
    instruction = choose(ctx, rid, instructions)
    return SkillRecord(
        id=rid,
        skill=skill,
        task=task,
        instruction=instruction.format(**fill) if fill else instruction,
        input=input,
        output=output,
        source=source,
    )


@dataclass(frozen=True)
class BuilderTask:
    """One task a builder emits, declared once at the top of its module: source, skill, task, wordings."""

    source: str
    skill: str
    task: str
    instructions: Sequence[str]

    def record(
        self,
        ctx: BuildContext,
        key: Sequence[str],
        *,
        output: str,
        input: str = "",
        fill: Mapping[str, str] | None = None,
    ) -> SkillRecord:
        """This task's record for one item (see `skill_record` for the id and the instruction)."""
        return skill_record(
            ctx,
            self.source,
            key,
            skill=self.skill,
            task=self.task,
            instructions=self.instructions,
            output=output,
            input=input,
            fill=fill,
        )
