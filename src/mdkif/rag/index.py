"""Build the persistent Chroma index: read corpora, chunk, skip what is stored, embed, write, manifest.

    mdkif rag index rag/index.yaml

Embedding runs on Ray Data (`map_batches` over a fixed actor pool; each actor loads the model once) or,
with `use_ray: false`, in this process. Vectors stream back to the driver, which writes them to Chroma in
batches of at most 5,000 as they arrive. Chunk ids are content hashes and stored ids are skipped before
embedding, so a re-run adds nothing and an interrupted build resumes where its last batch landed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mdkif.io import write_json_atomic
from mdkif.rag.chunking import Chunk, chunk_documents
from mdkif.rag.config import EmbedderConfig, RagIndexConfig
from mdkif.rag.corpora import read_corpus
from mdkif.rag.embedder import Embedder
from mdkif.rag.lexical import BM25Index
from mdkif.rag.store import INDEX_MANIFEST, bm25_path, existing_ids, open_client, open_collection, read_all
from mdkif.ray_session import ray_session
from mdkif.tracking import stage_run

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    """What a build did; also written (with the config) to `index_manifest.json`."""

    chunks: int  # chunks the corpora yield under this config (after de-duplication and max_chunks)
    added: int  # chunks embedded and written by this run
    skipped: int  # chunks already in the collection
    total: int  # collection size afterwards
    embed_seconds: float
    seconds: float
    per_source: dict[str, int]

    @property
    def chunks_per_second(self) -> float:
        return self.added / self.embed_seconds if self.embed_seconds > 0 else 0.0


def collect_chunks(cfg: RagIndexConfig) -> list[Chunk]:
    """All chunks of all corpora in config order, de-duplicated, capped at `cfg.max_chunks`."""

    def stream() -> Iterator[Chunk]:
        for spec in cfg.corpora:
            yield from chunk_documents(read_corpus(spec), cfg.chunking)

    # chunk_documents de-duplicates within a corpus; this pass does it across corpora.
    seen: set[str] = set()
    out = []
    for chunk in stream():
        if chunk.id not in seen:
            seen.add(chunk.id)
            out.append(chunk)
    return out[: cfg.max_chunks] if cfg.max_chunks else out


class EmbedActor:
    """Ray Data callable class: one model per actor, loaded in `__init__`, used for every batch."""

    def __init__(self, embedder: dict[str, Any], num_threads: int):
        self.embedder = Embedder(EmbedderConfig(**embedder), num_threads=num_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"id": batch["id"], "embedding": self.embedder.embed([str(t) for t in batch["text"]])}


def embed_with_ray(cfg: RagIndexConfig, chunks: list[Chunk]) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield (ids, vectors) batches of up to `write_batch_size`, embedded on a pool of `num_actors` actors."""
    import ray

    with ray_session():  # started for this build and stopped after it, unless the caller runs Ray
        threads = max(1, int(cfg.cpus_per_actor))
        # Enough blocks that every actor gets work from the start, none so small that overhead dominates.
        blocks = max(cfg.num_actors * 2, len(chunks) // max(cfg.ray_batch_size, 1))
        ds = ray.data.from_items([{"id": c.id, "text": c.text} for c in chunks], override_num_blocks=blocks)
        ds = ds.map_batches(
            EmbedActor,
            fn_constructor_kwargs={"embedder": cfg.embedder.model_dump(), "num_threads": threads},
            compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
            batch_size=cfg.ray_batch_size,
            num_cpus=cfg.cpus_per_actor,
            batch_format="numpy",
        )
        for batch in ds.iter_batches(batch_size=cfg.write_batch_size, batch_format="numpy"):
            yield [str(i) for i in batch["id"]], np.asarray(batch["embedding"], dtype=np.float32)


def embed_locally(cfg: RagIndexConfig, chunks: list[Chunk]) -> Iterator[tuple[list[str], np.ndarray]]:
    """The single-process path: same batches as the Ray path, one model in this process."""
    embedder = Embedder(cfg.embedder)
    # Write every `ray_batch_size` chunks rather than every `write_batch_size`: the progress bar moves
    # and an interrupted build loses at most one small batch of embedding work.
    step = min(cfg.write_batch_size, cfg.ray_batch_size)
    for start in range(0, len(chunks), step):
        part = chunks[start : start + step]
        yield [c.id for c in part], embedder.embed([c.text for c in part])


def build_bm25(collection: Any, persist_dir: Path, name: str) -> BM25Index:
    """Rebuild the BM25 cache from the whole collection (so it always matches it) and save it."""
    ids, docs, metas = read_all(collection)
    index = BM25Index(ids, docs, metas)
    index.save(bm25_path(persist_dir, name), count=len(ids))
    return index


def build_index(cfg: RagIndexConfig, progress: bool = False) -> BuildReport:
    """Build or extend `cfg.collection` under `cfg.persist_dir`; safe to re-run and to resume. The stage's
    MLflow run gets the chunking and embedder settings, the counts per source and the manifest."""
    with stage_run(cfg.tracking, "rag") as run:
        report = _build_index(cfg, progress)
        if run.active:
            run.params(
                {
                    "collection": cfg.collection,
                    "config_hash": cfg.fingerprint(),
                    "chunking": cfg.chunking.model_dump(mode="json"),
                    "embedder": cfg.embedder.model_dump(mode="json"),
                    "corpora": ",".join(s.source for s in cfg.corpora),
                }
            )
            run.metrics(
                {
                    "chunks": report.chunks,
                    "added": report.added,
                    "skipped": report.skipped,
                    "total": report.total,
                    "seconds": report.seconds,
                    "chunks_per_second": report.chunks_per_second,
                }
                | {f"chunks/{k}": v for k, v in report.per_source.items()}
            )
            run.artifact(Path(cfg.persist_dir) / INDEX_MANIFEST)
    return report


def _build_index(cfg: RagIndexConfig, progress: bool) -> BuildReport:
    start = time.perf_counter()
    chunks = collect_chunks(cfg)
    per_source: dict[str, int] = {}
    for c in chunks:
        per_source[c.metadata["source"]] = per_source.get(c.metadata["source"], 0) + 1

    client = open_client(cfg.persist_dir)
    collection = open_collection(client, cfg.collection, cfg.embedder)
    stored = existing_ids(collection, [c.id for c in chunks])
    todo = [c for c in chunks if c.id not in stored]
    by_id = {c.id: c for c in todo}
    if progress:
        print(f"{len(chunks)} chunks: {len(stored)} already stored, {len(todo)} to embed", flush=True)

    embed_start = time.perf_counter()
    added = 0
    bar = tqdm(total=len(todo), desc="embed + write", unit=" chunks", disable=not progress or not todo)
    if todo:
        batches = embed_with_ray(cfg, todo) if cfg.use_ray else embed_locally(cfg, todo)
        for ids, vectors in batches:
            part = [by_id[i] for i in ids]
            # One add per batch: Chroma commits each add, so an interrupted build keeps every full batch.
            collection.add(
                ids=ids,
                embeddings=vectors,
                documents=[c.text for c in part],
                metadatas=[c.metadata for c in part],
            )
            added += len(ids)
            bar.update(len(ids))
    bar.close()
    embed_seconds = time.perf_counter() - embed_start

    if cfg.bm25:
        build_bm25(collection, Path(cfg.persist_dir), cfg.collection)
    report = BuildReport(
        chunks=len(chunks),
        added=added,
        skipped=len(stored),
        total=collection.count(),
        embed_seconds=embed_seconds,
        seconds=time.perf_counter() - start,
        per_source=per_source,
    )
    manifest = {
        "collection": cfg.collection,
        "config_hash": cfg.fingerprint(),
        "embedder": cfg.embedder.model_dump(mode="json"),
        "chunking": cfg.chunking.model_dump(mode="json"),
        "corpora": [s.model_dump(mode="json") | {"chunks": per_source.get(s.source, 0)} for s in cfg.corpora],
        "chunks": report.chunks,
        "total": report.total,
        "added_last_run": report.added,
        "chunks_per_second_last_run": round(report.chunks_per_second, 2),
        "embedded_with": f"ray ({cfg.num_actors} actors)" if cfg.use_ray else "single process",
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(Path(cfg.persist_dir) / INDEX_MANIFEST, manifest)
    return report
