"""Tiny synthetic skills for tests, smoke runs and benchmarks: real peft AdaLoRA adapters, trained in seconds.

`make_synthetic_skills` trains one AdaLoRA adapter per synthetic task on the tiny model, with the rank
allocator on (so saved adapters carry a `rank_pattern` and pruned triplets, as real skills do), and
writes the task data as JSONL `{"prompt", "target"}` beside them. Each task answers one fixed word for
its own instruction, so the adapter trained on a task is unambiguously the right skill for it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from mdkif.data.records import format_prompt

FINDINGS = (
    "fever and neck stiffness",
    "mild seasonal rhinitis",
    "crushing chest pain",
    "a small healed scar",
    "sudden loss of speech",
    "dry skin on the elbows",
    "vomiting blood",
    "occasional hiccups",
    "severe shortness of breath",
    "a freckle unchanged for years",
    "fainting during exercise",
    "itchy mosquito bite",
    "new confusion in an older adult",
    "a common cold",
    "black tarry stools",
    "mild sunburn",
    "sudden severe headache",
    "a stubbed toe",
    "high fever in a newborn",
    "dandruff",
)
TASKS = {
    "triage_yes": ("Answer yes or no: does this finding need same-day care?", " yes"),
    "triage_no": ("Answer yes or no: does this finding need same-day care?", " no"),
    "organ_heart": ("Which organ system is most relevant? Answer with one word.", " heart"),
}


def task_records(task: str, n: int = 20, seed: int = 0) -> list[dict[str, str]]:
    """`n` instruction/input/output rows of a synthetic task (inputs drawn from a fixed list of findings)."""
    instruction, answer = TASKS[task]
    rng = random.Random(seed)
    return [
        {"instruction": instruction, "input": f"Patient with {rng.choice(FINDINGS)}.", "output": answer}
        for _ in range(n)
    ]


def task_examples(task: str, n: int = 20, seed: int = 0) -> list[dict[str, str]]:
    """The same rows as prompt/target pairs, as the router fits on and evaluation scores."""
    return [
        {"prompt": format_prompt(r["instruction"], r["input"]), "target": r["output"]}
        for r in task_records(task, n, seed)
    ]


def write_jsonl(rows: list[dict[str, str]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_adalora(
    model_name: str,
    rows: list[dict[str, str]],
    out: Path,
    *,
    steps: int = 60,
    lr: float = 5e-2,
    init_r: int = 6,
    target_r: int = 3,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj"),
    seed: int = 0,
) -> Path:
    """Train one AdaLoRA adapter on `rows` with the skills' own loop (`skills.loop`), in this process.

    `rows` are `{"instruction", "input", "output"}`; they become the train split of a one-skill data folder
    beside `out` (full batch, `steps` optimizer steps, loss on the answer and end tokens; the first four rows
    double as the validation split, whose loss is only reported), which is removed once the adapter is
    saved in peft format at `out`. At the default 60 steps each tiny-model skill answers its word and stops.
    """
    from mdkif.models import ModelConfig
    from mdkif.skills.config import AdapterConfig, OptimConfig
    from mdkif.skills.job import SkillData, TrainJob
    from mdkif.skills.loop import train_loop_per_worker

    out = Path(out)
    work = out.parent / f".train-{out.name}"
    records = [
        {"id": f"synthetic-{out.name}-{i}", "skill": "qa", "task": out.name, "source": "synthetic", **r}
        for i, r in enumerate(rows)
    ]
    write_jsonl(records, work / "data" / "qa" / "train.jsonl")
    write_jsonl(records[:4], work / "data" / "qa" / "validation.jsonl")
    job = TrainJob(
        name=out.name,
        model=ModelConfig(name=model_name),
        adapter=AdapterConfig(
            r=init_r, target_r=target_r, target_modules=list(target_modules), tinit=0.2, tfinal=0.2
        ),
        optim=OptimConfig(lr=lr, batch_size=len(rows), max_steps=steps, warmup_ratio=0.0, max_length=96),
        data=SkillData(dir=str((work / "data").resolve()), skills=("qa",)),
        out_dir=out.resolve(),
        ckpt_dir=(work / "ckpt").resolve(),
        checkpoint_every=steps,
        seed=seed,
    )
    train_loop_per_worker({"job": job})
    shutil.rmtree(work, ignore_errors=True)
    return out


def make_synthetic_skills(
    root: str | Path,
    model_name: str = "tiny",
    tasks: tuple[str, ...] = ("triage_yes", "triage_no"),
    steps: int = 60,
) -> Path:
    """Train one skill per task under `root/<task>/` and write `root/tasks/<task>.jsonl`; returns `root`."""
    root = Path(root)
    for i, task in enumerate(tasks):
        rows = task_records(task, 24, seed=i)
        write_jsonl(task_examples(task, 40, seed=100 + i), root / "tasks" / f"{task}.jsonl")
        if not (root / task / "adapter_config.json").is_file():
            train_adalora(model_name, rows, root / task, steps=steps, seed=i)
    return root
