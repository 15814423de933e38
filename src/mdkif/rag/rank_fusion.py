"""Reciprocal rank fusion (Cormack et al., 2009), as MedRAG fuses its retrievers.

RRF uses ranks only, so a cosine similarity and a BM25 score need no calibration against each other:
score(d) = sum over rankings r of 1 / (k + rank_r(d)), ranks starting at 1; k=60 is the paper's value.
"""

from __future__ import annotations

from collections.abc import Sequence

RRF_K = 60


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Fuse ranked id lists into one, best first; ties keep the order in which ids were first seen."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (k + rank)
    # sorted() is stable and dicts keep insertion order, so equal scores stay in first-seen order.
    return sorted(scores.items(), key=lambda item: -item[1])
