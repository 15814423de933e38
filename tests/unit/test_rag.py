"""RAG pieces that need no model and no Ray: chunking, RRF, filters, BM25, configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from mdkif.config import ConfigError, load_config
from mdkif.rag import retriever as retriever_module
from mdkif.rag.chunking import Document, chunk_document, chunk_documents, chunk_id, chunk_text
from mdkif.rag.config import ChunkingConfig, EmbedderConfig, RagIndexConfig
from mdkif.rag.corpora import read_corpus
from mdkif.rag.lexical import BM25Index, matches, tokenize
from mdkif.rag.rank_fusion import reciprocal_rank_fusion
from mdkif.rag.retriever import ChromaRetriever, combine_filters
from mdkif.rag.store import open_client, open_collection

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


def test_filtered_bm25_search_equals_filtering_every_match_first():
    # Many tied scores (repeated short texts) and a filter that drops rows between them: stopping at k
    # passes must give the rows, order and scores of filtering all matches and then sorting (the old way).
    rng = np.random.default_rng(0)
    words = ["fever", "cough", "aspirin", "insulin", "rash"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 4)))) for _ in range(400)]
    metas = [{"pmid": str(i % 7)} if i % 3 else {} for i in range(len(texts))]
    index = BM25Index([f"d{i}" for i in range(len(texts))], texts, metas)
    for query in ("fever aspirin", "rash", "insulin cough fever"):
        for where in ({"pmid": {"$nin": ["1", "2"]}}, {"pmid": "3"}, {"$or": [{"pmid": "4"}, {"pmid": "5"}]}):
            scores = index.scores(query)
            cand = np.array(
                [i for i in np.flatnonzero(scores > 0) if matches(metas[i], where)], dtype=np.int64
            )
            ref = cand[np.argsort(-scores[cand], kind="stable")[:10]]
            assert index.search(query, 10, where) == [(int(i), float(scores[i])) for i in ref]


# --- dense retrieval over Chroma, with vectors given directly (no model) ---------------------------


class FixedEmbedder:
    """Stands in for the model: each question maps to a fixed vector; counts calls."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors
        self.calls = 0

    def embed_query(self, text: str) -> np.ndarray:
        self.calls += 1
        return self.vectors[text]


