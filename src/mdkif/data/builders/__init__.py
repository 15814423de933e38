"""The registry of skill-data builders: source name -> builder module (see `base.py` for the contract).

Adding a source is one module in this package plus one line in `_BUILDERS`.
"""

from __future__ import annotations

from types import ModuleType

from mdkif.data.builders import (
    anatem,
    bc5cdr_cdr,
    bc5cdr_ner,
    blurb_re,
    chatdoctor,
    healthver,
    hoc,
    icd10_cm,
    mcq_exams,
    medalpaca_wikidoc,
    medicationqa,
    mediqa2019,
    medquad,
    meqsum,
    mts_dialog,
    ncbi_disease,
)

_BUILDERS: tuple[ModuleType, ...] = (
    # qa, dialogue, classification, reading comprehension, nli, summarization
    medquad,
    medicationqa,
    medalpaca_wikidoc,
    mediqa2019,
    healthver,
    meqsum,
    mts_dialog,
    chatdoctor,
    hoc,
    # ner, relation extraction, entity attribute / synonymy / relation
    ncbi_disease,
    bc5cdr_ner,
    anatem,
    bc5cdr_cdr,
    blurb_re,
    icd10_cm,
    mcq_exams,
)

REGISTRY: dict[str, ModuleType] = {m.SPEC.name: m for m in _BUILDERS}
if len(REGISTRY) != len(_BUILDERS):  # two modules claiming one name would silently shadow each other
    raise ImportError("two skill-data builders share a SPEC.name")

__all__ = ["REGISTRY"]
