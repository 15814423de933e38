"""GPU / 8B readiness of the training stages, checked on the CPU: the Ray Train resources every trainer
asks for, gradient checkpointing, checkpoints that resume on another device, DeepSpeed's checkpoint
arguments and config rules, the mixed-precision dtype, and the shipped GPU configs.

No Ray cluster starts here: `TorchTrainer` is replaced by a recorder that stops the stage at `fit()`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mdkif.config import ConfigError
from mdkif.skills.config import load_stage

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "train"


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    os.environ.setdefault("MDKIF_CACHE", str(tmp_path_factory.mktemp("cache")))


# --- 1. every trainer's ScalingConfig comes from the config's ray block ----------------------------------


class Stop(Exception):
    """Raised by the recorded trainer's fit(): the stage got as far as launching its trainer."""


@pytest.fixture
def trainers(monkeypatch):
    """Record every TorchTrainer a stage builds (and stop it at fit); no Ray is started."""
    import ray.train.torch

    import mdkif.skills.runner as runner

    built = []

    class Recorder:
        def __init__(self, loop, *, train_loop_config, scaling_config, run_config):
            self.loop_config, self.scaling = train_loop_config, scaling_config
            built.append(self)

        def fit(self):
            raise Stop

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Recorder)
    monkeypatch.setattr(runner, "_stage_ray", lambda cfg: contextlib.nullcontext())
    return built


def ray_overrides(use_gpu: bool) -> list[str]:
    gpu = ["ray.use_gpu=true", "ray.gpus_per_worker=0.5"] if use_gpu else []
    return ["ray.enabled=true", "ray.num_workers=2", "ray.cpus_per_worker=1.5", *gpu]


def expected(use_gpu: bool, cpus: float = 1.5) -> dict[str, float]:
    return {"CPU": cpus, "GPU": 0.5} if use_gpu else {"CPU": cpus}


def assert_scaling(scaling, use_gpu: bool, workers: int, cpus: float = 1.5) -> None:
    assert scaling.use_gpu is use_gpu
    assert scaling.num_workers == workers
    assert scaling.resources_per_worker == expected(use_gpu, cpus)
    assert scaling.num_gpus_per_worker == (0.5 if use_gpu else 0)


