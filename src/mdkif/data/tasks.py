"""Downstream medical tasks beyond multiple choice: classification, multi-label, extraction, generation.

A task is read from the same native files the skill-data builders read, rendered in the skills' own prompt
format (`### Instruction / ### Input / ### Response`) so a skill sees a task the way it was trained, and
split once, deterministically, into `train` / `dev` / `test`:

- builder-backed tasks (HealthVer, MEDIQA-RQE, HoC, MeQSum, BC5CDR-CDR) take the builder's own records
  for one builder task; a seeded shuffle of them (by id) gives `test_size` test and `dev_size` dev items,
  the rest is `train`;
- NER tasks score the corpus's official `test.tsv` (which no skill build reads) and keep the gold IOB
  tags, so entity F1 compares spans, not strings; `train` / `dev` come from the builder's train+devel;
- PubMedQA (no builder: every skill is blind to it) reads the 500 labelled items, question + abstract.

`heldout_ids(task)` are the `test` + `dev` ids: the reference run excludes them from every skill's
data (and a whole task, for an unseen one), and the evaluation checks by id that no scored item was in a
skill's training data. Adding a task is one `TaskSpec` line in `TASKS`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from mdkif.data.builders import REGISTRY
from mdkif.data.builders.base import BuildContext, clean
from mdkif.data.builders.instructions import choose
from mdkif.data.errors import DataError
from mdkif.data.records import SkillRecord, format_prompt

TaskKind = Literal["classification", "multilabel", "ner", "relation", "generation"]
TASK_SPLITS = ("train", "dev", "test")


class TaskRecord(BaseModel):
    """One item of a downstream task: the skill-format prompt parts and the gold output.

    `labels` is the label set (classification / multi-label); NER items carry the sentence's `tokens`, the
    gold IOB `tags` and the entity `types`, so predictions can be projected onto the same tokens.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    task: str
    kind: TaskKind
    instruction: str
    input: str = ""
    output: str
    labels: tuple[str, ...] | None = None
    tokens: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None

    def prompt(self) -> str:
        """The text the model is conditioned on: exactly the skills' training prompt."""
        return format_prompt(self.instruction, self.input)


@dataclass(frozen=True)
class TaskSpec:
    """A task: its kind, where its items come from, the label set and the generation budget."""

    name: str
    kind: TaskKind
    load: Callable[[BuildContext], dict[str, list[TaskRecord]]]
    description: str
    skill: str | None  # the skill whose data holds this task (None: no skill ever trains on it)
    labels: tuple[str, ...] | None = None
    max_new_tokens: int = 8
    test_size: int = 200
    dev_size: int = 100


# --- loaders -------------------------------------------------------------------------------------------


def _from_builder(source: str, builder_task: str, spec_name: str, kind: TaskKind, labels=None):
    """A loader that takes one builder task's records and splits them train/dev/test by seeded shuffle."""

    def load(ctx: BuildContext) -> dict[str, list[TaskRecord]]:
        records = [r for r in REGISTRY[source].build(ctx) if r.task == builder_task]
        if not records:
            raise DataError(
                ctx.root, f"task {spec_name!r}: builder {source!r} gave no {builder_task!r} records"
            )
        items = [_task_record(r, spec_name, kind, labels) for r in records]
        return _split(items, TASKS[spec_name], spec_name)

    return load


def _task_record(r: SkillRecord, task: str, kind: TaskKind, labels, **extra) -> TaskRecord:
    """The task item of one skill record (`extra`: the NER fields `tokens`, `tags`, `types`)."""
    return TaskRecord(
        id=r.id,
        task=task,
        kind=kind,
        instruction=r.instruction,
        input=r.input,
        output=r.output,
        labels=tuple(labels) if labels else None,
        **extra,
    )


def _split(items: list[TaskRecord], spec: TaskSpec, name: str) -> dict[str, list[TaskRecord]]:
    unique = list({r.id: r for r in items}.values())  # builders may repeat a native item
    unique.sort(key=lambda r: r.id)
    random.Random(f"task-split:{name}").shuffle(unique)
    if len(unique) < spec.test_size + spec.dev_size + 1:
        raise DataError(
            name, f"{len(unique)} items, fewer than test {spec.test_size} + dev {spec.dev_size} + 1"
        )
    test, dev = unique[: spec.test_size], unique[spec.test_size : spec.test_size + spec.dev_size]
    return {"test": test, "dev": dev, "train": unique[spec.test_size + spec.dev_size :]}


