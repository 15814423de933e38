"""Verification-of-Choice (VoC), after AntGLM-Med: verify each option on its own, then choose among the verified.

AntGLM-Med proposes VoC as a prompting method for multiple-choice questions: rather than asking once for a
letter, the model examines every option for correctness and answers from that examination. The paper
does not publish prompts, so this is the exact procedure MDKIF implements, scored by log-likelihood
(deterministic, nothing to parse, so VoC never yields an unparsable answer):

1. **Verify.** For each option key `k`, the user turn is (see `prompts.verification_message`)::

       Check whether the proposed answer to this medical question is correct. Answer yes or no.

       Question: <question>
       Options:
       A. <text>
       ...
       Proposed answer: <k>. <text of k>
       Is the proposed answer correct?

   and the reply starts with `Answer:`. The verification margin is
   `m_k = log p(" yes" | prompt) - log p(" no" | prompt)`; option `k` is *verified* when `m_k > 0`.
   Retrieved passages and k-shot examples are not added to verification prompts (the verifier judges the
   option against the question; adding them would make the prompt differ from the paper's idea of a
   self-check and multiply its length by the number of options).
2. **Choose.** The ordinary MCQ prompt (same as `loglik`, with passages and shots) scores every key `k`
   by `s_k = log p(" k" | prompt)` (or the option text, per `scoring.target`). The prediction is the
   argmax of `s_k` over the verified options. If exactly one option is verified, it is the answer; if
   none is, the model rejected every option and the argmax runs over all of them (recorded as
   `fallback: true`, so how often verification was useless is visible in the predictions).

The per-item record keeps `verify` (every `m_k`), `choice` (every `s_k`) and `verified`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class VocDecision:
    """The outcome of VoC for one item."""

    prediction: str
    verified: list[str]
    fallback: bool


def argmax_key(scores: Mapping[str, float], among: list[str] | None = None) -> str:
    """The best-scoring key (restricted to `among` when given); ties go to the earlier option."""
    keys = list(scores) if not among else [k for k in scores if k in among]
    return max(keys, key=lambda k: (scores[k], -keys.index(k)))


def decide(margins: Mapping[str, float], choice: Mapping[str, float]) -> VocDecision:
    """Step 2 of VoC: choose among the options with a positive verification margin (all if none)."""
    verified = [k for k in choice if margins[k] > 0]
    if not verified:
        return VocDecision(argmax_key(choice), [], True)
    return VocDecision(argmax_key(choice, verified), verified, False)
