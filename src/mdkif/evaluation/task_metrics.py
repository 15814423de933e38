"""Metrics for the non-MCQ medical tasks: parsing generations, corpus metrics and bootstrap intervals.

The model answers in the formats the training builders write: labels joined by '; ' or 'none'
(`join_labels`), entities one line per type for multi-type corpora (`format_entities`), relations as
'a -> b' pairs. Every metric here is a function of per-item sufficient statistics (counts, or per-item
ROUGE), so a bootstrap resample is one matrix product of resample counts with the (n, D) statistics and
recomputes the corpus metric exactly, without re-running a scorer. `corpus_metrics` computes the same
point estimate with sklearn, seqeval and rouge-score; the tests hold the two paths equal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
from seqeval.metrics import f1_score as seq_f1
from seqeval.metrics import precision_score as seq_precision
from seqeval.metrics import recall_score as seq_recall
from seqeval.metrics.sequence_labeling import get_entities
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.preprocessing import MultiLabelBinarizer

KINDS: tuple[str, ...] = ("classification", "multilabel", "ner", "relation", "generation")
PRIMARY: dict[str, str] = {
    "classification": "accuracy",
    "multilabel": "micro_f1",
    "ner": "f1",
    "relation": "f1",
    "generation": "rougeL",
}
NONE = "none"
ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")
# A prediction outside the label set (or unparsable) for sklearn: never a label, so always wrong.
_OUTSIDE = "\x00outside"
# Trimmed from both ends of a parsed part: a model often closes an answer with '.' or quotes a label.
_TRIM = " \t.\"'`"


def _norm(text: str) -> str:
    """Case- and whitespace-insensitive form used for every match."""
    return " ".join(text.lower().split())


# --- parsing generations ---------------------------------------------------------------------------


def _split_parts(text: str, known: Callable[[str], bool] | None = None) -> list[str]:
    """Non-empty trimmed parts of a list answer (see `parse_labels` for the rule)."""
    if ";" in text:
        pieces = re.split(r"[;\n]", text)
    else:
        pieces = []
        for line in text.split("\n"):
            # A whole line that is already a known item keeps its commas (a label may contain one).
            if known is not None and "," in line and not known(line.strip(_TRIM)):
                pieces += line.split(",")
            else:
                pieces.append(line)
    return [p for p in (piece.strip(_TRIM) for piece in pieces) if p]


def parse_labels(text: str, labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split a generated label list into (known, outside) labels.

    The rule: when the text holds a ';' it is split on ';' and newlines only; otherwise it is split on
    newlines and then on commas, except that a line which as a whole is a label is kept whole. Parts are
    stripped of whitespace, quotes and trailing periods and matched case-insensitively (whitespace
    normalised) to `labels`. `known` holds the canonical spellings, de-duplicated, in label-set order;
    `outside` holds the other non-empty parts, de-duplicated, in order of appearance. A part 'none' is
    dropped (unless 'none' is itself a label), so 'none' and '' both give ([], []).
    """
    canon = {_norm(label): label for label in labels}
    parts = _split_parts(text, known=lambda p: _norm(p) in canon)
    found: set[str] = set()
    outside: dict[str, None] = {}
    for part in parts:
        key = _norm(part)
        if key in canon:
            found.add(canon[key])
        elif key != NONE:
            outside.setdefault(part, None)
    return [label for label in labels if label in found], list(outside)


def _mentions(text: str) -> list[str]:
    """Mentions of one type's answer: split on ';' and newlines (never on commas, which chemical names
    hold), 'none' dropped, de-duplicated case-insensitively keeping the first spelling."""
    seen: dict[str, str] = {}
    for part in re.split(r"[;\n]", text):
        part = part.strip(_TRIM)
        if part and _norm(part) != NONE:
            seen.setdefault(_norm(part), part)
    return list(seen.values())


