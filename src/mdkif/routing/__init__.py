"""Skill routers: per-task or per-layer mixtures (gradient or CMA-ES fitted), an input-conditioned gate
and zero-shot per-token Arrow routing."""

from mdkif.routing.router import ArrowRouter, GateRouter, SkillRouter, load_router, save_router

__all__ = ["ArrowRouter", "GateRouter", "SkillRouter", "load_router", "save_router"]
