"""The unseen-task protocol end to end on the tiny model: routers fitted per k, scored by the harness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdkif.config import ConfigError, validate
from mdkif.experiments.unseen import ExperimentConfig, run_experiment, split_task
from mdkif.testing.synthetic import make_synthetic_skills

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
        "arrow": {"top_k": 2, "temperature": 1.0},  # two skills: peft's default top_k 3 is refused
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
    assert set(variants) == {"base", "uniform", "arrow", "single-k3", "routed-k3", "single-k6", "routed-k6"}
    arrow = json.loads((cfg.output / "arrow" / "router.json").read_text())
    assert arrow["kind"] == "arrow" and arrow["top_k"] == 2  # one zero-shot artifact for every task
    for r in rows:
        assert r["n_test"] == 10
        # the table carries the harness's numbers, and those agree with its per-item predictions
        assert r["routed"]["accuracy"] == variants[f"routed-k{r['k']}"]["accuracy"]
        assert r["arrow"]["accuracy"] == variants["arrow"]["accuracy"]  # the same row for every k
        preds = cfg.output / "pubmedqa" / "eval" / f"routed-k{r['k']}" / "pubmedqa" / "predictions.jsonl"
        items = [json.loads(x) for x in preds.read_text().splitlines()]
        assert len(items) == 10
        assert sum(i["correct"] for i in items) / 10 == pytest.approx(r["routed"]["accuracy"])
        router = json.loads((cfg.output / "pubmedqa" / f"router-k{r['k']}" / "router.json").read_text())
        assert router["fit"]["k"] == r["k"] and router["kind"] == "static"
        assert r["fit"]["best_single_skill"] in ("triage_yes", "triage_no")
        assert r["fit"]["loss_best_single"] <= r["fit"]["loss_uniform"] + 1.0
    table = (cfg.output / "unseen.md").read_text()
    assert "| pubmedqa | 3 | 10 |" in table and "| uniform | arrow | best single" in table
    assert (cfg.output / "unseen.png").stat().st_size > 1000
    # A re-run is the plan's: fits and scores are reused (nothing refitted), the table is written again.
    fitted = (cfg.output / "pubmedqa" / "router-k3" / "router.json").stat().st_mtime_ns
    again = run_experiment(cfg, progress=False)
    assert again["rows"] == rows
    assert (cfg.output / "pubmedqa" / "router-k3" / "router.json").stat().st_mtime_ns == fitted
    assert set(json.loads((cfg.output / "plan.json").read_text())["stages"]) == {"routers", "eval"}


def test_test_items_never_fitted_on(tmp_path):
    from mdkif.experiments.unseen import UnseenTask

    task = UnseenTask(name="pubmedqa", source=str(DEMO_MCQ), split="pubmedqa")
    test, pool = split_task(task, n_test=10, max_k=20, seed=0)
    assert len(test) == 10 and not {r.id for r in test} & {r.id for r in pool}
    with pytest.raises(ValueError, match="n_test=10 plus the largest k=500"):
        split_task(task, n_test=10, max_k=500, seed=0)


def test_unknown_stages_are_refused_before_anything_runs(skills_root, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['fit'\]"):
        config(skills_root, tmp_path, stages=["fit", "eval"])


def test_gate_router_and_repeated_ks_refused(skills_root, tmp_path):
    with pytest.raises(ConfigError, match="method"):
        config(skills_root, tmp_path, method="gate")
    with pytest.raises(ConfigError, match="distinct"):
        config(skills_root, tmp_path, ks=[5, 5])


def test_arrow_row_settings_are_checked_and_optional(skills_root, tmp_path):
    from mdkif.experiments.unseen import write_table

    with pytest.raises(ConfigError, match=r"arrow\.top_k.*more than the number of skills \(2\)"):
        config(skills_root, tmp_path, arrow={"top_k": 3})
    with pytest.raises(ConfigError, match=r"arrow\.temperature"):
        config(skills_root, tmp_path, arrow={"top_k": 2, "temperature": -1})
    assert config(skills_root, tmp_path, arrow=None).arrow is None
    # Without the Arrow row the table keeps its columns; with it, one more.
    acc = {"accuracy": 0.5, "ci_low": 0.2, "ci_high": 0.8}
    fit = {"best_single_skill": "triage_yes", "top_skills": ["triage_yes"]}
    row = {"task": "t", "k": 3, "n_test": 10, "base": acc, "uniform": acc, "best_single": acc, "routed": acc}
    write_table(tmp_path / "plain", [{**row, "fit": fit}])
    plain = (tmp_path / "plain" / "unseen.md").read_text()
    assert "arrow" not in plain.lower() and "| t | 3 | 10 | 50.0 [20, 80] | 50.0 [20, 80] | 50.0" in plain
    write_table(tmp_path / "arrow", [{**row, "fit": fit, "arrow": {**acc, "accuracy": 0.7}}])
    text = (tmp_path / "arrow" / "unseen.md").read_text()
    assert "| t | 3 | 10 | 50.0 [20, 80] | 50.0 [20, 80] | 70.0 [20, 80] | 50.0" in text
