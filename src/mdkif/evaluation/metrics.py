"""Accuracy with a seeded percentile-bootstrap 95% confidence interval, from prediction rows.

On a 25-item sample one item is 4 points; the interval is what tells a reader whether a difference
between two variants means anything. Unparsable and ambiguous answers count as wrong (MIRAGE's rule)
and are counted separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def bootstrap_ci(
    correct: Sequence[bool], *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `correct` (resampling items with replacement)."""
    values = np.asarray(correct, dtype=float)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(rows: Sequence[dict[str, Any]], *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """n, correct, accuracy, its CI and the unparsable/ambiguous counts of one variant x benchmark."""
    correct = [bool(r["correct"]) for r in rows]
    n = len(correct)
    low, high = bootstrap_ci(correct, resamples=resamples, seed=seed)
    return {
        "n": n,
        "correct": sum(correct),
        "accuracy": sum(correct) / n if n else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "unparsable": sum(r.get("status") == "unparsable" for r in rows),
        "ambiguous": sum(r.get("status") == "ambiguous" for r in rows),
    }
