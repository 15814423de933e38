"""Choosing an instruction wording per record, reproducibly.

Each task carries several paraphrased instructions; training on a mix keeps a skill adapter from
keying on one exact sentence, which matters when the router reuses it for tasks phrased differently.
The choice is seeded by the build seed and the record's own key (not by row order), so an identical
native item always gets the identical record and exact duplicates stay exact.
"""

from __future__ import annotations

from collections.abc import Sequence

from mdkif.data.builders.base import BuildContext


def choose(ctx: BuildContext, key: str, templates: Sequence[str]) -> str:
    """One of `templates`, picked by a RNG seeded from the build seed and `key` (usually the record id)."""
    return ctx.rng(key).choice(list(templates))


def join_labels(labels: Sequence[str]) -> str:
    """The one output format of every classification task: labels joined by '; ', or 'none'."""
    return "; ".join(labels) if labels else "none"
