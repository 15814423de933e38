"""The unseen-task protocol end to end on the tiny model: routers fitted per k, scored by the harness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdkif.config import ConfigError, validate
from mdkif.fusion.synthetic import make_synthetic_skills
from mdkif.routing.experiment import ExperimentConfig, run_experiment, split_task

DEMO_MCQ = Path(__file__).resolve().parents[2] / "src" / "mdkif" / "assets" / "demo_mcq" / "demo_mcq.json"


@pytest.fixture(scope="module")
def skills_root(tmp_path_factory):
    return make_synthetic_skills(
        tmp_path_factory.mktemp("skills"), tasks=("triage_yes", "triage_no"), steps=6
    )


def config(skills_root: Path, out: Path, **extra) -> ExperimentConfig:
    data = {
        "model": {"name": "tiny"},
        "skills": {"root": str(skills_root)},
        "tasks": [{"name": "pubmedqa", "source": str(DEMO_MCQ), "split": "pubmedqa"}],
        "ks": [3, 6],
        "n_test": 10,
        "max_length": 160,
        "method": "cmaes",
        "router": {"per_layer": False, "normalize": "linear"},
        "regularizer": {"kind": "l1", "strength": 0.05},
        "cmaes": {"max_evals": 6, "sigma0": 0.3},
        "use_ray": False,
        "shard_size": 5,
        "output": str(out),
        **extra,
    }
    return validate(ExperimentConfig, data, "test experiment")


def test_routers_per_k_scored_by_the_harness(skills_root, tmp_path):
    cfg = config(skills_root, tmp_path / "unseen")
    result = run_experiment(cfg, progress=False)
    rows = result["rows"]
    assert [(r["task"], r["k"]) for r in rows] == [("pubmedqa", 3), ("pubmedqa", 6)]
    summary = json.loads((cfg.output / "pubmedqa" / "eval" / "summary.json").read_text())
    variants = {r["variant"]: r for r in summary["results"]}
    assert set(variants) == {"base", "uniform", "single-k3", "routed-k3", "single-k6", "routed-k6"}
    for r in rows:
        assert r["n_test"] == 10
        # the table carries the harness's numbers, and those agree with its per-item predictions
        assert r["routed"]["accuracy"] == variants[f"routed-k{r['k']}"]["accuracy"]
        preds = cfg.output / "pubmedqa" / "eval" / f"routed-k{r['k']}" / "pubmedqa" / "predictions.jsonl"
        items = [json.loads(x) for x in preds.read_text().splitlines()]
        assert len(items) == 10
        assert sum(i["correct"] for i in items) / 10 == pytest.approx(r["routed"]["accuracy"])
        router = json.loads((cfg.output / "pubmedqa" / f"router-k{r['k']}" / "router.json").read_text())
        assert router["fit"]["k"] == r["k"] and router["kind"] == "static"
        assert r["fit"]["best_single_skill"] in ("triage_yes", "triage_no")
        assert r["fit"]["loss_best_single"] <= r["fit"]["loss_uniform"] + 1.0
    assert "| pubmedqa | 3 | 10 |" in (cfg.output / "unseen.md").read_text()
    assert (cfg.output / "unseen.png").stat().st_size > 1000


def test_test_items_never_fitted_on(tmp_path):
    from mdkif.routing.experiment import UnseenTask

    task = UnseenTask(name="pubmedqa", source=str(DEMO_MCQ), split="pubmedqa")
    test, pool = split_task(task, n_test=10, max_k=20, seed=0)
    assert len(test) == 10 and not {r.id for r in test} & {r.id for r in pool}
    with pytest.raises(ValueError, match="n_test=10 plus the largest k=500"):
        split_task(task, n_test=10, max_k=500, seed=0)


def test_gate_router_and_repeated_ks_refused(skills_root, tmp_path):
    with pytest.raises(ConfigError, match="method"):
        config(skills_root, tmp_path, method="gate")
    with pytest.raises(ConfigError, match="distinct"):
        config(skills_root, tmp_path, ks=[5, 5])
