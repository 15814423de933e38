"""BC5CDR (IOB) -> `ner`: list the chemical and the disease mentions of a PubMed sentence.

The relation annotations of the same corpus (PubTator format) feed `bc5cdr_cdr`; this module only
reads the sentence-split IOB version.
"""

from __future__ import annotations

from collections.abc import Iterator

from mdkif.data.builders import _iob
from mdkif.data.builders.base import BuildContext
from mdkif.data.records import SkillRecord

_FORMAT = (
    "Answer in two lines, 'Chemical: ...' and 'Disease: ...', each listing the mentions in order of "
    "appearance separated by '; ' (or 'none')."
)
INSTRUCTIONS = (
    f"Find the chemical and disease entities in the sentence. {_FORMAT}",
    f"Extract all chemicals (drugs included) and all diseases named in this biomedical sentence. {_FORMAT}",
    f"Recognise the chemical and disease mentions in the following text. {_FORMAT}",
)

CORPUS = _iob.IobCorpus(
    source="bc5cdr_ner",
    task="bc5cdr_ner",
    folder="ner/BC5CDR-IOB",
    types=("Chemical", "Disease"),
    instructions=INSTRUCTIONS,
    description="BioCreative V CDR: PubMed sentences with chemical and disease mentions (IOB), train + devel.",
)
SPEC = CORPUS.spec


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One record per sentence of train and devel."""
    yield from CORPUS.build(ctx)
