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


IGNORED = textwrap.dedent(
    """
    import os, signal, threading, time
    import ray
    from ray import serve
    from mdkif.serving import app

    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # as a shell's background job starts it
    serve.shutdown = lambda: None
    ray.shutdown = lambda: None
    threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    app.serve_until_interrupted()
    print("stopped on SIGINT", flush=True)
    """
)


def test_sigint_stops_the_server_even_when_inherited_as_ignored() -> None:
    """`make test` run from a background job (`cmd &` without job control) starts every child with SIGINT
    ignored; the server then never saw Ctrl-C, the cause of the serve CLI test's hangs in CI rehearsals."""
    import signal

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    done = subprocess.run(
        [sys.executable, "-c", IGNORED], capture_output=True, text=True, timeout=120, preexec_fn=ignore_sigint
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped on SIGINT" in done.stdout
