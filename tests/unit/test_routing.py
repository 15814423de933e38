"""Router fitting: both methods find the right skill, artifacts round-trip, `mdkif route` runs."""

from __future__ import annotations

import json

import pytest
import torch

from mdkif.config import ConfigError, validate
from mdkif.fusion import FusionError, SkillBank, fuse
from mdkif.models import ModelConfig, load_model
from mdkif.routing.config import RouteConfig
from mdkif.routing.data import encode, load_examples
from mdkif.routing.fit import fit_cmaes, fit_gate, fit_gradient, task_loss
from mdkif.routing.router import GateRouter, SkillRouter, load_router, save_router
from mdkif.testing.synthetic import make_synthetic_skills


@pytest.fixture(scope="module")
def skills_root(tmp_path_factory):
    return make_synthetic_skills(tmp_path_factory.mktemp("skills"), tasks=("triage_yes", "triage_no"))


@pytest.fixture()
def setup(skills_root):
    loaded = load_model(ModelConfig(name="tiny"))
    bank = SkillBank.from_dir(skills_root)
    fused = fuse(loaded.model, bank)
    examples = load_examples(str(skills_root / "tasks" / "triage_yes.jsonl"))
    return fused, bank, encode(loaded.tokenizer, examples[:12]), encode(loaded.tokenizer, examples[12:24])


def test_right_skill_is_clearly_better(setup):
    fused, bank, train, _ = setup
    right, wrong = (
        task_loss(fused, torch.eye(2)[i], train)
        for i in (bank.names.index("triage_yes"), bank.names.index("triage_no"))
    )
    # The tiny random model caps how confident any adapter can get (logits stay small), so the gap is
    # modest in absolute terms but far above noise.
    assert right < wrong - 0.3


@pytest.mark.parametrize("method", ["gradient", "cmaes"])
def test_fitting_puts_most_weight_on_the_right_skill(setup, method):
    fused, bank, train, val = setup
    yes = bank.names.index("triage_yes")
    if method == "gradient":
        router = SkillRouter(2, fused.num_layers, per_layer=False)
        res = fit_gradient(fused, router, train, steps=25, lr=0.2)
    else:
        router = SkillRouter(2, fused.num_layers, normalize="linear")
        res = fit_cmaes(fused, router, train, max_evals=48, reg="l1", strength=0.01)
    w = router().detach()
    assert w[yes] > 0.5 * w.abs().sum() and w[yes] > w[1 - yes], (method, w)
    assert res.final_loss < task_loss(fused, torch.full((2,), 0.5), train)
    assert task_loss(fused, router, val) < task_loss(fused, None, val)


def test_per_layer_router_and_gate_fit(setup):
    fused, bank, train, _ = setup
    yes = bank.names.index("triage_yes")
    router = SkillRouter(2, fused.num_layers, per_layer=True)
    fit_gradient(fused, router, train, steps=20, lr=0.2)
    assert router().shape == (fused.num_layers, 2) and (router()[:, yes] > 0.5).all()
    gate = GateRouter(fused.model.config.hidden_size, 2, temperature=1.0)
    res = fit_gate(fused, gate, train, steps=20, lr=3e-2)
    assert res.history[-1] < res.history[0]


def test_router_artifact_round_trips_and_checks_skills(setup, tmp_path):
    fused, bank, train, _ = setup
    router = SkillRouter(2, fused.num_layers, per_layer=True, temperature=0.5)
    with torch.no_grad():
        router.logits.normal_()
    path = save_router(router, bank, fused, tmp_path / "r", {"note": "test"})
    info = json.loads(path.read_text())
    assert info["skills"] == bank.names and info["skill_digests"] == bank.digests and info["note"] == "test"
    again, _ = load_router(path, bank)
    torch.testing.assert_close(again(), router())
    gate = GateRouter(fused.model.config.hidden_size, 2)
    save_router(gate, bank, fused, tmp_path / "g", {})
    g2, _ = load_router(tmp_path / "g", bank)
    x = torch.randn(3, fused.model.config.hidden_size)
    torch.testing.assert_close(g2(x), gate(x))
    other = SkillBank([bank.skills[1], bank.skills[0]])
    with pytest.raises(FusionError, match="fitted on skills"):
        load_router(path, other)


def test_route_command_fits_and_saves(skills_root, tmp_path):
    from typer.testing import CliRunner

    from mdkif.cli import app

    cfg = tmp_path / "route.yaml"
    cfg.write_text(
        f"model: {{name: tiny}}\nskills: {{root: {skills_root}}}\n"
        f"task: {{source: {skills_root / 'tasks' / 'triage_yes.jsonl'}, k: 8, n_val: 8}}\n"
        f"method: cmaes\nrouter: {{normalize: linear}}\nregularizer: {{kind: l1, strength: 0.01}}\n"
        f"cmaes: {{max_evals: 12}}\noutput: {tmp_path / 'out'}\n"
    )
    result = CliRunner().invoke(app, ["route", str(cfg)])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "out" / "router.json").read_text())
    assert info["fit"]["val_loss"] < info["fit"]["val_loss_base"]


def test_route_config_rejects_l1_under_softmax(tmp_path):
    with pytest.raises(ConfigError, match="constant under softmax"):
        validate(
            RouteConfig,
            {
                "skills": {"root": "x"},
                "task": {"source": "y"},
                "regularizer": {"kind": "l1", "strength": 0.1},
            },
            "r",
        )


