"""`mdkif rag ...`: build the Chroma index from a config, and query it with a question.

mdkif rag index rag/index_demo.yaml
mdkif rag query "What are the symptoms of anaphylaxis?" --index runs/rag_index_demo --mode hybrid
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from mdkif.config import load_config

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command("index")
def index(
    config: Annotated[
        Path, typer.Argument(help="RAG index config YAML (rag/index.yaml, rag/index_demo.yaml).")
    ],
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides, key=value.")] = None,
) -> None:
    """Chunk the corpora, embed new chunks (Ray Data actors) and add them to the persistent collection."""
    from mdkif.rag.config import RagIndexConfig

    cfg = load_config(config, RagIndexConfig, overrides or [])  # fails here, before Ray starts
    from mdkif.rag.index import build_index

    report = build_index(cfg, progress=True)
    typer.echo(
        f"collection {cfg.collection!r} in {cfg.persist_dir}: {report.total} chunks "
        f"({report.added} added, {report.skipped} already there) in {report.seconds:.1f}s; "
        f"embedding {report.chunks_per_second:.1f} chunks/s"
    )
    for source, n in report.per_source.items():
        typer.echo(f"  {source:<12}{n:>8} chunks")


@app.command("query")
def query(
    question: Annotated[str, typer.Argument(help="The question (only the question: no answer options).")],
    index_dir: Annotated[Path, typer.Option("--index", help="The index's persist_dir.")] = Path(
        "runs/rag_index"
    ),
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Passages to return.")] = 5,
    mode: Annotated[str, typer.Option(help="dense, bm25 or hybrid (RRF of both).")] = "hybrid",
    where: Annotated[
        str | None, typer.Option(help='Metadata filter as JSON, e.g. {"source": "medquad"}.')
    ] = None,
    exclude: Annotated[str | None, typer.Option(help='Exclude matches, JSON, e.g. {"pmid": "123"}.')] = None,
    width: Annotated[int, typer.Option(min=40, help="Characters of each passage to print.")] = 240,
) -> None:
    """Print the top-k passages for a question with their scores and sources."""
    from mdkif.rag.retriever import MODES, ChromaRetriever

    if mode not in MODES:
        raise typer.BadParameter(f"mode must be one of {', '.join(MODES)}", param_hint="--mode")
    try:
        where_d = json.loads(where) if where else None
        exclude_d = json.loads(exclude) if exclude else None
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc.msg}") from None
    try:
        retriever = ChromaRetriever.open(index_dir, mode=mode)  # type: ignore[arg-type]
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    start = time.perf_counter()
    hits = retriever.retrieve(question, k=k, where=where_d, exclude=exclude_d)
    ms = (time.perf_counter() - start) * 1000
    typer.echo(f"{len(hits)} passages ({mode}, {ms:.0f} ms)")
    for rank, p in enumerate(hits, 1):
        text = " ".join(p.text.split())
        text = text if len(text) <= width else text[: width - 3] + "..."
        doc = p.metadata.get("doc_id", "")
        typer.echo(
            f"\n[{rank}] score={p.score:.4f}  source={p.source}  doc={doc}  chunk={p.metadata.get('chunk')}"
        )
        typer.echo(f"    {text}")