def parse_entities(text: str, types: Sequence[str]) -> dict[str, list[str]]:
    """Predicted mentions per entity type, with every type of `types` as a key (canonical spelling).

    With one type, the whole answer is that type's list ('a; b' or 'none'); a leading 'Type:' naming
    the type is tolerated. With several types, each line 'Type: a; b' (type matched case-insensitively)
    gives that type's mentions; lines of unknown types or without a ':' are ignored, a type given on
    several lines collects them all, and a type never given gets []. Mentions are split on ';' only,
    since entity names may hold commas.
    """
    canon = {_norm(t): t for t in types}
    out: dict[str, list[str]] = {t: [] for t in types}
    if len(types) == 1:
        lines = []
        for line in text.split("\n"):
            head, sep, rest = line.partition(":")
            lines.append(rest if sep and _norm(head) in canon else line)
        out[types[0]] = _mentions("\n".join(lines))
        return out
    for line in text.split("\n"):
        head, sep, rest = line.partition(":")
        etype = canon.get(_norm(head.strip(_TRIM))) if sep else None
        if etype is not None:
            out[etype] = _mentions("\n".join([*out[etype], rest]))
    return out


def mentions_to_iob(
    tokens: Sequence[str], mentions: dict[str, list[str]], detokenize: Callable[[Sequence[str]], str]
) -> list[str]:
    """IOB tags for `tokens` from predicted mention strings, so seqeval can compare spans with gold.

    A mention matches a token span whose `detokenize`d text equals it case-insensitively with whitespace
    normalised. Mentions are placed longest first (ties: type order of `mentions`, then list order);
    every non-overlapping occurrence is tagged, scanning left to right, and a span touching an already
    tagged token is skipped. A mention found nowhere in the sentence tags nothing (it is a false
    positive only through the spans it does not produce, like any extraction that cannot be aligned).
    """
    tags = ["O"] * len(tokens)
    spans: dict[tuple[int, int], str] = {}

    def span_text(i: int, j: int) -> str:
        if (i, j) not in spans:
            spans[(i, j)] = _norm(detokenize(tokens[i:j]))
        return spans[(i, j)]

    order = [(etype, _norm(m)) for etype, ms in mentions.items() for m in ms if _norm(m)]
    order.sort(key=lambda tm: -len(tm[1]))  # stable: ties keep type then list order
    for etype, target in order:
        i = 0
        while i < len(tokens):
            end = None
            for j in range(i + 1, len(tokens) + 1):
                if tags[j - 1] != "O":
                    break
                text = span_text(i, j)
                if text == target:
                    end = j
                    break
                if len(text) > len(target):  # spans only grow as tokens are added
                    break
            if end is None:
                i += 1
                continue
            tags[i] = f"B-{etype}"
            for k in range(i + 1, end):
                tags[k] = f"I-{etype}"
            i = end
    return tags


def parse_relations(text: str) -> set[tuple[str, str]]:
    """Predicted (head, tail) pairs from 'a -> b; c -> d', lower-cased and whitespace-normalised.

    Parts are split on ';' and newlines; a part without exactly one '->' or with an empty side is
    malformed and ignored; 'none' and '' give the empty set.
    """
    pairs: set[tuple[str, str]] = set()
    for part in re.split(r"[;\n]", text):
        sides = part.strip(_TRIM).split("->")
        if len(sides) != 2:
            continue
        head, tail = _norm(sides[0].strip(_TRIM)), _norm(sides[1].strip(_TRIM))
        if head and tail:
            pairs.add((head, tail))
    return pairs


# --- per-item statistics and metrics from them ------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def _need_labels(kind: str, labels: Sequence[str] | None) -> list[str]:
    if not labels:
        raise ValueError(f"{kind} metrics need the label set")
    return list(labels)


def _per_class(gold: set[str], pred: set[str], labels: Sequence[str]) -> list[float]:
    out: list[float] = []
    for label in labels:
        g, p = label in gold, label in pred
        out += [float(g and p), float(p and not g), float(g and not p)]
    return out


