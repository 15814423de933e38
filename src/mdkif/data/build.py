"""Build the unified skill data: run the builders, clean, split, and write one folder per skill.

    OUT/<skill>/train.jsonl, OUT/<skill>/validation.jsonl   (all 12 skills; empty files where no data)
    OUT/manifest.json                                        (counts, seed, settings, source hashes)

The same steps apply to every source, in this order: run its builder (bad rows raise, or are counted
with `skip_bad`), keep the requested skills, drop exact duplicates (first source in registry order
wins), drop records an exclusion list names, cap each task, then split each task by seed.
The output appears all at once: it is written to a temporary folder beside OUT and renamed into place
only when everything succeeded, so a failed build never leaves a half-written OUT behind.

Only local files are read. `SourceSpec.hub` is not used here: the skill sources are small files
passed with `--source`; hub-only data sets (MedQA/MedMCQA training splits) belong to the benchmarks.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from tqdm import tqdm

from mdkif.data.builders import REGISTRY
from mdkif.data.builders.base import BuildContext
from mdkif.data.errors import DataError
from mdkif.data.exclusions import load_exclusions
from mdkif.data.records import SKILLS, SkillRecord
from mdkif.io import numbered_lines, write_atomic
from mdkif.tracking import Run

SPLITS = ("train", "validation")
DATA_MANIFEST = "manifest.json"
FORMAT = "mdkif-skill-data/1"


class SplitCounts(BaseModel):
    """Records in each split."""

    model_config = ConfigDict(extra="forbid")

    train: int = 0
    validation: int = 0


class TaskCounts(SplitCounts):
    """One task's skill, source and split sizes; `available` is its size before `max_per_task`."""

    skill: str
    source: str
    available: int


