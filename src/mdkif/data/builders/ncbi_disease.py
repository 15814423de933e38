"""NCBI-disease (IOB) -> `ner`: list the disease mentions of a PubMed sentence."""

from __future__ import annotations

from collections.abc import Iterator

from mdkif.data.builders import _iob
from mdkif.data.builders.base import BuildContext
from mdkif.data.records import SkillRecord

INSTRUCTIONS = (
    "List the disease mentions in the sentence, in order of appearance, separated by '; '. "
    "Answer 'none' if there are none.",
    "Extract every disease or disorder named in the following biomedical sentence. "
    "Give them separated by '; ', or 'none'.",
    "Which diseases are mentioned in this sentence? Write each one exactly as it appears, "
    "separated by '; ' ('none' if no disease is mentioned).",
)

CORPUS = _iob.IobCorpus(
    source="ncbi_disease",
    task="ncbi_disease_ner",
    folder="ner/NCBI-disease-IOB",
    types=("Disease",),
    instructions=INSTRUCTIONS,
    description="NCBI-disease: PubMed sentences with disease mentions (IOB), train + devel.",
)
SPEC = CORPUS.spec


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One record per sentence of train and devel."""
    yield from CORPUS.build(ctx)
