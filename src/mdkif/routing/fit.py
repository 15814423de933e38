"""Fitting a router on a downstream task; the base and every skill stay frozen.

- `fit_gradient`: Adam on the router's logits through the stacked fused forward (the weights are read
  at run time, so the gradient reaches the logits only), with an entropy or L1 regulariser.
- `fit_cmaes`: CMA-ES (`cma`) on the logits for few-shot tasks: each candidate is one `set_weights` and
  one no-grad forward over the k examples, never a reload or a re-merge of adapters.
- `fit_gate`: the input-conditioned gate, trained by gradient on pooled prompt states computed once.

Arrow (`ArrowRouter`) needs no fit; `task_loss` scores it like the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

import torch
from tqdm import tqdm

from mdkif.fusion import FusedModel
from mdkif.routing.data import Batch, LabelBatch, objective
from mdkif.routing.router import GateRouter, SkillRouter, pooled_prompt_state

RegularizerKind = Literal["none", "entropy", "l1"]


@dataclass
class FitResult:
    """What a fit did: the loss per step (or per CMA-ES generation's best), evaluations spent, the final loss."""

    history: list[float] = field(default_factory=list)
    evaluations: int = 0
    final_loss: float = math.nan


_BAR: ContextVar[tqdm | None] = ContextVar("router_fit_bar", default=None)


@contextmanager
def fit_progress(total: int, desc: str) -> Iterator[None]:
    """A progress bar for the fits run inside the block: evaluations (steps or CMA-ES candidates) done and
    the best objective so far, so a fit of several minutes is never silent."""
    with tqdm(total=total, desc=desc, unit="eval", dynamic_ncols=True, mininterval=1.0) as bar:
        token = _BAR.set(bar)
        try:
            yield
        finally:
            _BAR.reset(token)


def _tick(result: FitResult, n: int) -> None:
    bar = _BAR.get()
    if bar is not None:
        bar.update(n)
        bar.set_postfix(loss=f"{result.history[-1]:.4f}", best=f"{min(result.history):.4f}", refresh=False)


def penalty(weights: torch.Tensor, reg: RegularizerKind, strength: float) -> torch.Tensor:
    """Entropy (mean over rows; low = peaked mixture) or L1 of the weights, times `strength`."""
    if reg == "none" or strength == 0:
        return weights.new_zeros(())
    if reg == "entropy":
        p = weights.clamp_min(1e-12)
        return strength * -(p * p.log()).sum(-1).mean()
    return strength * weights.abs().sum(-1).mean()


def _minibatches(n: int, size: int, gen: torch.Generator):
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, size):
            yield perm[i : i + size]


def fit_gradient(
    fused: FusedModel,
    router: SkillRouter,
    batch: Batch | LabelBatch,
    *,
    steps: int = 50,
    lr: float = 0.1,
    batch_size: int = 8,
    reg: RegularizerKind = "entropy",
    strength: float = 0.0,
    seed: int = 0,
) -> FitResult:
    """Gradient descent on the router's logits for `steps` minibatches of the task's examples."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(router.parameters(), lr=lr)
    result = FitResult()
    batches = _minibatches(len(batch), batch_size, gen)
    for _ in range(steps):
        w = router()
        fused.set_weights(w)
        loss = objective(fused, batch.select(next(batches))) + penalty(w, reg, strength)
        opt.zero_grad()
        loss.backward()
        opt.step()
        result.history.append(float(loss.detach()))
        result.evaluations += 1
        _tick(result, 1)
    result.final_loss = task_loss(fused, router, batch)
    return result


def fit_cmaes(
    fused: FusedModel,
    router: SkillRouter,
    batch: Batch | LabelBatch,
    *,
    max_evals: int = 60,
    popsize: int | None = None,
    sigma0: float = 0.5,
    reg: RegularizerKind = "l1",
    strength: float = 0.05,
    seed: int = 0,
) -> FitResult:
    """CMA-ES over the router's logits; candidates differ only in the weights the fused layers read."""
    import cma

    x0 = router.logits.detach().flatten().double().cpu().numpy()
    opts = {"seed": seed + 1, "maxfevals": max_evals, "verbose": -9, "tolx": 1e-6, "tolfun": 1e-8}
    if popsize:
        opts["popsize"] = popsize
    if x0.size == 1:
        raise ValueError("CMA-ES needs at least two parameters (use two or more skills)")
    es = cma.CMAEvolutionStrategy(x0, sigma0, opts)
    # The start (uniform weights, or the router's current ones) is the first candidate, so the result is
    # never worse on the objective than where the search began: with weak skills and a strong penalty,
    # every sampled candidate can lose to it.
    es.inject([x0], force=True)
    result = FitResult()
    with torch.no_grad():
        while not es.stop():
            xs = es.ask()
            fs = []
            for x in xs:
                w = router.weights_from(torch.from_numpy(x))
                fused.set_weights(w)
                fs.append(float(objective(fused, batch) + penalty(w, reg, strength)))
            es.tell(xs, fs)
            result.history.append(min(fs))
            _tick(result, len(xs))
        result.evaluations = es.result.evaluations
        router.logits.copy_(torch.as_tensor(es.result.xbest, dtype=torch.float32).view_as(router.logits))
    result.final_loss = task_loss(fused, router, batch)
    return result


def fit_gate(
    fused: FusedModel,
    gate: GateRouter,
    batch: Batch | LabelBatch,
    *,
    steps: int = 50,
    lr: float = 1e-2,
    batch_size: int = 8,
    reg: RegularizerKind = "entropy",
    strength: float = 0.0,
    seed: int = 0,
) -> FitResult:
    """Train the gate MLP; the pooled prompt states come from one adapters-off pass (the base is frozen)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pooled = pooled_prompt_state(fused, batch.input_ids, batch.attention_mask, batch.prompt_mask)
    opt = torch.optim.Adam(gate.parameters(), lr=lr)
    result = FitResult()
    batches = _minibatches(len(batch), batch_size, gen)
    for _ in range(steps):
        idx = next(batches)
        w = gate(pooled[idx])
        fused.set_weights(w, per_example=True)
        loss = objective(fused, batch.select(idx)) + penalty(w, reg, strength)
        opt.zero_grad()
        loss.backward()
        opt.step()
        result.history.append(float(loss.detach()))
        result.evaluations += 1
        _tick(result, 1)
    result.final_loss = task_loss(fused, gate, batch)
    return result


@torch.no_grad()
def apply_router(
    fused: FusedModel, router: torch.nn.Module | torch.Tensor, batch: Batch | LabelBatch
) -> None:
    """Make `fused` route `batch` as `router` does: fixed weights (a tensor), or the router's own way
    (`route_batch`: one mixture, one per item, or Arrow's per-token mode)."""
    if isinstance(router, torch.Tensor):
        fused.set_weights(router, per_example=False)
    else:
        router.route_batch(fused, batch)


@torch.no_grad()
def task_loss(
    fused: FusedModel,
    router: torch.nn.Module | torch.Tensor | None,
    batch: Batch | LabelBatch,
    chunk: int = 16,
) -> float:
    """Mean answer loss over `batch` under a router, fixed weights (a tensor) or the base model (None)."""
    total, count = 0.0, 0
    for i in range(0, len(batch), chunk):
        part = batch.select(list(range(i, min(i + chunk, len(batch)))))
        if router is None:
            ctx = fused.adapters_off()
        else:
            apply_router(fused, router, part)
            ctx = nullcontext()
        with ctx:
            losses = objective(fused, part, per_example=True)
        total += float(losses.sum())
        count += len(part)
    return total / max(count, 1)
