"""RAG benchmark: retrieval recall, index throughput (Ray Data vs one process), query latency.

    .venv/bin/python bench/bench_rag.py                      # ~10 min on a 2-core CPU
    .venv/bin/python bench/bench_rag.py --medquad-docs 100   # quick look

1. Recall@1/5/10: each of the 500 PubMedQA dev questions must retrieve a chunk of its own abstract
   (same pmid) from an index of all 500 PubMedQA contexts plus MedQuAD answers; dense vs BM25 vs fused.
2. Throughput: the same chunks embedded and written by `build_index` with Ray Data (an actor pool) and
   with `use_ray: false` (one process), chunks/s end to end (actor start-up and Chroma writes included).
3. Latency p50/p99 at the full ../shared corpus size (MedQuAD + WikiDoc + PubMedQA): real texts and BM25,
   real query embeddings; vectors of chunks not embedded in step 2 are perturbed copies of real ones,
   because embedding ~30k chunks takes far longer than this benchmark's budget on a small CPU.

Writes bench/results/rag.json, rag.md and rag_recall.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import RESULTS, Figure, write_results  # bench/ is sys.path[0] when a benchmark runs

from mdkif.rag.config import RagIndexConfig
from mdkif.rag.index import build_index, collect_chunks
from mdkif.rag.lexical import BM25Index
from mdkif.rag.retriever import ChromaRetriever
from mdkif.rag.store import bm25_path, open_client, open_collection, read_all

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MDKIF_SHARED_DATA", REPO.parent / "shared" / "data"))
PUBMEDQA = SHARED / "mcq/pubmedqa/pqal_dev500.json"
MEDQUAD = SHARED / "skills/medquad/medquad_answered.jsonl"
WIKIDOC = SHARED / "skills/medalpaca_wikidoc/medical_meadow_small.json"

OUT = RESULTS
KS = (1, 5, 10)
MODES = ("dense", "bm25", "hybrid")


def config(
    persist_dir: Path, args: argparse.Namespace, use_ray: bool, max_chunks: int | None = None
) -> RagIndexConfig:
    pubmedqa = {"kind": "pubmedqa", "path": PUBMEDQA, "max_docs": args.questions}
    medquad = {"kind": "medquad", "path": MEDQUAD, "max_docs": args.medquad_docs}
    return RagIndexConfig.model_validate(
        {
            "corpora": [pubmedqa, medquad],
            "persist_dir": persist_dir,
            "collection": "bench",
            "use_ray": use_ray,
            "num_actors": args.actors,
            "max_chunks": max_chunks,
            "cpus_per_actor": 1,
            "ray_batch_size": 64,
        }
    )


class CachedEmbedder:
    """The real embedder with the benchmark's questions embedded once, in one batch: recall measures
    ranking, and per-question encoding on a busy 2-core machine would dominate its run time."""

    def __init__(self, embedder, texts: list[str]):
        self.inner = embedder
        self.cache = dict(zip(texts, embedder.embed(texts), strict=True))

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.cache[t] if t in self.cache else self.inner.embed([t])[0] for t in texts])


def recall(retriever: ChromaRetriever, questions: dict[str, str]) -> dict[str, float]:
    """Share of questions whose own abstract (pmid) is among the top-k chunks, for k in KS."""
    hits = dict.fromkeys(KS, 0)
    for pmid, question in questions.items():
        ranked = [p.metadata.get("pmid") for p in retriever.retrieve(question, k=max(KS))]
        for k in KS:
            hits[k] += pmid in ranked[:k]
    return {f"recall@{k}": hits[k] / len(questions) for k in KS}


def full_size_collection(bench_dir: Path, tmp: Path, seed: int = 0) -> tuple[object, BM25Index, dict]:
    """A collection with every chunk of the full corpus: real vectors where step 2 made them, else
    a real vector plus noise (renormalised), so the HNSW graph has realistic clusters at full size."""
    full_cfg = RagIndexConfig.model_validate(
        {
            "corpora": [
                {"kind": "medquad", "path": MEDQUAD},
                {"kind": "wikidoc", "path": WIKIDOC},
                {"kind": "pubmedqa", "path": PUBMEDQA},
            ],
            "persist_dir": tmp / "full",
            "collection": "full",
        }
    )
    start = time.perf_counter()
    chunks = collect_chunks(full_cfg)
    chunk_s = time.perf_counter() - start
    bench = open_collection(open_client(bench_dir), "bench", full_cfg.embedder, create=False)
    real = bench.get(include=["embeddings"], limit=bench.count())
    real_vecs = dict(zip(real["ids"], np.asarray(real["embeddings"], dtype=np.float32), strict=True))
    pool = np.stack(list(real_vecs.values()))
    rng = np.random.default_rng(seed)
    collection = open_collection(open_client(tmp / "full"), "full", full_cfg.embedder)
    start = time.perf_counter()
    n_real = 0
    for s in range(0, len(chunks), 5000):
        part = chunks[s : s + 5000]
        vecs = []
        for c in part:
            if c.id in real_vecs:
                vecs.append(real_vecs[c.id])
                n_real += 1
            else:
                v = pool[rng.integers(len(pool))] + rng.normal(0, 0.04, pool.shape[1]).astype(np.float32)
                vecs.append(v / np.linalg.norm(v))
        collection.add(
            ids=[c.id for c in part],
            embeddings=np.stack(vecs),
            documents=[c.text for c in part],
            metadatas=[c.metadata for c in part],
        )
    add_s = time.perf_counter() - start
    start = time.perf_counter()
    ids, docs, metas = read_all(collection)
    bm25 = BM25Index(ids, docs, metas)
    bm25_build_s = time.perf_counter() - start
    bm25.save(bm25_path(tmp / "full", "full"), count=len(ids))
    start = time.perf_counter()
    BM25Index.load(bm25_path(tmp / "full", "full"), count=len(ids))
    bm25_load_s = time.perf_counter() - start
    info = {
        "chunks": len(chunks),
        "real_vectors": n_real,
        "synthetic_vectors": len(chunks) - n_real,
        "chunking_s": round(chunk_s, 1),
        "chroma_add_s": round(add_s, 1),
        "bm25_rebuild_from_collection_s": round(bm25_build_s, 2),
        "bm25_cache_load_s": round(bm25_load_s, 2),
        "bm25_cache_mb": round(bm25_path(tmp / "full", "full").stat().st_size / 1e6, 1),
    }
    return collection, bm25, info


def latency(retriever: ChromaRetriever, questions: list[str]) -> dict[str, float]:
    retriever.retrieve(questions[0], k=5)  # warm-up
    times = []
    for q in questions:
        start = time.perf_counter()
        retriever.retrieve(q, k=5)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 1),
        "p99_ms": round(float(np.percentile(times, 99)), 1),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for mode in MODES:
        ax.plot(KS, [results["recall"][mode][f"recall@{k}"] for k in KS], marker="o", label=mode)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k (own abstract retrieved)")
    ax.set_xticks(KS)
    ax.set_ylim(0, 1)
    ax.set_title(f"PubMedQA dev ({results['recall_questions']} q), {results['index_chunks']} chunks")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(r: dict) -> str:
    t = r["throughput"]
    f = r["full_size"]
    lines = [
        "# RAG benchmark",
        "",
        f"Machine: {r['machine']}. Embedder: all-MiniLM-L6-v2 (packaged), chunks <= 1000 chars. "
        f"Total benchmark time {r['total_s']:.0f} s.",
        "",
        f"## Recall@k: PubMedQA dev questions retrieving their own abstract ({r['recall_questions']} questions)",
        "",
        f"Index: all 500 PubMedQA dev contexts + MedQuAD answers capped at the first {r['medquad_docs']} "
        f"documents = {r['index_chunks']} chunks ({r['per_source']}). Question only, no options.",
        "",
        "| retriever | recall@1 | recall@5 | recall@10 |",
        "| --- | --- | --- | --- |",
    ]
    for mode in MODES:
        rec = r["recall"][mode]
        lines.append(f"| {mode} | " + " | ".join(f"{rec[f'recall@{k}']:.3f}" for k in KS) + " |")
    lines += [
        "",
        "hybrid = reciprocal rank fusion (k=60) of the dense and BM25 top-50, as MedRAG does.",
        "",
        "## Index throughput: the same chunks, end to end (embedding + Chroma writes)",
        "",
        "| path | chunks | seconds | chunks/s |",
        "| --- | --- | --- | --- |",
        f"| single process (2 torch threads) | {t['chunks']} | {t['single_s']:.1f} | {t['single_cps']:.1f} |",
        f"| Ray Data, {t['actors']} actors x 1 CPU (start-up included) | {t['chunks']} | {t['ray_s']:.1f} "
        f"| {t['ray_cps']:.1f} |",
        "",
        f"Ray / single = {t['ratio']:.2f}. The Ray build then resumed to the whole index: "
        f"{t['ray_rest_chunks']} more chunks at {t['ray_rest_cps']:.1f} chunks/s. "
        "On a 2-core machine both paths use the same two cores, so Ray "
        "can only add overhead (actor start-up, object transfer); the gain comes with more cores or nodes, "
        "where the pool grows with `num_actors`.",
        "",
        f"## Query latency at full corpus size ({f['chunks']} chunks: MedQuAD + WikiDoc + PubMedQA)",
        "",
        "| retriever | p50 ms | p99 ms |",
        "| --- | --- | --- |",
    ]
    for mode in MODES:
        lat = r["latency_full"][mode]
        lines.append(f"| {mode} | {lat['p50_ms']} | {lat['p99_ms']} |")
    lines += [
        "",
        f"{r['latency_queries']} PubMedQA questions, k=5, one at a time, query embedding included. "
        f"{f['real_vectors']} vectors are real embeddings, {f['synthetic_vectors']} are perturbed copies of "
        "real ones (embedding the whole corpus takes hours on this CPU); BM25 and texts are real.",
        f"BM25 over the full corpus: rebuild from the collection {f['bm25_rebuild_from_collection_s']} s, "
        f"load from its cache {f['bm25_cache_load_s']} s ({f['bm25_cache_mb']} MB).",
        "",
    ]
    return "\n".join(lines)


def figures(d: dict) -> list[Figure]:
    """The rows bench/summary.py tabulates (each against its same-run baseline)."""
    rows = []
    r = d["recall"]
    for mode in ("dense", "hybrid"):
        rows.append(
            Figure(
                "rag",
                f"recall@1, {mode} ({d['recall_questions']} PubMedQA questions)",
                r[mode]["recall@1"],
                r["bm25"]["recall@1"],
                "BM25",
                "",
            )
        )
    t = d["throughput"]
    rows.append(
        Figure(
            "rag",
            f"index throughput, Ray Data ({t['actors']} actors)",
            t["ray_cps"],
            t["single_cps"],
            "single process",
            "chunks/s",
        )
    )
    lat = d["latency_full"]
    for mode in ("dense", "hybrid"):
        rows.append(
            Figure(
                "rag",
                f"query p50, {mode} ({d['full_size']['chunks']} chunks)",
                lat[mode]["p50_ms"],
                lat["bm25"]["p50_ms"],
                "BM25 p50",
                "ms",
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--medquad-docs",
        type=int,
        default=150,
        help="MedQuAD documents in the recall index (a cap: 2-core budget).",
    )
    ap.add_argument("--questions", type=int, default=500, help="PubMedQA questions (and their contexts).")
    ap.add_argument("--throughput-chunks", type=int, default=300, help="Chunks embedded both ways.")
    ap.add_argument("--latency-queries", type=int, default=100)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--skip-full", action="store_true", help="Skip the full-size latency step.")
    args = ap.parse_args()
    if not PUBMEDQA.is_file():
        raise SystemExit(f"PubMedQA not found at {PUBMEDQA} (set MDKIF_SHARED_DATA)")

    import ray

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench_rag_"))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        # Throughput on the same first N chunks both ways; the Ray build then resumes to the whole index,
        # which also exercises resume (only the chunks not yet stored are embedded).
        n = args.throughput_chunks
        single = build_index(config(tmp / "single", args, use_ray=False, max_chunks=n))
        print(f"single process: {single.added} chunks, {single.chunks_per_second:.1f} chunks/s", flush=True)
        ray_part = build_index(config(tmp / "ray", args, use_ray=True, max_chunks=n))
        print(f"ray data: {ray_part.added} chunks, {ray_part.chunks_per_second:.1f} chunks/s", flush=True)
        rayb = build_index(config(tmp / "ray", args, use_ray=True))
        print(f"ray data, rest of the index: {rayb.added} chunks, {rayb.chunks_per_second:.1f}/s", flush=True)
        ray.shutdown()

        data = json.loads(PUBMEDQA.read_text(encoding="utf-8"))
        questions = {pmid: item["QUESTION"] for pmid, item in list(data.items())[: args.questions]}
        rec = {}
        hybrid = ChromaRetriever.open(tmp / "ray", mode="hybrid")
        cached = CachedEmbedder(hybrid.embedder, list(questions.values()))
        for mode in MODES:
            retriever = ChromaRetriever(hybrid.collection, cached, bm25=hybrid.bm25, mode=mode)
            start = time.perf_counter()
            rec[mode] = recall(retriever, questions)
            print(f"{mode}: {rec[mode]} ({time.perf_counter() - start:.0f} s)", flush=True)

        results: dict = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs "
            f"(load average at start {load0:.1f}), torch CPU",
            "medquad_docs": args.medquad_docs,
            "index_chunks": rayb.total,
            "per_source": rayb.per_source,
            "recall_questions": len(questions),
            "recall": rec,
            "throughput": {
                "chunks": single.added,
                "actors": args.actors,
                "single_s": single.embed_seconds,
                "single_cps": single.chunks_per_second,
                "ray_s": ray_part.embed_seconds,
                "ray_cps": ray_part.chunks_per_second,
                "ratio": ray_part.chunks_per_second / single.chunks_per_second,
                "ray_rest_chunks": rayb.added,
                "ray_rest_cps": rayb.chunks_per_second,
            },
        }
        if not args.skip_full:
            collection, bm25, info = full_size_collection(tmp / "ray", tmp)
            print(f"full size: {info}", flush=True)
            embedder = hybrid.embedder
            qs = list(questions.values())[: args.latency_queries]
            results["full_size"] = info
            results["latency_queries"] = len(qs)
            results["latency_full"] = {
                mode: latency(ChromaRetriever(collection, embedder, bm25=bm25, mode=mode), qs)
                for mode in MODES
            }
            print(f"latency: {results['latency_full']}", flush=True)
        results["total_s"] = time.perf_counter() - t0
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    full = "latency_full" in results  # a partial run writes no figures and keeps the Markdown
    write_results("rag", results, markdown(results) if full else None, figures(results) if full else (), OUT)
    plot(results, OUT / "rag_recall.png")
    print(f"wrote {OUT / 'rag.json'}, rag.md, rag_recall.png in {results['total_s']:.0f} s")


if __name__ == "__main__":
    main()
