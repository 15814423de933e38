"""Build a small index from ../shared/data on local Ray; rebuild adds nothing; a cut build resumes."""

from __future__ import annotations

import json

import pytest

from mdkif.rag.config import RagIndexConfig
from mdkif.rag.index import build_index
from mdkif.rag.retriever import ChromaRetriever
from mdkif.rag.store import INDEX_MANIFEST


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _config(shared_data, tmp_path, max_chunks: int) -> RagIndexConfig:
    return RagIndexConfig.model_validate(
        {
            "corpora": [
                {"kind": "pubmedqa", "path": shared_data / "mcq/pubmedqa/pqal_dev500.json", "max_docs": 6},
                {
                    "kind": "medquad",
                    "path": shared_data / "skills/medquad/medquad_answered.jsonl",
                    "max_docs": 10,
                },
            ],
            "chunking": {"max_chars": 400, "overlap_chars": 0},
            "persist_dir": tmp_path / "index",
            "collection": "itest",
            "num_actors": 2,
            "ray_batch_size": 8,
            "write_batch_size": 16,  # several Chroma adds, so a cut build would keep whole batches
            "max_chunks": max_chunks,
        }
    )


def test_build_resume_rebuild_and_query(shared_data, tmp_path, ray_local):
    half = build_index(_config(shared_data, tmp_path, max_chunks=30))  # an "interrupted" build
    assert (half.added, half.total) == (30, 30)

    full = build_index(_config(shared_data, tmp_path, max_chunks=60))  # resumes: embeds only the rest
    assert (full.skipped, full.added, full.total) == (30, 30, 60)

    again = build_index(_config(shared_data, tmp_path, max_chunks=60))  # re-run: adds nothing
    assert (again.added, again.total) == (0, 60)

    manifest = json.loads((tmp_path / "index" / INDEX_MANIFEST).read_text())
    assert manifest["total"] == 60 and manifest["collection"] == "itest"
    assert set(full.per_source) == {"pubmedqa", "medquad"}

    retriever = ChromaRetriever.open(tmp_path / "index", mode="hybrid")
    data = json.loads((shared_data / "mcq/pubmedqa/pqal_dev500.json").read_text())
    pmid, item = next(iter(data.items()))
    hits = retriever.retrieve(item["QUESTION"], k=10)
    assert pmid in {h.metadata.get("pmid") for h in hits}
    assert all(
        h.metadata.get("pmid") != pmid
        for h in retriever.retrieve(item["QUESTION"], k=10, exclude={"pmid": pmid})
    )
