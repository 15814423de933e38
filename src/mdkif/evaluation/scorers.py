"""Score MCQ records with one variant's model: log-likelihood, generation, chain-of-thought or VoC.

`score_records` is the single entry point every runner calls (in-process or inside a Ray actor). It
retrieves passages (question only), builds each prompt once, then runs the chosen method over the
whole shard in batches, and returns one prediction row per record:

    {id, benchmark, gold, prediction, correct, status, method, scores | generation, passages, ...}

`prediction` is None exactly when `status` is `ambiguous` or `unparsable` (generative methods only);
such items count as wrong and are reported.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from mdkif import prompts
from mdkif.data.records import MCQRecord
from mdkif.evaluation import voc
from mdkif.evaluation.config import RetrieverConfig, ScoringConfig
from mdkif.evaluation.loglik import Request, generate, score_requests
from mdkif.evaluation.parsing import parse_answer
from mdkif.rag.config import PASSAGE_CHARS, PASSAGES_K
from mdkif.rag.types import Passage, Retriever


class Encoder:
    """Turns prompt text into token ids the same way for every method (chat template or plain)."""

    def __init__(self, tokenizer: Any, scoring: ScoringConfig):
        self.tok = tokenizer
        self.chat = prompts.use_chat(tokenizer, scoring.chat_template)
        self.max_tokens = scoring.max_prompt_tokens

    def prompt(self, user: str, reply_prefix: str) -> tuple[int, ...]:
        text = prompts.wrap(self.tok, user, reply_prefix, self.chat)
        # A chat template already spells out its special tokens; a plain prompt gets the tokenizer's BOS.
        return tuple(self.tok(text, add_special_tokens=not self.chat)["input_ids"])

    def continuation(self, text: str) -> tuple[int, ...]:
        return tuple(self.tok(" " + text, add_special_tokens=False)["input_ids"])

    @property
    def pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    @property
    def eos_ids(self) -> list[int]:
        # Chat models end a turn with their own token (<|im_end|>, <|eot_id|>, ...), which may differ from EOS.
        from mdkif.models.tokens import end_of_turn_ids

        return end_of_turn_ids(self.tok)


def fit_prompt(
    enc: Encoder,
    record: MCQRecord,
    reply_prefix: str,
    *,
    method: str,
    shots: Sequence[MCQRecord],
    passages: Sequence[Passage],
    passage_chars: int,
    show_options: bool = True,
) -> tuple[tuple[int, ...], dict[str, Any]]:
    """The prompt's token ids, dropping shots, then passages, from the end until it fits the budget.

    Returns the ids and what was kept (`shots`, `passages` counts, `truncated` when even the bare
    question was too long and its start was cut).
    """
    shots, passages = list(shots), list(passages)
    while True:
        user = prompts.user_message(
            record,
            method=method,
            shots=shots,
            passages=passages,
            passage_chars=passage_chars,
            show_options=show_options,
        )
        ids = enc.prompt(user, reply_prefix)
        if len(ids) <= enc.max_tokens or not (shots or passages):
            break
        if shots:
            shots.pop()
        else:
            passages.pop()
    info: dict[str, Any] = {"shots": len(shots), "passages": len(passages)}
    if len(ids) > enc.max_tokens:
        ids, info["truncated"] = ids[-enc.max_tokens :], True
    return ids, info


def gold_pmid(record: MCQRecord) -> str | None:
    """The PubMed id of a PubMedQA item (both loaders name it `pubmedqa-<pmid>`), else None."""
    prefix = "pubmedqa-"
    if record.benchmark == "pubmedqa" and record.id.startswith(prefix):
        return record.id[len(prefix) :]
    return None


def retrieve(retriever: Retriever, record: MCQRecord, cfg: RetrieverConfig | None) -> list[Passage]:
    """Passages for one item, queried with its question only (MIRAGE's rule: never the options).

    For PubMedQA the item's own abstract is excluded (MIRAGE's PubMedQA*): through the retriever's
    `exclude` keyword when it has one (mdkif.rag's ChromaRetriever), else as a Chroma-style `where`.
    """
    k = cfg.k if cfg else PASSAGES_K
    pmid = gold_pmid(record) if (cfg is None or cfg.exclude_gold) else None
    if pmid is None:
        return retriever.retrieve(record.question, k)
    if "exclude" in inspect.signature(retriever.retrieve).parameters:
        return retriever.retrieve(record.question, k, exclude={"pmid": pmid})
    return retriever.retrieve(record.question, k, where={"pmid": {"$nin": [pmid]}})


def _option_continuations(enc: Encoder, record: MCQRecord, target: str) -> dict[str, tuple[int, ...]]:
    return {k: enc.continuation(k if target == "letter" else v) for k, v in record.options.items()}


def _normalise(total: float, n_tokens: int, text: str, how: str) -> float:
    if how == "tokens":
        return total / n_tokens
    if how == "chars":
        return total / max(1, len(text))
    return total


def score_records(
    model: Any,
    tokenizer: Any,
    records: Sequence[MCQRecord],
    scoring: ScoringConfig,
    *,
    shots: Sequence[MCQRecord] = (),
    retriever: Retriever | None = None,
    retriever_cfg: RetrieverConfig | None = None,
) -> list[dict[str, Any]]:
    """Predict every record with one method and return prediction rows in record order."""
    enc = Encoder(tokenizer, scoring)
    method = scoring.method
    text_target = scoring.target == "text" and method in ("loglik", "voc")
    chars = retriever_cfg.passage_chars if retriever_cfg else PASSAGE_CHARS

    rows: list[dict[str, Any]] = []
    prompt_ids: list[tuple[int, ...]] = []
    for record in records:
        passages = retrieve(retriever, record, retriever_cfg) if retriever is not None else []
        prefix = prompts.COT_PREFIX if method == "cot" else prompts.ANSWER_PREFIX
        ids, info = fit_prompt(
            enc,
            record,
            prefix,
            method=method,
            shots=shots[: scoring.shots],
            passages=passages,
            passage_chars=chars,
            show_options=not text_target,
        )
        prompt_ids.append(ids)
        row = {
            "id": record.id,
            "benchmark": record.benchmark,
            "gold": record.answer,
            "method": method,
            **info,
        }
        if retriever is not None:
            row["passage_ids"] = [p.id for p in passages[: info["passages"]]]
        rows.append(row)

    if method in ("generate", "cot"):
        _generative(model, enc, records, rows, prompt_ids, scoring)
    else:
        _loglik(model, enc, records, rows, prompt_ids, scoring, text_target)
    for row in rows:
        row["correct"] = row["prediction"] == row["gold"]
    return rows


def _loglik(model, enc, records, rows, prompt_ids, scoring, text_target) -> None:
    """Log-likelihood (and VoC, which adds verification requests to the same batched pass)."""
    target = "text" if text_target else "letter"
    requests: list[Request] = []
    where: list[tuple[int, str, str, str]] = []  # (row, kind, key, text) per request
    yes, no = enc.continuation("yes"), enc.continuation("no")
    for i, record in enumerate(records):
        for key, cont in _option_continuations(enc, record, target).items():
            requests.append(Request(prompt_ids[i], cont))
            where.append((i, "choice", key, key if target == "letter" else record.options[key]))
        if scoring.method == "voc":
            for key in record.options:
                verify = enc.prompt(prompts.verification_message(record, key), prompts.ANSWER_PREFIX)
                verify = verify[-enc.max_tokens :]
                requests += [Request(verify, yes), Request(verify, no)]
                where += [(i, "yes", key, ""), (i, "no", key, "")]
    scored = score_requests(model, requests, pad_id=enc.pad_id, batch_size=scoring.batch_size)

    choice: list[dict[str, float]] = [{} for _ in records]
    margin: list[dict[str, float]] = [{} for _ in records]
    for (i, kind, key, text), (total, n) in zip(where, scored, strict=True):
        if kind == "choice":
            choice[i][key] = _normalise(total, n, text, scoring.normalize)
        else:
            margin[i][key] = margin[i].get(key, 0.0) + (total if kind == "yes" else -total)
    for i, row in enumerate(rows):
        row["status"] = "ok"
        if scoring.method == "voc":
            decision = voc.decide(margin[i], choice[i])
            row.update(
                prediction=decision.prediction,
                verified=decision.verified,
                fallback=decision.fallback,
                scores={"choice": _round(choice[i]), "verify": _round(margin[i])},
            )
        else:
            row.update(prediction=voc.argmax_key(choice[i]), scores=_round(choice[i]))


def _generative(model, enc, records, rows, prompt_ids, scoring) -> None:
    """Greedy generation, then the strict parser; direct answers are parsed with their `Answer:` prefix."""
    outs = generate(
        model,
        prompt_ids,
        pad_id=enc.pad_id,
        eos_ids=enc.eos_ids,
        max_new_tokens=scoring.new_tokens(),
        batch_size=scoring.batch_size,
    )
    for record, row, out in zip(records, rows, outs, strict=True):
        text = enc.tok.decode(out, skip_special_tokens=True)
        parsed_text = text if scoring.method == "cot" else f"{prompts.ANSWER_PREFIX}{text}"
        parsed = parse_answer(parsed_text, record.options)
        row.update(prediction=parsed.answer, status=parsed.status, generation=text)


def _round(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 5) for k, v in scores.items()}
