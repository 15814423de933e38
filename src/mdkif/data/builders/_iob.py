"""Shared reader for the IOB-tagged NER corpora (NCBI-disease, BC5CDR, AnatEM) -> `ner` records.

The native files hold one `token<TAB>tag` per line and a blank line between sentences, with tags
`O`, `B-<Type>` and `I-<Type>`. Each sentence becomes one record: the detokenised sentence as input,
the entities as output, one line per entity type for corpora with several types. A build reads only
`train` and `devel`; `test` is the corpora's held-out split, read only by `data.tasks` for scoring.
A corpus is one `IobCorpus` declaration in its builder module.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mdkif.data.builders.base import BuildContext, SourceSpec
from mdkif.data.builders.instructions import join_labels, skill_record
from mdkif.data.records import SkillRecord

SPLITS: tuple[str, ...] = ("train.tsv", "devel.tsv")

# Pairwise spacing rules: whether a space goes between two tokens depends only on those two, so the
# detokenised text of any token span is exactly a substring of the detokenised sentence.
_NO_SPACE_BEFORE = frozenset(",.;:!?)]}%'-/")
_NO_SPACE_AFTER = frozenset("([{'-/")


@dataclass(frozen=True)
class Sentence:
    """One sentence of an IOB file: its first line number, tokens and tags."""

    line: int
    tokens: tuple[str, ...]
    tags: tuple[str, ...]


def detokenize(tokens: Sequence[str]) -> str:
    """Join tokens into readable text ("Parkinson ' s disease" -> "Parkinson's disease")."""
    out: list[str] = []
    for i, tok in enumerate(tokens):
        if i and tok not in _NO_SPACE_BEFORE and tokens[i - 1] not in _NO_SPACE_AFTER:
            out.append(" ")
        out.append(tok)
    return "".join(out)


def read_sentences(ctx: BuildContext, rel: str, types: Sequence[str]) -> Iterator[Sentence]:
    """Sentences of one IOB file; a sentence with a malformed line goes to `ctx.bad_row` whole."""
    path = ctx.path(rel)
    allowed = {"O"} | {f"{p}-{t}" for t in types for p in "BI"}
    tokens: list[str] = []
    tags: list[str] = []
    start, bad = 0, False
    with path.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                if tokens and not bad:
                    yield Sentence(start, tuple(tokens), tuple(tags))
                tokens, tags, bad = [], [], False
                continue
            if bad:  # the rest of a malformed sentence
                continue
            if not tokens:
                start = n
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].strip():
                ctx.bad_row(path, n, f"expected 'token<TAB>tag', got {line[:60]!r}")
                bad, tokens, tags = True, [], []
            elif fields[1] not in allowed:
                ctx.bad_row(path, n, f"unknown tag {fields[1]!r}; expected one of {sorted(allowed)}")
                bad, tokens, tags = True, [], []
            else:
                tokens.append(fields[0].strip())
                tags.append(fields[1])
    if tokens and not bad:
        yield Sentence(start, tuple(tokens), tuple(tags))


def entities(sentence: Sentence) -> list[tuple[str, str]]:
    """(type, text) of every entity span, in order; a stray `I-` opens a span like `B-` (lenient IOB)."""
    spans: list[tuple[str, str]] = []
    current: list[str] = []
    current_type = ""
    for tok, tag in zip(sentence.tokens, sentence.tags, strict=True):
        kind, _, etype = tag.partition("-")
        if current and (kind != "I" or etype != current_type):
            spans.append((current_type, detokenize(current)))
            current = []
        if kind in ("B", "I"):
            current_type = etype
            current.append(tok)
    if current:
        spans.append((current_type, detokenize(current)))
    return spans


def format_entities(spans: Sequence[tuple[str, str]], types: Sequence[str]) -> str:
    """The output: unique entities in order of appearance joined by '; ' ('none' when there are none);
    with several types, one line per type in `types` order, e.g. `Chemical: x\\nDisease: none`."""

    def unique(etype: str) -> list[str]:
        return list(dict.fromkeys(text for t, text in spans if t == etype))

    if len(types) == 1:
        return join_labels(unique(types[0]))
    return "\n".join(f"{t}: {join_labels(unique(t))}" for t in types)


@dataclass(frozen=True)
class IobCorpus:
    """One IOB NER corpus, declared once: its files, entity types, task and wordings.

    The builder module builds its skill records with it and `data.tasks` its scored test items, so both
    read the same folder with the same types and give a sentence the same id and instruction.
    """

    source: str
    task: str
    folder: str
    types: tuple[str, ...]
    instructions: tuple[str, ...]
    description: str

    @property
    def spec(self) -> SourceSpec:
        """The builder's source spec: the `train` and `devel` files only (`test` is held out)."""
        files = tuple(f"{self.folder}/{split}" for split in SPLITS)
        return SourceSpec(name=self.source, skills=("ner",), files=files, description=self.description)

    def sentences(self, ctx: BuildContext, split: str) -> Iterator[Sentence]:
        """The sentences of one split file (`train.tsv`, `devel.tsv` or `test.tsv`)."""
        return read_sentences(ctx, f"{self.folder}/{split}", self.types)

    def record(self, ctx: BuildContext, sentence: Sentence) -> SkillRecord:
        """The `ner` record of one sentence: detokenised text in, its entities (per type) out."""
        text = detokenize(sentence.tokens)
        output = format_entities(entities(sentence), self.types)
        return skill_record(
            ctx,
            self.source,
            (self.task, text, output),
            skill="ner",
            task=self.task,
            instructions=self.instructions,
            input=text,
            output=output,
        )

    def build(self, ctx: BuildContext) -> Iterator[SkillRecord]:
        """One record per sentence of the train and devel files."""
        for split in SPLITS:
            for sentence in self.sentences(ctx, split):
                yield self.record(ctx, sentence)
