"""The two record shapes every stage shares: unified skill instructions and multiple-choice items."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The 12 basic medical skills of SA-MDKIF, in the paper's order. The slug is what appears in file
# names, adapter directories and router artifacts; never rename one without a migration.
SKILLS: tuple[str, ...] = (
    "qa",  # question answering (free text)
    "mcqa",  # multiple-choice question answering
    "dialogue",  # medical dialogue
    "multilabel_classification",  # multi-label document classification
    "reading_comprehension",  # machine reading comprehension
    "nli",  # natural language inference / entailment
    "summarization",  # text summarization
    "ner",  # named entity recognition
    "relation_extraction",  # relation extraction, causality included
    "entity_attribute",  # attribute of an entity (e.g. the code, category or body system of a disease)
    "entity_synonymy",  # are two mentions the same entity / give a synonym
    "entity_relation",  # relation between two entities of a terminology (e.g. parent/child concepts)
)

SKILL_TITLES: dict[str, str] = {
    "qa": "question answering",
    "mcqa": "multiple-choice question answering",
    "dialogue": "medical dialogue",
    "multilabel_classification": "multi-label classification",
    "reading_comprehension": "machine reading comprehension",
    "nli": "natural language inference",
    "summarization": "text summarization",
    "ner": "named entity recognition",
    "relation_extraction": "relation extraction (incl. causality)",
    "entity_attribute": "entity attribute",
    "entity_synonymy": "entity synonymy",
    "entity_relation": "entity-entity relation",
}


class SkillRecord(BaseModel):
    """One unified instruction example: `instruction` + `input` -> `output`, for one skill.

    `task` names the concrete task inside the skill (e.g. `ncbi_disease_ner`), `source` the data set
    it came from. `id` is stable: derived from source and content, so re-builds give the same ids.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    skill: str
    task: str
    instruction: str
    input: str = ""
    output: str
    source: str

    @field_validator("skill")
    @classmethod
    def _known_skill(cls, v: str) -> str:
        if v not in SKILLS:
            raise ValueError(f"unknown skill {v!r}; expected one of {', '.join(SKILLS)}")
        return v

    @field_validator("instruction", "output")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    def content_key(self) -> str:
        """Hash of what the model sees and must produce: two records with the same key are duplicates."""
        blob = json.dumps([self.skill, self.instruction, self.input, self.output], ensure_ascii=False)
        return hashlib.sha1(blob.encode("utf-8")).hexdigest()

    def prompt(self) -> str:
        """The text the model is conditioned on (instruction, then input when there is one)."""
        return format_prompt(self.instruction, self.input)


def format_prompt(instruction: str, input: str = "") -> str:
    """One prompt template for every skill, so adapters trained on different skills are composable."""
    if input.strip():
        return f"### Instruction:\n{instruction.strip()}\n\n### Input:\n{input.strip()}\n\n### Response:\n"
    return f"### Instruction:\n{instruction.strip()}\n\n### Response:\n"


def make_id(source: str, *parts: str) -> str:
    """A short deterministic id from the source name and the record's content."""
    h = hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]
    return f"{source}-{h}"


class MCQRecord(BaseModel):
    """One multiple-choice benchmark item; `answer` is a key of `options` (a letter, or yes/no/maybe)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    benchmark: str
    question: str
    options: dict[str, str] = Field(min_length=2)
    answer: str
    context: str | None = None

    @model_validator(mode="after")
    def _answer_is_an_option(self) -> MCQRecord:
        if self.answer not in self.options:
            raise ValueError(f"answer {self.answer!r} is not one of the options {sorted(self.options)}")
        if not self.question.strip():
            raise ValueError("question must not be empty")
        return self
