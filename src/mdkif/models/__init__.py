"""Base models: one loader for the packaged default, local or hub models, GGUF files and tiny test models."""

from mdkif.models.config import DEFAULT_MODEL, TINY_MODEL, ModelConfig, TinyModelConfig
from mdkif.models.loading import LoadedModel, ModelError, load_model, resolve_device

__all__ = [
    "DEFAULT_MODEL",
    "TINY_MODEL",
    "LoadedModel",
    "ModelConfig",
    "ModelError",
    "TinyModelConfig",
    "load_model",
    "resolve_device",
]
