"""`mdkif serve serve/serve_tiny.yaml --throughput-optimized` as a user runs it: a child process on its own
local Ray, answering the real openai client on the ingress replica's own port (no proxy hop) and on the
proxy's port, with OpenAI-style errors on both, and stopping cleanly on Ctrl-C. About 1-2 minutes."""

from __future__ import annotations

import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
requests = pytest.importorskip("requests")

REPO = Path(__file__).resolve().parents[2]


def _lines(proc: subprocess.Popen, out: queue.Queue) -> None:
    for line in proc.stdout:
        out.put(line.rstrip("\n"))
    out.put(None)


def _drain(lines: queue.Queue) -> list[str]:
    out = []
    while True:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            return out
        if line is None:
            return out
        out.append(line)


def test_mdkif_serve_throughput_optimized_answers_on_the_direct_port(tmp_path):
    from mdkif.testing.serving import build_tiny_artifacts

    build_tiny_artifacts(tmp_path / "runs" / "serve_tiny", rag=True, rag_chunks=16)
    shutil.copy(REPO / "serve" / "serve_tiny.yaml", tmp_path / "serve_tiny.yaml")
    port = 8123 + random.randint(1, 800)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MDKIF_API_KEY"))}
    env["MDKIF_CACHE"] = str(tmp_path / "cache")
    env["PYTHONFAULTHANDLER"] = "1"  # a hang at Ctrl-C is aborted below with every thread's stack shown
    cli = Path(sys.executable).parent / "mdkif"
    proc = subprocess.Popen(
        [str(cli), "serve", "serve_tiny.yaml", "--port", str(port), "--throughput-optimized"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc, lines), daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("serving;") for line in seen):
            assert time.monotonic() < deadline, "mdkif serve did not come up:\n" + "\n".join(seen[-40:])
            try:
                line = lines.get(timeout=5)
            except queue.Empty:
                continue
            assert line is not None, "mdkif serve exited:\n" + "\n".join(seen[-40:])
            seen.append(line)
        direct = [line.split("direct: ", 1)[1] for line in seen if " direct: " in line]
        assert len(direct) == 1, seen
        direct_port = int(direct[0].split(":")[2].split("/")[0])
        assert direct_port != port

        for base in (direct[0], f"http://127.0.0.1:{port}/v1"):
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
            names = {m.id for m in client.models.list().data}
            assert {"tiny", "tiny:triage", "tiny:rag"} <= names
            chat = client.chat.completions.create(
                model="tiny:triage",
                messages=[{"role": "user", "content": "Fever and stiff neck?"}],
                max_tokens=8,
            )
            assert chat.choices[0].message.content and chat.usage.completion_tokens <= 8
            parts = list(
                client.completions.create(model="tiny:rag", prompt="Insulin is", max_tokens=6, stream=True)
            )
            assert parts and "".join(p.choices[0].text for p in parts)
            r = requests.post(
                f"{base}/chat/completions",
                json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
            assert r.status_code == 404 and "tiny:triage" in r.json()["error"]["message"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=180)  # a clean exit, also on a slow shared machine
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints where every thread waits
            time.sleep(10)
            proc.kill()
            pytest.fail(
                "mdkif serve did not exit within 180 s of Ctrl-C:\n" + "\n".join(_drain(lines)[-150:])
            )
    assert proc.returncode == 0, "\n".join([*seen, *_drain(lines)][-60:])
