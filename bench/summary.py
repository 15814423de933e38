"""Collect every benchmark's figures into one table: bench/results/SUMMARY.md (run by `make bench`).

Each row is one figure measured against a baseline taken in the same run, with the ratio and, where an
issue set one, the target and whether it is met. Benchmarks write their figures into their own JSON
(`figures`, through bench/_harness.py), so this reads every results file the same way. An expected
benchmark whose JSON is missing is listed as not run, and a JSON without figures as needing a re-run, so
the table never silently drops a figure.

    python bench/summary.py [--results bench/results]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _harness, when imported from elsewhere

from _harness import RESULTS, Figure, read_figures  # noqa: E402

# The benchmarks `make bench` runs that report figures; a missing one is listed as not run.
EXPECTED = ("eval_scoring", "fusion", "answer_loss", "rag", "serve", "train")


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def collect(results: Path) -> tuple[list[Figure], list[str]]:
    """Every figure in `results/*.json` (file order), and what is missing: `<name>.json` for an expected
    benchmark without a file, `<name>.json (no figures)` for a file written before the harness."""
    rows: list[Figure] = []
    missing = [f"{n}.json" for n in EXPECTED if not (results / f"{n}.json").is_file()]
    for path in sorted(results.glob("*.json")):
        try:
            found = read_figures(path)
        except (KeyError, TypeError, ValueError) as e:
            raise SystemExit(
                f"{path}: unexpected layout ({type(e).__name__}: {e}); re-run its benchmark"
            ) from e
        if found is None:
            missing.append(f"{path.name} (no figures: re-run its benchmark)")
        else:
            rows += found
    return rows, missing


def render(rows: list[Figure], missing: list[str]) -> str:
    lines = [
        "# Benchmark summary",
        "",
        "Every figure against a baseline measured in the same run (`make bench`; each benchmark's own",
        "Markdown beside this file has the details and the machine it ran on). ratio = value / baseline.",
        "",
        "| bench | figure | value | baseline | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        unit = f" {r.unit}" if r.unit else ""
        base = f"{_fmt(r.baseline)}{unit} ({r.baseline_name})" if r.baseline is not None else "-"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.bench} | {r.figure} | {_fmt(r.value)}{unit} | {base} | {_fmt(r.ratio)} | {r.target} | {met} |"
        )
    if missing:
        lines += ["", "Not run or without figures: " + ", ".join(missing)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows, missing = collect(args.results)
    text = render(rows, missing)
    out = args.results / "SUMMARY.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(text)


if __name__ == "__main__":
    main()
