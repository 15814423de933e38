"""Ctrl-C always ends `mdkif serve`: when Serve's shutdown and then Ray's own hang, the watchdog exits the
process (showing where each thread waited) instead of leaving a server that cannot be stopped."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

SCRIPT = textwrap.dedent(
    """
    import os, signal, threading, time
    import ray
    from ray import serve
    from mdkif.serving import app

    app.SHUTDOWN_WAIT_S, app.SHUTDOWN_GRACE_S = 1.0, 2.0
    serve.shutdown = lambda: time.sleep(3600)   # Serve's shutdown hangs
    ray.shutdown = lambda: time.sleep(3600)     # and so does Ray's
    threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    app.serve_until_interrupted()
    print("returned", flush=True)
    """
)


def test_a_hanging_shutdown_is_ended_by_the_watchdog() -> None:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shutdown did not finish; exiting anyway" in done.stderr
    assert "returned" not in done.stdout  # it never got past Ray's shutdown: the watchdog ended it
    assert "Thread" in done.stderr  # faulthandler's dump of every thread
    assert took < 100  # import time + 1 s + 2 s, far below the test's own limit
