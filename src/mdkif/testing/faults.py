"""Fault injection for the training loop's resume tests: a `StepCallback` that SIGKILLs its worker once.

Passed as `callbacks=[KillAt(...)]` to `skills.runner.run` / `run_skills` or `skills.loop.run_job`; it travels
to Ray Train workers pickled in the trainer's loop config. The marker file makes it fire once: the
restarted worker group finds it and trains on.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from mdkif.skills.job import TrainJob


@dataclass(frozen=True)
class KillAt:
    """SIGKILL the process of worker `rank` right after step `step` was reported, once (`marker` remembers)."""

    step: int
    marker: Path
    rank: int = 0

    def __call__(self, job: TrainJob, rank: int, step: int) -> None:
        if step != self.step or rank != self.rank:
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"killed {job.name} rank {rank} pid {os.getpid()} at step {step}\n")
        os.kill(os.getpid(), signal.SIGKILL)
