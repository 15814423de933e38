"""Split documents into bounded, paragraph-aware chunks with content-hash ids.

A chunk never cuts a paragraph unless the paragraph alone is too long; then it is cut at sentence ends,
and a sentence that is still too long at word boundaries. Each chunk starts with its document's title
(a passage about "its treatment" is useless without the disease's name), and its id is a hash of its
text, so rebuilding adds nothing twice and duplicate passages across sources collapse into one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mdkif.rag.config import ChunkingConfig

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
_SPACES = re.compile(r"[ \t\r\f\v]+")


@dataclass
class Document:
    """One source document before chunking: a title, a body and metadata to copy onto every chunk."""

    text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    """A piece of a document ready to embed; `id` is the content hash of `text`."""

    id: str
    text: str
    metadata: dict[str, Any]


def chunk_id(text: str) -> str:
    """Content hash used as the Chroma id (128 bits of sha256: collisions are not a practical concern)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def paragraphs(text: str) -> list[str]:
    """Non-empty lines with inner whitespace collapsed; real corpora use single newlines between blocks."""
    out = []
    for line in text.split("\n"):
        line = _SPACES.sub(" ", line).strip()
        if line:
            out.append(line)
    return out


def _split_long(unit: str, limit: int) -> list[str]:
    """Cut a too-long paragraph at sentence ends, then at word boundaries, into pieces <= limit."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(unit):
        if len(sentence) <= limit:
            pieces.append(sentence)
            continue
        words, cur = sentence.split(" "), ""
        for word in words:
            word = word[:limit]  # a single "word" longer than the limit (a URL, a sequence) is truncated
            if cur and len(cur) + 1 + len(word) > limit:
                pieces.append(cur)
                cur = word
            else:
                cur = f"{cur} {word}" if cur else word
        if cur:
            pieces.append(cur)
    # Re-pack sentences so a long paragraph yields few, full pieces rather than one per sentence.
    packed: list[str] = []
    for piece in pieces:
        if packed and len(packed[-1]) + 1 + len(piece) <= limit:
            packed[-1] = f"{packed[-1]} {piece}"
        else:
            packed.append(piece)
    return packed


def chunk_text(text: str, title: str, cfg: ChunkingConfig) -> list[str]:
    """Chunk one document's text into strings of at most `cfg.max_chars` (title prefix included)."""
    prefix = f"{title.strip()[:200]}\n" if cfg.title_prefix and title.strip() else ""
    # Keep at least half the budget for the body even under a long title.
    budget = max(cfg.max_chars - len(prefix), cfg.max_chars // 2)
    units: list[str] = []
    for para in paragraphs(text):
        units.extend([para] if len(para) <= budget else _split_long(para, budget))

    chunks: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for unit in units:
        if cur and size + 1 + len(unit) > budget:
            chunks.append(cur)
            # Carry trailing units (up to overlap_chars) so a fact split across chunks survives in one.
            carry: list[str] = []
            carried = 0
            for prev in reversed(cur):
                if carried + len(prev) + 1 > cfg.overlap_chars:
                    break
                carry.insert(0, prev)
                carried += len(prev) + 1
            if carried + len(unit) + 1 > budget:
                carry, carried = [], 0
            cur, size = carry, max(carried - 1, 0)
        size += len(unit) + (1 if cur else 0)
        cur.append(unit)
    if cur:
        chunks.append(cur)
    return [prefix + "\n".join(c) for c in chunks]


def chunk_document(doc: Document, cfg: ChunkingConfig) -> list[Chunk]:
    """Chunks of `doc`, each with source, title, chunk position and the document's own metadata."""
    texts = chunk_text(doc.text, doc.title, cfg)
    out = []
    for i, text in enumerate(texts):
        meta = {**doc.metadata, "source": doc.source, "title": doc.title, "chunk": i, "n_chunks": len(texts)}
        out.append(Chunk(id=chunk_id(text), text=text, metadata=meta))
    return out


def chunk_documents(docs: Iterable[Document], cfg: ChunkingConfig) -> Iterator[Chunk]:
    """Chunk a stream of documents, dropping chunks whose text (hence id) was already seen."""
    seen: set[str] = set()
    for doc in docs:
        for chunk in chunk_document(doc, cfg):
            if chunk.id not in seen:
                seen.add(chunk.id)
                yield chunk
