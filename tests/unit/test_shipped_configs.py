"""Every YAML the repository ships is loaded by the schema of the command that reads it.

A new stage folder must be added to LOADERS; a YAML nobody loads fails here, so a config cannot rot
unnoticed. Deeper checks of each stage's configs live beside that stage's tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from mdkif.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _train(p: Path):
    from mdkif.skills.config import load_stage

    return load_stage(p)


def _eval(p: Path):
    from mdkif.evaluation.config import EvalConfig

    return load_config(p, EvalConfig)


def _rag(p: Path):
    from mdkif.rag.config import RagIndexConfig

    return load_config(p, RagIndexConfig)


def _route(p: Path):
    from mdkif.routing.config import RouteConfig

    return load_config(p, RouteConfig)


def _tune(p: Path):
    from mdkif.experiments.unseen import ExperimentConfig
    from mdkif.tuning.search import SearchConfig

    # tune/ holds searches and the unseen-task experiment; the first line names the command that runs it.
    schema = ExperimentConfig if "--experiment" in p.read_text().splitlines()[0] else SearchConfig
    return load_config(p, schema)


def _serve(p: Path):
    from mdkif.serving.config import load_serve_file

    # Artifact paths (runs/demo/...) are checked when the app is built, not here: the demo writes them.
    return load_serve_file(p)


def _cluster(p: Path):
    # Ray launcher / KubeRay / runtime_env formats: validated against their schemas in test_cluster_configs.
    docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
    assert docs, f"{p} is empty"
    return docs


def _bench(p: Path):
    from mdkif.experiments.reference import ReferenceConfig

    # bench/ holds the reference run's config; its skills stage config must load too.
    cfg = load_config(p, ReferenceConfig)
    _train(REPO / cfg.skills_config)
    return cfg


LOADERS: dict[str, Callable[[Path], object]] = {
    "train": _train,
    "eval": _eval,
    "rag": _rag,
    "route": _route,
    "tune": _tune,
    "serve": _serve,
    "cluster": _cluster,
    "bench": _bench,
}


def shipped_yamls() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.yaml", "*.yml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [REPO / f for f in out if (REPO / f).is_file()]


def test_every_shipped_yaml_has_a_loader():
    orphans = [
        str(p.relative_to(REPO)) for p in shipped_yamls() if p.relative_to(REPO).parts[0] not in LOADERS
    ]
    assert not orphans, f"YAML files no command reads (add their folder to LOADERS): {orphans}"


@pytest.mark.parametrize("path", shipped_yamls(), ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_yaml_loads(path: Path):
    folder = path.relative_to(REPO).parts[0]
    if folder not in LOADERS:
        pytest.fail(f"{path} has no loader")
    assert LOADERS[folder](path) is not None
    # Stage configs open with the exact command that runs them (torchtune's convention).
    if folder in ("train", "eval", "rag", "route", "tune", "serve", "bench"):
        first = path.read_text().splitlines()[0]
        assert first.startswith(("# mdkif ", "# serve ", "# python -m mdkif")), (
            f"{path}: first line should be the command: {first!r}"
        )
