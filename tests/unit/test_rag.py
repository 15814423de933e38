"""RAG pieces that need no model and no Ray: chunking, RRF, filters, BM25, configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from mdkif.config import ConfigError, load_config
from mdkif.rag.chunking import Document, chunk_document, chunk_documents, chunk_id, chunk_text
from mdkif.rag.config import ChunkingConfig, RagIndexConfig
from mdkif.rag.corpora import read_corpus
from mdkif.rag.lexical import BM25Index, matches, tokenize
from mdkif.rag.rank_fusion import reciprocal_rank_fusion
from mdkif.rag.retriever import combine_filters

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "src" / "mdkif" / "assets" / "demo_corpus"


# --- chunking -------------------------------------------------------------------------------------


def test_short_paragraphs_pack_into_one_chunk_with_title():
    cfg = ChunkingConfig(max_chars=200, overlap_chars=0)
    chunks = chunk_text("First para.\n\nSecond para.", "Asthma", cfg)
    assert chunks == ["Asthma\nFirst para.\nSecond para."]


def test_chunks_break_at_paragraph_boundaries_and_respect_max_size():
    cfg = ChunkingConfig(max_chars=120, overlap_chars=0)
    paras = [f"Paragraph {i} " + "word " * 12 for i in range(6)]  # ~70 chars each: one per chunk
    chunks = chunk_text("\n".join(paras), "Title", cfg)
    assert len(chunks) == 6
    for i, chunk in enumerate(chunks):
        assert len(chunk) <= 120
        assert chunk.startswith("Title\n")
        assert chunk.split("\n", 1)[1] == paras[i].strip()  # never cut inside a paragraph


def test_long_paragraph_is_cut_at_sentences_then_words():
    cfg = ChunkingConfig(max_chars=150, overlap_chars=0)
    sentences = " ".join(f"Sentence number {i} says something." for i in range(20))
    chunks = chunk_text(sentences + " " + "x" * 400, "T", cfg)
    assert all(len(c) <= 150 for c in chunks)
    assert all(c.endswith(".") for c in chunks[:-2])  # sentence cuts before the unbreakable word
    assert "".join(c[2:].replace(" ", "") for c in chunks).count("Sentence") == 20


def test_overlap_repeats_the_trailing_paragraph():
    cfg = ChunkingConfig(max_chars=100, overlap_chars=40)
    chunks = chunk_text("A" * 50 + "\n" + "short tail.\n" + "B" * 60, "", cfg)
    assert len(chunks) == 2
    assert chunks[1].startswith("short tail.")


def test_ids_are_deterministic_content_hashes_and_duplicates_collapse():
    cfg = ChunkingConfig(max_chars=200, overlap_chars=0)
    doc = Document(text="Aspirin thins the blood.", title="Aspirin", source="s", metadata={"doc_id": "1"})
    a, b = chunk_document(doc, cfg), chunk_document(doc, cfg)
    assert a[0].id == b[0].id == chunk_id("Aspirin\nAspirin thins the blood.")
    assert a[0].metadata == {"doc_id": "1", "source": "s", "title": "Aspirin", "chunk": 0, "n_chunks": 1}
    assert len(list(chunk_documents([doc, doc], cfg))) == 1


def test_no_title_prefix_when_disabled():
    cfg = ChunkingConfig(max_chars=200, overlap_chars=0, title_prefix=False)
    assert chunk_text("Body.", "Title", cfg) == ["Body."]


def test_demo_corpus_reads_titles_and_skips_readme():
    from mdkif.rag.config import CorpusSpec

    docs = list(read_corpus(CorpusSpec(kind="folder", path=DEMO, name="demo")))
    titles = {d.title for d in docs}
    assert "Anaphylaxis" in titles and "Metformin" in titles
    assert not any("README" in d.metadata["doc_id"] for d in docs)
    assert len(docs) >= 12


# --- fusion and filters ---------------------------------------------------------------------------


def test_rrf_matches_hand_computed_scores():
    fused = dict(reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]], k=60))
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 62)
    assert fused["d"] == pytest.approx(1 / 63)
    assert [d for d, _ in reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]])] == ["b", "c", "a", "d"]


def test_rrf_ties_keep_first_seen_order():
    assert [d for d, _ in reciprocal_rank_fusion([["x"], ["y"]])] == ["x", "y"]


def test_filters_follow_chroma_semantics():
    assert matches({"source": "medquad"}, {"source": "medquad"})
    assert not matches({"source": "wikidoc"}, {"source": "medquad"})
    assert matches({"source": "medquad"}, {"pmid": {"$nin": ["1"]}})  # missing key passes $nin, as in Chroma
    assert not matches({"pmid": "1"}, {"pmid": {"$ne": "1"}})
    assert matches({"year": 2001}, {"$and": [{"year": {"$gte": 2000}}, {"year": {"$lt": 2010}}]})
    assert matches({"a": 1}, {"$or": [{"a": 2}, {"a": 1}]})
    with pytest.raises(ValueError):
        matches({"a": 1}, {"a": {"$regex": "x"}})


def test_exclude_becomes_nin_and_combines_with_where():
    assert combine_filters(None, None) is None
    assert combine_filters({"source": "x"}, None) == {"source": "x"}
    assert combine_filters(None, {"pmid": "1"}) == {"pmid": {"$nin": ["1"]}}
    assert combine_filters({"source": "x"}, {"pmid": ["1", "2"]}) == {
        "$and": [{"source": "x"}, {"pmid": {"$nin": ["1", "2"]}}]
    }


# --- BM25 -----------------------------------------------------------------------------------------


def test_bm25_scores_equal_rank_bm25():
    texts = [
        "Aspirin reduces fever and pain.",
        "Insulin lowers blood glucose in diabetes.",
        "Metformin is first-line for type 2 diabetes.",
        "Asthma attacks are relieved by salbutamol inhalers.",
        "Fever in children is often viral.",
    ]
    ids = [f"d{i}" for i in range(len(texts))]
    index = BM25Index(ids, texts, [{"n": i} for i in range(len(texts))])
    reference = BM25Okapi([tokenize(t) for t in texts]).get_scores(tokenize("diabetes fever glucose"))
    np.testing.assert_allclose(index.scores("diabetes fever glucose"), reference, rtol=1e-5, atol=1e-6)
    top = index.search("metformin diabetes", k=2)
    assert top[0][0] == 2
    assert [r for r, _ in index.search("metformin diabetes", k=5, where={"n": {"$ne": 2}})] == [1]


def test_bm25_cache_is_dropped_when_the_collection_grew(tmp_path):
    index = BM25Index(["a"], ["aspirin"], [{}])
    index.save(tmp_path / "bm25.pkl", count=1)
    assert BM25Index.load(tmp_path / "bm25.pkl", count=1).ids == ["a"]
    assert BM25Index.load(tmp_path / "bm25.pkl", count=2) is None


# --- configs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "rag").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_rag_config_loads(path):
    cfg = load_config(path, RagIndexConfig)
    assert cfg.corpora and cfg.write_batch_size <= 5000


def test_bad_field_names_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpora: [{kind: medquad, path: x.jsonl}]\nnum_actor: 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'num_actor': unknown field"):
        load_config(bad, RagIndexConfig)
    bad.write_text("corpora: [{kind: textbook, path: x}]\n")
    with pytest.raises(ConfigError, match=r"field 'corpora.0.kind'"):
        load_config(bad, RagIndexConfig)
    bad.write_text("corpora: [{kind: folder, path: x}]\nwrite_batch_size: 6000\n")
    with pytest.raises(ConfigError, match=r"field 'write_batch_size'"):
        load_config(bad, RagIndexConfig)


def test_overlap_must_be_under_half_the_chunk(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpora: [{kind: folder, path: x}]\nchunking: {max_chars: 200, overlap_chars: 150}\n")
    with pytest.raises(ConfigError, match="chunking"):
        load_config(bad, RagIndexConfig)
