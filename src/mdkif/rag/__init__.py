"""Retrieval-augmented generation: a Chroma index of medical text, queried with the question only.

Build with `mdkif rag index CONFIG`; query with :class:`ChromaRetriever` (or `mdkif rag query`).
Heavy imports (torch, chromadb, ray) stay inside the modules that need them.
"""

from mdkif.rag.types import Passage, Retriever

__all__ = ["Passage", "Retriever"]
