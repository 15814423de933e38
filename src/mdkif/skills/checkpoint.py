"""Atomic training checkpoints: adapter weights as safetensors plus optimizer/scheduler/step state.

A checkpoint folder is written beside its target and swapped in with renames, so a worker killed while
saving leaves the previous checkpoint intact. The same folder is read back on resume, with or without Ray.
"""

from __future__ import annotations

import os
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


def load_checkpoint(target: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The (weights, state) saved at `target`, or None when there is no complete checkpoint there."""
    target = Path(target)
    if not (target / WEIGHTS).is_file() or not (target / STATE).is_file():
        # A crash between the two renames leaves the previous checkpoint under .old-*: use it.
        olds = sorted(target.parent.glob(f".{target.name}.old-*"))
        if olds and (olds[-1] / STATE).is_file():
            target = olds[-1]
        else:
            return None
    return load_file(str(target / WEIGHTS)), torch.load(target / STATE, weights_only=False)