def test_answer_loss_on_kept_positions_equals_full_logits(setup):
    """Only target-predicting positions go through the LM head; loss and router gradient are unchanged."""
    from mdkif.routing.data import Batch, _accepts_logits_to_keep, answer_loss

    fused, _, train, _ = setup
    assert _accepts_logits_to_keep(fused)
    # Varied prompt lengths, so rows' targets sit at different positions (the union of them is kept).
    short = train.select([0, 1, 2])
    width = short.input_ids.shape[1] - 5
    varied = Batch(
        train.input_ids[:6, :width],
        torch.ones(6, width, dtype=torch.long),
        torch.full((6, width), -100),
        torch.zeros(6, width, dtype=torch.long),
    )
    for i, pos in enumerate((width - 1, width - 3, width - 7, width - 2, width - 4, width - 1)):
        varied.labels[i, pos] = varied.input_ids[i, pos]
    full = type("Full", (), {"__call__": lambda self, **kw: fused(**kw)})()  # hides the signature
    w = torch.tensor([0.7, 0.4], requires_grad=True)
    for batch in (short, varied):
        fused.set_weights(w)
        kept = answer_loss(fused, batch, per_example=True)
        ref = answer_loss(full, batch, per_example=True)
        assert torch.allclose(kept, ref, atol=1e-5), (kept, ref)
        (g_kept,) = torch.autograd.grad(kept.sum(), w)
        fused.set_weights(w)
        (g_ref,) = torch.autograd.grad(answer_loss(full, batch, per_example=True).sum(), w)
        assert torch.allclose(g_kept, g_ref, atol=1e-5)


def test_cmaes_never_returns_worse_than_its_start(setup):
    """Start at the base model (all weights 0) with an L1 penalty no task gain can pay for: every sampled
    candidate loses to the start, so the fit must hand the start back, not its best sample."""
    fused, _, train, _ = setup
    router = SkillRouter(2, fused.num_layers, normalize="linear")
    with torch.no_grad():
        router.logits.zero_()
    fit_cmaes(fused, router, train, max_evals=12, sigma0=0.5, reg="l1", strength=50.0)
    assert torch.equal(router().detach(), torch.zeros(2))


def _triage_records(answer: str, n: int = 8) -> list:
    from mdkif.data.tasks import TaskRecord
    from mdkif.testing.synthetic import FINDINGS

    return [
        TaskRecord(
            id=f"t{i}",
            task="triage",
            kind="classification",
            instruction="Answer yes or no: does this finding need same-day care?",
            input=f"Patient with {FINDINGS[i]}.",
            output=answer,
            labels=("yes", "no"),
        )
        for i in range(n)
    ]


def test_label_loss_is_the_scorers_softmax_over_labels(setup):
    from mdkif.evaluation.loglik import Request, score_requests
    from mdkif.routing.data import encode_labels, label_loss, label_scores

    fused, _, _, _ = setup
    tok = load_model(ModelConfig(name="tiny")).tokenizer
    records = _triage_records("yes", 5)
    # Prompts of different lengths, so left padding and the per-row positions are exercised.
    records[0] = records[0].model_copy(update={"input": records[0].input + " Also a long history." * 3})
    batch = encode_labels(tok, records, max_length=128)
    fused.set_weights(torch.tensor([0.6, 0.4]))
    with torch.no_grad():
        scores = label_scores(fused, batch)
    eos = tok.eos_token_id
    for i, r in enumerate(records):
        ctx = tuple(tok(r.prompt(), add_special_tokens=True)["input_ids"])
        for j, label in enumerate(r.labels):
            cont = tuple(tok(label, add_special_tokens=False)["input_ids"] + [eos])
            want = score_requests(fused, [Request(ctx, cont)], pad_id=0)[0][0]
            assert scores[i, j].item() == pytest.approx(want, abs=1e-4)
    want_ce = torch.nn.functional.cross_entropy(scores, torch.zeros(5, dtype=torch.long))
    w = torch.tensor([0.6, 0.4], requires_grad=True)
    fused.set_weights(w)
    loss = label_loss(fused, batch)
    assert loss.item() == pytest.approx(want_ce.item(), abs=1e-5)
    loss.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0  # the skill weights get a gradient through the cache
    sub = batch.select([1, 2])
    assert sub.input_ids.shape[1] < batch.input_ids.shape[1]  # the long row's padding is trimmed away
    with torch.no_grad():
        fused.set_weights(torch.tensor([0.6, 0.4]))
        assert torch.allclose(label_scores(fused, sub), scores[[1, 2]], atol=1e-4)


def test_label_loss_router_picks_the_skill_of_the_gold_label(setup):
    from mdkif.routing.data import encode_labels

    fused, bank, _, _ = setup
    tok = load_model(ModelConfig(name="tiny")).tokenizer
    batch = encode_labels(tok, _triage_records("no", 8), max_length=128)
    no = bank.names.index("triage_no")
    router = SkillRouter(2, fused.num_layers, per_layer=False)
    res = fit_gradient(fused, router, batch, steps=20, lr=0.2)
    w = router().detach()
    assert w[no] > w[1 - no], w
    assert res.final_loss < task_loss(fused, torch.full((2,), 0.5), batch)
    cm = SkillRouter(2, fused.num_layers, normalize="linear")
    fit_cmaes(fused, cm, batch, max_evals=24, reg="l1", strength=0.01)
    assert task_loss(fused, cm, batch) <= task_loss(fused, cm.weights_from(torch.zeros(2)), batch) + 1e-6


def test_label_batch_refuses_gold_outside_the_label_set():
    from mdkif.routing.data import encode_labels

    tok = load_model(ModelConfig(name="tiny")).tokenizer
    records = _triage_records("yes", 2)
    records[1] = records[1].model_copy(update={"output": "maybe"})
    with pytest.raises(ValueError, match=r"'maybe'.*outside the label set"):
        encode_labels(tok, records)
