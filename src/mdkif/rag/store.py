"""Open the persistent Chroma collection the same way for building and for querying.

Chroma is always given our embedding function (its default one downloads a model at run time), cosine
space (our vectors are unit length), and telemetry off, so nothing leaves the machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdkif.rag.config import EmbedderConfig
from mdkif.rag.embedder import Embedder, chroma_embedding_function

INDEX_MANIFEST = "index_manifest.json"


def bm25_path(persist_dir: Path, collection: str) -> Path:
    """Where the BM25 cache of a collection lives: beside Chroma's files, one per collection."""
    return Path(persist_dir) / f"bm25_{collection}.pkl"


def open_client(persist_dir: Path | None) -> Any:
    """A persistent client on `persist_dir`, or an in-memory one when it is None (tests)."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False, allow_reset=True)
    if persist_dir is None:
        return chromadb.EphemeralClient(settings=settings)
    Path(persist_dir).mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(persist_dir), settings=settings)


def open_collection(client: Any, name: str, embedder: Embedder | EmbedderConfig, create: bool = True) -> Any:
    """Get (or create) collection `name` with our embedding function and cosine distance."""
    ef = chroma_embedding_function(embedder)
    if create:
        return client.get_or_create_collection(
            name, embedding_function=ef, configuration={"hnsw": {"space": "cosine"}}
        )
    return client.get_collection(name, embedding_function=ef)


def existing_ids(collection: Any, ids: list[str], batch: int = 5000) -> set[str]:
    """The subset of `ids` already stored (asked in batches: Chroma caps a call's size)."""
    found: set[str] = set()
    for start in range(0, len(ids), batch):
        found.update(collection.get(ids=ids[start : start + batch], include=[])["ids"])
    return found


def read_all(collection: Any, batch: int = 5000) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Every (id, document, metadata) of a collection, paged."""
    ids: list[str] = []
    docs: list[str] = []
    metas: list[dict[str, Any]] = []
    total = collection.count()
    for offset in range(0, total, batch):
        page = collection.get(limit=batch, offset=offset, include=["documents", "metadatas"])
        ids.extend(page["ids"])
        docs.extend(page["documents"])
        metas.extend(page["metadatas"])
    return ids, docs, metas
