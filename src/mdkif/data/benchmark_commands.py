"""CLI commands for evaluation benchmarks: inspect what a loader reads, export the training exclusions.

Two plain typer command functions; the data command group registers them as `benchmarks` and
`export-exclusions`. Loader errors surface as DataError, which the top-level CLI prints as one line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import typer

from mdkif.data.mcq import DEFAULT_PATHS, data_root, load_benchmark, write_exclusions
from mdkif.data.records import MCQRecord


@dataclass
class Summary:
    """What one benchmark holds: item count, answer and option-count distributions, items with context."""

    count: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    n_options: Counter[int] = field(default_factory=Counter)
    with_context: int = 0


def summarize(records: list[MCQRecord]) -> dict[str, Summary]:
    """One Summary per benchmark, in the order benchmarks first appear."""
    out: dict[str, Summary] = {}
    for r in records:
        s = out.setdefault(r.benchmark, Summary())
        s.count += 1
        s.answers[r.answer] += 1
        s.n_options[len(r.options)] += 1
        s.with_context += r.context is not None
    return out


def benchmarks(
    path: str = typer.Argument(
        ..., help="Benchmark name (medqa, mirage, ...), file or folder, or hub:<repo>."
    ),
    split: str | None = typer.Option(None, help="Split of a named benchmark; for MIRAGE, a source."),
    limit: int | None = typer.Option(None, help="Keep the first N items of each benchmark."),
    with_context: bool = typer.Option(
        False, help="Add gold contexts (PubMedQA, BioASQ); off by default, as MIRAGE requires."
    ),
    root: Path | None = typer.Option(None, help="Data root that names resolve against ($MDKIF_DATA_ROOT)."),
    fmt: str | None = typer.Option(None, "--format", help="Format of a path, when sniffing cannot tell."),
) -> None:
    """Load a benchmark and print, per benchmark, the item count and the answer distribution."""
    records = load_benchmark(path, split=split, limit=limit, with_context=with_context, root=root, fmt=fmt)
    typer.echo(f"{path}: {len(records)} items")
    for bench, s in summarize(records).items():
        answers = ", ".join(f"{k} {v} ({100 * v / s.count:.0f}%)" for k, v in sorted(s.answers.items()))
        options = ", ".join(f"{k}-option {v}" for k, v in sorted(s.n_options.items()))
        typer.echo(f"  {bench}: {s.count} items; answers {answers}; {options}; with context {s.with_context}")


def export_exclusions(
    sources: list[str] = typer.Argument(
        None,
        help="Benchmark names, paths or hub:<repo> (name@split picks a split). Default: every known one found.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Exclusion jsonl to write ({id, question} per line)."),
    root: Path | None = typer.Option(None, help="Data root that names resolve against ($MDKIF_DATA_ROOT)."),
) -> None:
    """Write the `{id, question}` of every evaluation item, for the skill build to keep out of training."""
    if not sources:
        # Every split of every known benchmark present under the root: excluding too much costs nothing.
        base = data_root(root)
        sources = [
            f"{n}@{s}"
            for n, splits in DEFAULT_PATHS.items()
            for s, p in splits.items()
            if (base / p).exists()
        ]
        if not sources:
            raise typer.BadParameter(f"no known benchmark under {base}; pass sources or --root")
    records: list[MCQRecord] = []
    for source in sources:
        name, _, split = source.partition("@")
        loaded = load_benchmark(name, split=split or None, root=root)
        typer.echo(f"  {source}: {len(loaded)} items")
        records.extend(loaded)
    n = write_exclusions(records, out)
    typer.echo(f"wrote {n} exclusions ({len(records)} items, duplicates dropped by id) to {out}")
