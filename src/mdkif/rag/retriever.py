"""Question-only retrieval from the Chroma index: dense, BM25, or both fused by reciprocal rank fusion.

One plain class that the evaluation harness and the serving layer both use, so what is evaluated is
what is served. It satisfies :class:`mdkif.rag.types.Retriever`; `exclude` is an extra keyword the
harness uses for MIRAGE's rule (no gold context for PubMedQA): `exclude={"pmid": item_pmid}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from mdkif.rag.config import EmbedderConfig
from mdkif.rag.embedder import Embedder
from mdkif.rag.index import build_bm25
from mdkif.rag.lexical import BM25Index
from mdkif.rag.rank_fusion import RRF_K, reciprocal_rank_fusion
from mdkif.rag.store import INDEX_MANIFEST, bm25_path, open_client, open_collection
from mdkif.rag.types import Passage

Mode = Literal["dense", "bm25", "hybrid"]
MODES: tuple[str, ...] = ("dense", "bm25", "hybrid")


def combine_filters(where: dict[str, Any] | None, exclude: dict[str, Any] | None) -> dict[str, Any] | None:
    """Merge a `where` filter with `exclude={key: value or [values]}` into one Chroma filter.

    Chroma wants one condition per dict, so several are joined with `$and`; `$nin` keeps records
    that lack the key (a MedQuAD chunk has no pmid and must survive a pmid exclusion).
    """
    clauses = [where] if where else []
    for key, value in (exclude or {}).items():
        values = list(value) if isinstance(value, list | tuple | set) else [value]
        clauses.append({key: {"$nin": values}})
    if len(clauses) > 1:
        return {"$and": clauses}
    return clauses[0] if clauses else None


class ChromaRetriever:
    """Top-k passages for a question from one Chroma collection, optionally fused with BM25.

    `mode`: 'dense' (cosine over the embedder's vectors), 'bm25', or 'hybrid' (both, fused with RRF
    over each one's top `fetch_k`, as MedRAG does). Scores are cosine similarity, BM25 score or RRF
    score respectively.
    """

    def __init__(
        self,
        collection: Any,
        embedder: Embedder,
        bm25: BM25Index | None = None,
        mode: Mode = "dense",
        fetch_k: int = 50,
        rrf_k: int = RRF_K,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "dense" and bm25 is None:
            raise ValueError(f"mode {mode!r} needs a BM25 index")
        self.collection = collection
        self.embedder = embedder
        self.bm25 = bm25
        self.mode = mode
        self.fetch_k = fetch_k
        self.rrf_k = rrf_k

    @classmethod
    def open(
        cls,
        persist_dir: str | Path,
        collection: str | None = None,
        mode: Mode = "hybrid",
        embedder: EmbedderConfig | None = None,
        **kwargs: Any,
    ) -> ChromaRetriever:
        """Open a built index; the collection and embedder default to what its manifest recorded."""
        persist_dir = Path(persist_dir)
        manifest_path = persist_dir / INDEX_MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{manifest_path}: no index here; build one with `mdkif rag index CONFIG`"
            )
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        name = collection or manifest["collection"]
        emb_cfg = embedder or EmbedderConfig(**manifest["embedder"])
        model = Embedder(emb_cfg)
        coll = open_collection(open_client(persist_dir), name, model, create=False)
        bm25 = load_bm25(coll, persist_dir, name) if mode != "dense" else None
        return cls(coll, model, bm25=bm25, mode=mode, **kwargs)

    def retrieve(
        self,
        question: str,
        k: int = 5,
        where: dict[str, Any] | None = None,
        exclude: dict[str, Any] | None = None,
    ) -> list[Passage]:
        """The top-k passages for `question` among chunks passing `where` and not matching `exclude`."""
        flt = combine_filters(where, exclude)
        if self.mode == "dense":
            return self.dense(question, k, flt)
        if self.mode == "bm25":
            return self.lexical(question, k, flt)
        dense = self.dense(question, self.fetch_k, flt)
        lexical = self.lexical(question, self.fetch_k, flt, with_text=False)
        fused = reciprocal_rank_fusion([[p.id for p in dense], [p.id for p in lexical]], k=self.rrf_k)[:k]
        known = {p.id: p for p in dense}
        missing = [doc_id for doc_id, _ in fused if doc_id not in known]
        known.update({p.id: p for p in self._fetch(missing)})
        return [known[doc_id].model_copy(update={"score": score}) for doc_id, score in fused]

    def dense(self, question: str, k: int, where: dict[str, Any] | None = None) -> list[Passage]:
        """Nearest chunks by cosine similarity of the question's embedding."""
        if k <= 0 or self.collection.count() == 0:
            return []
        vector = self.embedder.embed([question])
        res = self.collection.query(
            query_embeddings=vector,
            n_results=min(k, self.collection.count()),
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        return [
            _passage(i, doc, meta, 1.0 - dist)
            for i, doc, meta, dist in zip(
                res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0], strict=True
            )
        ]

    def lexical(
        self, question: str, k: int, where: dict[str, Any] | None = None, with_text: bool = True
    ) -> list[Passage]:
        """Top BM25 chunks; texts come from Chroma (the BM25 cache holds ids and metadata only)."""
        assert self.bm25 is not None
        hits = self.bm25.search(question, k, where)
        if not with_text:
            return [Passage(id=self.bm25.ids[r], text="", score=s) for r, s in hits]
        found = {p.id: p for p in self._fetch([self.bm25.ids[r] for r, _ in hits])}
        return [found[self.bm25.ids[r]].model_copy(update={"score": s}) for r, s in hits]

    def _fetch(self, ids: list[str]) -> list[Passage]:
        if not ids:
            return []
        res = self.collection.get(ids=ids, include=["documents", "metadatas"])
        return [
            _passage(i, d, m, 0.0)
            for i, d, m in zip(res["ids"], res["documents"], res["metadatas"], strict=True)
        ]


def _passage(doc_id: str, text: str, meta: dict[str, Any] | None, score: float) -> Passage:
    meta = dict(meta or {})
    return Passage(
        id=doc_id,
        text=text,
        title=str(meta.get("title", "")),
        source=str(meta.get("source", "")),
        score=float(score),
        metadata=meta,
    )


def load_bm25(collection: Any, persist_dir: Path, name: str) -> BM25Index:
    """The BM25 cache when it matches the collection's size, else rebuilt from the collection and saved."""
    index = BM25Index.load(bm25_path(persist_dir, name), collection.count())
    return index if index is not None else build_bm25(collection, persist_dir, name)
