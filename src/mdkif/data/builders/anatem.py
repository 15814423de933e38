"""AnatEM (IOB) -> `ner`: list the anatomical entities (organs, tissues, cells...) of a sentence."""

from __future__ import annotations

from collections.abc import Iterator

from mdkif.data.builders import _iob
from mdkif.data.builders.base import BuildContext
from mdkif.data.records import SkillRecord

INSTRUCTIONS = (
    "List the anatomical entities (organs, tissues, cells, body parts, cellular components) mentioned "
    "in the sentence, in order of appearance, separated by '; '. Answer 'none' if there are none.",
    "Extract every mention of an anatomical structure from this text. Give them separated by '; ', "
    "or 'none'.",
    "Which anatomy terms (from whole organs down to cell types and subcellular structures) appear in "
    "the sentence? Write each one exactly as it appears, separated by '; ' ('none' if there are none).",
)

CORPUS = _iob.IobCorpus(
    source="anatem",
    task="anatem_ner",
    folder="ner/AnatEM-IOB",
    types=("Anatomy",),
    instructions=INSTRUCTIONS,
    description="AnatEM: biomedical sentences with anatomical entity mentions (IOB), train + devel.",
)
SPEC = CORPUS.spec


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One record per sentence of train and devel."""
    yield from CORPUS.build(ctx)
