"""The one Serve app builder: `import_path: mdkif.serving.app:build_app` in serve/*.yaml.

    serve run serve/serve_config.yaml          # Ray's CLI
    mdkif serve serve/serve_config.yaml        # ours: the same file, checked before Ray starts

Serve validates the file's `args:` into :class:`ServeAppConfig` (the annotation below; this module must not
use `from __future__ import annotations`, or Serve would see a string and skip the validation), then
`build_app` checks every artifact path and binds Retriever -> RoutedModel -> Ingress.
"""

import logging
import os
import time
from typing import Any

from ray.serve import Application

from mdkif.config import ConfigError
from mdkif.serving.config import ServeAppConfig, check_artifacts, load_app_config
from mdkif.serving.deployments import Ingress, RetrieverDeployment, RoutedModel


def ingress_info(cfg: ServeAppConfig) -> dict[str, Any]:
    """What the ingress needs to know without loading anything: names, profiles, limits, auth settings."""
    return {
        "served_name": cfg.served_name,
        "profiles": {
            name: {
                "source": "router" if p.router else ("weights" if p.weights else "base"),
                "rag": p.rag,
                "description": p.description,
            }
            for name, p in cfg.profiles.items()
        },
        "limits": cfg.limits.model_dump(),
        "default_temperature": cfg.default_temperature,
        "api_key_env": cfg.api_key_env,
        "require_api_key": cfg.require_api_key,
        "allowed_hosts": cfg.allowed_hosts,
        "docs": cfg.docs,
    }


def build_app(args: ServeAppConfig) -> Application:
    """Validate the config and its artifacts, then compose the three deployments into one application.

    A missing adapter folder, router artifact, index or model path raises :class:`ConfigError` naming the
    config field and the path, before any deployment starts.
    """
    cfg = check_artifacts(load_app_config(args))
    if cfg.require_api_key and not os.environ.get(cfg.api_key_env or ""):
        raise ConfigError(f"serve config: field 'require_api_key': ${cfg.api_key_env} is not set")
    retriever = None
    if cfg.rag is not None:
        rag = cfg.rag.model_dump(mode="json")
        retriever = RetrieverDeployment.options(**cfg.retriever.options()).bind(rag)
    model = RoutedModel.options(**cfg.routed_model.options()).bind(cfg.model_dump(mode="json"), retriever)
    return Ingress.options(**cfg.ingress.options()).bind(model, ingress_info(cfg))


SHUTDOWN_GRACE_S = 40.0  # then the watchdog ends the process (Ray's shutdown or a thread hangs)
SHUTDOWN_WAIT_S = 60.0  # Ctrl-C stops the server within this, even when Serve's own shutdown hangs


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _force_exit() -> None:
    import faulthandler
    import os
    import sys

    print("shutdown did not finish; exiting anyway (where each thread waited follows)", file=sys.stderr)
    faulthandler.dump_traceback(all_threads=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def serve_until_interrupted() -> None:
    """Keep this driver (and so its Serve apps) alive until Ctrl-C or SIGTERM, then shut Serve down.

    Serve's shutdown waits on its controller and replicas; in the full test suite it was seen to hang past
    three minutes. It gets SHUTDOWN_WAIT_S, then Ray itself is stopped, so Ctrl-C always ends the process.
    Should Ray's own shutdown (or a thread left behind at interpreter exit) hang as well, a watchdog ends
    the process SHUTDOWN_GRACE_S later, saying so."""
    import signal
    import threading

    import ray
    from ray import serve as ray_serve

    if threading.current_thread() is threading.main_thread():
        # A process started from a shell's background job inherits SIGINT ignored (and a library may have
        # set its own handler): Ctrl-C / SIGINT and SIGTERM must stop this server whatever was inherited.
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        watchdog = threading.Timer(SHUTDOWN_WAIT_S + SHUTDOWN_GRACE_S, _force_exit)
        watchdog.daemon = True
        watchdog.start()
        stopping = threading.Thread(target=ray_serve.shutdown, name="serve-shutdown", daemon=True)
        stopping.start()
        stopping.join(SHUTDOWN_WAIT_S)
        if stopping.is_alive():
            logging.getLogger(__name__).warning(
                "Serve did not shut down within %g s; stopping Ray", SHUTDOWN_WAIT_S
            )
        ray.shutdown()