class CountingCollection:
    """Delegates to a Chroma collection and records which of its methods a query calls."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[str] = []
        self.kwargs: list[dict] = []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls.append(name)
            self.kwargs.append(kwargs)
            return attr(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def synthetic_index():
    """600 unit vectors in a few clusters; a third carry a pmid (three chunks per pmid), like PubMedQA."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 32))
    vecs = centres[rng.integers(6, size=600)] + rng.normal(0, 0.3, (600, 32))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"c{i:03d}" for i in range(600)]
    metas = [
        {"source": "pubmedqa", "pmid": str(i // 3)} if i < 200 else {"source": "medquad"} for i in range(600)
    ]
    texts = [f"chunk {i} about topic {i % 6}" for i in range(600)]
    collection = open_collection(open_client(None), "synthetic", EmbedderConfig())  # never loads the model
    collection.add(ids=ids, embeddings=vecs, documents=texts, metadatas=metas)
    queries = {f"q{j}": vecs[j * 3] + rng.normal(0, 0.05, 32).astype(np.float32) for j in range(20)}
    return collection, BM25Index(ids, texts, metas), queries


def _chroma_filtered(collection, vector, k, flt):
    res = collection.query(
        query_embeddings=vector.reshape(1, -1), n_results=k, where=flt, include=["distances"]
    )
    return res["ids"][0], [1.0 - d for d in res["distances"][0]]


def test_exclusion_after_a_wider_search_equals_chromas_nin_filter(synthetic_index, monkeypatch):
    collection, bm25, queries = synthetic_index
    retriever = ChromaRetriever(collection, FixedEmbedder(queries), bm25=bm25, mode="dense")
    for j, (question, vector) in enumerate(queries.items()):
        for exclude in ({"pmid": str(j)}, {"pmid": [str(j), str(j + 1)]}):
            for where in (None, {"source": "pubmedqa"}):
                hits = retriever.retrieve(question, k=10, where=where, exclude=exclude)
                ids, scores = _chroma_filtered(collection, vector, 10, combine_filters(where, exclude))
                assert [h.id for h in hits] == ids
                np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-6)
                gone = exclude["pmid"] if isinstance(exclude["pmid"], list) else [exclude["pmid"]]
                assert hits and all(h.metadata.get("pmid") not in gone for h in hits)
    # When the exclusion removes more than the slack leaves, Chroma's own `$nin` filter decides.
    monkeypatch.setattr(retriever_module, "EXCLUDE_SLACK", 0)  # q0's nearest chunk is excluded: too few left
    counting = CountingCollection(collection)
    retriever.collection = counting
    hits = retriever.retrieve("q0", k=10, exclude={"source": "pubmedqa"})
    nin = {"source": {"$nin": ["pubmedqa"]}}
    assert [h.id for h in hits] == _chroma_filtered(collection, queries["q0"], 10, nin)[0]
    assert all(h.metadata["source"] == "medquad" for h in hits)
    assert counting.calls == ["query", "query"] and counting.kwargs[1]["where"] == nin


def test_dense_query_is_one_embedding_and_one_chroma_call(synthetic_index):
    collection, bm25, queries = synthetic_index
    embedder = FixedEmbedder(queries)
    counting = CountingCollection(collection)
    retriever = ChromaRetriever(counting, embedder, bm25=bm25, mode="dense")
    hits = retriever.retrieve("q3", k=5)
    assert embedder.calls == 1 and counting.calls == ["query"]  # no count() per query
    assert [h.id for h in hits] == _chroma_filtered(collection, queries["q3"], 5, None)[0]
    assert retriever.retrieve("q3", k=0) == [] and embedder.calls == 1


def test_hybrid_embeds_once_and_equals_rrf_of_both_rankings(synthetic_index):
    collection, bm25, queries = synthetic_index
    embedder = FixedEmbedder(queries | {"topic 4 chunk": queries["q4"]})
    counting = CountingCollection(collection)
    retriever = ChromaRetriever(counting, embedder, bm25=bm25, mode="hybrid", fetch_k=50)
    for exclude in (None, {"pmid": "4"}):
        embedder.calls, counting.calls = 0, []
        hits = retriever.retrieve("topic 4 chunk", k=5, exclude=exclude)
        assert embedder.calls == 1
        # one nearest-neighbour query and one fetch of the final texts, with or without an exclusion
        assert counting.calls == ["query", "get"]
        flt = combine_filters(None, exclude)
        dense = _chroma_filtered(collection, queries["q4"], 50, flt)[0]
        lexical = [bm25.ids[r] for r, _ in bm25.search("topic 4 chunk", 50, flt)]
        fused = reciprocal_rank_fusion([dense, lexical])[:5]
        assert [(h.id, h.score) for h in hits] == fused
        texts = collection.get(ids=[h.id for h in hits], include=["documents"])
        assert {h.id: h.text for h in hits} == dict(zip(texts["ids"], texts["documents"], strict=True))


def test_query_on_an_empty_or_small_collection():
    collection = open_collection(open_client(None), "tiny", EmbedderConfig())
    vector = np.ones(8, dtype=np.float32) / np.sqrt(8)
    retriever = ChromaRetriever(collection, FixedEmbedder({"q": vector}), mode="dense")
    assert retriever.retrieve("q", k=5) == []
    collection.add(ids=["a", "b"], embeddings=np.stack([vector, -vector]), documents=["x", "y"])
    assert [h.id for h in retriever.retrieve("q", k=5)] == ["a", "b"]  # fewer than k: what there is


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