def item_stats(kind: str, gold: Any, pred: Any, labels: Sequence[str] | None = None) -> list[float]:
    """Per-item sufficient statistics of one (gold, prediction) pair; summed over items they give the
    corpus metric through `metrics_from_stats`.

    classification: gold a label, pred a label or None (None or a string outside `labels` is wrong);
    [correct] + [tp, fp, fn] per class of `labels`. multilabel: gold and pred lists of labels (pred
    labels outside the set are dropped); [tp, fp, fn] per class. ner: gold and pred IOB tag lists;
    [tp, fp, fn] of exact (type, start, end) spans from seqeval's `get_entities`. relation: gold and
    pred sets of pairs; [tp, fp, fn]. generation: gold and pred strings; [rouge1, rouge2, rougeL]
    F-measures (rouge-score, Porter stemmer).
    """
    if kind == "classification":
        labels = _need_labels(kind, labels)
        if gold not in labels:
            raise ValueError(f"gold label {gold!r} is not in the label set {labels}")
        hit = pred is not None and pred in labels
        return [float(hit and pred == gold), *_per_class({gold}, {pred} if hit else set(), labels)]
    if kind == "multilabel":
        labels = _need_labels(kind, labels)
        return _per_class(set(gold), set(pred) & set(labels), labels)
    if kind == "ner":
        if len(gold) != len(pred):
            raise ValueError(f"gold has {len(gold)} tags, prediction {len(pred)}")
        g, p = set(get_entities(list(gold))), set(get_entities(list(pred)))
        return [float(len(g & p)), float(len(p - g)), float(len(g - p))]
    if kind == "relation":
        g, p = set(gold), set(pred)
        return [float(len(g & p)), float(len(p - g)), float(len(g - p))]
    if kind == "generation":
        scores = _rouge().score(gold, pred)
        return [float(scores[t].fmeasure) for t in ROUGE_TYPES]
    raise ValueError(f"unknown task kind {kind!r}; expected one of {KINDS}")


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (sklearn's zero_division=0)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # F1 = 2tp / (2tp + fp + fn) equals 2PR / (P + R) whenever it is defined, and is 0 when tp is 0.
    return _safe_div(tp, tp + fp), _safe_div(tp, tp + fn), _safe_div(2 * tp, 2 * tp + fp + fn)


def metrics_from_stats(
    kind: str, summed: np.ndarray, n: int | np.ndarray, labels: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Corpus metrics from statistics summed over items, shape (D,) or (R, D) for R resamples.

    `n` is the number of items behind each sum (an int or shape (R,)). classification: accuracy and
    macro_f1; multilabel: micro_f1 and macro_f1; ner and relation: micro precision, recall, f1;
    generation: mean rouge1, rouge2, rougeL. Zero denominators give 0, and a macro average runs over
    every class of `labels`, a class with neither gold nor predicted items counting as F1 0, which is
    exactly what sklearn's `f1_score(average="macro", labels=..., zero_division=0)` does. Means over
    n = 0 items are nan.
    """
    s = np.asarray(summed, dtype=float)
    n_arr = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        if kind == "classification":
            labels = _need_labels(kind, labels)
            counts = s[..., 1:].reshape(*s.shape[:-1], len(labels), 3)
            _, _, f1 = _prf(counts[..., 0], counts[..., 1], counts[..., 2])
            return {"accuracy": s[..., 0] / n_arr, "macro_f1": f1.mean(axis=-1)}
        if kind == "multilabel":
            labels = _need_labels(kind, labels)
            counts = s.reshape(*s.shape[:-1], len(labels), 3)
            _, _, f1 = _prf(counts[..., 0], counts[..., 1], counts[..., 2])
            _, _, micro = _prf(*(counts[..., k].sum(axis=-1) for k in range(3)))
            return {"micro_f1": micro, "macro_f1": f1.mean(axis=-1)}
        if kind in ("ner", "relation"):
            p, r, f1 = _prf(s[..., 0], s[..., 1], s[..., 2])
            return {"precision": p, "recall": r, "f1": f1}
        if kind == "generation":
            return {t: s[..., k] / n_arr for k, t in enumerate(ROUGE_TYPES)}
    raise ValueError(f"unknown task kind {kind!r}; expected one of {KINDS}")


def stats_matrix(
    kind: str, golds: Sequence, preds: Sequence, labels: Sequence[str] | None = None
) -> np.ndarray:
    """The (n, D) matrix of `item_stats` over paired gold and predicted items."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold items but {len(preds)} predictions")
    return np.array([item_stats(kind, g, p, labels) for g, p in zip(golds, preds, strict=True)], dtype=float)


# --- point estimates with the reference libraries ---------------------------------------------------


def corpus_metrics(
    kind: str, golds: Sequence, preds: Sequence, labels: Sequence[str] | None = None
) -> dict[str, float]:
    """Corpus metrics computed with sklearn, seqeval and rouge-score (the reference path).

    Takes the same items as `item_stats` and returns the same keys as `metrics_from_stats`, to which
    it agrees to rounding. classification: `accuracy_score` and macro `f1_score` over `labels`, with
    None or out-of-set predictions mapped to a sentinel that is never a label; multilabel:
    `MultiLabelBinarizer(classes=labels)` and micro/macro `f1_score`; ner: seqeval's micro precision,
    recall and F1 over exact spans (default mode); relation: micro P/R/F1 over binarised pair strings;
    generation: mean rouge-score F-measures. All with zero_division=0.
    """
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold items but {len(preds)} predictions")
    if kind == "classification":
        labels = _need_labels(kind, labels)
        y_pred = [p if p is not None and p in labels else _OUTSIDE for p in preds]
        return {
            "accuracy": float(accuracy_score(list(golds), y_pred)),
            "macro_f1": float(f1_score(list(golds), y_pred, labels=labels, average="macro", zero_division=0)),
        }
    if kind == "multilabel":
        labels = _need_labels(kind, labels)
        mlb = MultiLabelBinarizer(classes=labels).fit([labels])
        y_true = mlb.transform([[g for g in gold if g in labels] for gold in golds])
        y_pred = mlb.transform([[p for p in pred if p in labels] for pred in preds])
        return {
            avg + "_f1": float(f1_score(y_true, y_pred, average=avg, zero_division=0))
            for avg in ("micro", "macro")
        }
    if kind == "ner":
        y_true, y_pred = [list(g) for g in golds], [list(p) for p in preds]
        return {
            "precision": float(seq_precision(y_true, y_pred, zero_division=0)),
            "recall": float(seq_recall(y_true, y_pred, zero_division=0)),
            "f1": float(seq_f1(y_true, y_pred, zero_division=0)),
        }
    if kind == "relation":
        gold_strs = [{f"{h} -> {t}" for h, t in g} for g in golds]
        pred_strs = [{f"{h} -> {t}" for h, t in p} for p in preds]
        classes = sorted(set().union(*gold_strs, *pred_strs))
        if not classes:  # nothing gold, nothing predicted: every score is 0 by zero_division=0
            return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
        mlb = MultiLabelBinarizer(classes=classes).fit([classes])
        y_true, y_pred = mlb.transform(gold_strs), mlb.transform(pred_strs)
        return {
            name: float(fn(y_true, y_pred, average="micro", zero_division=0))
            for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score))
        }
    if kind == "generation":
        if not golds:
            return {t: float("nan") for t in ROUGE_TYPES}
        scores = [_rouge().score(g, p) for g, p in zip(golds, preds, strict=True)]
        return {t: float(np.mean([s[t].fmeasure for s in scores])) for t in ROUGE_TYPES}
    raise ValueError(f"unknown task kind {kind!r}; expected one of {KINDS}")


# --- bootstrap -------------------------------------------------------------------------------------


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) counts of how often each item is drawn in each bootstrap resample of size n."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)


def bootstrap_metric(
    kind: str,
    stats: np.ndarray,
    labels: Sequence[str] | None = None,
    *,
    metric: str,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of one corpus metric, resampling items with replacement.

    `stats` is the (n, D) matrix of `item_stats`; each resample's statistics are its item counts times
    `stats` (one matrix product for all resamples), so the metric is recomputed exactly as on the full
    set. Returns (nan, nan) for no items.
    """
    stats = np.asarray(stats, dtype=float)
    if stats.ndim != 2 or stats.shape[0] == 0:
        return (float("nan"), float("nan"))
    n = stats.shape[0]
    summed = resample_counts(n, resamples, seed) @ stats
    values = metrics_from_stats(kind, summed, n, labels)[metric]
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)
