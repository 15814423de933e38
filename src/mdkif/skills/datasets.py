"""Turn a job's data description into token examples: skill records (masked) or packed raw text."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from mdkif.skills.config import CorpusSource, resolve_path
from mdkif.skills.data import Example, encode_record, pack_texts, read_corpus, records_hash


def skill_records(data: dict[str, Any]) -> tuple[list, list]:
    """(train, validation) SkillRecords of the job's skills, capped as configured (seeded sample)."""
    from mdkif.data.build import load_skill_split

    root = resolve_path(data["dir"])
    train, val = [], []
    for skill in data["skills"]:
        train += load_skill_split(root, skill, "train")
        val += load_skill_split(root, skill, "validation")
    rng = random.Random(data.get("sample_seed", 0))
    if data.get("max_train") and len(train) > data["max_train"]:
        train = rng.sample(train, data["max_train"])
    if data.get("max_val") and len(val) > data["max_val"]:
        val = rng.sample(val, data["max_val"])
    return train, val


def job_examples(job: dict[str, Any], tokenizer: Any) -> tuple[list[Example], list[Example], str]:
    """Train and validation examples for `job["data"]`, and a short hash of the data they came from."""
    data, max_len = job["data"], job["optim"]["max_length"]
    if data["kind"] == "skill":
        train, val = skill_records(data)
        fmt = job.get("prompt_format", "alpaca")
        enc = [encode_record(tokenizer, r, max_len, fmt) for r in train]
        return enc, [encode_record(tokenizer, r, max_len, fmt) for r in val], records_hash(train + val)
    docs = read_corpus([CorpusSource(**s) for s in data["sources"]])
    random.Random(job["seed"]).shuffle(docs)
    n_val = max(1, int(len(docs) * data["val_fraction"]))
    digest = hashlib.sha256("\x1e".join(docs).encode("utf-8")).hexdigest()[:16]
    return pack_texts(tokenizer, docs[n_val:], max_len), pack_texts(tokenizer, docs[:n_val], max_len), digest
