"""Turn a job's data description into token examples: skill records (masked) or packed raw text."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from mdkif.skills.config import resolve_path
from mdkif.skills.data import Example, encode_record, pack_texts, read_corpus, records_hash
from mdkif.skills.job import SkillData, TrainJob


def skill_records(data: SkillData) -> tuple[list, list]:
    """(train, validation) SkillRecords of the job's skills, capped as configured (seeded sample)."""
    from mdkif.data.build import load_skill_split

    root = resolve_path(data.dir)
    train, val = [], []
    for skill in data.skills:
        train += load_skill_split(root, skill, "train")
        val += load_skill_split(root, skill, "validation")
    rng = random.Random(data.sample_seed)
    if data.max_train and len(train) > data.max_train:
        train = rng.sample(train, data.max_train)
    if data.max_val and len(val) > data.max_val:
        val = rng.sample(val, data.max_val)
    return train, val


def skill_examples(
    data: SkillData, tokenizer: Any, max_length: int, prompt_format: str = "alpaca"
) -> tuple[list[Example], list[Example], str]:
    """Masked train and validation examples of skill records, and the hash of the records."""
    train, val = skill_records(data)
    enc = [encode_record(tokenizer, r, max_length, prompt_format) for r in train]
    return (
        enc,
        [encode_record(tokenizer, r, max_length, prompt_format) for r in val],
        records_hash(train + val),
    )


def job_examples(job: TrainJob, tokenizer: Any) -> tuple[list[Example], list[Example], str]:
    """Train and validation examples for `job.data`, and a short hash of the data they came from."""
    data, max_len = job.data, job.optim.max_length
    if isinstance(data, SkillData):
        return skill_examples(data, tokenizer, max_len, job.prompt_format)
    docs = read_corpus(list(data.sources))
    random.Random(job.seed).shuffle(docs)
    n_val = max(1, int(len(docs) * data.val_fraction))
    digest = hashlib.sha256("\x1e".join(docs).encode("utf-8")).hexdigest()[:16]
    return pack_texts(tokenizer, docs[n_val:], max_len), pack_texts(tokenizer, docs[:n_val], max_len), digest
