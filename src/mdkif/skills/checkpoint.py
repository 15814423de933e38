"""Atomic training checkpoints: adapter weights as safetensors plus optimizer/scheduler/step state.

A checkpoint folder is written beside its target and swapped in with renames, so a worker killed while
saving leaves the previous checkpoint intact. The same folder is read back on resume, with or without Ray,
onto the CPU first: a worker restarted on another GPU index (or on a CPU-only node) can read what
`cuda:3` wrote, and the optimizer moves its state onto its parameters' device itself.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "adapter.safetensors"
STATE = "state.pt"


def save_checkpoint(target: Path, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write `weights` (safetensors) and `state` (torch pickle) to `target`, replacing it atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
        torch.save(state, tmp / STATE)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(
    target: Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The (weights, state) saved at `target` (tensors on `map_location`), or None when there is none."""
    target = Path(target)
    if not (target / WEIGHTS).is_file() or not (target / STATE).is_file():
        # A crash between the two renames leaves the previous checkpoint under .old-*: use it.
        olds = sorted(target.parent.glob(f".{target.name}.old-*"))
        if olds and (olds[-1] / STATE).is_file():
            target = olds[-1]
        else:
            return None
    device = str(map_location)
    return load_file(str(target / WEIGHTS), device=device), torch.load(
        target / STATE, map_location=map_location, weights_only=False
    )


def rng_state() -> dict[str, Any]:
    """The CPU generator's state, and every visible CUDA device's when CUDA is available (dropout there)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any] | torch.Tensor) -> None:
    """Put back what `rng_state` saved (or an older checkpoint's bare CPU state).

    CUDA states go to the visible devices in order, as many as both sides have: a Ray Train worker sees
    only its own GPU as `cuda:0`, so a worker restarted on another physical GPU gets its own stream back.
    """
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        saved = list(state["cuda"])[: torch.cuda.device_count()]
        for index, cuda_state in enumerate(saved):
            torch.cuda.set_rng_state(cuda_state, index)


def save_deepspeed_checkpoint(engine: Any, ds_dir: Path, tag: str) -> None:
    """DeepSpeed's checkpoint of the adapter and its ZeRO optimizer state under `ds_dir/tag`.

    Frozen base weights are left out (`exclude_frozen_parameters`): with a 7-8B base they are the bulk of
    every checkpoint and never change. Every rank calls this (DeepSpeed saves collectively).
    """
    engine.save_checkpoint(str(ds_dir), tag=tag, exclude_frozen_parameters=True)


def prune_deepspeed_checkpoints(ds_dir: Path, keep: int, current: str | None = None) -> list[Path]:
    """Delete the `step<N>` tag folders of `ds_dir` but the newest `keep` (and `current`); return the deleted.

    Call it only after the state file that names the new tag is in place, so a crash in between still
    finds the tag the previous state file names.
    """

    def step_of(path: Path) -> int:
        found = re.fullmatch(r"step(\d+)", path.name)
        return int(found.group(1)) if found else -1

    tags = sorted((p for p in Path(ds_dir).iterdir() if p.is_dir() and step_of(p) >= 0), key=step_of)
    old = [p for p in tags[: max(0, len(tags) - keep)] if p.name != current]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old
