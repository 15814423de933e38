"""Parsing, per-item statistics and corpus metrics of the non-MCQ tasks, checked by hand and against
sklearn / seqeval / rouge-score."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mdkif.data.builders._iob import detokenize
from mdkif.evaluation.task_metrics import (
    KINDS,
    PRIMARY,
    bootstrap_metric,
    corpus_metrics,
    item_stats,
    mentions_to_iob,
    metrics_from_stats,
    parse_entities,
    parse_labels,
    parse_relations,
    stats_matrix,
)

LABELS = ["Supports", "Refutes", "Neutral"]


def _from_stats(kind, golds, preds, labels=None):
    stats = stats_matrix(kind, golds, preds, labels)
    return {k: float(v) for k, v in metrics_from_stats(kind, stats.sum(axis=0), len(golds), labels).items()}


# --- parsing ---------------------------------------------------------------------------------------


def test_primary_names_a_metric_of_every_kind():
    assert set(PRIMARY) == set(KINDS)


def test_parse_labels_canonical_order_and_outside():
    assert parse_labels("neutral; SUPPORTS; Supports; maybe", LABELS) == (["Supports", "Neutral"], ["maybe"])


def test_parse_labels_none_and_empty():
    assert parse_labels("none", LABELS) == ([], [])
    assert parse_labels("", LABELS) == ([], [])
    assert parse_labels("  None. ", LABELS) == ([], [])


def test_parse_labels_commas_and_newlines_only_without_semicolon():
    assert parse_labels("Refutes, Neutral", LABELS) == (["Refutes", "Neutral"], [])
    assert parse_labels("Refutes\nNeutral.", LABELS) == (["Refutes", "Neutral"], [])
    # With a ';' present commas are part of the label text.
    assert parse_labels("Refutes, Neutral; Supports", LABELS) == (["Supports"], ["Refutes, Neutral"])


def test_parse_labels_keeps_a_label_that_holds_a_comma():
    labels = ["a, b", "c"]
    assert parse_labels("A, B", labels) == (["a, b"], [])
    assert parse_labels("c, d", labels) == (["c"], ["d"])


def test_parse_entities_one_type():
    assert parse_entities("aspirin; Aspirin; 1,2-dichloroethane", ["Chemical"]) == {
        "Chemical": ["aspirin", "1,2-dichloroethane"]
    }
    assert parse_entities("none", ["Disease"]) == {"Disease": []}
    assert parse_entities("", ["Disease"]) == {"Disease": []}
    assert parse_entities("Disease: colitis", ["Disease"]) == {"Disease": ["colitis"]}


def test_parse_entities_two_types_with_none_line_and_unknown_type():
    text = "chemical: cocaine; lidocaine\nDisease: none\nGene: BRCA1\nnot a type line"
    assert parse_entities(text, ["Chemical", "Disease"]) == {
        "Chemical": ["cocaine", "lidocaine"],
        "Disease": [],
    }
    assert parse_entities("Disease: fever", ["Chemical", "Disease"]) == {"Chemical": [], "Disease": ["fever"]}


def test_parse_relations_ignores_malformed_parts():
    text = "Cocaine  ->  Myocardial Infarction; aspirin; a -> b -> c; -> x; x ->; lidocaine -> seizures"
    assert parse_relations(text) == {("cocaine", "myocardial infarction"), ("lidocaine", "seizures")}
    assert parse_relations("none") == set()
    assert parse_relations("") == set()


# --- mention projection ----------------------------------------------------------------------------


def test_mentions_to_iob_repeats_longest_first_and_missing():
    tokens = ["Parkinson", "'", "s", "disease", "and", "disease", "of", "the", "heart", ",", "disease", "."]
    mentions = {"Disease": ["disease", "parkinson's   DISEASE", "asthma"]}
    tags = mentions_to_iob(tokens, mentions, detokenize)
    assert tags == [
        "B-Disease", "I-Disease", "I-Disease", "I-Disease", "O", "B-Disease", "O", "O", "O", "O",
        "B-Disease", "O",
    ]  # fmt: skip


def test_mentions_to_iob_two_types_do_not_overlap():
    tokens = ["cocaine", "-", "induced", "toxicity"]
    tags = mentions_to_iob(
        tokens, {"Chemical": ["cocaine"], "Disease": ["cocaine-induced toxicity"]}, detokenize
    )
    assert tags == ["B-Disease", "I-Disease", "I-Disease", "I-Disease"]
    assert mentions_to_iob(tokens, {"Chemical": []}, detokenize) == ["O"] * 4


# --- per-item stats and corpus metrics by hand -----------------------------------------------------


def test_classification_outside_label_is_wrong_and_macro_counts_absent_class():
    golds = ["Supports", "Supports", "Refutes"]
    preds = ["Supports", "Refutes", None]
    # Supports: tp1 fn1 -> F1 2/3; Refutes: fp1 fn1 -> 0; Neutral never gold nor predicted -> 0.
    expected = {"accuracy": 1 / 3, "macro_f1": (2 / 3) / 3}
    assert corpus_metrics("classification", golds, preds, LABELS) == pytest.approx(expected, abs=1e-12)
    assert _from_stats("classification", golds, preds, LABELS) == pytest.approx(expected, abs=1e-12)
    assert item_stats("classification", "Refutes", "maybe", LABELS) == [0.0, 0, 0, 0, 0, 0, 1, 0, 0, 0]


def test_sklearn_macro_f1_counts_a_class_absent_from_gold_and_predictions_as_zero():
    # The convention metrics_from_stats copies: "c" is in the average with F1 0.
    got = f1_score(["a", "a", "b"], ["a", "b", "b"], labels=["a", "b", "c"], average="macro", zero_division=0)
    assert got == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_multilabel_none_row_dropped_outside_label_and_never_predicted_class():
    labels = ["x", "y", "z"]
    golds = [["x", "y"], [], ["y"]]
    preds = [["x", "q"], ["z"], ["y"]]
    # x: tp1; y: tp1 fn1; z: fp1. micro: tp2 fp1 fn1 -> 4/6. macro: (1 + 2/3 + 0) / 3.
    expected = {"micro_f1": 4 / 6, "macro_f1": (1 + 2 / 3) / 3}
    assert corpus_metrics("multilabel", golds, preds, labels) == pytest.approx(expected, abs=1e-12)
    assert _from_stats("multilabel", golds, preds, labels) == pytest.approx(expected, abs=1e-12)


def test_ner_spans_with_b_and_i():
    gold = [["B-Chem", "I-Chem", "O", "B-Dis", "O"], ["B-Dis", "O"]]
    pred = [["B-Chem", "I-Chem", "O", "B-Dis", "I-Dis"], ["O", "O"]]
    # Chem span matches; Dis (3,3) vs (3,4) does not; the second sentence's Dis is missed.
    assert item_stats("ner", gold[0], pred[0]) == [1.0, 1.0, 1.0]
    expected = {"precision": 1 / 2, "recall": 1 / 3, "f1": 2 / 5}
    assert corpus_metrics("ner", gold, pred) == pytest.approx(expected, abs=1e-12)
    assert _from_stats("ner", gold, pred) == pytest.approx(expected, abs=1e-12)


def test_ner_empty_prediction_has_no_entities():
    tokens = ["fever", "and", "cough"]
    pred = mentions_to_iob(tokens, parse_entities("", ["Disease"]), detokenize)
    assert pred == ["O", "O", "O"]
    assert item_stats("ner", ["B-Disease", "O", "B-Disease"], pred) == [0.0, 0.0, 2.0]


def test_relation_micro_by_hand():
    golds = [{("a", "b"), ("c", "d")}, set(), {("e", "f")}]
    preds = [parse_relations("A -> B; c -> x"), parse_relations("g -> h"), parse_relations("none")]
    # tp1 (a,b); fp2 (c,x),(g,h); fn2 (c,d),(e,f).
    expected = {"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3}
    assert corpus_metrics("relation", golds, preds) == pytest.approx(expected, abs=1e-12)
    assert _from_stats("relation", golds, preds) == pytest.approx(expected, abs=1e-12)
    assert corpus_metrics("relation", [set()], [set()]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_generation_empty_prediction_scores_zero():
    assert item_stats("generation", "the patient has a fever", "") == [0.0, 0.0, 0.0]
    # Stemmed: gold [the, fever, were, seen], prediction [fever, were, seen] ("fevers" -> "fever").
    got = item_stats("generation", "The fevers were seen", "fever were seen")
    assert got == pytest.approx([6 / 7, 4 / 5, 6 / 7])


def test_item_stats_rejects_bad_input():
    with pytest.raises(ValueError, match="not in the label set"):
        item_stats("classification", "Other", "Supports", LABELS)
    with pytest.raises(ValueError, match="label set"):
        item_stats("multilabel", [], [], None)
    with pytest.raises(ValueError, match="unknown task kind"):
        item_stats("mcq", "A", "B")


# --- the two paths agree on random cases -----------------------------------------------------------


def _random_case(kind: str, rng: random.Random, n: int):
    labels = ["l0", "l1", "l2", "l3"]
    if kind == "classification":
        golds = [rng.choice(labels[:3]) for _ in range(n)]  # l3 never gold
        preds = [rng.choice([*labels[:2], None, "junk"]) for _ in range(n)]  # l2, l3 never predicted
        return golds, preds, labels
    if kind == "multilabel":
        golds = [rng.sample(labels, rng.randint(0, 2)) for _ in range(n)]
        preds = [rng.sample([*labels, "junk"], rng.randint(0, 3)) for _ in range(n)]
        return golds, preds, labels
    if kind == "ner":
        tags = ["O", "O", "B-A", "I-A", "B-B", "I-B"]
        golds, preds = [], []
        for _ in range(n):
            length = rng.randint(1, 8)
            golds.append([rng.choice(tags) for _ in range(length)])
            preds.append([rng.choice(tags) for _ in range(length)])
        return golds, preds, None
    if kind == "relation":
        pool = [(h, t) for h in "abc" for t in "xyz"]
        golds = [set(rng.sample(pool, rng.randint(0, 3))) for _ in range(n)]
        preds = [set(rng.sample(pool, rng.randint(0, 3))) for _ in range(n)]
        return golds, preds, None
    words = ["the", "patient", "fever", "cough", "was", "were", "seen", "treated", "with", "aspirin", "daily"]
    golds = [" ".join(rng.choices(words, k=rng.randint(1, 10))) for _ in range(n)]
    preds = [" ".join(rng.choices(words, k=rng.randint(0, 10))) for _ in range(n)]
    return golds, preds, None


@pytest.mark.parametrize("kind", KINDS)
def test_stats_path_matches_reference_libraries(kind):
    rng = random.Random(kind)
    for trial in range(5):
        golds, preds, labels = _random_case(kind, rng, n=12 + trial)
        reference = corpus_metrics(kind, golds, preds, labels)
        fast = _from_stats(kind, golds, preds, labels)
        assert fast.keys() == reference.keys()
        for key in reference:
            assert fast[key] == pytest.approx(reference[key], abs=1e-9), (kind, trial, key)


@pytest.mark.parametrize("kind", KINDS)
def test_vectorised_resamples_match_one_at_a_time(kind):
    golds, preds, labels = _random_case(kind, random.Random(1), n=15)
    stats = stats_matrix(kind, golds, preds, labels)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(golds), size=(4, len(golds)))
    counts = np.stack([np.bincount(row, minlength=len(golds)) for row in idx]).astype(float)
    batched = metrics_from_stats(kind, counts @ stats, len(golds), labels)
    for r, row in enumerate(idx):
        reference = corpus_metrics(kind, [golds[i] for i in row], [preds[i] for i in row], labels)
        for key, value in reference.items():
            assert batched[key][r] == pytest.approx(value, abs=1e-9), (kind, r, key)


def test_bootstrap_metric_brackets_the_point_estimate_and_is_seeded():
    golds, preds, labels = _random_case("classification", random.Random(2), n=40)
    stats = stats_matrix("classification", golds, preds, labels)
    point = corpus_metrics("classification", golds, preds, labels)["accuracy"]
    low, high = bootstrap_metric("classification", stats, labels, metric="accuracy", resamples=500, seed=3)
    assert low <= point <= high
    assert low < high
    again = bootstrap_metric("classification", stats, labels, metric="accuracy", resamples=500, seed=3)
    assert again == (low, high)
    assert np.isnan(bootstrap_metric("ner", np.zeros((0, 3)), metric="f1")).all()


def test_bootstrap_metric_of_a_constant_metric_is_a_point():
    stats = stats_matrix("relation", [{("a", "b")}] * 5, [{("a", "b")}] * 5)
    assert bootstrap_metric("relation", stats, metric="f1", resamples=200) == (1.0, 1.0)
