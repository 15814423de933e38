"""Question-only retrieval from the Chroma index: dense, BM25, or both fused by reciprocal rank fusion.

One plain class that the evaluation harness and the serving layer both use, so what is evaluated is
what is served. It satisfies :class:`mdkif.rag.types.Retriever`; `exclude` is an extra keyword the
harness uses for MIRAGE's rule (no gold context for PubMedQA): `exclude={"pmid": item_pmid}`.

A query costs what its work costs (bench/results/rag_latency.md): the question is embedded once, on one
thread, and Chroma is asked once for the nearest chunks and once for the texts of the final top-k. No
`count()` per query (Chroma returns fewer hits when the collection is smaller than k), and an exclusion
is applied to a slightly wider unfiltered search rather than sent as Chroma's `$nin`, which Chroma
evaluates as an allow-list of every other chunk (~130 ms at 39k chunks against ~2 ms).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mdkif.rag.config import EmbedderConfig
from mdkif.rag.embedder import Embedder
from mdkif.rag.index import build_bm25
from mdkif.rag.lexical import BM25Index, matches
from mdkif.rag.rank_fusion import RRF_K, reciprocal_rank_fusion
from mdkif.rag.store import INDEX_MANIFEST, bm25_path, open_client, open_collection
from mdkif.rag.types import Passage

Mode = Literal["dense", "bm25", "hybrid"]
MODES: tuple[str, ...] = ("dense", "bm25", "hybrid")

# An exclusion is applied to an unfiltered search this many rows wider than asked (MIRAGE's removes the
# 1-3 chunks of one abstract); only when it removes more of them than that does Chroma filter, with `$nin`.
EXCLUDE_SLACK = 16


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
        if k <= 0:
            return []
        if self.mode == "dense":
            return self.dense(question, k, where, exclude)
        if self.mode == "bm25":
            return self.lexical(question, k, combine_filters(where, exclude))
        assert self.bm25 is not None
        vector = self.embedder.embed_query(question)
        dense = [row["ids"] for row in self._nearest(vector, self.fetch_k, where, exclude, ["distances"])]
        lexical = [
            self.bm25.ids[r]
            for r, _ in self.bm25.search(question, self.fetch_k, combine_filters(where, exclude))
        ]
        fused = reciprocal_rank_fusion([dense, lexical], k=self.rrf_k)[:k]
        found = {p.id: p for p in self._fetch([doc_id for doc_id, _ in fused])}
        return [found[doc_id].model_copy(update={"score": score}) for doc_id, score in fused]

    def dense(
        self,
        question: str,
        k: int,
        where: dict[str, Any] | None = None,
        exclude: dict[str, Any] | None = None,
    ) -> list[Passage]:
        """Nearest chunks by cosine similarity of the question's embedding."""
        if k <= 0:
            return []
        rows = self._nearest(
            self.embedder.embed_query(question), k, where, exclude, ["documents", "metadatas", "distances"]
        )
        return [_passage(r["ids"], r["documents"], r["metadatas"], 1.0 - r["distances"]) for r in rows]

    def lexical(self, question: str, k: int, where: dict[str, Any] | None = None) -> list[Passage]:
        """Top BM25 chunks; texts come from Chroma (the BM25 cache holds ids and metadata only)."""
        assert self.bm25 is not None
        hits = self.bm25.search(question, k, where)
        found = {p.id: p for p in self._fetch([self.bm25.ids[r] for r, _ in hits])}
        return [found[self.bm25.ids[r]].model_copy(update={"score": s}) for r, s in hits]

    def _nearest(
        self,
        vector: np.ndarray,
        k: int,
        where: dict[str, Any] | None,
        exclude: dict[str, Any] | None,
        include: list[str],
    ) -> list[dict[str, Any]]:
        """The k chunks nearest `vector` that pass `where` and miss `exclude`: dicts of `ids` + `include`.

        With an exclusion, the unfiltered top k + EXCLUDE_SLACK minus the excluded rows is the filtered
        top-k whenever at least k rows remain (or Chroma had no more to give); else Chroma filters.
        """
        if not exclude:
            return self._query(vector, k, where, include)
        fields = include if "metadatas" in include else [*include, "metadatas"]
        keep = combine_filters(None, exclude)
        wider = self._query(vector, k + EXCLUDE_SLACK, where, fields)
        rows = [row for row in wider if matches(row["metadatas"] or {}, keep)]
        if len(rows) < k and len(wider) == k + EXCLUDE_SLACK:
            rows = self._query(vector, k, combine_filters(where, exclude), fields)
        return rows[:k]

    def _query(
        self, vector: np.ndarray, n: int, where: dict[str, Any] | None, include: list[str]
    ) -> list[dict[str, Any]]:
        res = self.collection.query(
            query_embeddings=vector.reshape(1, -1), n_results=n, where=where, include=include
        )
        fields = ["ids", *include]
        columns = [res[f][0] for f in fields]
        return [dict(zip(fields, row, strict=True)) for row in zip(*columns, strict=True)]

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