def _ner(source: str, spec_name: str):
    """NER: test items from the official test.tsv with gold tags; train/dev from the builder's records."""

    def load(ctx: BuildContext) -> dict[str, list[TaskRecord]]:
        corpus = REGISTRY[source].CORPUS  # the builder's IobCorpus: same files, types, ids, wordings
        pool = list(corpus.build(ctx))
        if not pool:
            raise DataError(ctx.root, f"task {spec_name!r}: builder {source!r} gave no NER records")
        spec = TASKS[spec_name]
        test = [
            _task_record(
                corpus.record(ctx, sentence),
                spec_name,
                "ner",
                None,
                tokens=sentence.tokens,
                tags=sentence.tags,
                types=corpus.types,
            )
            for sentence in corpus.sentences(ctx, "test.tsv")
        ]
        test = list({r.id: r for r in test}.values())
        test.sort(key=lambda r: r.id)
        random.Random(f"task-split:{spec_name}").shuffle(test)
        others = [_task_record(r, spec_name, "ner", None, types=corpus.types) for r in pool]
        others.sort(key=lambda r: r.id)
        random.Random(f"task-split:{spec_name}:pool").shuffle(others)
        return {
            "test": test[: spec.test_size],
            "dev": others[: spec.dev_size],
            "train": others[spec.dev_size :],
        }

    return load


PUBMEDQA_FILE = "mcq/pubmedqa/pqal_dev500.json"
PUBMEDQA_INSTRUCTIONS = (
    "Answer the research question using the abstract. Answer yes, no or maybe.",
    "Based on the abstract, is the answer to the question yes, no, or maybe? Reply with one word.",
    "Read the PubMed abstract and answer its question with yes, no or maybe.",
)
PUBMEDQA_CONTEXT_CHARS = 1200


def _pubmedqa(ctx: BuildContext) -> dict[str, list[TaskRecord]]:
    """PubMedQA-L's 500 labelled items as a 3-way classification with the abstract as input."""
    path = ctx.root / PUBMEDQA_FILE
    if not path.is_file():
        raise DataError(path, "PubMedQA file not found (is the data root right?)")
    data = json.loads(path.read_text(encoding="utf-8"))
    items = []
    for pmid, row in data.items():
        context = clean(" ".join(row.get("CONTEXTS", [])))
        if len(context) > PUBMEDQA_CONTEXT_CHARS:
            context = context[:PUBMEDQA_CONTEXT_CHARS].rsplit(" ", 1)[0] + " ..."
        rid = f"pubmedqa-{pmid}"
        items.append(
            TaskRecord(
                id=rid,
                task="pubmedqa",
                kind="classification",
                instruction=choose(ctx, rid, PUBMEDQA_INSTRUCTIONS),
                input=f"Abstract: {context}\nQuestion: {clean(row['QUESTION'])}",
                output=row["final_decision"],
                labels=("yes", "no", "maybe"),
            )
        )
    return _split(items, TASKS["pubmedqa"], "pubmedqa")


