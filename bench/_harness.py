"""What every benchmark shares: where results go, the machine they ran on, a timer, a Ray session, and
writing `<name>.json` + `<name>.md` with the figures `bench/summary.py` tabulates.

A benchmark measures, then calls :func:`write_results` with its data, its Markdown and its
:class:`Figure` rows (each figure against a baseline taken in the same run). The JSON carries the machine
under one key (`machine`) and the figures under `figures`, so the summary reads every benchmark the same
way and needs no reader per benchmark.

    from _harness import Figure, Timer, ray_session, write_results   # bench/ is on sys.path when run
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mdkif.io import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    """One measured figure against a baseline from the same run; `met` judges an issue's target."""

    bench: str
    figure: str
    value: float
    baseline: float | None
    baseline_name: str
    unit: str
    target: str = ""
    met: bool | None = None
    ratio: float | None = field(default=None)

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline:
            self.ratio = self.value / self.baseline

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        return cls(**data)


def machine() -> dict[str, Any]:
    """The facts that decide how comparable a figure is: CPU, cores, load, versions, GPU."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    for module in ("torch", "transformers", "peft", "ray"):
        mod = sys.modules.get(module)
        if mod is not None:
            info[module] = getattr(mod, "__version__", "?")
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


class Timer:
    """`with Timer() as t: ...` then `t.seconds` (wall clock, perf_counter)."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


@contextmanager
def ray_session(num_cpus: int | None = None, **kwargs: Any) -> Iterator[None]:
    """A local Ray for one benchmark (quiet, no dashboard), shut down after; an existing one is reused."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, **kwargs)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def write_results(
    name: str,
    data: dict[str, Any],
    markdown: str | None,
    figures: Iterable[Figure] = (),
    results: Path = RESULTS,
) -> Path:
    """Write `results/<name>.json` (data + `machine` + `figures`) and `<name>.md`; returns the JSON path."""
    results.mkdir(parents=True, exist_ok=True)
    doc = {**data, "machine": machine(), "figures": [asdict(f) for f in figures]}
    given = data.get("machine")
    if isinstance(given, dict):  # a benchmark's own machine facts (threads it pinned) win
        doc["machine"].update(given)
    elif given:
        doc["machine_note"] = given
    path = results / f"{name}.json"
    write_atomic(path, json.dumps(doc, indent=2, default=str) + "\n")
    if markdown is not None:
        write_atomic(results / f"{name}.md", markdown if markdown.endswith("\n") else markdown + "\n")
    return path


def read_figures(path: Path) -> list[Figure] | None:
    """The figures a results JSON carries, or None when it has none (written before the harness)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or "figures" not in doc:
        return None
    return [Figure.from_dict(f) for f in doc["figures"]]
