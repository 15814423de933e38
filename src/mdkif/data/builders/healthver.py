"""HealthVer (evidence-based checking of COVID-19 health claims) -> `nli`.

Each row pairs an evidence sentence from a paper with a real-world claim, labelled Supports, Refutes or
Neutral: three-way inference over two texts, the same shape as entailment/contradiction/neutral.
"""

from __future__ import annotations

from collections.abc import Iterator

from mdkif.data.builders.base import BuildContext, SourceSpec, clean
from mdkif.data.builders.instructions import BuilderTask
from mdkif.data.records import SkillRecord

FILE = "healthver/healthver_dev.csv"
SPEC = SourceSpec(
    name="healthver",
    skills=("nli",),
    files=(FILE,),
    description="HealthVer dev split: 1,917 evidence-claim pairs (Supports/Refutes/Neutral).",
)

LABELS = ("Supports", "Refutes", "Neutral")
INSTRUCTIONS = (
    "Does the evidence support the claim, refute it, or neither? Answer Supports, Refutes or Neutral.",
    "Verify the health claim against the evidence from a scientific article. "
    "Reply with one word: Supports, Refutes, or Neutral.",
    "Given the evidence, classify the claim as Supports (the evidence backs it), Refutes (the evidence "
    "contradicts it) or Neutral (the evidence does not decide it).",
)
TASK = BuilderTask("healthver", "nli", "healthver_claim_verification", INSTRUCTIONS)


def build(ctx: BuildContext) -> Iterator[SkillRecord]:
    """One three-way claim-verification record per evidence-claim pair."""
    path = ctx.path(FILE)
    for line, row in ctx.read_csv(FILE):
        evidence, claim, label = clean(row.get("evidence")), clean(row.get("claim")), clean(row.get("label"))
        if not evidence or not claim:
            ctx.bad_row(path, line, "missing 'evidence' or 'claim'")
            continue
        if label not in LABELS:
            ctx.bad_row(path, line, f"label {label!r} is not one of {', '.join(LABELS)}")
            continue
        yield TASK.record(ctx, (evidence, claim), input=f"Evidence: {evidence}\nClaim: {claim}", output=label)
