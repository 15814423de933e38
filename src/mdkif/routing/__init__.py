"""Skill routers: per-task or per-layer mixtures (gradient or CMA-ES fitted) and an input-conditioned gate."""

from mdkif.routing.router import GateRouter, SkillRouter, load_router, save_router

__all__ = ["GateRouter", "SkillRouter", "load_router", "save_router"]
