"""The retrieval interface shared by the evaluation harness and the serving layer."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class Passage(BaseModel):
    """One retrieved chunk of text, with where it came from and how well it matched."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    title: str = ""
    source: str = ""
    score: float = 0.0
    metadata: dict[str, Any] = Field(default_factory=dict)


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns the top-k passages for a question (MIRAGE's rule: the question only)."""

    def retrieve(self, question: str, k: int = 5, where: dict[str, Any] | None = None) -> list[Passage]: ...