def stage_cases(tmp_path: Path) -> dict[str, tuple[Path, list[str], int]]:
    """Per stage: config file, overrides, and the workers of the trainer it launches first."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Hypertension raises the risk of stroke.\n\n" * 20)
    return {
        "skills-shared": (TRAIN / "skills_demo.yaml", ["skills=[qa, nli]"], 2),
        "skills-own-trainer": (TRAIN / "skills_demo.yaml", ["skills={qa: {workers: 3}}"], 3),
        "cpt": (TRAIN / "cpt.yaml", [f"corpus=[{{path: {corpus}, format: text}}]"], 2),
        "sft": (TRAIN / "sft.yaml", [], 2),
        "task": (TRAIN / "sft.yaml", ["stage=task", "data.skills=[mcqa]"], 2),
        "pipeline": (TRAIN / "msft.yaml", [], 2),
    }


@pytest.mark.parametrize("use_gpu", [True, False], ids=["gpu", "cpu"])
@pytest.mark.parametrize("stage", ["skills-shared", "skills-own-trainer", "cpt", "sft", "task", "pipeline"])
def test_every_stage_trainer_asks_for_the_configured_gpus(tmp_path, trainers, stage, use_gpu):
    from mdkif.skills.runner import run

    path, extra, workers = stage_cases(tmp_path)[stage]
    cfg = load_stage(
        path, [f"output_dir={tmp_path / 'out'}", "model.name=tiny", *ray_overrides(use_gpu), *extra]
    )
    with pytest.raises(Stop):
        run(cfg)
    (trainer,) = trainers
    assert_scaling(trainer.scaling, use_gpu, workers)


@pytest.mark.parametrize("use_gpu", [True, False], ids=["gpu", "cpu"])
def test_adalora_tune_trial_trainer_asks_for_the_base_configs_gpus(tmp_path, trainers, monkeypatch, use_gpu):
    from ray import tune

    from mdkif.config import apply_overrides, load_yaml
    from mdkif.tuning.search import adalora_trial

    class Context:
        def get_trial_dir(self):
            return str(tmp_path / "trial")

    monkeypatch.setattr(tune, "get_context", lambda: Context())
    base = load_yaml(TRAIN / "skills_demo.yaml")
    apply_overrides(base, ["model.name=tiny", *ray_overrides(use_gpu)])
    trial = {"skill": "nli", "num_workers": 3, "cpus_per_worker": 0.5}  # the trial block sizes workers/CPUs
    with pytest.raises(Stop):
        adalora_trial({"adapter": {"r": 6}}, base, trial)
    (trainer,) = trainers
    assert_scaling(trainer.scaling, use_gpu, workers=3, cpus=0.5)
    assert trainer.loop_config["job"].adapter.r == 6


def test_gpu_settings_are_validated_with_the_field_named():
    with pytest.raises(ConfigError, match="gpus_per_worker"):
        load_stage(TRAIN / "sft.yaml", ["ray.gpus_per_worker=0"])


# --- 2. gradient checkpointing --------------------------------------------------------------------------


def make_job(out: Path, **optim):
    from mdkif.models import ModelConfig
    from mdkif.skills.config import AdapterConfig, OptimConfig
    from mdkif.skills.job import SkillData, TrainJob

    o = {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "max_length": 64, "lr": 1e-2, **optim}
    return TrainJob(
        name="qa",
        model=ModelConfig(name="tiny"),
        adapter=AdapterConfig(r=4, target_r=2),
        optim=OptimConfig(**o),
        data=SkillData(dir="pkg:assets/demo_skills", skills=("qa",)),
        out_dir=out / "qa",
        ckpt_dir=out / ".checkpoints" / "qa",
        checkpoint_every=5,
        seed=0,
        job_key="test",
    )


def is_checkpointing(model) -> bool:
    base = model.get_base_model()
    return (
        base.is_activation_checkpointing
        if hasattr(base, "is_activation_checkpointing")
        else (base.is_gradient_checkpointing)
    )


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_gradient_checkpointing_is_switched_on_non_reentrant(quantization):
    from mdkif.models import load_model
    from mdkif.skills.adapters import build_peft_model
    from mdkif.skills.config import AdapterConfig

    adapter = AdapterConfig(r=4, target_r=2)
    quantized = quantization != "none"
    off = build_peft_model(load_model(name="tiny", quantization=quantization).model, adapter, 4, 0, quantized)
    assert not is_checkpointing(off)
    on = build_peft_model(
        load_model(name="tiny", quantization=quantization).model, adapter, 4, 0, quantized, True
    )
    assert is_checkpointing(on)
    layer = on.get_base_model().model.layers[0]
    assert layer._gradient_checkpointing_func.keywords["use_reentrant"] is False
    assert on.get_base_model().config.use_cache is False


def test_training_with_gradient_checkpointing_gives_the_same_adapter(tmp_path, monkeypatch):
    import mdkif.skills.loop as loop

    built = []
    original = loop.build_peft_model  # the name the loop calls

    def spy(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(loop, "build_peft_model", spy)
    (plain,) = loop.train_loop_per_worker({"job": make_job(tmp_path / "plain")})
    (ckpt,) = loop.train_loop_per_worker({"job": make_job(tmp_path / "gc", gradient_checkpointing=True)})
    assert not is_checkpointing(built[0]) and is_checkpointing(built[1])
    assert ckpt["steps"] == 2 and ckpt["val_loss_after"] < ckpt["val_loss_before"]
    a = load_file(str(tmp_path / "plain" / "qa" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "gc" / "qa" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # recomputation changes memory, not the result
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert plain["history"][-1]["loss"] == pytest.approx(ckpt["history"][-1]["loss"], rel=1e-4)


def test_memory_only_settings_do_not_change_the_job_key():
    from mdkif.skills.config import DeepSpeedConfig
    from mdkif.skills.job import job_key

    job = make_job(Path("/tmp/x")).model_copy(
        update={"deepspeed": DeepSpeedConfig(stage=2, keep_checkpoints=2)}
    )
    same = job.model_copy(
        update={
            "optim": job.optim.model_copy(update={"gradient_checkpointing": True}),
            "deepspeed": DeepSpeedConfig(stage=2, keep_checkpoints=5),
        }
    )
    assert job_key(job, "h") == job_key(same, "h")  # finished skills are not retrained for them
    other = job.model_copy(update={"optim": job.optim.model_copy(update={"lr": 0.5})})
    assert job_key(job, "h") != job_key(other, "h")


# --- 3. resume on another device: CPU map_location, CUDA RNG state -------------------------------------


def test_checkpoint_state_is_loaded_onto_the_cpu(tmp_path, monkeypatch):
    from mdkif.skills.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, {"step": 3, "exp_avg": torch.zeros(2)})
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    weights, state = load_checkpoint(tmp_path / "c")
    assert calls and calls[0].get("map_location") == "cpu"  # a cuda:3 checkpoint loads on a 1-GPU worker
    assert weights["w"].device.type == "cpu" and state["exp_avg"].device.type == "cpu"
    assert state["step"] == 3


def test_rng_state_has_cuda_only_when_cuda_is_available(monkeypatch):
    from mdkif.skills.checkpoint import restore_rng_state, rng_state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert set(rng_state()) == {"cpu"}
    cuda_states = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_states)
    state = rng_state()
    assert set(state) == {"cpu", "cuda"} and state["cuda"] is cuda_states
    # restored on a worker that sees one GPU (Ray Train: its own, as cuda:0), from a 2-GPU save
    restored = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((i, s)))
    restore_rng_state(state)
    assert [i for i, _ in restored] == [0] and restored[0][1] is cuda_states[0]
    restore_rng_state(torch.get_rng_state())  # a checkpoint from before: the bare CPU state


def test_loop_checkpoint_keeps_rng_as_a_dict(tmp_path):
    from mdkif.skills.checkpoint import load_checkpoint
    from mdkif.skills.loop import train_loop_per_worker

    job = make_job(tmp_path)
    train_loop_per_worker({"job": job})
    _, state = load_checkpoint(job.ckpt_dir)
    assert set(state["rng"]) == ({"cpu", "cuda"} if torch.cuda.is_available() else {"cpu"})


# --- 4. DeepSpeed: frozen weights left out, old tags pruned, no QLoRA, nccl on CUDA ---------------------


def test_deepspeed_checkpoint_excludes_frozen_weights_and_old_tags_are_pruned(tmp_path):
    from mdkif.skills.checkpoint import prune_deepspeed_checkpoints, save_deepspeed_checkpoint

    calls = []

    class Engine:
        def save_checkpoint(self, save_dir, **kwargs):
            calls.append(kwargs)
            (Path(save_dir) / kwargs["tag"]).mkdir(parents=True)

    ds_dir = tmp_path / "qa-ds"
    for step in (5, 10, 15, 20):
        save_deepspeed_checkpoint(Engine(), ds_dir, f"step{step}")
    assert all(c["exclude_frozen_parameters"] is True for c in calls)
    (ds_dir / "latest").write_text("step20")
    deleted = prune_deepspeed_checkpoints(ds_dir, keep=2, current="step20")
    assert sorted(p.name for p in deleted) == ["step10", "step5"]
    assert sorted(p.name for p in ds_dir.iterdir()) == ["latest", "step15", "step20"]


def test_deepspeed_keep_checkpoints_defaults_and_is_validated():
    cfg = load_stage(TRAIN / "sft.yaml", ["deepspeed={stage: 3}"])
    assert cfg.deepspeed.keep_checkpoints == 2
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        load_stage(TRAIN / "sft.yaml", ["deepspeed={stage: 3, keep_checkpoints: 0}"])


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_deepspeed_with_a_quantized_base_is_refused(quantization):
    with pytest.raises(
        ConfigError, match=rf"deepspeed cannot train a quantized base \(model.quantization='{quantization}'\)"
    ):
        load_stage(TRAIN / "sft.yaml", ["deepspeed={stage: 2}", f"model.quantization={quantization}"])
    with pytest.raises(ConfigError, match="model.quantization"):
        load_stage(TRAIN / "msft_gpu.yaml", [f"model.quantization={quantization}"])


@pytest.mark.parametrize(
    ("device", "cuda", "backend"), [("cuda", True, "nccl"), ("cpu", True, "gloo"), ("cpu", False, "gloo")]
)
def test_single_process_group_backend_follows_the_device(monkeypatch, device, cuda, backend):
    import deepspeed

    from mdkif.skills import backends

    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }.items():
        monkeypatch.setenv(key, value)  # restored afterwards: setdefault leaves these alone
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    seen = []
    monkeypatch.setattr(deepspeed, "init_distributed", lambda dist_backend: seen.append(dist_backend))
    backends.init_single_process_group(torch.device(device))
    assert seen == [backend]


# --- 5. bf16 only where the GPU has it ----------------------------------------------------------------


@pytest.mark.parametrize(("bf16_ok", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_mixed_precision_falls_back_to_fp16_without_bf16(monkeypatch, bf16_ok, dtype):
    from mdkif.skills.backends import deepspeed_config
    from mdkif.skills.config import DeepSpeedConfig, OptimConfig
    from mdkif.skills.devices import autocast_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    cuda = torch.device("cuda")
    assert autocast_dtype(cuda) == dtype
    assert autocast_dtype(cuda, mixed_precision=False) is None
    assert autocast_dtype(torch.device("cpu")) is None
    optim = OptimConfig(batch_size=2, grad_accum=2, max_grad_norm=1.0)
    ds = deepspeed_config(optim, DeepSpeedConfig(stage=3), 4, autocast_dtype(cuda))
    assert ds["bf16"]["enabled"] is bf16_ok and ds["fp16"]["enabled"] is not bf16_ok
    cpu = deepspeed_config(optim, DeepSpeedConfig(stage=3), 4, None)
    assert not cpu["bf16"]["enabled"] and not cpu["fp16"]["enabled"] and cpu["train_batch_size"] == 16


# --- 6. the shipped GPU configs -------------------------------------------------------------------------


def test_skills_gpu_config_is_qlora_adalora_on_gpus():
    from mdkif.skills.devices import scaling_config

    path = TRAIN / "skills_gpu.yaml"
    assert path.read_text().startswith("# mdkif train train/skills_gpu.yaml")
    cfg = load_stage(path)
    assert cfg.stage == "skills" and cfg.model.quantization == "nf4" and cfg.adapter.kind == "adalora"
    assert cfg.optim.gradient_checkpointing and cfg.optim.bf16 and cfg.deepspeed is None
    assert cfg.prompt_format == "chat"  # an instruct base trains on the template it is served with
    assert cfg.ray.enabled and cfg.ray.use_gpu and cfg.ray.num_workers > 1
    own = [s for s, spec in cfg.skill_specs().items() if spec.workers > 1]
    assert own  # data-parallel trainers of their own, beside the shared one
    scaling = scaling_config(cfg.ray)
    assert scaling.use_gpu and scaling.num_gpus_per_worker == 1 and scaling.num_workers == cfg.ray.num_workers


def test_msft_gpu_config_is_zero3_lora_on_gpus():
    from mdkif.skills.devices import scaling_config

    path = TRAIN / "msft_gpu.yaml"
    assert path.read_text().startswith("# mdkif train train/msft_gpu.yaml")
    cfg = load_stage(path)
    assert cfg.stage == "pipeline" and [s.stage for s in cfg.steps] == ["cpt", "sft", "task"]
    assert cfg.deepspeed.stage == 3 and cfg.model.quantization == "none" and cfg.adapter.kind == "lora"
    assert cfg.optim.gradient_checkpointing
    assert cfg.ray.enabled and cfg.ray.use_gpu and scaling_config(cfg.ray).num_gpus_per_worker == 1


def test_an_in_process_run_uses_the_jobs_model_device(monkeypatch):
    """Without Ray Train the loop used to stay on the CPU even on a GPU machine."""
    import mdkif.models.loading as loading
    from mdkif.skills import loop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loading, "ray_gpu_ids", lambda: None)
    from mdkif.models import ModelConfig

    job = make_job(Path("/tmp/x"))
    cpu = job.model_copy(update={"model": ModelConfig(name="tiny", device="cpu")})
    assert loop._local_device([job]).type == "cuda"  # device: auto
    assert loop._local_device([cpu]).type == "cpu"
    assert loop._local_device([job, cpu]).type == "cuda"  # jobs that disagree: auto
    assert loop._local_device([]).type == "cuda"


def test_serve_gpu_config_gives_each_model_replica_a_gpu_and_one_working_copy():
    from mdkif.serving.config import load_serve_file

    path = TRAIN.parent / "serve" / "serve_gpu.yaml"
    assert path.read_text().startswith("# serve run serve/serve_gpu.yaml")
    _, apps = load_serve_file(path)
    ((_, cfg),) = apps
    assert cfg.routed_model.ray_actor_options["num_gpus"] == 1
    assert cfg.merged_cache_size == 1 and cfg.merged_cache_mb * 2**20 >= 13 * 2**30  # one 8B bf16 copy fits
    assert cfg.require_api_key and cfg.model.device == "auto"


def test_pipeline_merge_loads_the_base_in_its_own_precision(tmp_path, monkeypatch):
    """The merge used to force an fp32 copy on the driver's CPU (32 GB for an 8B base)."""
    import mdkif.models as models
    from mdkif.skills import runner

    seen = {}

    class Stop(Exception):
        pass

    def fake_load(cfg):
        seen.update(device=cfg.device, dtype=cfg.dtype, quantization=cfg.quantization)
        raise Stop

    monkeypatch.setattr(models, "load_model", fake_load)
    base = {"name": "tiny", "dtype": "bfloat16", "device": "auto", "quantization": "nf4"}
    with pytest.raises(Stop):
        runner.merge_adapter(base, tmp_path / "adapter", tmp_path / "merged")
    assert seen == {"device": "auto", "dtype": "bfloat16", "quantization": "none"}


def test_training_loss_projects_only_answer_positions_and_equals_the_full_loss():
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from mdkif.models import load_model
    from mdkif.skills import losses as loop

    model = get_peft_model(
        load_model(name="tiny").model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    torch.manual_seed(0)
    ids = torch.randint(5, 900, (3, 24))
    mask = torch.ones_like(ids)
    mask[2, 18:] = 0  # right padding
    labels = ids.clone()
    labels[:, :15] = loop.IGNORE  # the prompt
    labels[mask == 0] = loop.IGNORE
    labels[1, 15:17] = loop.IGNORE
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    seen = {}
    forward = model.forward

    def spy(*a, **kw):
        out = forward(*a, **kw)
        seen["positions"] = out.logits.shape[1]
        return out

    model.forward = spy
    loss, n = loop.token_losses(model, batch)
    assert seen["positions"] == 9  # positions 14..22 predict the labelled tokens 15..23, not all 23
    full = forward(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    want = F.cross_entropy(
        full.reshape(-1, full.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=loop.IGNORE, reduction="sum"
    )
    assert n == int((labels != loop.IGNORE).sum())
    torch.testing.assert_close(loss, want, atol=1e-4, rtol=1e-5)
