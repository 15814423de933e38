"""BLURB relation extraction (GAD, EU-ADR, DDI) -> `relation_extraction`.

Each native row (JSON lines) is one sentence whose two target entities are masked with tags such as
`@GENE$`, `@DISEASE$` or `@DRUG$`, and one relation whose type comes from the folder's
`relation_types.json`; the output is that label, spelled exactly as the label set spells it.

Which files: GAD's `dev_0` (its `test_0` is BLURB's held-out test); DDI's `dev_0` (the only split
here); and EU-ADR's ten `test_*` folds, which partition its 355 sentences once each (every `train_*`
is the complement of a fold, so reading those would repeat each sentence nine times). DDI is mostly
`DDI-false`: those rows are sampled down to the number of interacting pairs, so the label a model
could always answer is not three quarters of the task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mdkif.data.builders.base import BuildContext, SourceSpec, clean
from mdkif.data.builders.instructions import skill_record
from mdkif.data.errors import DataError
from mdkif.data.records import SkillRecord


@dataclass(frozen=True)
class Corpus:
    """One BLURB folder: the task it feeds, its files and how its instructions describe it."""

    task: str
    folder: str
    files: tuple[str, ...]
    instructions: tuple[str, ...]
    negative: str | None = None  # a label to sample down to the count of all other labels


_GENE_DISEASE = (
    "The sentence mentions a gene, masked as @GENE$, and a disease, masked as @DISEASE$. Does it state "
    "an association between that gene and that disease? Answer with one label: {labels}.",
    "Gene-disease relation extraction. In the sentence below the gene is replaced by @GENE$ and the "
    "disease by @DISEASE$. Is the gene reported to be associated with the disease? Labels: {labels}.",
    "Classify the relation between @GENE$ and @DISEASE$ in this sentence as one of: {labels} "
    "(positive = the text supports a gene-disease association).",
)
_DDI = (
    "Two drugs in the sentence are masked as @DRUG$. Classify the drug-drug interaction the sentence "
    "states between them. Labels: {labels}. Answer with the label only.",
    "Drug-drug interaction extraction: what does the sentence say about the interaction between the "
    "two masked drugs (@DRUG$)? Choose one label: {labels}.",
)
# What each DDI label means, shown next to the label in the instruction.
DDI_MEANINGS = {
    "DDI-false": "no interaction stated",
    "DDI-advise": "a recommendation or warning about using them together",
    "DDI-effect": "an effect or clinical outcome of the combination",
    "DDI-int": "an interaction is stated without details",
    "DDI-mechanism": "a pharmacokinetic mechanism, e.g. one changes the other's level",
}

CORPORA: tuple[Corpus, ...] = (
    Corpus("gad_re", "re_blurb/GAD", ("dev_0.json",), _GENE_DISEASE),
    Corpus("euadr_re", "re_blurb/EU-ADR", tuple(f"test_{i}.json" for i in range(10)), _GENE_DISEASE),
    Corpus("ddi_re", "re_blurb/DDI", ("dev_0.json",), _DDI, negative="DDI-false"),
)
SPEC = SourceSpec(
    name="blurb_re",
    skills=("relation_extraction",),
    files=tuple(f"{c.folder}/{name}" for c in CORPORA for name in ("relation_types.json", *c.files)),
    description="BLURB relation extraction: GAD and EU-ADR gene-disease associations, DDI drug-drug "
    "interactions (entity-masked sentences).",
)


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One record per sentence of each corpus (DDI's negatives sampled down)."""
    for corpus in CORPORA:
        yield from _build_corpus(ctx, corpus)


def _build_corpus(ctx: BuildContext, corpus: Corpus) -> Iterator[SkillRecord]:
    labels = _labels(ctx, f"{corpus.folder}/relation_types.json")
    shown = ", ".join(f"{lab} ({DDI_MEANINGS[lab]})" if lab in DDI_MEANINGS else lab for lab in labels)
    rows: list[tuple[str, str]] = []
    for name in corpus.files:
        rel = f"{corpus.folder}/{name}"
        for line, row in ctx.read_jsonl(rel):
            text, relations = clean(row.get("text")), row.get("relation")
            if not text or not isinstance(relations, list) or len(relations) != 1:
                ctx.bad_row(ctx.path(rel), line, "expected non-empty 'text' and exactly one 'relation'")
                continue
            label = relations[0].get("relation_type") if isinstance(relations[0], dict) else None
            if label not in labels:
                ctx.bad_row(ctx.path(rel), line, f"relation_type {label!r} is not in {labels}")
                continue
            rows.append((text, label))
    if corpus.negative is not None:
        negatives = [i for i, (_, label) in enumerate(rows) if label == corpus.negative]
        n_keep = min(len(rows) - len(negatives), len(negatives))
        dropped = set(negatives) - set(ctx.rng(f"blurb_re:{corpus.task}").sample(negatives, n_keep))
        rows = [row for i, row in enumerate(rows) if i not in dropped]  # native order
    for text, label in rows:
        yield skill_record(
            ctx,
            SPEC.name,
            (corpus.task, text, label),
            skill="relation_extraction",
            task=corpus.task,
            instructions=corpus.instructions,
            input=text,
            output=label,
            fill=dict(labels=shown),
        )


def _labels(ctx: BuildContext, rel: str) -> list[str]:
    """The label set of a folder, in the order of its ids (`{"label": {"id": 0, ...}, ...}`)."""
    types = ctx.read_json(rel)
    try:
        return [name for name, _ in sorted(types.items(), key=lambda kv: int(kv[1]["id"]))]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise DataError(ctx.path(rel), "expected relation types as {label: {'id': int, ...}}") from None
