"""Continuous batching (`mdkif.serving.batcher.DecodeLoop`) on the tiny engine, no Ray: requests join a running
batch, mixed profiles share steps, every request gets what it gets decoded alone, failures stay per row."""

from __future__ import annotations

import threading
import time

import pytest

from mdkif.serving.batcher import DecodeLoop
from mdkif.serving.config import check_artifacts, load_app_config
from mdkif.serving.engine import GenRequest, RoutedEngine, StreamCutter
from mdkif.serving.protocol import SamplingParams
from mdkif.serving.sampling import result
from mdkif.testing.serving import build_tiny_artifacts, tiny_profiles

PROMPTS = [
    "Patient with fever.",
    "hi there, how are you doing today?",
    "Answer yes or no: crushing chest pain",
]
PROFILES = [None, "yes", "no", "static", "gate", "arrow"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MDKIF_CACHE", str(tmp_path_factory.mktemp("cache")))
    art = build_tiny_artifacts(tmp_path_factory.mktemp("art"))
    cfg = load_app_config(
        {
            "model": {"name": "tiny"},
            "adapters_dir": str(art["adapters"]),
            "merged_cache_size": 2,
            "profiles": tiny_profiles(art),
        }
    )
    yield RoutedEngine(check_artifacts(cfg))
    mp.undo()


@pytest.fixture
def loop(engine):
    lp = DecodeLoop(engine, max_rows=8)
    yield lp
    lp.close()


def _req(engine, text, profile, **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("ignore_eos", True)
    return GenRequest(
        engine.render(messages=[{"role": "user", "content": text}]), profile, SamplingParams(**kw)
    )


class Waiter:
    """Collects one request's result (or error) from the loop's thread, and its streamed chunks."""

    def __init__(self, engine, req):
        self.engine, self.done, self.result, self.error = engine, threading.Event(), None, None
        self.cut, self.chunks = StreamCutter(req), []

    def __call__(self, row, error):
        if error is not None:
            self.error = error
            self.done.set()
            return
        chunk = self.cut.feed(row)
        if chunk is not None:
            self.chunks.append(chunk)
        if row.finish is not None:
            self.result = result(row)
            self.done.set()

    def wait(self):
        assert self.done.wait(60)
        return self


def _run(loop, engine, reqs):
    waiters = [Waiter(engine, r) for r in reqs]
    for r, w in zip(reqs, waiters, strict=True):
        loop.submit(r, w)
    return [w.wait() for w in waiters]


def test_mixed_profiles_in_one_batch_equal_each_alone(engine, loop):
    reqs = [_req(engine, PROMPTS[i % 3], p) for i, p in enumerate(PROFILES)]
    alone = [
        engine.generate_batch([_req(engine, PROMPTS[i % 3], p)])[0]["text"] for i, p in enumerate(PROFILES)
    ]
    out = _run(loop, engine, reqs)
    assert [w.result["text"] for w in out] == alone
    assert all(w.result["completion_tokens"] == 12 for w in out)
    assert max(loop.stats()["rows_per_step"]) > 1
    deadline = time.monotonic() + 10  # the finished rows leave right after their last notification
    while loop.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.stats()["running"] == 0


def test_a_request_arriving_mid_decode_joins_the_running_batch(engine, loop):
    long = _req(engine, PROMPTS[0], "yes", max_tokens=200)
    first = Waiter(engine, long)
    loop.submit(long, first)
    while loop.stats()["decode_steps"] < 5:  # the first request is decoding
        time.sleep(0.005)
    late = _req(engine, PROMPTS[1], "static", max_tokens=10)
    second = Waiter(engine, late)
    loop.submit(late, second)
    second.wait()
    first.wait()
    assert loop.stats()["joined_running"] >= 1 and 2 in loop.stats()["rows_per_step"]
    assert (
        second.result["text"]
        == engine.generate_batch([_req(engine, PROMPTS[1], "static", max_tokens=10)])[0]["text"]
    )
    assert (
        first.result["text"]
        == engine.generate_batch([_req(engine, PROMPTS[0], "yes", max_tokens=200)])[0]["text"]
    )


def test_streamed_chunks_are_the_streams_of_each_request_alone(engine, loop):
    reqs = [_req(engine, p, "no", stop=["e"], ignore_eos=False, max_tokens=20) for p in PROMPTS]
    out = _run(loop, engine, reqs)
    for r, w in zip(reqs, out, strict=True):
        assert w.chunks == list(
            engine.stream(
                _req(engine, PROMPTS[reqs.index(r)], "no", stop=["e"], ignore_eos=False, max_tokens=20)
            )
        )
        assert "e" not in w.result["text"]


def test_a_failing_request_fails_alone_and_the_loop_goes_on(engine, loop):
    vocab = engine.model.config.vocab_size
    normal = [_req(engine, p, "yes") for p in PROMPTS]
    alone = [engine.generate_batch([_req(engine, p, "yes")])[0]["text"] for p in PROMPTS]
    poisoned = GenRequest([1, vocab + 5, 2], "yes", SamplingParams(max_tokens=4))  # past the embedding table
    out = _run(loop, engine, [normal[0], poisoned, normal[1], normal[2]])
    assert out[1].error.status == 500 and "IndexError" in out[1].error.error["message"]
    assert [w.result["text"] for w in (out[0], out[2], out[3])] == alone
    assert loop.stats()["failed_rows"] >= 1
    assert _run(loop, engine, [_req(engine, PROMPTS[0], "yes")])[0].result["text"] == alone[0]


def test_a_cancelled_request_leaves_and_frees_its_row(engine, loop):
    keep = _req(engine, PROMPTS[0], "yes", max_tokens=60)
    gone = _req(engine, PROMPTS[1], "no", max_tokens=400)
    w_keep, w_gone = Waiter(engine, keep), Waiter(engine, gone)
    loop.submit(keep, w_keep)
    loop.submit(gone, w_gone)
    while loop.stats()["decode_steps"] < 3:
        time.sleep(0.005)
    gone.cancelled.set()
    assert w_gone.wait().result["finish_reason"] == "cancelled" and w_gone.result["completion_tokens"] < 400
    assert w_keep.wait().result["completion_tokens"] == 60
    assert (
        w_keep.result["text"]
        == engine.generate_batch([_req(engine, PROMPTS[0], "yes", max_tokens=60)])[0]["text"]
    )
