"""`mdkif serve CONFIG`: check a Serve config file and its artifacts, then run it on local Ray until Ctrl-C."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

# Ray Serve's throughput-optimized mode (Ray >= 2.56): the ingress replica answers HTTP on its own port
# (no hop through the proxy actor), deployments call each other over gRPC, user code runs on the
# replica's main event loop and request logs are buffered. Read by every Ray process when it imports
# ray.serve, so it must be in the environment before Ray starts.
THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def direct_urls(app_name: str) -> list[str]:
    """HTTP base URLs of an app's ingress replicas when Serve runs throughput-optimized, else [].

    Serve keeps these in its controller's target groups (the addresses HAProxy is fed); there is no
    public accessor in Ray 2.60, so this asks the controller and returns [] if that ever changes.
    """
    import ray

    try:
        from ray.serve.context import _get_global_client

        groups = ray.get(_get_global_client()._controller.get_target_groups.remote(app_name), timeout=10)
    except Exception:  # noqa: BLE001 - a private API: degrade to "unknown", never fail the server
        return []
    urls = []
    for g in groups:
        if str(getattr(g.protocol, "value", g.protocol)).upper() != "HTTP":
            continue
        for t in g.targets:
            if t.name.startswith("SERVE_REPLICA"):
                urls.append(f"http://{t.ip}:{t.port}")
    return urls


def wait_direct_urls(app_name: str, host: str, seconds: float = 30.0) -> list[str]:
    """`direct_urls` with `host` as the address, once the replicas have ports (up to `seconds`)."""
    deadline = time.monotonic() + seconds
    while True:
        # The replica binds the HTTP host of the config; the controller reports the node's address.
        urls = [f"http://{host}:{u.rsplit(':', 1)[1]}" for u in direct_urls(app_name)]
        if urls or time.monotonic() > deadline:
            return urls
        time.sleep(0.5)


def serve(
    config: Annotated[Path, typer.Argument(help="Serve config file, e.g. serve/serve_config.yaml")],
    port: Annotated[
        int | None, typer.Option(help="HTTP port (default: the file's http_options.port)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="HTTP host (default: the file's, else 127.0.0.1)")] = None,
    throughput_optimized: Annotated[
        bool,
        typer.Option(
            help="Ray Serve's throughput-optimized mode: each app's ingress also answers on its own port "
            "(printed; the lowest is RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT, default 30000) without the "
            "proxy hop, and deployments talk gRPC (bench/results/serve.md: p50 26 ms vs 41 ms per request)."
        ),
    ] = False,
) -> None:
    """Serve the routed model and retriever behind the OpenAI-compatible API (same file as `serve run`).

    Every application's `args` and artifact paths are checked before Ray starts; a missing adapter folder,
    router or index stops here with the field and path named.
    """
    if throughput_optimized:
        if os.environ.get("RAY_ADDRESS"):
            typer.secho(
                "note: RAY_ADDRESS is set, so Ray is already running and keeps its own Serve mode; start "
                "that cluster with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 in its environment instead",
                err=True,
            )
        os.environ.update(THROUGHPUT_ENV)
    from mdkif.serving.config import check_artifacts, load_serve_file

    data, apps = load_serve_file(config)
    checked = [(raw, check_artifacts(cfg)) for raw, cfg in apps]

    from ray import serve as ray_serve

    from mdkif.serving.app import build_app, serve_until_interrupted

    http: dict[str, Any] = dict(data.get("http_options") or {})
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
        name = raw.get("name", "default")
        ray_serve.run(build_app(cfg), name=name, route_prefix=prefix)
        base = f"http://{http['host']}:{http.get('port', 8000)}{prefix.rstrip('/')}"
        typer.echo(f"{name}: {base}/v1  (models: {base}/v1/models, health: {base}/healthz)")
        if throughput_optimized:
            for url in wait_direct_urls(name, http["host"]):
                typer.echo(f"{name} direct: {url}{prefix.rstrip('/')}/v1")
    typer.echo("serving; Ctrl-C stops")
    serve_until_interrupted()
