"""`mdkif data ...`: build the unified skill data from native files, and inspect a built folder.

mdkif data build --source ../shared/data/skills --out data/skills --skip-bad
mdkif data stats data/skills
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from mdkif.data.benchmark_commands import benchmarks, export_exclusions
from mdkif.data.build import SPLITS, build_skill_data, load_manifest, load_skill_split
from mdkif.data.errors import DataError
from mdkif.data.records import SKILLS

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _names(value: str | None) -> list[str] | None:
    """'a,b' -> ['a', 'b']; None stays None (= all)."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
def build(
    source: Path = typer.Option(..., "--source", help="Root folder of the native skill data sets."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder (replaced atomically when the build succeeds)."
    ),
    seed: int = typer.Option(0, help="Seed for instruction wording, capping and the train/validation split."),
    sources: str | None = typer.Option(None, help="Comma-separated source names (default: all)."),
    skills: str | None = typer.Option(None, help="Comma-separated skills to keep (default: all 12)."),
    exclude: list[Path] = typer.Option(  # noqa: B006 - typer needs a list default for repeatable options
        [], "--exclude", help="Exclusion list (.txt/.jsonl of ids or question texts); repeatable."
    ),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Count malformed native rows instead of failing."
    ),
    max_per_task: int | None = typer.Option(None, min=1, help="Cap every task at N records (seeded sample)."),
    validation_fraction: float = typer.Option(0.05, min=0.0, max=0.99, help="Share of each task held out."),
) -> None:
    """Build OUT/<skill>/{train,validation}.jsonl for all 12 skills, plus OUT/manifest.json."""
    start = time.perf_counter()
    try:
        manifest = build_skill_data(
            source,
            out,
            seed=seed,
            sources=_names(sources),
            skills=_names(skills),
            validation_fraction=validation_fraction,
            max_per_task=max_per_task,
            exclude=exclude,
            skip_bad=skip_bad,
            progress=True,
        )
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        # Unknown source/skill names are usage errors: show them like typer shows a bad option.
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"\n{'skill':<28}{'train':>9}{'validation':>12}")
    for skill, c in manifest.skills.items():
        typer.echo(f"{skill:<28}{c.train:>9}{c.validation:>12}")
    total_train = sum(c.train for c in manifest.skills.values())
    total_val = sum(c.validation for c in manifest.skills.values())
    typer.echo(f"{'total':<28}{total_train:>9}{total_val:>12}")
    typer.echo(
        f"duplicates dropped: {manifest.duplicates}; excluded: {manifest.excluded}; "
        f"bad rows skipped: {manifest.bad_rows}"
    )
    if manifest.settings.get("exclude_short_texts_ignored"):
        n = manifest.settings["exclude_short_texts_ignored"]
        typer.echo(f"exclusion texts too short to match as text (ids still used): {n}")
    for example in manifest.bad_row_examples:
        typer.echo(f"  bad row {example}")
    typer.echo(f"wrote {out} in {time.perf_counter() - start:.1f}s")


@app.command()
def stats(out: Path = typer.Argument(..., help="A folder written by `mdkif data build`.")) -> None:
    """Per skill and split: records, sources, mean input/output length (characters); checks the manifest."""
    manifest = load_manifest(out)
    typer.echo(f"{out}: seed {manifest.seed}, {len(manifest.tasks)} tasks, {len(manifest.sources)} sources")
    typer.echo(f"{'skill':<28}{'split':<12}{'records':>8}{'mean in':>9}{'mean out':>9}  sources")
    for skill in SKILLS:
        for split in SPLITS:
            records = load_skill_split(out, skill, split)
            expected = getattr(manifest.skills[skill], split)
            if len(records) != expected:
                raise DataError(
                    out / skill / f"{split}.jsonl", f"{len(records)} records, manifest says {expected}"
                )
            if not records:
                continue
            n = len(records)
            mean_in = sum(len(r.input) for r in records) / n
            mean_out = sum(len(r.output) for r in records) / n
            by_source: dict[str, int] = {}
            for r in records:
                by_source[r.source] = by_source.get(r.source, 0) + 1
            shown = ", ".join(f"{s} {k}" for s, k in sorted(by_source.items()))
            typer.echo(f"{skill:<28}{split:<12}{n:>8}{mean_in:>9.0f}{mean_out:>9.0f}  {shown}")
    typer.echo(
        f"duplicates {manifest.duplicates}, excluded {manifest.excluded}, bad rows {manifest.bad_rows}"
    )


# Benchmark inspection lives beside the MCQ loaders; registered here so it sits under `mdkif data`.
app.command("benchmarks")(benchmarks)
app.command("export-exclusions")(export_exclusions)
