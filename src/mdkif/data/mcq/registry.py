"""Which loader reads which file, where each benchmark lives under a data root, and `load_benchmark`.

A new format is one module (with `load` and `looks_like`) plus one line in FORMATS; a new default file
is one line in DEFAULT_PATHS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdkif.data.errors import DataError
from mdkif.data.mcq import bioasq, headqa, hub, medmcqa, medqa, mirage, mmlu, pubmedqa
from mdkif.data.mcq.common import iter_jsonl, read_json
from mdkif.data.records import MCQRecord


@dataclass(frozen=True)
class Format:
    """A native file format: its loader, a content sniffer, and the file kind the sniffer looks at."""

    load: Callable[..., list[MCQRecord]]
    looks_like: Callable[[Any], bool]
    # "jsonl": sniffer sees the first row; "json": the parsed file; "path": the path (CSV files, folders).
    kind: str


# One line per format. Order matters only for sniffing: the first format whose sniffer says yes wins.
FORMATS: dict[str, Format] = {
    "medqa": Format(medqa.load, medqa.looks_like, "jsonl"),
    "medmcqa": Format(medmcqa.load, medmcqa.looks_like, "jsonl"),
    "pubmedqa": Format(pubmedqa.load, pubmedqa.looks_like, "json"),
    "headqa": Format(headqa.load, headqa.looks_like, "json"),
    "bioasq": Format(bioasq.load, bioasq.looks_like, "json"),
    "mirage": Format(mirage.load, mirage.looks_like, "json"),
    "mmlu_med": Format(mmlu.load, mmlu.looks_like, "path"),
}

# Benchmark name -> {split: path under the data root}; the first split is the default.
# For `mirage`, `split` instead picks one of its sources (medqa, medmcqa, mmlu/mmlu_med, pubmedqa, bioasq).
DEFAULT_PATHS: dict[str, dict[str, str]] = {
    "medqa": {"test": "mcq/medqa_usmle_4opt_sample.jsonl"},
    "medmcqa": {"dev": "mcq/medmcqa_dev_sample.jsonl"},
    "pubmedqa": {"dev": "mcq/pubmedqa/pqal_dev500.json"},
    "mmlu_med": {"val": "mcq/mmlu_med/val", "dev": "mcq/mmlu_med/dev"},
    "headqa": {"dev": "mcq/headqa_en/dev_HEAD_EN.json", "train": "mcq/headqa_en/train_HEAD_EN.json"},
    "bioasq": {"test": "mcq/bioasq/bioasq_yesno.json"},  # no sample ships; place a BioASQ json here
    "mirage": {"all": "mcq/mirage_sample.json"},
}


def data_root(root: str | Path | None = None) -> Path:
    """The folder benchmark names resolve against: `root`, else `$MDKIF_DATA_ROOT`, else `./data`."""
    return Path(root if root is not None else os.environ.get("MDKIF_DATA_ROOT", "data"))


def detect_format(path: Path) -> str:
    """Name the format of `path` from its content (first row for jsonl, whole file for json)."""
    if not path.exists():
        raise DataError(path, "file not found")
    samples: dict[str, Any] = {"path": path}
    if path.is_file() and path.suffix == ".jsonl":
        rows = iter_jsonl(path)
        samples["jsonl"] = next(rows, (0, None))[1]
        rows.close()  # only the first row is needed; close the file now
    elif path.is_file() and path.suffix == ".json":
        samples["json"] = read_json(path)
    for name, fmt in FORMATS.items():
        if fmt.kind in samples and fmt.looks_like(samples[fmt.kind]):
            return name
    raise DataError(
        path, f"cannot tell which benchmark format this is; pass fmt= one of {', '.join(FORMATS)}"
    )


def load_benchmark(
    name_or_path: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    with_context: bool = False,
    root: str | Path | None = None,
    fmt: str | None = None,
) -> list[MCQRecord]:
    """Load a benchmark as MCQRecords from a known name, a file/folder path, or `hub:<repo>[:<config>]`.

    A name (`medqa`, `mmlu_med`, ...) resolves through DEFAULT_PATHS under the data root, `split`
    picking the file (`root` defaults to `$MDKIF_DATA_ROOT`); a path is sniffed unless `fmt`
    names its format. For MIRAGE, `split` picks a source.
    `limit` keeps the first `limit` records of each benchmark (a MIRAGE file bundles several).
    `with_context` adds gold contexts where the format has them (PubMedQA, BioASQ); MIRAGE's fair
    RAG setting is without, the default.
    """
    spec = str(name_or_path)
    if spec.startswith("hub:"):
        return _limit(hub.load_hub(spec, split=split, with_context=with_context), limit)
    source_filter = None
    if spec in DEFAULT_PATHS:
        fmt = fmt or spec
        splits = DEFAULT_PATHS[spec]
        if spec == "mirage":
            source_filter, split = split, None
        if split is not None and split not in splits:
            raise DataError(spec, f"unknown split {split!r}; known: {', '.join(splits)}")
        path = data_root(root) / splits[split or next(iter(splits))]
        if not path.exists():
            raise DataError(path, f"benchmark {spec!r} not found under the data root (set $MDKIF_DATA_ROOT)")
    else:
        path = Path(spec)
        if split is not None and path.is_dir() and (path / split).is_dir():
            path, split = path / split, None  # e.g. mmlu_med/ holding dev/ and val/
        fmt = fmt or detect_format(path)
        if fmt == "mirage":
            source_filter, split = split, None
        if split is not None:
            raise DataError(path, f"split {split!r} does not apply to a single {fmt} file")
    if fmt not in FORMATS:
        raise DataError(path, f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    records = FORMATS[fmt].load(path, with_context=with_context)
    if source_filter not in (None, "all"):
        wanted = mirage.SOURCES.get(source_filter, source_filter)
        if wanted not in mirage.SOURCES.values():
            raise DataError(
                path, f"unknown MIRAGE source {source_filter!r}; known: {', '.join(mirage.SOURCES)}"
            )
        records = [r for r in records if r.benchmark == wanted]
    return _limit(records, limit)


def _limit(records: list[MCQRecord], limit: int | None) -> list[MCQRecord]:
    """The first `limit` records of each benchmark, in file order."""
    if limit is None:
        return records
    seen: dict[str, int] = {}
    kept = []
    for r in records:
        seen[r.benchmark] = seen.get(r.benchmark, 0) + 1
        if seen[r.benchmark] <= limit:
            kept.append(r)
    return kept


def exclusion_list(records: Iterable[MCQRecord]) -> list[dict[str, str]]:
    """`{id, question}` per evaluation item (first of each id), for the skill build to keep out of training."""
    seen: set[str] = set()
    out = []
    for r in records:
        if r.id not in seen:
            seen.add(r.id)
            out.append({"id": r.id, "question": r.question})
    return out


def write_exclusions(records: Iterable[MCQRecord], path: str | Path) -> int:
    """Write `exclusion_list(records)` as jsonl for the skill build; returns the count."""
    entries = exclusion_list(records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for entry in entries:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return len(entries)
