"""One prompt format per skill bank, from training through routers and the task harness to Serve (issue 15).

Skills trained on Alpaca prompts were evaluated on Alpaca prompts but served through the chat template.
`prompt_format` is now a stage setting, recorded beside each adapter, read by the bank, and every consumer
renders through `mdkif.models.prompting`.
"""

from __future__ import annotations

import json
import shutil

import pytest

from mdkif.data.records import SkillRecord, format_prompt
from mdkif.data.tasks import TaskRecord
from mdkif.evaluation.config import ScoringConfig, VariantConfig
from mdkif.evaluation.task_scoring import prompt_ids
from mdkif.models import load_model
from mdkif.models.prompting import (
    PromptFormatError,
    check_format,
    encode_text,
    end_token_id,
    render_messages,
    render_prompt,
)
from mdkif.routing.data import encode_labels, end_token, task_examples
from mdkif.skills.data import IGNORE, encode_record

RECORD = SkillRecord(
    id="r1",
    skill="nli",
    task="mednli",
    source="test",
    instruction="Does the premise entail the hypothesis?",
    input="Premise: fever. Hypothesis: no fever.",
    output="contradiction",
)


@pytest.fixture(scope="module")
def tok():
    return load_model(name="tiny").tokenizer


def _task(output: str = "yes") -> TaskRecord:
    return TaskRecord(
        id="t1",
        task="mediqa_rqe",
        kind="classification",
        instruction="Does question B entail question A? Answer yes or no.",
        input="A: flu shot? B: is the flu vaccine safe?",
        output=output,
        labels=["no", "yes"],
    )


def test_alpaca_is_the_old_prompt_and_old_token_ids(tok):
    assert render_prompt(tok, RECORD.instruction, RECORD.input, "alpaca") == RECORD.prompt()
    ex = encode_record(tok, RECORD, 128)
    old = tok(RECORD.prompt(), add_special_tokens=True)["input_ids"]
    assert ex.input_ids[: len(old)] == old
    assert ex.input_ids[-1] == tok.eos_token_id


def test_chat_record_is_one_user_turn_ended_by_the_end_of_turn_token(tok):
    text = render_prompt(tok, RECORD.instruction, RECORD.input, "chat")
    assert text.startswith("<|im_start|>user\n" + RECORD.instruction)
    assert text.endswith("<|im_start|>assistant\n") and "### Instruction" not in text
    ex = encode_record(tok, RECORD, 128, "chat")
    prompt = encode_text(tok, text)
    assert ex.input_ids[: len(prompt)] == prompt
    # The template writes the BOS-like <|im_start|> itself: exactly one at the start, none added twice.
    assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids[1] != tok.bos_token_id
    target = [t for t in ex.labels if t != IGNORE]
    assert tok.decode(target[:-1]) == "contradiction"
    assert target[-1] == end_token_id(tok, "chat") == tok.convert_tokens_to_ids("<|im_end|>")


def test_chat_needs_a_template_and_unknown_formats_are_named(tok):
    plain = type(tok).from_pretrained(tok.name_or_path) if tok.name_or_path else None
    if plain is None:
        pytest.skip("tokenizer cannot be reloaded")
    plain.chat_template = None
    with pytest.raises(PromptFormatError, match="needs a tokenizer with a chat template"):
        render_prompt(plain, "x", "", "chat")
    with pytest.raises(PromptFormatError, match="unknown prompt format 'vicuna'"):
        check_format(tok, "vicuna")


def test_alpaca_messages_keep_the_system_prompt_and_earlier_turns(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "What is influenza?"},
    ]
    text = render_messages(tok, msgs, "alpaca")
    assert text == format_prompt("Be brief.\n\nWhat is influenza?", "user: hi\nassistant: hello")
    assert render_messages(tok, msgs, "chat") == tok.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False
    )


def test_task_harness_and_router_batches_use_the_format(tok):
    rec = _task()
    alpaca, _ = prompt_ids(tok, rec, 512)
    chat, _ = prompt_ids(tok, rec, 512, "chat")
    assert alpaca == tok(rec.prompt(), add_special_tokens=True)["input_ids"]
    assert chat == encode_text(tok, render_prompt(tok, rec.instruction, rec.input, "chat"))
    batch = encode_labels(tok, [rec], 512, "chat")
    assert all(c[-1] == end_token_id(tok, "chat") for c in batch.continuations)
    assert batch.input_ids[0, -len(chat) :].tolist() == chat
    ex = task_examples([rec], end_token(tok, "chat"), tok, "chat")[0]
    assert ex.prompt.endswith("<|im_start|>assistant\n") and ex.target == "yes<|im_end|>"


def test_default_format_keeps_old_fingerprints_and_chat_changes_them():
    alpaca = VariantConfig(name="v", scoring=ScoringConfig(shots=2))
    blob = alpaca.model_dump_json(exclude={"scoring": {"prompt_format"}})
    import hashlib

    assert alpaca.fingerprint() == hashlib.sha1(blob.encode()).hexdigest()[:16]
    chat = VariantConfig(name="v", scoring=ScoringConfig(shots=2, prompt_format="chat"))
    assert chat.fingerprint() != alpaca.fingerprint()


