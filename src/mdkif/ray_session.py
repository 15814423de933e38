"""The one place a stage starts Ray: join a running instance or start a local one, and stop only what it started.

Every stage that needs Ray (training, evaluation, index building, tuning) enters `ray_session(...)`; a caller's
Ray (a test's, a notebook's, a `ray job submit` driver's) is left alone on the way out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Ray Train 2.60's controller collects results every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s) and a
# worker's `ray.train.report` blocks until its previous result was collected, so every shorter step was
# stretched to 2 s (bench/results/train.md). Jobs on a running cluster get it from cluster/runtime_env.yaml.
TRAIN_POLL_S = "0.1"


def fast_train_reports() -> None:
    """Let a Ray started by this process poll Train workers every 0.1 s (unless the user chose a value).

    Must run before `ray.init`: the Train controller is a Ray actor and reads the variable from the
    environment its worker process inherits.
    """
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)


@contextmanager
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    *,
    dashboard: bool = False,
    log_to_driver: bool = False,
    train: bool = False,
) -> Iterator[bool]:
    """Ray for the body of the block; yields whether it was started here (and so is shut down after).

    `num_cpus` sizes a Ray started here only: Ray refuses it when joining a cluster (an `address`, or
    RAY_ADDRESS from `ray job submit`). `train` makes Train reports fast (see `fast_train_reports`).
    """
    import ray

    started = not ray.is_initialized()
    if started:
        joining = address is not None or "RAY_ADDRESS" in os.environ
        if train:
            fast_train_reports()
        kwargs: dict[str, Any] = {"include_dashboard": dashboard, "log_to_driver": log_to_driver}
        if num_cpus is not None and not joining:
            kwargs["num_cpus"] = num_cpus
        ray.init(address=address, **kwargs)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()
