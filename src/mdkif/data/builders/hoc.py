"""Hallmarks of Cancer (PubMed abstracts, 10 hallmark classes) -> `multilabel_classification`.

Document-level labels (`doc_hallmarks`) are the target; an abstract with none is labelled 'none',
which the model must learn to say too (272 of 1,852 abstracts). The native sentences are tokenized
("( GHS-R ) ."); they are joined and the spaces around punctuation undone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mdkif.data.builders.base import BuildContext, SourceSpec, clean
from mdkif.data.builders.instructions import BuilderTask, join_labels
from mdkif.data.records import SkillRecord

FILE = "hoc/hoc.jsonl"
SPEC = SourceSpec(
    name="hoc",
    skills=("multilabel_classification",),
    files=(FILE,),
    description="Hallmarks of Cancer corpus: 1,852 abstracts with document-level hallmark labels.",
)

# The ten hallmarks as the corpus spells them (Hanahan & Weinberg's taxonomy), in a fixed order.
HALLMARKS: tuple[str, ...] = (
    "Sustaining proliferative signaling",
    "Evading growth suppressors",
    "Resisting cell death",
    "Enabling replicative immortality",
    "Inducing angiogenesis",
    "Activating invasion and metastasis",
    "Genomic instability and mutation",
    "Tumor promoting inflammation",
    "Cellular energetics",
    "Avoiding immune destruction",
)
_NAMES = "; ".join(HALLMARKS)
INSTRUCTIONS = (
    f"Which hallmarks of cancer does this abstract discuss? Hallmarks: {_NAMES}. "
    "List every hallmark that applies, separated by '; ', or answer 'none'.",
    f"Classify the PubMed abstract into the hallmarks of cancer it addresses (zero or more of: {_NAMES}). "
    "Output the hallmarks separated by '; ', or 'none' if it addresses none.",
    f"Assign hallmark-of-cancer labels to the abstract. Label set: {_NAMES}. "
    "Answer with all matching labels separated by '; ' ('none' if no label applies).",
)
TASK = BuilderTask("hoc", "multilabel_classification", "hoc_hallmarks", INSTRUCTIONS)


def detokenize(text: str) -> str:
    """Undo PTB-style spacing: '( GHS-R ) .' -> '(GHS-R).'"""
    text = re.sub(r"\s+([.,;:%)\]])", r"\1", text)
    return re.sub(r"([(\[])\s+", r"\1", text)


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One record per abstract: its text and the canonical-order list of its hallmarks."""
    path = ctx.path(FILE)
    for line, row in ctx.read_jsonl(FILE):
        sentences, labels = row.get("sentences"), row.get("doc_hallmarks")
        if not isinstance(sentences, list) or not isinstance(labels, list):
            ctx.bad_row(path, line, "needs 'sentences' and 'doc_hallmarks' lists")
            continue
        text = detokenize(clean(" ".join(str(s) for s in sentences)))
        unknown = set(labels) - set(HALLMARKS)
        if not text or unknown:
            ctx.bad_row(path, line, f"empty abstract or unknown hallmark(s) {sorted(unknown)}")
            continue
        yield TASK.record(
            ctx,
            (str(row.get("pmid", "")), text),
            input=text,
            output=join_labels([h for h in HALLMARKS if h in labels]),
        )
