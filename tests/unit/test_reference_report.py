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
