"""The router artifact on disk: a folder holding `router.json` (kind, skills and their digests, layer
groups, fitted settings) and `router.safetensors` (the router's tensors). The only place that names the
files; light (no torch), so configs can check an artifact before anything heavy loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROUTER_FILE = "router.json"
TENSORS_FILE = "router.safetensors"


def router_folder(path: str | Path) -> Path:
    """The artifact folder for `path` (the folder itself, or its router.json)."""
    path = Path(path)
    return path.parent if path.name == ROUTER_FILE else path


def is_router(path: str | Path) -> bool:
    """Whether `path` (a folder or its router.json) holds a router artifact."""
    return (router_folder(path) / ROUTER_FILE).is_file()


def read_router_info(path: str | Path) -> dict[str, Any]:
    """`router.json` of the artifact at `path`; FileNotFoundError naming the file when there is none."""
    file = router_folder(path) / ROUTER_FILE
    if not file.is_file():
        raise FileNotFoundError(f"router artifact {router_folder(path)}: no {ROUTER_FILE}")
    return json.loads(file.read_text())
