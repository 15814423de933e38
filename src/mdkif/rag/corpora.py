"""Readers that turn each corpus format into :class:`Document` s; one function per `kind`.

Every document carries a `doc_id` in metadata (unique within its source), so any document can be
filtered out by id; PubMedQA documents also carry `pmid` for MIRAGE's gold-context exclusion.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from mdkif.data.errors import DataError
from mdkif.data.mcq.common import iter_jsonl
from mdkif.rag.chunking import Document
from mdkif.rag.config import CorpusSpec

FOLDER_SUFFIXES = (".txt", ".md", ".jsonl")


def _load_json(path: Path) -> object:
    if not path.is_file():
        raise DataError(path, "corpus file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON: {exc.msg}", line=exc.lineno) from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise DataError(path, "corpus file not found")
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(path, "expected a JSON object per line", line=lineno)
        yield lineno, row


def read_medquad(spec: CorpusSpec) -> Iterator[Document]:
    """MedQuAD answers (jsonl with id, focus, answer...); the focus (the disease or drug) is the title."""
    for lineno, row in _jsonl(spec.path):
        answer = row.get("answer")
        if not isinstance(answer, str):
            raise DataError(spec.path, "row has no 'answer' string", line=lineno)
        if not answer.strip():
            continue
        meta = {
            "doc_id": str(row.get("id", lineno)),
            "qtype": str(row.get("qtype", "")),
            "url": str(row.get("url") or ""),
        }
        yield Document(text=answer, title=str(row.get("focus", "")), source=spec.source, metadata=meta)


def read_pubmedqa(spec: CorpusSpec) -> Iterator[Document]:
    """PubMedQA `{pmid: {QUESTION, CONTEXTS, ...}}`: one document per abstract, its contexts as paragraphs.

    The title is left empty on purpose: PubMedQA questions are mostly the article titles reworded, so
    using the question as a title would put the query itself into the index. LONG_ANSWER (the conclusion)
    is left out for the same reason: it states the answer.
    """
    data = _load_json(spec.path)
    if not isinstance(data, dict):
        raise DataError(spec.path, "expected {pmid: {QUESTION, CONTEXTS, ...}}")
    for pmid, item in data.items():
        contexts = item.get("CONTEXTS") if isinstance(item, dict) else None
        if not isinstance(contexts, list):
            raise DataError(spec.path, f"item {pmid!r} has no CONTEXTS list")
        meta = {"doc_id": str(pmid), "pmid": str(pmid), "year": str(item.get("YEAR") or "")}
        yield Document(text="\n".join(str(c) for c in contexts), source=spec.source, metadata=meta)


def read_wikidoc(spec: CorpusSpec) -> Iterator[Document]:
    """MedAlpaca WikiDoc (instruction/input/output list): the output is the text, the input its heading."""
    data = _load_json(spec.path)
    if not isinstance(data, list):
        raise DataError(spec.path, "expected a JSON list of {instruction, input, output}")
    for i, row in enumerate(data):
        if not isinstance(row, dict) or not isinstance(row.get("output"), str):
            raise DataError(spec.path, f"record {i} has no 'output' string")
        if row["output"].strip():
            yield Document(
                text=row["output"],
                title=str(row.get("input", "")),
                source=spec.source,
                metadata={"doc_id": str(i)},
            )


def read_folder(spec: CorpusSpec) -> Iterator[Document]:
    """A folder of .txt/.md (one document per file; a leading '# ' line is the title, else the file
    name) and .jsonl (one document per line: `text`, optional `title` and `id`), read in sorted order.
    README files are skipped."""
    root = spec.path
    if not root.is_dir():
        raise DataError(root, "corpus folder not found")
    # A README describes the folder; it is not part of the corpus.
    files = (
        p
        for p in root.rglob("*")
        if p.suffix in FOLDER_SUFFIXES and p.is_file() and p.stem.lower() != "readme"
    )
    for path in sorted(files):
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".jsonl":
            for lineno, row in _jsonl(path):
                if not isinstance(row.get("text"), str):
                    raise DataError(path, "row has no 'text' string", line=lineno)
                meta = {"doc_id": str(row.get("id", f"{rel}:{lineno}")), "file": rel}
                yield Document(
                    text=row["text"], title=str(row.get("title", "")), source=spec.source, metadata=meta
                )
            continue
        text = path.read_text(encoding="utf-8")
        title = path.stem.replace("_", " ").replace("-", " ")
        first, _, rest = text.partition("\n")
        if first.startswith("# "):
            title, text = first[2:].strip(), rest
        yield Document(text=text, title=title, source=spec.source, metadata={"doc_id": rel, "file": rel})


READERS: dict[str, Callable[[CorpusSpec], Iterator[Document]]] = {
    "medquad": read_medquad,
    "pubmedqa": read_pubmedqa,
    "wikidoc": read_wikidoc,
    "folder": read_folder,
}


def read_corpus(spec: CorpusSpec) -> Iterator[Document]:
    """Documents of one corpus, capped at `spec.max_docs`."""
    docs = READERS[spec.kind](spec)
    return islice(docs, spec.max_docs) if spec.max_docs else docs
