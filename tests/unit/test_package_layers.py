"""The package graph has one direction: every import of `mdkif` code (module level or inside a function)
goes from a higher layer to a lower one, so a back-edge or a cycle between packages fails here.

Layers, lowest first. `mdkif.cli` is the entry layer on top: it wires every verb to typer and may import
anything. A `*.commands` module is ranked with its own package (it may not import a higher layer either;
the CLI hands such a thing in, as the unseen-task runner), and nothing but a CLI module imports it.
"""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "mdkif"

LAYERS: list[set[str]] = [
    {"config", "assets", "io", "ray_session", "allocator"},
    {"tracking"},
    {"plan"},
    {"data"},
    {"models"},
    {"fusion", "rag"},
    {"skills", "prompts"},
    {"routing"},
    {"evaluation", "tuning"},
    {"serving"},
    {"experiments", "demo", "testing"},
]
CLI = len(LAYERS)
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def is_cli(mod: str) -> bool:
    return mod == "mdkif.cli" or mod.endswith(".commands")


def rank(mod: str) -> int:
    if mod == "mdkif.cli":
        return CLI
    part = mod.split(".")[1] if "." in mod else ""
    if part not in RANK:
        raise AssertionError(f"{mod}: package '{part}' has no layer in LAYERS; place it there")
    return RANK[part]


def imports(mod: str, path: Path, known: set[str]) -> set[str]:
    """Every `mdkif` module `mod` imports, at any depth of the file (function-local imports included)."""
    out = set()
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mdkif")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                base = base.rstrip(".")
            if not base.startswith("mdkif"):
                continue
            for a in node.names:  # `from mdkif import prompts` imports the module mdkif.prompts
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m != mod}


def test_every_import_goes_down_the_layers() -> None:
    mods = modules()
    known = set(mods)
    bad = []
    for mod, path in mods.items():
        if mod == "mdkif":
            continue
        for dst in sorted(imports(mod, path, known)):
            if dst == "mdkif":
                continue
            if dst not in known:
                bad.append(f"{mod} imports {dst}, which does not exist")
                continue
            same_package = mod.split(".")[:2] == dst.split(".")[:2]
            if mod == "mdkif.cli":
                continue  # the CLI wires every verb together
            if is_cli(dst):
                bad.append(f"{mod} imports the CLI module {dst}")
            elif not same_package and rank(dst) >= rank(mod):
                bad.append(f"{mod} (layer {rank(mod)}) imports {dst} (layer {rank(dst)})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_walker_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text(
        "from mdkif import prompts\n"
        "def g():\n    from mdkif.routing.router import load_router\n"
        "from .bank import SkillBank\n"
    )
    found = imports("mdkif.fusion.x", f, {"mdkif.prompts", "mdkif.fusion.bank"})
    assert found == {"mdkif.prompts", "mdkif.routing.router", "mdkif.fusion.bank"}
    # ... and would report a back-edge: fusion (layer 4) -> routing (layer 6).
    assert rank("mdkif.routing.router") > rank("mdkif.fusion.x")


@pytest.mark.integration
def test_every_module_imports_in_any_order() -> None:
    names = [m for m in modules() if not m.endswith("__main__")]
    for seed in (0, 1):
        order = names[:]
        random.Random(seed).shuffle(order)
        code = f"import importlib\nfor m in {order!r}:\n    importlib.import_module(m)\n"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"order seed {seed}: {done.stderr[-3000:]}"
