"""MEDIQA 2019 -> `nli` (Task 2, question entailment) and `reading_comprehension` (Task 3, answers).

Task 2 (RQE): question A entails question B when every answer to B is also a (partial) answer to A;
a yes/no inference over two texts, so `nli`.
Task 3 (QA): for each consumer question, candidate answer passages judged 1-4. Reading a passage to
decide whether it answers the question is reading comprehension; two tasks come from it:
`mediqa_answer_relevance` (does this passage answer the question? scores 3-4 = yes, as the official
task defines correct answers) and `mediqa_best_answer` (which of two passages answers it: the reference
top answer against a passage judged incorrect or merely related).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from mdkif.data.builders.base import BuildContext, SourceSpec, clean
from mdkif.data.builders.instructions import BuilderTask
from mdkif.data.errors import DataError
from mdkif.data.records import SkillRecord, make_id

RQE_FILES = (
    "mediqa2019/MEDIQA2019-Task2-RQE-TrainingSet-AMIA2016.xml",
    "mediqa2019/MEDIQA2019-Task2-RQE-ValidationSet-AMIA2016.xml",
)
QA_FILES = (
    "mediqa2019/MEDIQA2019-Task3-QA-TrainingSet1-LiveQAMed.xml",
    "mediqa2019/MEDIQA2019-Task3-QA-TrainingSet2-Alexa.xml",
    "mediqa2019/MEDIQA2019-Task3-QA-ValidationSet.xml",
)
SPEC = SourceSpec(
    name="mediqa2019",
    skills=("nli", "reading_comprehension"),
    files=RQE_FILES + QA_FILES,
    description="MEDIQA 2019: question entailment pairs (RQE) and judged answers to consumer questions (QA).",
)

# Passages run to 16k characters; the best-answer task shows two at once, so each is cut at a word
# boundary. Relevance shows one passage and keeps it whole.
MAX_PASSAGE_CHARS = 1500

RQE_INSTRUCTIONS = (
    "Question A entails question B if every answer to B is also a complete or partial answer to A. "
    "Does question A entail question B? Answer yes or no.",
    "Decide whether answering question B would also (at least partly) answer question A. "
    "Reply yes if A entails B, otherwise no.",
    "Do these two medical questions ask for the same information, so that any answer to B also answers A? "
    "Answer yes or no.",
)
RQE_TASK = BuilderTask("mediqa2019", "nli", "mediqa_rqe", RQE_INSTRUCTIONS)
RELEVANCE_INSTRUCTIONS = (
    "Read the passage and decide whether it correctly answers the question. Answer yes or no.",
    "Does the passage below give a correct (possibly incomplete) answer to the consumer's question? "
    "Reply yes or no.",
    "Judge the candidate answer: is it a correct answer to the question? Answer yes or no.",
)
RELEVANCE_TASK = BuilderTask(
    "mediqa2019", "reading_comprehension", "mediqa_answer_relevance", RELEVANCE_INSTRUCTIONS
)
BEST_INSTRUCTIONS = (
    "Read the question and the two passages. Which passage answers the question? Answer A or B.",
    "Two candidate answers are given for a medical question. Reply with the letter of the passage that "
    "answers it correctly (A or B).",
)
BEST_TASK = BuilderTask("mediqa2019", "reading_comprehension", "mediqa_best_answer", BEST_INSTRUCTIONS)


def _parse(path: Path) -> tuple[ET.Element, list[str]]:
    """The XML root and the file's lines (used to find the line an element starts on)."""
    text = path.read_text(encoding="utf-8")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DataError(path, f"invalid XML ({exc})", exc.position[0]) from None
    return root, text.splitlines()


def _line_index(lines: list[str], attr: str) -> dict[str, int]:
    """Map each value of `attr="..."` to the line it first appears on: ElementTree keeps no line numbers."""
    index: dict[str, int] = {}
    pattern = re.compile(rf'\b{attr}="([^"]*)"')
    for n, line in enumerate(lines, start=1):
        for m in pattern.finditer(line):
            index.setdefault(m.group(1), n)
    return index


def _cut(text: str, limit: int = MAX_PASSAGE_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def _rqe(ctx: BuildContext, rel: str) -> Iterator[SkillRecord]:
    path = ctx.path(rel)
    root, lines = _parse(path)
    where = _line_index(lines, "pid")
    for pair in root.iter("pair"):
        line = where.get(pair.get("pid", ""))
        chq, faq, value = clean(pair.findtext("chq")), clean(pair.findtext("faq")), pair.get("value")
        if not chq or not faq or value not in ("true", "false"):
            ctx.bad_row(path, line, "RQE pair needs <chq>, <faq> and value=true|false")
            continue
        yield RQE_TASK.record(
            ctx,
            ("rqe", chq, faq),
            input=f"Question A: {chq}\nQuestion B: {faq}",
            output="yes" if value == "true" else "no",
        )


def _qa(ctx: BuildContext, rel: str) -> Iterator[SkillRecord]:
    path = ctx.path(rel)
    root, lines = _parse(path)
    where = _line_index(lines, "AID")
    for q in root.iter("Question"):
        question = clean(q.findtext("QuestionText"))
        judged: list[tuple[int, int, str]] = []  # (score, reference rank, passage)
        for a in q.iter("Answer"):
            line = where.get(a.get("AID", ""))
            text = clean(a.findtext("AnswerText"))
            score, rank = a.get("ReferenceScore", ""), a.get("ReferenceRank", "")
            if not question or not text or score not in ("1", "2", "3", "4") or not rank.isdigit():
                ctx.bad_row(
                    path, line, "answer needs QuestionText, AnswerText, ReferenceScore 1-4, ReferenceRank"
                )
                continue
            judged.append((int(score), int(rank), text))
            yield RELEVANCE_TASK.record(
                ctx,
                ("relevance", question, text),
                input=f"Question: {question}\n\nPassage: {text}",
                output="yes" if int(score) >= 3 else "no",
            )
        best = [j for j in judged if j[0] >= 3]
        wrong = [j for j in judged if j[0] <= 2]
        if not best or not wrong:
            continue  # nothing to contrast: every answer is right, or every answer is wrong
        good = min(best, key=lambda j: j[1])[2]
        low = min(j[0] for j in wrong)
        key = ("best", question, good)
        rng = ctx.rng(make_id("mediqa2019", *key) + ":passages")
        bad = rng.choice([j[2] for j in wrong if j[0] == low])
        first, second, answer = (good, bad, "A") if rng.random() < 0.5 else (bad, good, "B")
        yield BEST_TASK.record(
            ctx,
            key,
            input=f"Question: {question}\n\nPassage A: {_cut(first)}\n\nPassage B: {_cut(second)}",
            output=answer,
        )


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """RQE pairs from both RQE files, then relevance and best-answer items from the three QA files."""
    for rel in RQE_FILES:
        yield from _rqe(ctx, rel)
    for rel in QA_FILES:
        yield from _qa(ctx, rel)
