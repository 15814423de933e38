"""Scorers on the tiny model: log-likelihood maths, batching, a controlled preference, generation, VoC."""

from __future__ import annotations

import pytest
import torch

from mdkif import prompts
from mdkif.data.records import MCQRecord
from mdkif.evaluation import scorers
from mdkif.evaluation.config import ScoringConfig
from mdkif.evaluation.loglik import Request, score_requests
from mdkif.evaluation.scorers import Encoder, fit_prompt, score_records
from mdkif.models import load_model

LETTERED = MCQRecord(
    id="q1",
    benchmark="toy",
    question="Which drug is first-line for type 2 diabetes?",
    options={"A": "insulin glargine", "B": "aspirin", "C": "metformin", "D": "warfarin"},
    answer="C",
    context="Guidelines: metformin is the first-line drug for type 2 diabetes.",
)
WORDED = MCQRecord(
    id="q2",
    benchmark="pubmedqa",
    question="Does smoking raise the risk of lung cancer?",
    options={"yes": "yes", "no": "no", "maybe": "maybe"},
    answer="yes",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import os

    cache = os.environ.get("MDKIF_CACHE") or str(tmp_path_factory.mktemp("cache"))
    return load_model(name="tiny", cache_dir=cache)


def _direct_logprob(model, context, continuation) -> float:
    """Reference: one unpadded forward of the full sequence, summing the continuation's log-probs."""
    ids = torch.tensor([list(context) + list(continuation)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
    return sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(continuation))


def test_loglik_scores_equal_a_direct_computation(tiny) -> None:
    scoring = ScoringConfig(method="loglik", target="text", normalize="none")
    rows = score_records(tiny.model, tiny.tokenizer, [LETTERED, WORDED], scoring)
    enc = Encoder(tiny.tokenizer, scoring)
    for record, row in zip([LETTERED, WORDED], rows, strict=True):
        ids, _ = fit_prompt(
            enc,
            record,
            prompts.ANSWER_PREFIX,
            method="loglik",
            shots=[],
            passages=[],
            passage_chars=800,
            show_options=False,
        )
        for key, text in record.options.items():
            assert row["scores"][key] == pytest.approx(
                _direct_logprob(tiny.model, ids, enc.continuation(text)), abs=1e-4
            )
        assert row["prediction"] == max(row["scores"], key=row["scores"].get)


def test_batched_scores_equal_unbatched(tiny) -> None:
    enc = Encoder(tiny.tokenizer, ScoringConfig())
    requests = []
    for n, record in enumerate([LETTERED, WORDED]):
        # Cut the first n*7 tokens so the contexts differ in length and the batch needs padding.
        ctx = enc.prompt(prompts.user_message(record, method="loglik"), "Answer:")[n * 7 :]
        for text in list(record.options) + list(record.options.values()):
            requests.append(Request(ctx, enc.continuation(text)))  # one- and multi-token continuations
    one = score_requests(tiny.model, requests, pad_id=enc.pad_id, batch_size=1)
    many = score_requests(tiny.model, requests, pad_id=enc.pad_id, batch_size=16)
    assert [n for _, n in one] == [n for _, n in many]
    assert max(abs(a - b) for (a, _), (b, _) in zip(one, many, strict=True)) < 1e-4


def test_loglik_picks_the_option_the_model_was_taught(tiny) -> None:
    """Teach a copy of the tiny model that, for this prompt (option C is verbatim in the context), the key is C."""
    import copy

    model = copy.deepcopy(tiny.model)
    scoring = ScoringConfig(method="loglik")
    enc = Encoder(tiny.tokenizer, scoring)
    ids, _ = fit_prompt(
        enc, LETTERED, prompts.ANSWER_PREFIX, method="loglik", shots=[], passages=[], passage_chars=800
    )
    target = enc.continuation("C")
    before = score_records(model, tiny.tokenizer, [LETTERED], scoring)[0]["scores"]
    seq = torch.tensor([list(ids) + list(target)])
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        logits = model(input_ids=seq[:, :-1]).logits[0, -1]
        loss = torch.nn.functional.cross_entropy(logits.unsqueeze(0), seq[:, -1])
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.eval()
    row = score_records(model, tiny.tokenizer, [LETTERED], scoring)[0]
    assert row["prediction"] == "C" and row["correct"] and row["status"] == "ok"
    assert row["scores"]["C"] > before["C"] + 1.0
    assert row["scores"]["C"] > max(v for k, v in row["scores"].items() if k != "C") + 1.0


def test_generation_goes_through_the_strict_parser(tiny, monkeypatch) -> None:
    outputs = {LETTERED.id: " C", WORDED.id: " probably"}
    tok = tiny.tokenizer

    def fake_generate(model, prompt_ids, **kwargs):
        assert kwargs["max_new_tokens"] == 8
        texts = [outputs[LETTERED.id], outputs[WORDED.id]]
        return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    monkeypatch.setattr(scorers, "generate", fake_generate)
    rows = score_records(tiny.model, tok, [LETTERED, WORDED], ScoringConfig(method="generate"))
    assert (rows[0]["prediction"], rows[0]["status"], rows[0]["correct"]) == ("C", "ok", True)
    assert (rows[1]["prediction"], rows[1]["status"], rows[1]["correct"]) == (None, "unparsable", False)


def test_real_tiny_generation_runs_and_reports_unparsable(tiny) -> None:
    rows = score_records(
        tiny.model, tiny.tokenizer, [LETTERED, WORDED], ScoringConfig(method="generate", max_new_tokens=3)
    )
    for row in rows:
        assert row["status"] in {"ok", "ambiguous", "unparsable"}
        assert (row["prediction"] is None) == (row["status"] != "ok")


def test_cot_prompt_asks_for_the_final_answer_line(tiny, monkeypatch) -> None:
    seen = {}

    def fake_generate(model, prompt_ids, **kwargs):
        seen["prompt"] = tiny.tokenizer.decode(prompt_ids[0])
        seen["budget"] = kwargs["max_new_tokens"]
        return [
            tiny.tokenizer(" Metformin lowers glucose.\nAnswer: C", add_special_tokens=False)["input_ids"]
        ]

    monkeypatch.setattr(scorers, "generate", fake_generate)
    row = score_records(tiny.model, tiny.tokenizer, [LETTERED], ScoringConfig(method="cot"))[0]
    assert row["prediction"] == "C"
    assert "Answer: X" in seen["prompt"] and seen["prompt"].endswith(prompts.COT_PREFIX)
    assert seen["budget"] == 256


def _controlled_scores(tok, verify_yes: dict[str, bool], choice: dict[str, float]):
    """A stand-in for score_requests: verification says yes for the keys in `verify_yes`, choice as given."""
    yes = tuple(tok(" yes", add_special_tokens=False)["input_ids"])

    def fake(model, requests, **kwargs):
        out = []
        for r in requests:
            ctx = tok.decode(list(r.context))
            if "Proposed answer:" in ctx:
                key = ctx.split("Proposed answer:")[1].strip()[0]
                says_yes = verify_yes[key]
                out.append((-1.0 if (r.continuation == yes) == says_yes else -5.0, len(r.continuation)))
            else:
                key = tok.decode(list(r.continuation)).strip()
                out.append((choice[key], 1))
        return out

    return fake


@pytest.mark.parametrize(
    ("verified", "expected", "fallback"),
    [
        ({"A": False, "B": True, "C": False, "D": True}, "B", False),  # best choice A is not verified
        ({"A": False, "B": False, "C": False, "D": True}, "D", False),  # a single verified option wins
        ({"A": False, "B": False, "C": False, "D": False}, "A", True),  # none verified: argmax over all
    ],
)
def test_voc_chooses_among_verified_options(tiny, monkeypatch, verified, expected, fallback) -> None:
    choice = {"A": -1.0, "B": -2.0, "C": -4.0, "D": -3.0}
    monkeypatch.setattr(scorers, "score_requests", _controlled_scores(tiny.tokenizer, verified, choice))
    row = score_records(tiny.model, tiny.tokenizer, [LETTERED], ScoringConfig(method="voc"))[0]
    assert row["prediction"] == expected
    assert row["fallback"] is fallback
    assert row["verified"] == [k for k, v in verified.items() if v]
    assert set(row["scores"]["verify"]) == set("ABCD")


def test_voc_runs_on_the_tiny_model(tiny) -> None:
    row = score_records(tiny.model, tiny.tokenizer, [LETTERED, WORDED], ScoringConfig(method="voc"))[1]
    assert row["prediction"] in WORDED.options and row["status"] == "ok"
    assert set(row["scores"]["verify"]) == {"yes", "no", "maybe"}
