"""Paired comparison of two variants: exact McNemar and the paired bootstrap."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mdkif.evaluation.paired import mcnemar_exact, paired_bootstrap, significant
from mdkif.evaluation.task_metrics import metrics_from_stats, stats_matrix


def accuracy(summed, n):
    return metrics_from_stats("classification", summed, n, ["yes", "no"])["accuracy"]


def _variants(n_items: int = 40, flips: int = 10, seed: int = 0):
    """Correct-flags of a and b: b equals a except that `flips` of a's wrong items are right for b."""
    rng = random.Random(seed)
    a = [rng.random() < 0.5 for _ in range(n_items)]
    wrong = [i for i, ok in enumerate(a) if not ok]
    assert len(wrong) >= flips
    b = list(a)
    for i in wrong[:flips]:
        b[i] = True
    return a, b


def _stats(correct):
    golds = ["yes"] * len(correct)
    preds = ["yes" if ok else "no" for ok in correct]
    return stats_matrix("classification", golds, preds, ["yes", "no"])


def test_identical_variants():
    a, _ = _variants()
    assert mcnemar_exact(a, a) == {"b_only": 0, "a_only": 0, "p": 1.0}
    out = paired_bootstrap(_stats(a), _stats(a), accuracy, resamples=300)
    assert out["diff"] == 0.0
    assert out["p"] == 1.0
    assert out["ci_low"] == out["ci_high"] == 0.0
    assert out["resamples"] == 300
    assert not significant(out["p"])


def test_ten_flips_to_right_are_significant():
    a, b = _variants(flips=10)
    test = mcnemar_exact(a, b)
    assert (test["b_only"], test["a_only"]) == (10, 0)
    assert test["p"] == pytest.approx(2 * 0.5**10)
    assert significant(test["p"])
    assert not significant(test["p"], alpha=0.001)
    out = paired_bootstrap(_stats(a), _stats(b), accuracy, resamples=1000, seed=1)
    assert out["diff"] == pytest.approx(10 / 40)
    assert 0 < out["ci_low"] <= out["diff"] <= out["ci_high"]
    assert out["p"] == pytest.approx(1 / 1001)  # no resample is as far from diff as 0 is
    assert significant(out["p"])


def test_balanced_discordant_pairs():
    a = [True] * 5 + [False] * 5 + [True] * 3
    b = [False] * 5 + [True] * 5 + [True] * 3
    assert mcnemar_exact(a, b) == {"b_only": 5, "a_only": 5, "p": 1.0}
    out = paired_bootstrap(_stats(a), _stats(b), accuracy, resamples=500)
    assert out["diff"] == 0.0
    assert out["p"] == 1.0
    assert out["ci_low"] < 0 < out["ci_high"]


def test_mcnemar_one_sided_counts():
    test = mcnemar_exact([True, True, False], [False, True, False])
    assert (test["b_only"], test["a_only"], test["p"]) == (0, 1, 1.0)


def test_lengths_differ():
    with pytest.raises(ValueError, match="items"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(np.zeros((3, 2)), np.zeros((4, 2)), accuracy)


def test_paired_bootstrap_is_seeded_and_works_on_f1():
    rng = random.Random(4)
    pool = [(h, t) for h in "ab" for t in "xyz"]
    golds = [set(rng.sample(pool, 2)) for _ in range(30)]
    pred_a = [set(rng.sample(pool, 2)) for _ in range(30)]
    pred_b = [g if i % 2 else p for i, (g, p) in enumerate(zip(golds, pred_a, strict=True))]

    def f1(summed, n):
        return metrics_from_stats("relation", summed, n)["f1"]

    sa, sb = stats_matrix("relation", golds, pred_a), stats_matrix("relation", golds, pred_b)
    first = paired_bootstrap(sa, sb, f1, resamples=400, seed=7)
    assert first == paired_bootstrap(sa, sb, f1, resamples=400, seed=7)
    assert first["diff"] > 0
    assert first["ci_low"] <= first["diff"] <= first["ci_high"]
    # Half the items made perfect: far from 0 on every resample, so p sits at its floor 1/(R+1).
    assert first["p"] < 0.05
