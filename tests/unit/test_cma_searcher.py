"""CmaEsSearcher without Ray: ask/tell on a known function, space mapping, failures, save/restore."""

from __future__ import annotations

import math

from ray import tune

from mdkif.tuning.searcher import CmaEsSearcher

SPACE = {
    "lr": tune.loguniform(1e-4, 1.0),
    "x": tune.uniform(-2.0, 2.0),
    "n": tune.randint(1, 5),
    "fixed": "keep",
    "nested": {"mode": tune.choice(["a", "b"])},
}


def objective(cfg):
    return (
        (math.log10(cfg["lr"]) + 2) ** 2
        + (cfg["x"] - 0.5) ** 2
        + (0.0 if cfg["nested"]["mode"] == "b" else 0.2)
    )


def drive(searcher, trials, fail_every=0):
    values = []
    for t in range(trials):
        tid = f"t{t}"
        cfg = searcher.suggest(tid)
        assert cfg is not None
        assert (
            1e-4 <= cfg["lr"] <= 1.0
            and -2 <= cfg["x"] <= 2
            and cfg["n"] in (1, 2, 3, 4)
            and cfg["fixed"] == "keep"
        )
        if fail_every and t % fail_every == 1:
            searcher.on_trial_complete(tid, None, error=True)
            continue
        v = objective(cfg)
        values.append(v)
        searcher.on_trial_complete(tid, {"loss": v})
    return values


def test_cmaes_searcher_improves_on_a_known_function():
    s = CmaEsSearcher(SPACE, metric="loss", mode="min", popsize=6, sigma0=0.25, seed=0)
    values = drive(s, 96, fail_every=7)
    first, last = values[:6], values[-12:]
    assert sum(last) / len(last) < 0.6 * sum(first) / len(first)
    assert min(values) < 0.5
    assert s.dimension == 4


def test_generation_waits_for_its_trials_and_state_round_trips(tmp_path):
    s = CmaEsSearcher(metric="loss", mode="max", popsize=3, seed=1)
    assert s.set_search_properties("loss", "max", SPACE)
    assert not s.set_search_properties("loss", "max", SPACE)
    cfgs = [s.suggest(f"a{i}") for i in range(3)]
    assert s.suggest("a3") is None  # generation handed out, none completed yet
    for i, c in enumerate(cfgs):
        s.on_trial_complete(f"a{i}", {"loss": -objective(c)})
    s.save(str(tmp_path / "s.pkl"))
    nxt = s.suggest("b0")
    again = CmaEsSearcher()
    again.restore(str(tmp_path / "s.pkl"))
    assert again.suggest("b0") == nxt


def test_points_to_evaluate_run_first_and_seed_the_mean():
    import pytest

    start = {"lr": 1e-3, "x": -1.0, "n": 2, "nested.mode": "a"}
    s = CmaEsSearcher(
        SPACE, metric="loss", mode="min", popsize=4, sigma0=0.1, seed=0, points_to_evaluate=[start]
    )
    first = s.suggest("t0")
    assert first == {"lr": 1e-3, "x": -1.0, "n": 2, "fixed": "keep", "nested": {"mode": "a"}}
    s.on_trial_complete("t0", {"loss": objective(first)})
    assert s.history[0]["given"] and s.history[0]["value"] == objective(first)
    # CMA-ES samples start around the given point (sigma 0.1 in the unit box), not the box's centre.
    xs = [s.suggest(f"t{i}")["x"] for i in range(1, 5)]
    assert sum(xs) / len(xs) < -0.3
    with pytest.raises(ValueError, match="must set every searched key"):
        CmaEsSearcher(SPACE, metric="loss", mode="min", points_to_evaluate=[{"lr": 0.1}])
    with pytest.raises(ValueError, match="outside"):
        CmaEsSearcher(SPACE, metric="loss", mode="min", points_to_evaluate=[{**start, "lr": 5.0}])
