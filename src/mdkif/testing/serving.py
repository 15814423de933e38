"""Tiny serving artifacts for tests and the benchmark: synthetic skills, three routers, a small RAG index.

Everything is built on the tiny random Llama in seconds, offline, and written under one folder that a
Serve config (`serve/serve_tiny.yaml`) can point at. Building is idempotent: existing files are kept.
"""

from __future__ import annotations

from pathlib import Path

import torch

SKILLS = ("triage_yes", "triage_no")


def build_tiny_artifacts(root: str | Path, rag: bool = False, rag_chunks: int = 24) -> dict[str, Path]:
    """Write `root/adapters` (2 AdaLoRA skills), `root/router_static`, `root/router_gate`, `root/router_arrow`
    (and `root/rag`).

    The static router is a softmax over fixed logits (0.8/0.2 after softmax-ish scaling); the gate is a
    randomly initialised input-conditioned router, so different prompts get different weights; the Arrow
    router (top_k 2) routes every token from the skills' own singular directions.
    """
    from mdkif.fusion import SkillBank, fuse
    from mdkif.models import ModelConfig, load_model
    from mdkif.routing.artifact import is_router
    from mdkif.routing.router import ArrowRouter, GateRouter, SkillRouter, save_router
    from mdkif.testing.synthetic import make_synthetic_skills

    root = Path(root)
    adapters = make_synthetic_skills(root / "adapters", "tiny", SKILLS)
    paths = {
        "adapters": adapters,
        "router_static": root / "router_static",
        "router_gate": root / "router_gate",
        "router_arrow": root / "router_arrow",
    }
    routers = ("router_static", "router_gate", "router_arrow")
    if not all(is_router(paths[r]) for r in routers):
        bank = SkillBank.from_dir(adapters, list(SKILLS))
        loaded = load_model(ModelConfig(name="tiny"))
        fused = fuse(loaded.model, bank)
        static = SkillRouter(len(bank), fused.num_layers)
        with torch.no_grad():
            static.logits.copy_(torch.tensor([1.4, 0.0]))
        save_router(static, bank, fused, paths["router_static"], {"method": "fixture"})
        torch.manual_seed(0)
        gate = GateRouter(loaded.model.config.hidden_size, len(bank), fused.num_layers)
        with torch.no_grad():  # non-zero last layer, so the gate is not the uniform mixture everywhere
            gate.net[-1].weight.normal_(0, 0.5)
        save_router(gate, bank, fused, paths["router_gate"], {"method": "fixture"})
        save_router(ArrowRouter(len(bank), top_k=2), bank, fused, paths["router_arrow"], {"method": "arrow"})
    if rag:
        paths["rag"] = build_tiny_index(root / "rag", rag_chunks)
    return paths


def tiny_profiles(art: dict[str, Path]) -> dict[str, dict]:
    """One profile of each kind over `build_tiny_artifacts`' skills: two fixed mixtures (one skill each), the
    static router, the gate and Arrow."""
    return {
        "yes": {"weights": {"triage_yes": 1.0}},
        "no": {"weights": {"triage_no": 1.0}},
        "static": {"router": str(art["router_static"])},
        "gate": {"router": str(art["router_gate"])},
        "arrow": {"router": str(art["router_arrow"])},
    }


def build_tiny_index(persist_dir: Path, max_chunks: int = 24) -> Path:
    """A small Chroma index of the packaged demo corpus, embedded in this process (no Ray)."""
    from mdkif.rag.config import RagIndexConfig
    from mdkif.rag.index import build_index
    from mdkif.rag.store import INDEX_MANIFEST

    if (persist_dir / INDEX_MANIFEST).is_file():
        return persist_dir
    corpus = Path(__file__).resolve().parents[1] / "assets" / "demo_corpus"
    cfg = RagIndexConfig.model_validate(
        {
            "corpora": [{"kind": "folder", "path": corpus, "name": "demo"}],
            "chunking": {"max_chars": 400, "overlap_chars": 0},
            "persist_dir": persist_dir,
            "collection": "demo",
            "use_ray": False,
            "max_chunks": max_chunks,
            "bm25": True,
        }
    )
    build_index(cfg)
    return persist_dir


if __name__ == "__main__":  # python -m mdkif.testing.serving runs/serve_tiny  (for serve/serve_tiny.yaml)
    import sys

    out = build_tiny_artifacts(sys.argv[1] if len(sys.argv) > 1 else "runs/serve_tiny", rag=True)
    print("\n".join(f"{k}: {v}" for k, v in out.items()))