def _specs() -> dict[str, TaskSpec]:
    from mdkif.data.builders.healthver import LABELS as HEALTHVER
    from mdkif.data.builders.hoc import HALLMARKS

    specs = [
        TaskSpec(
            "healthver",
            "classification",
            _from_builder(
                "healthver", "healthver_claim_verification", "healthver", "classification", HEALTHVER
            ),
            "HealthVer claim verification (Supports / Refutes / Neutral)",
            skill="nli",
            labels=HEALTHVER,
            test_size=200,
        ),
        TaskSpec(
            "mediqa_rqe",
            "classification",
            _from_builder("mediqa2019", "mediqa_rqe", "mediqa_rqe", "classification", ("yes", "no")),
            "MEDIQA-2019 recognising question entailment (yes / no)",
            skill="nli",
            labels=("yes", "no"),
            test_size=200,
        ),
        TaskSpec(
            "pubmedqa",
            "classification",
            _pubmedqa,
            "PubMedQA-L with its abstract (yes / no / maybe)",
            skill=None,
            labels=("yes", "no", "maybe"),
            test_size=200,
        ),
        TaskSpec(
            "hoc",
            "multilabel",
            _from_builder("hoc", "hoc_hallmarks", "hoc", "multilabel", HALLMARKS),
            "Hallmarks of Cancer multi-label document classification (10 hallmarks)",
            skill="multilabel_classification",
            labels=HALLMARKS,
            max_new_tokens=40,
            test_size=200,
        ),
        TaskSpec(
            "bc5cdr_ner",
            "ner",
            _ner("bc5cdr_ner", "bc5cdr_ner"),
            "BC5CDR chemical + disease NER, official test split, entity-level F1 (seqeval)",
            skill="ner",
            max_new_tokens=48,
            test_size=200,
        ),
        TaskSpec(
            "ncbi_disease_ner",
            "ner",
            _ner("ncbi_disease", "ncbi_disease_ner"),
            "NCBI-disease NER, official test split, entity-level F1 (seqeval)",
            skill="ner",
            max_new_tokens=40,
            test_size=200,
        ),
        TaskSpec(
            "bc5cdr_cdr",
            "relation",
            _from_builder("bc5cdr_cdr", "cdr_cid_list", "bc5cdr_cdr", "relation"),
            "BC5CDR chemical-induced-disease relation lists per abstract, pair-level F1",
            skill="relation_extraction",
            max_new_tokens=64,
            test_size=100,
            dev_size=50,
        ),
        TaskSpec(
            "meqsum",
            "generation",
            _from_builder("meqsum", "meqsum_question_summary", "meqsum", "generation"),
            "MeQSum consumer-question summarisation, ROUGE-1/2/L",
            skill="summarization",
            max_new_tokens=40,
            test_size=200,
        ),
    ]
    return {s.name: s for s in specs}


class _Lazy(dict):
    """The registry, built on first use (the builder modules' label sets are imported then)."""

    def _fill(self) -> None:
        if not super().__len__():
            super().update(_specs())

    def __getitem__(self, key: str) -> TaskSpec:
        self._fill()
        try:
            return super().__getitem__(key)
        except KeyError:
            raise KeyError(f"unknown task {key!r}; known: {', '.join(super().keys())}") from None

    def __iter__(self) -> Iterator[str]:
        self._fill()
        return super().__iter__()

    def __len__(self) -> int:
        self._fill()
        return super().__len__()

    def __contains__(self, key: object) -> bool:
        self._fill()
        return super().__contains__(key)

    def keys(self):
        self._fill()
        return super().keys()


TASKS: dict[str, TaskSpec] = _Lazy()


def load_task(
    name: str, split: str = "test", *, root: str | Path, limit: int | None = None, seed: int = 0
) -> list[TaskRecord]:
    """The `split` items of task `name`, read from the data root (the folder holding skills/ and mcq/)."""
    if split not in TASK_SPLITS:
        raise ValueError(f"unknown task split {split!r}; expected one of {', '.join(TASK_SPLITS)}")
    splits = load_task_splits(name, root=root, seed=seed)
    return splits[split][:limit] if limit else splits[split]


_CACHE: dict[tuple[str, str, int], dict[str, list[TaskRecord]]] = {}


def load_task_splits(name: str, *, root: str | Path, seed: int = 0) -> dict[str, list[TaskRecord]]:
    """All three splits of a task (cached per process: a builder pass reads the whole native file)."""
    key = (name, str(Path(root).resolve()), seed)
    if key not in _CACHE:
        spec = TASKS[name]
        ctx = BuildContext(root=Path(root), seed=seed, skip_bad=True)
        _CACHE[key] = spec.load(ctx)
    return _CACHE[key]


def heldout_ids(name: str, *, root: str | Path, seed: int = 0, whole: bool = False) -> list[str]:
    """Ids no skill may train on: the task's test + dev items, or every item when `whole` (unseen task)."""
    splits = load_task_splits(name, root=root, seed=seed)
    keep: Sequence[str] = TASK_SPLITS if whole else ("test", "dev")
    return [r.id for s in keep for r in splits[s]]
