"""`mdkif serve CONFIG`: check a Serve config file and its artifacts, then run it on local Ray until Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def serve(
    config: Annotated[Path, typer.Argument(help="Serve config file, e.g. serve/serve_config.yaml")],
    port: Annotated[
        int | None, typer.Option(help="HTTP port (default: the file's http_options.port)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="HTTP host (default: the file's, else 127.0.0.1)")] = None,
) -> None:
    """Serve the routed model and retriever behind the OpenAI-compatible API (same file as `serve run`).

    Every application's `args` and artifact paths are checked before Ray starts; a missing adapter folder,
    router or index stops here with the field and path named.
    """
    from mdkif.serving.config import check_artifacts, load_serve_file

    data, apps = load_serve_file(config)
    checked = [(raw, check_artifacts(cfg)) for raw, cfg in apps]

    from ray import serve as ray_serve

    from mdkif.serving.app import build_app

    http = dict(data.get("http_options") or {})
    http.setdefault("host", "127.0.0.1")
    if port is not None:
        http["port"] = port
    if host is not None:
        http["host"] = host
    ray_serve.start(http_options=http)
    for raw, cfg in checked:
        if raw.get("deployments"):
            typer.secho("note: per-app `deployments:` overrides are applied by `serve run` only", err=True)
        prefix = raw.get("route_prefix", "/")
        ray_serve.run(build_app(cfg), name=raw.get("name", "default"), route_prefix=prefix)
        base = f"http://{http['host']}:{http.get('port', 8000)}{prefix.rstrip('/')}"
        typer.echo(
            f"{raw.get('name', 'default')}: {base}/v1  (models: {base}/v1/models, health: {base}/healthz)"
        )
    typer.echo("serving; Ctrl-C stops")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.shutdown()
