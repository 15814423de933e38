"""Evaluation harness: one scorer for every variant on every medical MCQ benchmark, with a report.

`mdkif eval CONFIG` runs a matrix of variants (model + optional adapter + optional retriever + a scoring
method) x benchmarks, sharded over Ray actors and resumable, and writes per-item predictions,
summary.json (accuracy with a 95% bootstrap CI), report.md and a bar chart.
"""

from mdkif.evaluation.config import (
    BenchmarkConfig,
    EvalConfig,
    FewshotSource,
    RetrieverConfig,
    ScoringConfig,
    VariantConfig,
)
from mdkif.evaluation.metrics import bootstrap_ci, summarize
from mdkif.evaluation.parsing import Parsed, parse_answer
from mdkif.evaluation.runner import run_eval
from mdkif.evaluation.scorers import score_records
from mdkif.evaluation.worker import EvalError

__all__ = [
    "BenchmarkConfig",
    "EvalConfig",
    "EvalError",
    "FewshotSource",
    "Parsed",
    "RetrieverConfig",
    "ScoringConfig",
    "VariantConfig",
    "bootstrap_ci",
    "parse_answer",
    "run_eval",
    "score_records",
    "summarize",
]
