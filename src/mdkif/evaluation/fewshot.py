"""k-shot examples: drawn from a dev split, never from the items being evaluated.

The config already refuses a fewshot source equal to the evaluated source and split; here every drawn
example is also checked by id and by normalised question text against the evaluated items, because the
same question can sit in two files (MIRAGE's MedMCQA items *are* MedMCQA dev items).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from mdkif.data.mcq import load_benchmark
from mdkif.data.records import MCQRecord
from mdkif.evaluation.config import FewshotSource


class FewshotError(ValueError):
    """Not enough clean examples for the requested number of shots."""


def _norm(question: str) -> str:
    return " ".join(question.lower().split())


def select_shots(
    pool: Sequence[MCQRecord],
    evaluated: Iterable[MCQRecord],
    k: int,
    *,
    seed: int = 0,
    benchmark: str | None = None,
) -> list[MCQRecord]:
    """`k` examples from `pool` (same benchmark when given), none sharing an id or question with `evaluated`.

    The draw is seeded and independent of the evaluated items' order, so every shard of a benchmark
    sees the same examples.
    """
    evaluated = list(evaluated)
    banned_ids = {r.id for r in evaluated}
    banned_q = {_norm(r.question) for r in evaluated}
    clean = [
        r
        for r in pool
        if r.id not in banned_ids
        and _norm(r.question) not in banned_q
        and (benchmark is None or r.benchmark == benchmark)
    ]
    if len(clean) < k:
        raise FewshotError(
            f"{k} shots requested but only {len(clean)} fewshot examples"
            f"{f' of {benchmark}' if benchmark else ''} are disjoint from the evaluated items"
        )
    return random.Random(seed).sample(sorted(clean, key=lambda r: r.id), k)


def load_shots(
    source: FewshotSource,
    evaluated: Sequence[MCQRecord],
    k: int,
    *,
    benchmark: str | None,
    root: Path | None = None,
) -> list[MCQRecord]:
    """Load the fewshot source and select `k` examples for `benchmark` that are not evaluated items."""
    if k == 0:
        return []
    pool = load_benchmark(source.source, split=source.split, root=root)
    # A single-benchmark pool serves any column (e.g. MMLU dev for a renamed column).
    only = benchmark if benchmark in {r.benchmark for r in pool} else None
    return select_shots(pool, evaluated, k, seed=source.seed, benchmark=only)
