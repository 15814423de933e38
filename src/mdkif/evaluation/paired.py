"""Paired comparison of two variants scored on the same items: exact McNemar and a paired bootstrap.

Two variants evaluated on the same sample differ far less by chance than two independent samples would
suggest, because most items are easy or hard for both; a paired test uses that. McNemar looks only at
the discordant items of a right/wrong metric; the paired bootstrap handles any corpus metric that
`task_metrics.metrics_from_stats` computes from summed per-item statistics, resampling the same items
for both variants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

from mdkif.evaluation.task_metrics import resample_counts

# Resampled differences equal to the observed one up to float noise must count as "as extreme".
_EPS = 1e-12


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """Exact two-sided McNemar test of two variants' right/wrong outcomes on the same items.

    Returns `b_only` (items a gets wrong and b right), `a_only` (the reverse) and `p`, the two-sided
    binomial test of `b_only` out of the discordant items at probability 0.5 (`scipy.stats.binomtest`);
    p = 1.0 when no item is discordant. Raises ValueError when the two lists differ in length.
    """
    if len(correct_a) != len(correct_b):
        raise ValueError(f"variant a has {len(correct_a)} items, variant b {len(correct_b)}")
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    b_only, a_only = int(np.sum(~a & b)), int(np.sum(a & ~b))
    discordant = b_only + a_only
    p = 1.0 if discordant == 0 else min(1.0, float(binomtest(b_only, discordant, 0.5).pvalue))
    return {"b_only": b_only, "a_only": a_only, "p": p}


def paired_bootstrap(
    stats_a: np.ndarray,
    stats_b: np.ndarray,
    metric_fn: Callable[[np.ndarray, Any], np.ndarray],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap of metric(b) - metric(a), both variants resampled on the same items.

    `stats_a` and `stats_b` are (n, D) per-item statistics of the same n items; `metric_fn(summed, n)`
    maps summed statistics (R, D) and the item count to the metric (R,). Returns `diff` (on all items),
    the percentile interval `ci_low`/`ci_high` of the resampled differences, `resamples`, and `p`, the
    two-sided "shifted" bootstrap p-value: the resampled differences centred on `diff` stand for the
    null distribution, and p = (1 + #{|d* - diff| >= |diff|}) / (R + 1), which lies in [1/(R+1), 1]
    and is exactly 1 for identical variants (diff = 0).
    """
    a, b = np.asarray(stats_a, dtype=float), np.asarray(stats_b, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (n, D) statistics of the same shape, got {a.shape} and {b.shape}")
    n = a.shape[0]
    if n == 0:
        raise ValueError("no items to compare")
    diff = float(metric_fn(b.sum(axis=0)[None], n)[0] - metric_fn(a.sum(axis=0)[None], n)[0])
    counts = resample_counts(n, resamples, seed)  # one draw of items shared by both variants
    d_star = np.asarray(metric_fn(counts @ b, n) - metric_fn(counts @ a, n), dtype=float)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(d_star, [alpha, 1.0 - alpha])
    extreme = int(np.sum(np.abs(d_star - diff) >= abs(diff) - _EPS))
    return {
        "diff": diff,
        "ci_low": float(low),
        "ci_high": float(high),
        "p": (1 + extreme) / (resamples + 1),
        "resamples": resamples,
    }


def significant(p: float, alpha: float = 0.05) -> bool:
    """Whether a p-value rejects the null hypothesis at level `alpha` (p < alpha)."""
    return p < alpha
