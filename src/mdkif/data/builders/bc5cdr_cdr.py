"""BioCreative V CDR (PubTator) -> `relation_extraction` (causal) and `entity_synonymy`.

Each abstract carries chemical and disease mentions normalised to MeSH ids and document-level CID
(chemical-induced disease) relations between ids. CID is a causal relation: the chemical causes the
disease (typically an adverse effect), which is what the instructions ask about.

- `cdr_cid_yes_no`: "does chemical X induce disease Y in this abstract?"; every CID pair is a `yes`,
  and as many `no` pairs are sampled from the chemical-disease pairs of the same abstracts that have
  no CID relation (so the model cannot win by always answering one way).
- `cdr_cid_list`: list every chemical-induced-disease pair of an abstract (`chemical -> disease`).
- `cdr_synonym_yes_no` / `cdr_synonyms`: surface mentions normalised to the same MeSH id are synonyms
  ("hypotension" / "hypotensive", "suxamethonium chloride" / "Sch"); mentions of two different ids of
  the same type are not.

Only the training and development sets are read; the test set is the task's held-out split.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mdkif.data.builders.base import BuildContext, SourceSpec
from mdkif.data.builders.instructions import choose, join_labels
from mdkif.data.records import SkillRecord, make_id

FILES: tuple[str, ...] = (
    "re_bc5cdr/CDR_TrainingSet.PubTator.txt",
    "re_bc5cdr/CDR_DevelopmentSet.PubTator.txt",
)
SPEC = SourceSpec(
    name="bc5cdr_cdr",
    skills=("relation_extraction", "entity_synonymy"),
    files=FILES,
    description="BioCreative V CDR: 1,000 PubMed abstracts with MeSH-normalised chemicals, diseases and "
    "chemical-induced-disease relations (train + development).",
)

TYPES = ("Chemical", "Disease")
NO_ID = "-1"  # PubTator's id for a mention that could not be normalised

_CAUSAL = (
    "A chemical-induced disease (CID) relation is causal: the chemical causes or induces the disease "
    "(for example as an adverse effect), as opposed to treating it or merely being mentioned with it."
)
YES_NO_INSTRUCTIONS = (
    f"{_CAUSAL} According to the abstract below, does '{{chem}}' induce '{{dis}}'? Answer yes or no.",
    f"Read the abstract. Does it report that the chemical '{{chem}}' causes the disease '{{dis}}'? "
    f"{_CAUSAL} Answer yes or no.",
    f"Causal relation extraction: based only on this abstract, is '{{dis}}' induced by '{{chem}}'? "
    f"{_CAUSAL} Answer yes or no.",
)
LIST_INSTRUCTIONS = (
    f"{_CAUSAL} List every chemical-induced disease pair stated in the abstract as 'chemical -> disease', "
    "separated by '; '. Answer 'none' if there is none.",
    "Extract the causal chemical-disease relations from this abstract: which chemicals induce which "
    "diseases? Write each pair as 'chemical -> disease', separated by '; ', or 'none'.",
)
SYNONYM_YES_NO_INSTRUCTIONS = (
    "Do '{a}' and '{b}' refer to the same {kind}? Answer yes or no.",
    "Are the {kind} names '{a}' and '{b}' synonyms (the same concept)? Answer yes or no.",
    "In biomedical text, is '{b}' another name for the {kind} '{a}'? Answer yes or no.",
)
SYNONYM_INSTRUCTIONS = (
    "Give other names, abbreviations or word forms used for the {kind} '{name}', separated by '; '.",
    "List synonyms of the {kind} '{name}' as they appear in biomedical literature, separated by '; '.",
)


@dataclass(frozen=True)
class Mention:
    text: str
    type: str
    ids: tuple[str, ...]
    # For a composite mention ("pulmonary and renal insufficiency") the name of each id, when given.
    names: tuple[str, ...]


@dataclass
class Document:
    pmid: str
    line: int
    title: str = ""
    abstract: str = ""
    mentions: list[Mention] = field(default_factory=list)
    relations: list[tuple[str, str]] = field(default_factory=list)

    def text(self) -> str:
        return f"{self.title}\n{self.abstract}"

    def names(self) -> dict[str, str]:
        """Id -> the first name it appears under (what a reader of the abstract would call it)."""
        out: dict[str, str] = {}
        for m in self.mentions:
            for i, id_ in enumerate(m.ids):
                name = m.names[i] if len(m.ids) > 1 and len(m.names) == len(m.ids) else m.text
                if id_ != NO_ID:
                    out.setdefault(id_, name)
        return out

    def ids_of(self, etype: str) -> list[str]:
        return list(dict.fromkeys(i for m in self.mentions if m.type == etype for i in m.ids if i != NO_ID))


def read_pubtator(ctx: BuildContext, rel: str) -> Iterator[Document]:
    """Documents of one PubTator file; a document with a malformed line goes to `ctx.bad_row` whole."""
    path = ctx.path(rel)
    doc: Document | None = None
    bad = False
    with path.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                if doc is not None and not bad and _complete(ctx, path, doc):
                    yield doc
                doc, bad = None, False
                continue
            if bad:  # the rest of a malformed document
                continue
            doc, error = _parse_line(line, doc, n)
            if error:
                ctx.bad_row(path, n, error)
                bad = True
    if doc is not None and not bad and _complete(ctx, path, doc):
        yield doc


def _complete(ctx: BuildContext, path: Path, doc: Document) -> bool:
    """Whether a parsed document has an abstract and mentions for every id its relations name."""
    names = doc.names()
    missing = [i for pair in doc.relations for i in pair if i not in names]
    if not doc.abstract or missing:
        problem = (
            "no abstract line" if not doc.abstract else f"CID relation names ids never mentioned: {missing}"
        )
        ctx.bad_row(path, doc.line, f"document {doc.pmid}: {problem}")
        return False
    return True


_TEXT_LINE = re.compile(r"^([^\t|]+)\|([ta])\|(.*)$")


def _parse_line(line: str, doc: Document | None, n: int) -> tuple[Document | None, str | None]:
    """Add one line to the current document (a title line starts one): (document, error message)."""
    if m := _TEXT_LINE.match(line):
        pmid, part, text = m.groups()
        if part == "t":
            if doc is not None:
                return doc, "title line inside a document (missing blank line?)"
            return Document(pmid=pmid, line=n, title=text.strip()), None
        if doc is None or doc.pmid != pmid:
            return doc, f"abstract line for PMID {pmid} outside its document"
        doc.abstract = text.strip()
        return doc, None
    fields = line.split("\t")
    if doc is None or fields[0] != doc.pmid:
        return doc, f"annotation for PMID {fields[0]!r} outside its document"
    if len(fields) == 4 and fields[1] == "CID":
        doc.relations.append((fields[2], fields[3]))
        return doc, None
    if len(fields) not in (6, 7) or fields[4] not in TYPES:
        return doc, f"expected a mention (6-7 fields, type Chemical/Disease) or a CID relation: {line[:80]!r}"
    try:
        start, end = int(fields[1]), int(fields[2])
    except ValueError:
        return doc, f"mention offsets are not integers: {fields[1]!r}, {fields[2]!r}"
    # PubTator offsets count the title, one separator and the abstract; ours joins them with one newline.
    if doc.text()[start:end] != fields[3]:
        return doc, f"mention {fields[3]!r} does not match the text at offsets {start}-{end}"
    names = tuple(fields[6].split("|")) if len(fields) == 7 else ()
    doc.mentions.append(Mention(fields[3], fields[4], tuple(fields[5].split("|")), names))
    return doc, None


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """CID yes/no and list records per abstract, then synonymy records over all abstracts."""
    docs = [doc for rel in FILES for doc in read_pubtator(ctx, rel)]
    yield from _cid_yes_no(ctx, docs)
    yield from _cid_lists(ctx, docs)
    yield from _synonyms(ctx, docs)


def _record(skill: str, task: str, instruction: str, input: str, output: str) -> SkillRecord:
    rid = make_id(SPEC.name, task, instruction, input, output)
    return SkillRecord(
        id=rid, skill=skill, task=task, instruction=instruction, input=input, output=output, source=SPEC.name
    )


def _cid_yes_no(ctx: BuildContext, docs: list[Document]) -> Iterator[SkillRecord]:
    positives: list[tuple[int, str, str]] = []
    negatives: list[tuple[int, str, str]] = []
    for k, doc in enumerate(docs):
        cid = set(doc.relations)
        positives += [(k, c, d) for c, d in doc.relations]
        negatives += [
            (k, c, d) for c in doc.ids_of("Chemical") for d in doc.ids_of("Disease") if (c, d) not in cid
        ]
    negatives = ctx.rng("bc5cdr_cdr:cid_negatives").sample(negatives, min(len(positives), len(negatives)))
    # In abstract order, so that a capped prefix of the stream is still about balanced.
    pairs = sorted([(*p, "yes") for p in positives] + [(*p, "no") for p in negatives])
    for k, c, d, answer in pairs:
        doc = docs[k]
        names = doc.names()
        key = make_id(SPEC.name, doc.pmid, c, d)
        instruction = choose(ctx, key, YES_NO_INSTRUCTIONS).format(chem=names[c], dis=names[d])
        yield _record("relation_extraction", "cdr_cid_yes_no", instruction, doc.text(), answer)


def _cid_lists(ctx: BuildContext, docs: list[Document]) -> Iterator[SkillRecord]:
    for doc in docs:
        names = doc.names()
        pairs = list(dict.fromkeys(f"{names[c]} -> {names[d]}" for c, d in doc.relations))
        instruction = choose(ctx, make_id(SPEC.name, doc.pmid), LIST_INSTRUCTIONS)
        yield _record("relation_extraction", "cdr_cid_list", instruction, doc.text(), join_labels(pairs))


def _synonyms(ctx: BuildContext, docs: list[Document]) -> Iterator[SkillRecord]:
    # Surface forms per (type, id), counted case-insensitively; the most frequent spelling stands for each.
    forms: dict[tuple[str, str], Counter[str]] = {}
    for doc in docs:
        for m in doc.mentions:
            if len(m.ids) == 1 and m.ids[0] != NO_ID:
                forms.setdefault((m.type, m.ids[0]), Counter())[m.text] += 1
    concepts: dict[tuple[str, str], list[str]] = {}
    for key, counts in sorted(forms.items()):
        by_lower: dict[str, str] = {}
        for text, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0])):
            by_lower.setdefault(text.lower(), text)
        concepts[key] = list(by_lower.values())  # most frequent first

    rng = ctx.rng("bc5cdr_cdr:synonyms")
    by_type = {t: [k for k in concepts if k[0] == t] for t in TYPES}
    for (etype, id_), names in concepts.items():
        kind = etype.lower()
        if len(names) < 2 or len(by_type[etype]) < 2:
            continue
        head, others = names[0], names[1:]
        instruction = choose(ctx, make_id(SPEC.name, "syn", id_), SYNONYM_INSTRUCTIONS).format(
            kind=kind, name=head
        )
        yield _record("entity_synonymy", "cdr_synonyms", instruction, "", "; ".join(others))
        # One positive pair per extra form, and one negative pair (another concept of the same type) each.
        for other in others:
            foreign = (etype, id_)
            while foreign == (etype, id_):
                foreign = by_type[etype][rng.randrange(len(by_type[etype]))]
            wrong = concepts[foreign][rng.randrange(len(concepts[foreign]))]
            for b, answer in ((other, "yes"), (wrong, "no")):
                templates = SYNONYM_YES_NO_INSTRUCTIONS
                instruction = choose(ctx, make_id(SPEC.name, head, b), templates).format(
                    a=head, b=b, kind=kind
                )
                yield _record("entity_synonymy", "cdr_synonym_yes_no", instruction, "", answer)