class Manifest(BaseModel):
    """What a build produced and from what: enough to tell two builds apart and to reproduce one."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    seed: int
    settings: dict[str, Any]
    skills: dict[str, SplitCounts]
    sources: dict[str, SplitCounts]
    tasks: dict[str, TaskCounts]
    # Path relative to the source root -> sha256 of its bytes, for every file a builder read.
    source_files: dict[str, str]
    duplicates: int = 0
    excluded: int = 0
    bad_rows: int = 0
    # The first bad rows as "file:line: message", so a --skip-bad build says what it skipped.
    bad_row_examples: list[str] = []


def build_skill_data(
    source_root: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    sources: Sequence[str] | None = None,
    skills: Sequence[str] | None = None,
    validation_fraction: float = 0.05,
    max_per_task: int | None = None,
    exclude: Sequence[str | Path] = (),
    skip_bad: bool = False,
    progress: bool = False,
) -> Manifest:
    """Build the skill data from the native files under `source_root` into `out_dir`; return the manifest.

    `sources` and `skills` restrict the build (None = all); a requested source whose files are missing
    is a DataError naming the file. `exclude` lists ids/question texts kept out of the data (see
    `mdkif.data.exclusions`). `max_per_task` caps every task with a seeded sample. `progress` shows a
    tqdm bar per source.
    """
    root = Path(source_root)
    names = _check_names(sources, REGISTRY, "source")
    wanted = set(_check_names(skills, SKILLS, "skill"))
    builders = [REGISTRY[n] for n in names if wanted & set(REGISTRY[n].SPEC.skills)]
    ctx = BuildContext(root=root, seed=seed, skip_bad=skip_bad, max_per_task=max_per_task)
    # Every file first: a typo in --source fails in a second, not after the first sources ran.
    source_files = {rel: _sha256(ctx.path(rel)) for b in builders for rel in b.SPEC.files}
    exclusions = load_exclusions(exclude)

    kept: list[SkillRecord] = []
    seen_keys: set[str] = set()
    seen_ids: set[str] = set()
    duplicates = excluded = 0
    for builder in builders:
        spec = builder.SPEC
        produced = 0
        for record in tqdm(builder.build(ctx), desc=spec.name, unit=" rec", disable=not progress):
            produced += 1
            if record.skill not in wanted:
                continue
            key = record.content_key()
            if key in seen_keys or record.id in seen_ids:
                duplicates += 1
                continue
            seen_keys.add(key)
            seen_ids.add(record.id)
            if exclusions.matches(record):
                excluded += 1
                continue
            kept.append(record)
        if produced == 0:
            where = ctx.path(spec.files[0]) if spec.files else root
            raise DataError(where, f"source {spec.name!r} produced no records")

    settings = {
        "sources": names,
        "skills": sorted(wanted, key=SKILLS.index),
        "validation_fraction": validation_fraction,
        "max_per_task": max_per_task,
        "skip_bad": skip_bad,
        "exclude": {str(p): _sha256(Path(p)) for p in exclude},
        "exclude_short_texts_ignored": exclusions.short_texts,
        "source_root": str(root.resolve()),
    }
    return write_skill_data(
        kept,
        out_dir,
        seed=seed,
        validation_fraction=validation_fraction,
        max_per_task=max_per_task,
        settings=settings,
        source_files=source_files,
        duplicates=duplicates,
        excluded=excluded,
        bad_rows=[f"{b.path}:{b.line}: {b.message}" for b in ctx.bad_rows],
    )


def write_skill_data(
    records: Iterable[SkillRecord],
    out_dir: str | Path,
    *,
    seed: int = 0,
    validation_fraction: float = 0.05,
    max_per_task: int | None = None,
    settings: dict[str, Any] | None = None,
    source_files: dict[str, str] | None = None,
    duplicates: int = 0,
    excluded: int = 0,
    bad_rows: Sequence[str] = (),
) -> Manifest:
    """Cap, split and write already-clean records in the skill-data layout, atomically.

    Split per task: a seeded shuffle of the task's records (sorted by id first, so the order the
    builder yielded them in does not matter), the first `validation_fraction` of them (at least one
    when the task has two or more) to validation. Each skill's files are then shuffled by seed so tasks
    interleave. Used by the build and by `scripts/make_demo_data.py`.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    by_task: dict[str, list[SkillRecord]] = defaultdict(list)
    for r in records:
        by_task[r.task].append(r)

    splits: dict[str, dict[str, list[SkillRecord]]] = {s: {sp: [] for sp in SPLITS} for s in SKILLS}
    tasks: dict[str, TaskCounts] = {}
    sources: dict[str, SplitCounts] = defaultdict(SplitCounts)
    for task in sorted(by_task):
        rows = sorted(by_task[task], key=lambda r: r.id)
        owners = {(r.skill, r.source) for r in rows}
        if len(owners) != 1:
            raise ValueError(f"task {task!r} belongs to several (skill, source) pairs: {sorted(owners)}")
        skill, source = owners.pop()
        random.Random(f"{seed}:split:{task}").shuffle(rows)
        available = len(rows)
        rows = rows[:max_per_task] if max_per_task is not None else rows
        n_val = 0
        if validation_fraction > 0 and len(rows) >= 2:
            n_val = min(len(rows) - 1, max(1, round(validation_fraction * len(rows))))
        splits[skill]["validation"] += rows[:n_val]
        splits[skill]["train"] += rows[n_val:]
        tasks[task] = TaskCounts(
            skill=skill, source=source, available=available, train=len(rows) - n_val, validation=n_val
        )
        sources[source].train += len(rows) - n_val
        sources[source].validation += n_val

    manifest = Manifest(
        seed=seed,
        settings=settings or {"validation_fraction": validation_fraction, "max_per_task": max_per_task},
        skills={s: SplitCounts(**{sp: len(splits[s][sp]) for sp in SPLITS}) for s in SKILLS},
        sources=dict(sorted(sources.items())),
        tasks=tasks,
        source_files=source_files or {},
        duplicates=duplicates,
        excluded=excluded,
        bad_rows=len(bad_rows),
        bad_row_examples=list(bad_rows[:20]),
    )

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the renamed OUT should read like any folder
        for skill in SKILLS:
            (tmp / skill).mkdir()
            for split in SPLITS:
                rows = splits[skill][split]
                random.Random(f"{seed}:order:{skill}:{split}").shuffle(rows)
                with (tmp / skill / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
                    fh.writelines(r.model_dump_json() + "\n" for r in rows)
        (tmp / DATA_MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def load_manifest(out_dir: str | Path) -> Manifest:
    """The manifest of a built skill-data folder; a DataError naming the file if absent or invalid."""
    path = Path(out_dir) / DATA_MANIFEST
    if not path.is_file():
        raise DataError(path, "no manifest: not a skill-data folder (run `mdkif data build`)")
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise DataError(path, f"invalid manifest: {exc.errors()[0]['msg']}") from None


def load_skill_split(out_dir: str | Path, skill: str, split: str) -> list[SkillRecord]:
    """Read and validate one `<skill>/<split>.jsonl`; a bad line is a DataError naming file:line."""
    if skill not in SKILLS:
        raise ValueError(f"unknown skill {skill!r}; expected one of {', '.join(SKILLS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    path = Path(out_dir) / skill / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(path, "skill split file not found")
    records = []
    for n, line in numbered_lines(path):
        try:
            record = SkillRecord.model_validate_json(line)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "record"
            raise DataError(path, f"invalid skill record ({where}: {err['msg']})", n) from None
        if record.skill != skill:
            raise DataError(path, f"record of skill {record.skill!r} in the {skill!r} file", n)
        records.append(record)
    return records


def _check_names(names: Sequence[str] | None, known: Iterable[str], what: str) -> list[str]:
    known = list(known)
    if names is None:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what}(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
    return [n for n in known if n in names]


def _sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and bytes, in sorted order)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _replace_dir(new: Path, out: Path) -> None:
    """Put `new` at `out`; an existing `out` is moved aside first and deleted only after the swap."""
    if not out.exists():
        os.replace(new, out)
        return
    if not (out / DATA_MANIFEST).is_file() and any(out.iterdir()):
        raise DataError(
            out, "exists and is not a skill-data folder (no manifest.json); refusing to replace it"
        )
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "data")
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def track_data(run: Run, out_dir: str | Path) -> None:
    """Log a built skill-data folder to a stage run: its settings, records per skill and split, what was
    excluded or skipped, and the manifest itself."""
    if not run.active:
        return
    manifest = load_manifest(out_dir)
    run.params(
        {"data_dir": str(Path(out_dir).resolve()), "seed": manifest.seed, "settings": manifest.settings}
    )
    counts = {
        f"{skill}/{split}": n for skill, c in manifest.skills.items() for split, n in c.model_dump().items()
    }
    run.metrics(
        counts
        | {"duplicates": manifest.duplicates, "excluded": manifest.excluded, "bad_rows": manifest.bad_rows}
    )
    run.artifact(Path(out_dir) / "manifest.json")


def build_skill_data_once(
    source_root: str | Path,
    out_dir: str | Path,
    exclusions: Path,
    exclusions_text: str,
    *,
    max_per_task: int | None = None,
) -> Path:
    """The skill data of a run: built from `source_root` without what `exclusions_text` lists (written to
    `exclusions`, one id or entry per line), or reused when `out_dir` was built with that same list.

    The one data stage of the demo, reference and unseen-task plans: a changed exclusion list rebuilds,
    so no held-out item can slip into a reused build."""
    out = Path(out_dir)
    if (
        (out / "manifest.json").is_file()
        and exclusions.is_file()
        and exclusions.read_text() == exclusions_text
    ):
        print(f"{out} exists with the same exclusions: reusing it")
        return out
    exclusions.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(exclusions, exclusions_text)
    cap = f", max {max_per_task} per task" if max_per_task else ""
    lines = sum(1 for line in exclusions_text.splitlines() if line.strip() and not line.startswith("#"))
    print(f"building skill data from {source_root} without {lines} held-out entries{cap}")
    manifest = build_skill_data(
        source_root, out, max_per_task=max_per_task, skip_bad=True, exclude=[exclusions], progress=True
    )
    print(f"excluded {manifest.excluded} records; train records per skill:")
    print(", ".join(f"{s} {c.train}" for s, c in manifest.skills.items()))
    return out
