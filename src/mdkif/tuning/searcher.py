"""CMA-ES as a Ray Tune searcher: `cma`'s ask/tell behind Tune's `suggest` / `on_trial_complete`.

Ray Tune has no CMA-ES of its own (only through Optuna or Nevergrad). This searcher maps a Tune search
space onto the unit box [0, 1]^d, in which CMA-ES runs with bounds:

- `tune.uniform(a, b)` -> a + u (b - a);  `tune.loguniform(a, b)` -> uniform in log space (`quniform`
  and `qloguniform` round to their step);
- `tune.randint(a, b)` -> a + floor(u (b - a)) (b excluded, as in Tune); `tune.choice([...])` -> the
  bin u falls in. Rounded dimensions make the objective piecewise constant along them; CMA-ES copes,
  but keep most dimensions continuous.

A generation of `popsize` candidates is asked at once and handed out one per `suggest`; once every one
of them has completed it is told to CMA-ES in one call. A failed trial (error, or no finite metric) is
told as the generation's worst value plus a margin, so the search steers away from it instead of
stalling. `save` / `restore` pickle the whole state (CMA-ES included), so an interrupted Tune run resumes.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
from ray.tune.search import Searcher
from ray.tune.search.sample import Categorical, Domain, Float, Integer, LogUniform, Quantized
from ray.tune.utils.util import flatten_dict, unflatten_dict


def _param(domain: Domain) -> dict[str, Any]:
    """A picklable description of one searchable dimension."""
    sampler = domain.get_sampler()
    q = sampler.q if isinstance(sampler, Quantized) else None
    inner = sampler.sampler if isinstance(sampler, Quantized) else sampler
    if isinstance(domain, Categorical):
        return {"kind": "choice", "values": list(domain.categories)}
    if isinstance(domain, Integer):
        return {
            "kind": "int",
            "low": int(domain.lower),
            "high": int(domain.upper),
            "log": isinstance(inner, LogUniform),
        }
    if isinstance(domain, Float):
        if not (math.isfinite(domain.lower) and math.isfinite(domain.upper)):
            raise ValueError("CmaEsSearcher needs bounded float domains (tune.uniform / tune.loguniform)")
        return {
            "kind": "float",
            "low": float(domain.lower),
            "high": float(domain.upper),
            "log": isinstance(inner, LogUniform),
            "q": q,
        }
    raise ValueError(f"CmaEsSearcher cannot search domain {type(domain).__name__}")


def _encode(p: dict[str, Any], x: Any) -> float:
    """The unit-box coordinate of value `x` (inverse of `_decode`, up to rounding)."""
    if p["kind"] == "choice":
        if x not in p["values"]:
            raise ValueError(f"{x!r} is not one of the choices {p['values']}")
        return (p["values"].index(x) + 0.5) / len(p["values"])
    lo, hi, v = p["low"], p["high"], float(x)
    if not lo <= v <= hi:
        raise ValueError(f"{x!r} is outside [{lo}, {hi}]")
    if p["log"]:
        return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (v - lo) / (hi - lo)


def _decode(p: dict[str, Any], u: float) -> Any:
    u = min(max(float(u), 0.0), 1.0)
    if p["kind"] == "choice":
        return p["values"][min(int(u * len(p["values"])), len(p["values"]) - 1)]
    lo, hi = p["low"], p["high"]
    if p["kind"] == "int":
        if p["log"]:
            return min(int(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))), hi - 1)
        return min(lo + int(u * (hi - lo)), hi - 1)
    x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if p["log"] else lo + u * (hi - lo)
    if p.get("q"):
        x = round(x / p["q"]) * p["q"]
    return float(min(max(x, lo), hi))


class CmaEsSearcher(Searcher):
    """CMA-ES over any bounded Tune search space (see the module docstring for the mapping).

    Args:
        space: Tune search space (dict of `tune.uniform` etc.); may instead come from the Tuner's
            `param_space` through `set_search_properties`. Non-domain values pass through unchanged.
        metric, mode: what to optimise (`mode` "min" or "max").
        popsize: candidates per generation (default: cma's 4 + 3 ln d).
        sigma0: initial step size in the unit box.
        x0: starting point in the unit box (default: its centre, or the first of `points_to_evaluate`).
        seed: seed of CMA-ES's sampler (0 would mean "random" to cma, so seed + 1 is passed).
        points_to_evaluate: known configurations (flat "a.b" keys or nested) run first, before any
            CMA-ES sample, as Tune's other searchers do; the first one is also CMA-ES's starting mean
            unless `x0` is given. Their results are recorded but not told to CMA-ES (it only takes
            whole generations of its own samples).
    """

    def __init__(
        self,
        space: dict[str, Any] | None = None,
        metric: str | None = None,
        mode: str | None = None,
        popsize: int | None = None,
        sigma0: float = 0.3,
        x0: list[float] | None = None,
        seed: int = 0,
        points_to_evaluate: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self._popsize, self._sigma0, self._x0, self._seed = popsize, sigma0, x0, seed
        # Tune flattens nested keys with "/"; users write "a.b" (as in config overrides) or nest.
        self._points = [
            {k.replace(".", "/"): v for k, v in flatten_dict(dict(p)).items()}
            for p in points_to_evaluate or []
        ]
        self._given: dict[str, dict[str, Any]] = {}  # trial id -> a point_to_evaluate config
        self._es: Any = None
        self._params: dict[str, dict[str, Any]] = {}
        self._const: dict[str, Any] = {}
        self._queue: list[int] = []  # indices of the current generation not handed out yet
        self._gen: list[np.ndarray] = []
        self._values: dict[int, float | None] = {}  # candidate index -> value (None = failed)
        self._live: dict[str, int] = {}  # trial id -> candidate index
        self.history: list[dict[str, Any]] = []  # every completed trial, in completion order
        if space:
            self._setup(space)

    # -- setup ------------------------------------------------------------------------------------------
    def _setup(self, space: dict[str, Any]) -> None:
        import cma

        flat = flatten_dict(space, prevent_delimiter=True)
        self._params = {k: _param(v) for k, v in flat.items() if isinstance(v, Domain)}
        self._const = {k: v for k, v in flat.items() if not isinstance(v, Domain)}
        d = len(self._params)
        if d < 2:
            raise ValueError("CMA-ES needs at least two searchable dimensions")
        opts: dict[str, Any] = {"bounds": [0.0, 1.0], "seed": self._seed + 1, "verbose": -9}
        if self._popsize:
            opts["popsize"] = self._popsize
        for point in self._points:
            unknown = sorted(set(point) - set(self._params) - set(self._const))
            if unknown or set(self._params) - set(point):
                dotted = sorted(k.replace("/", ".") for k in self._params)
                raise ValueError(
                    f"points_to_evaluate entry {point} must set every searched key {dotted}"
                    + (f"; unknown keys {[k.replace('/', '.') for k in unknown]}" if unknown else "")
                )
        x0 = self._x0
        if x0 is None and self._points:
            x0 = [min(max(_encode(p, self._points[0][k]), 0.0), 1.0) for k, p in self._params.items()]
        self._es = cma.CMAEvolutionStrategy(x0 or [0.5] * d, self._sigma0, opts)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        if self._es is not None:
            return False
        self._setup(config)
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    @property
    def dimension(self) -> int:
        return len(self._params)

    # -- ask / tell -------------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._es is None:
            raise RuntimeError("CmaEsSearcher has no search space: pass `space` or a Tuner param_space")
        if self._points:
            flat = {**self._const, **self._points.pop(0)}
            self._given[trial_id] = flat
            return unflatten_dict(flat)
        if not self._queue:
            if self._gen:
                return None  # the generation is out; wait for its trials before asking again
            self._gen = [np.asarray(x) for x in self._es.ask()]
            self._values = {}
            self._queue = list(range(len(self._gen)))
        idx = self._queue.pop(0)
        self._live[trial_id] = idx
        return self.config_for(self._gen[idx])

    def config_for(self, u: np.ndarray) -> dict[str, Any]:
        """The Tune config a unit-box point stands for."""
        flat = dict(self._const)
        flat.update({k: _decode(p, x) for (k, p), x in zip(self._params.items(), u, strict=True)})
        return unflatten_dict(flat)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._given:
            flat = self._given.pop(trial_id)
            ok = not error and result and self._metric in result
            self.history.append(
                {
                    "trial_id": trial_id,
                    "value": float(result[self._metric]) if ok else None,
                    "config": unflatten_dict(flat),
                    "given": True,
                }
            )
            return
        idx = self._live.pop(trial_id, None)
        if idx is None:
            return
        value = None
        if not error and result and self._metric in result:
            v = float(result[self._metric])
            if math.isfinite(v):
                value = v if self._mode != "max" else -v
        self._values[idx] = value
        self.history.append({"trial_id": trial_id, "value": value, "config": self.config_for(self._gen[idx])})
        if len(self._values) == len(self._gen):
            self._tell()

    def _tell(self) -> None:
        finite = [v for v in self._values.values() if v is not None]
        worst = max(finite) if finite else 0.0
        penalty = worst + abs(worst) * 0.1 + 1.0
        fs = [self._values[i] if self._values[i] is not None else penalty for i in range(len(self._gen))]
        self._es.tell(self._gen, fs)
        self._gen, self._values = [], {}

    # -- persistence ------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        keys = (
            "_popsize",
            "_sigma0",
            "_x0",
            "_seed",
            "_points",
            "_given",
            "_es",
            "_params",
            "_const",
            "_queue",
            "_gen",
            "_values",
            "_live",
            "history",
            "_metric",
            "_mode",
        )
        return {k: getattr(self, k) for k in keys}

    def set_state(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.get_state(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.set_state(pickle.load(fh))
