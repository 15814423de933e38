"""The reference run's report: its table and paired-difference cells are the evaluation report's own (one cell
format for every comparison), and the issue-13 targets are counted from the paired tests."""

from __future__ import annotations

from types import SimpleNamespace

from mdkif.evaluation.report import build_summary, render_markdown
from mdkif.experiments.reference_report import _table, render, targets


def _rows(correct: list[bool]) -> list[dict]:
    return [
        {
            "id": f"i{i}",
            "kind": "classification",
            "gold": "a",
            "prediction": "a" if c else "b",
            "correct": c,
            "stats": [float(c), float(c), float(not c), float(not c), float(not c), 0.0, 0.0],
        }
        for i, c in enumerate(correct)
    ]


def test_reference_report_rows_targets_and_paired_cells_match_the_eval_report() -> None:
    base = [False] * 10 + [True] * 10
    predictions = {
        ("base", "t"): _rows(base),
        ("uniform", "t"): _rows(base),
        ("routed", "t"): _rows([True] * 20),  # ten of base's wrong answers turned right, nothing else
    }
    summary = build_summary(
        predictions,
        ["base", "uniform", "routed"],
        ["t"],
        resamples=500,
        seed=0,
        references=["base"],
        labels={"t": ["a", "b"]},
    )
    table = _table({"t": summary})
    assert [(r["row"], r["value"]) for r in table] == [("base", 0.5), ("uniform", 0.5), ("routed", 1.0)]
    goal = targets(table, "routed")
    assert goal["significant_wins"] == ["t"] and goal["mean_minus_uniform"] == 0.5
    doc = {"command": "mdkif reference", "wall_seconds": {"eval": 90.0}, "table": table}
    doc |= {"targets": [goal], "fits": {}, "skills": {}}
    text = render(doc, SimpleNamespace(n_test=20, tasks=[SimpleNamespace(name="t", unseen=True)]))
    assert "| row | t (unseen) acc | mean |" in text
    assert "| routed | 100.0 [100.0, 100.0] * | 100.0 |" in text
    # The difference cell is the one the evaluation report writes for the same comparison, counts included.
    [eval_cell] = [
        line for line in render_markdown(summary).splitlines() if line.startswith("| routed | base")
    ]
    diff = eval_cell.removeprefix("| routed | base | ").removesuffix(" |")
    assert diff.startswith("+50.0") and diff.endswith("(10/0) *")
    assert f"| routed | {diff} |" in text and "| uniform | +0.0 [+0.0, +0.0] p=1 (0/0) |" in text
    assert "| routed | 1 (t) | +100.0% over 1 tasks | +50.0 |" in text


def test_distance_to_task_lora_pairs_the_best_routed_row_with_the_lora() -> None:
    from mdkif.experiments.reference_report import distance_to_task_lora

    base = [False] * 10 + [True] * 10
    predictions = {
        ("base", "t"): _rows(base),
        ("routed_a", "t"): _rows([True] * 5 + [False] * 5 + [True] * 10),  # 75%
        ("routed_b", "t"): _rows([False] * 10 + [True] * 10),  # 50%
        ("task_lora", "t"): _rows([True] * 20),  # 100%
    }
    summary = build_summary(
        predictions,
        ["base", "routed_a", "routed_b", "task_lora"],
        ["t"],
        resamples=500,
        seed=0,
        references=["base", "task_lora"],
        labels={"t": ["a", "b"]},
    )
    table = _table({"t": summary})
    [d] = distance_to_task_lora(table)
    assert d["best_routed"] == "routed_a" and d["gap"] == -0.25 and d["share_of_lora_gain"] == 0.5
    assert d["paired"]["diff"] == -0.25 and d["paired"]["b_only"] + d["paired"]["a_only"] == 5
    doc = {"command": "c", "wall_seconds": {}, "table": table, "targets": [], "to_task_lora": [d]}
    doc |= {"fits": {}, "skills": {}}
    text = render(doc, SimpleNamespace(n_test=20, tasks=[SimpleNamespace(name="t", unseen=False)]))
    assert "## Distance to task_lora" in text and "| t | routed_a | 75.0 | 100.0 | 50.0 | -25.0" in text
    assert text.rstrip().endswith("| 50% |")