def test_job_key_of_alpaca_jobs_is_unchanged_and_chat_retrains():
    """The typed job hashes the JSON the dict jobs of earlier versions hashed: finished skills keep their key."""
    import hashlib
    import json

    from mdkif.models import ModelConfig
    from mdkif.skills.config import AdapterConfig, OptimConfig
    from mdkif.skills.job import SkillData, TrainJob, job_key

    job = TrainJob(
        name="qa",
        model=ModelConfig(name="tiny"),
        adapter=AdapterConfig(r=4),
        optim=OptimConfig(lr=1e-3),
        data=SkillData(dir="/d", skills=("qa",)),
        out_dir="/o/qa",
        ckpt_dir="/o/.checkpoints/qa",
    )
    # Fields added since (key-neutral: they change neither data nor weights) are not in the old JSON.
    later = ("gradient_checkpointing", "early_stopping")
    optim = {k: v for k, v in job.optim.model_dump(mode="json").items() if k not in later}
    model = {k: v for k, v in job.model.model_dump(mode="json").items() if k != "attn_implementation"}
    parts = [model, job.adapter.model_dump(mode="json"), optim, 0, None, "h"]
    old = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert job_key(job, "h") == old
    assert job_key(job.model_copy(update={"prompt_format": "chat"}), "h") != old
    from mdkif.skills.config import EarlyStopping

    stopping = job.optim.model_copy(update={"early_stopping": EarlyStopping(every=5)})
    assert job_key(job.model_copy(update={"optim": stopping}), "h") != old  # set, it changes the weights


def test_stage_config_takes_the_format_and_names_a_bad_one(tmp_path):
    from mdkif.config import ConfigError
    from mdkif.skills.config import load_stage

    path = tmp_path / "s.yaml"
    path.write_text(
        "stage: skills\ndata_dir: pkg:assets/demo_skills\noutput_dir: out\nprompt_format: chat\n"
        "model: {name: tiny}\n"
    )
    assert load_stage(path).prompt_format == "chat"
    with pytest.raises(ConfigError, match="prompt_format"):
        load_stage(path, ["prompt_format=vicuna"])


@pytest.fixture(scope="module")
def skills(tmp_path_factory):
    from mdkif.testing.serving import build_tiny_artifacts

    mp = pytest.MonkeyPatch()
    mp.setenv("MDKIF_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield build_tiny_artifacts(tmp_path_factory.mktemp("art"))["adapters"]
    mp.undo()


def _with_format(skills, tmp_path, formats: dict[str, str]):
    root = tmp_path / "skills"
    shutil.copytree(skills, root)
    for name, fmt in formats.items():
        (root / name / "metrics.json").write_text(json.dumps({"prompt_format": fmt}))
    return root


def test_bank_reads_the_trained_format_and_refuses_a_mix(skills, tmp_path):
    from mdkif.fusion import FusionError, SkillBank

    assert SkillBank.from_dir(skills).prompt_format == "alpaca"  # no metrics.json: adapters from elsewhere
    chat = _with_format(skills, tmp_path / "a", {"triage_yes": "chat", "triage_no": "chat"})
    assert SkillBank.from_dir(chat).prompt_format == "chat"
    mixed = _with_format(skills, tmp_path / "b", {"triage_yes": "chat", "triage_no": "alpaca"})
    with pytest.raises(FusionError, match="different prompt formats"):
        SkillBank.from_dir(mixed)


def test_eval_refuses_a_routed_variant_scored_in_another_format(skills, tmp_path):
    from mdkif.evaluation.worker import EvalError, fuse_router

    chat = _with_format(skills, tmp_path, {"triage_yes": "chat", "triage_no": "chat"})
    variant = VariantConfig(
        name="routed",
        model={"name": "tiny"},
        router={"adapters": str(chat), "weights": {"triage_yes": 0.5, "triage_no": 0.5}},
    )
    model = load_model(name="tiny").model
    with pytest.raises(EvalError, match="trained on 'chat' prompts but scoring.prompt_format is 'alpaca'"):
        fuse_router(model, variant)
    ok = variant.model_copy(update={"scoring": ScoringConfig(prompt_format="chat")})
    assert fuse_router(model, ok) is not None


def test_serve_renders_messages_as_the_skills_were_trained(skills, tmp_path):
    from mdkif.serving.config import check_artifacts, load_app_config
    from mdkif.serving.engine import RoutedEngine

    msgs = [{"role": "user", "content": "Chest pain?"}]

    def engine(adapters, **args):
        cfg = load_app_config({"model": {"name": "tiny"}, "adapters_dir": str(adapters), **args})
        return RoutedEngine(check_artifacts(cfg))

    alpaca = engine(skills)
    assert alpaca.prompt_format == "alpaca"
    assert alpaca.tokenizer.decode(alpaca.render(messages=msgs)) == format_prompt("Chest pain?")
    chat = engine(_with_format(skills, tmp_path, {"triage_yes": "chat", "triage_no": "chat"}))
    assert chat.prompt_format == "chat"
    assert chat.render(messages=msgs) == encode_text(
        chat.tokenizer, render_messages(chat.tokenizer, msgs, "chat")
    )
    assert engine(skills, prompt_format="chat").prompt_format == "chat"  # an explicit setting wins
