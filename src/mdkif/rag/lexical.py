"""BM25 over the chunk texts, with metadata filters, persisted beside the Chroma folder.

`rank_bm25.BM25Okapi` supplies the statistics (idf with its epsilon floor, document lengths); its own
`get_scores` loops in Python over every document for every query term (bench/results/rag.md times a query
at 40k chunks), so scoring here walks an inverted index instead and gives the same numbers (a unit test
checks that).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rank_bm25 import BM25Okapi

from mdkif.io import write_atomic

_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
# A short list: BM25's idf already discounts common words; this only keeps query noise out of scoring.
_STOP = "a an and are as at be by can do does for from has have how i if in into is it its of on or that the"
STOPWORDS = frozenset(
    f"{_STOP} their there these this to was were what when which who why will with you your".split(" ")
)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (hyphenated terms kept whole), stop words dropped."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


def matches(meta: dict[str, Any], where: dict[str, Any] | None) -> bool:
    """Evaluate a Chroma-style `where` filter on one metadata dict, as Chroma does.

    Supports `{key: value}`, `{key: {$eq|$ne|$in|$nin|$gt|$gte|$lt|$lte: v}}`, `$and` and `$or`.
    Like Chroma, `$ne` and `$nin` match records that lack the key.
    """
    if not where:
        return True
    for key, cond in where.items():
        if key == "$and":
            if not all(matches(meta, c) for c in cond):
                return False
            continue
        if key == "$or":
            if not any(matches(meta, c) for c in cond):
                return False
            continue
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        has, value = key in meta, meta.get(key)
        for op, arg in ops.items():
            if op == "$eq":
                ok = has and value == arg
            elif op == "$ne":
                ok = not has or value != arg
            elif op == "$in":
                ok = has and value in arg
            elif op == "$nin":
                ok = not has or value not in arg
            elif op in ("$gt", "$gte", "$lt", "$lte"):
                ok = (
                    has
                    and {"$gt": value > arg, "$gte": value >= arg, "$lt": value < arg, "$lte": value <= arg}[
                        op
                    ]
                )
            else:
                raise ValueError(f"unsupported filter operator {op!r}")
            if not ok:
                return False
    return True


class BM25Index:
    """BM25 (Okapi, k1=1.5, b=0.75) over chunk ids with their metadata, searchable with filters."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[dict[str, Any]]):
        tokens = [tokenize(t) for t in texts]
        # BM25Okapi divides by the corpus size and average length: give it a placeholder when empty.
        stats = BM25Okapi(tokens if any(tokens) else [["_"]])
        self.ids = list(ids)
        self.metadatas = list(metadatas)
        self.idf: dict[str, float] = dict(stats.idf)
        doc_len = np.array([len(t) for t in tokens], dtype=np.float32)
        norm = stats.k1 * (1 - stats.b + stats.b * doc_len / max(stats.avgdl, 1e-9))
        self.k1 = stats.k1
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for i, freqs in enumerate(stats.doc_freqs if any(tokens) else []):
            for term, tf in freqs.items():
                docs, tfs = postings.setdefault(term, ([], []))
                docs.append(i)
                tfs.append(tf)
        # Per term: documents and their precomputed tf-saturation, so a query is a few vector adds.
        self.postings = {
            term: (
                np.array(d, dtype=np.int32),
                np.array(t, np.float32) * (self.k1 + 1) / (np.array(t) + norm[d]),
            )
            for term, (d, t) in postings.items()
        }

    def __len__(self) -> int:
        return len(self.ids)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for `query` (equal to BM25Okapi.get_scores on the same tokens)."""
        out = np.zeros(len(self.ids), dtype=np.float32)
        for term in tokenize(query):
            if term in self.postings:
                docs, sat = self.postings[term]
                out[docs] += self.idf[term] * sat
        return out

    def search(self, query: str, k: int, where: dict[str, Any] | None = None) -> list[tuple[int, float]]:
        """Top-k (row, score) pairs with a positive score, among rows whose metadata pass `where`."""
        scores = self.scores(query)
        cand = np.flatnonzero(scores > 0)
        if k <= 0 or cand.size == 0:
            return []
        # Stable: equal scores keep row order, whether or not a filter drops rows in between.
        ranked = cand[np.argsort(-scores[cand], kind="stable")]
        if where:
            # Best first, stopping at k passes: an exclusion filter checks ~k rows, not all that matched a
            # term (thousands for a typical question at 39k chunks).
            top: list[int] = []
            for i in ranked:
                if matches(self.metadatas[i], where):
                    top.append(int(i))
                    if len(top) == k:
                        break
            return [(i, float(scores[i])) for i in top]
        return [(int(i), float(scores[i])) for i in ranked[:k]]

    def save(self, path: Path, count: int) -> None:
        """Pickle atomically (temp file + rename), tagged with the collection's size it was built from."""
        write_atomic(path, pickle.dumps({"count": count, "index": self}, protocol=pickle.HIGHEST_PROTOCOL))

    @staticmethod
    def load(path: Path, count: int) -> BM25Index | None:
        """The cached index if it was built from a collection of `count` chunks, else None (stale)."""
        if not path.is_file():
            return None
        with path.open("rb") as fh:
            data = pickle.load(fh)  # our own cache file, written by save() above
        return data["index"] if data.get("count") == count else None
