"""Tiny synthetic skills for tests, smoke runs and benchmarks: real peft AdaLoRA adapters, trained in seconds.

`make_synthetic_skills` trains one AdaLoRA adapter per synthetic task on the tiny model, with the rank
allocator on (so saved adapters carry a `rank_pattern` and pruned triplets, as real skills do), and
writes the task data as JSONL `{"prompt", "target"}` beside them. Each task answers one fixed word for
its own instruction, so the adapter trained on a task is unambiguously the right skill for it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

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


def task_examples(task: str, n: int = 20, seed: int = 0) -> list[dict[str, str]]:
    """`n` prompt/target pairs of a synthetic task (inputs drawn from a fixed list of findings)."""
    instruction, answer = TASKS[task]
    rng = random.Random(seed)
    return [
        {"prompt": format_prompt(instruction, f"Patient with {rng.choice(FINDINGS)}."), "target": answer}
        for _ in range(n)
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
    steps: int = 30,
    lr: float = 2e-2,
    init_r: int = 6,
    target_r: int = 3,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj"),
    seed: int = 0,
) -> Path:
    """Train one AdaLoRA adapter on `rows` (loss on the target tokens only) and save it in peft format."""
    from peft import AdaLoraConfig, get_peft_model

    from mdkif.models import ModelConfig, load_model
    from mdkif.routing.data import TaskExample, encode

    torch.manual_seed(seed)
    loaded = load_model(ModelConfig(name=model_name))
    tinit, tfinal = max(1, steps // 5), max(1, steps // 5)
    cfg = AdaLoraConfig(
        init_r=init_r,
        target_r=target_r,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=1,
        total_step=steps,
        lora_alpha=16,
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
        lora_dropout=0.0,
    )
    model = get_peft_model(loaded.model, cfg)
    batch = encode(loaded.tokenizer, [TaskExample(**r) for r in rows])
    dev = next(model.parameters()).device  # the base may load on a GPU: the batch goes where it is
    ids, mask, labels = (t.to(dev) for t in (batch.input_ids, batch.attention_mask, batch.labels))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for step in range(steps):
        out_ = model(input_ids=ids, attention_mask=mask, labels=labels)
        out_.loss.backward()
        opt.step()
        model.base_model.update_and_allocate(step)  # after backward, before zero_grad, or ranks never adapt
        opt.zero_grad()
    model.save_pretrained(str(out))
    return out


def make_synthetic_skills(
    root: str | Path,
    model_name: str = "tiny",
    tasks: tuple[str, ...] = ("triage_yes", "triage_no"),
    steps: int = 30,
) -> Path:
    """Train one skill per task under `root/<task>/` and write `root/tasks/<task>.jsonl`; returns `root`."""
    root = Path(root)
    for i, task in enumerate(tasks):
        rows = task_examples(task, 24, seed=i)
        write_jsonl(task_examples(task, 40, seed=100 + i), root / "tasks" / f"{task}.jsonl")
        if not (root / task / "adapter_config.json").is_file():
            train_adalora(model_name, rows, root / task, steps=steps, seed=i)
    return root
