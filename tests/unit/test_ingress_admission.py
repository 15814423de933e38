"""The ingress's admission (in-flight and per-client bounds, refused at once with Retry-After), its transport
checks (header size, repeated Host, encodings) and the config rules that keep /healthz out of the queue."""

from __future__ import annotations

import pytest

from mdkif.config import ConfigError
from mdkif.serving.config import INGRESS_DEFAULT_CAP, load_app_config
from mdkif.serving.protocol import (
    INGRESS_RESERVED_SLOTS,
    Admission,
    APIError,
    LimitsConfig,
    check_transport,
    client_address,
)


def test_admission_bounds_total_and_per_client_and_gives_slots_back():
    a = Admission(limit=3, per_client=2, retry_after_s=2)
    a.enter("x")
    a.enter("x")
    with pytest.raises(APIError) as per_client:
        a.enter("x")
    assert per_client.value.status == 429 and per_client.value.headers == {"Retry-After": "2"}
    assert per_client.value.type == "rate_limit_error"
    a.enter("y")
    with pytest.raises(APIError) as full:
        a.enter("z")
    assert full.value.status == 503 and "limit of 3" in full.value.message
    a.leave("x")
    a.enter("z")  # a freed slot is usable by anyone
    assert a.stats() == {
        "in_flight": 3,
        "limit": 3,
        "per_client": 2,
        "clients": 3,
        "refused": {"429": 1, "503": 1},
    }
    for c in ("x", "y", "z"):
        a.leave(c)
    assert a.total == 0 and a.by_client == {}
    unbounded = Admission(limit=10, per_client=0)
    for _ in range(10):
        unbounded.enter("same")


def test_client_address_uses_the_trusted_header_only_when_configured():
    headers = {"x-forwarded-for": "203.0.113.9, 10.0.0.1"}
    assert client_address(("127.0.0.1", 5000), headers, None) == "127.0.0.1"
    assert client_address(("127.0.0.1", 5000), headers, "X-Forwarded-For") == "203.0.113.9"
    assert client_address(("127.0.0.1", 5000), {}, "x-forwarded-for") == "127.0.0.1"
    assert client_address(None, {}, None) == "unknown"


def _h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in pairs]


def test_transport_checks():
    limits = LimitsConfig()
    ok = _h(("host", "127.0.0.1:8000"), ("content-type", "application/json"), ("content-length", "10"))
    assert check_transport(ok, limits) is None
    assert check_transport(ok + _h(("transfer-encoding", "chunked")), limits) is None
    assert check_transport(ok + _h(("content-encoding", "identity")), limits) is None
    big = check_transport(ok + _h(("x-big", "a" * 100_000)), limits)
    assert big.status == 431 and "16384 bytes" in big.message
    many = check_transport(ok + _h(*[(f"x-{i}", "1") for i in range(70)]), limits)
    assert many.status == 431 and "64 fields" in many.message
    dup = check_transport(ok + _h(("Host", "evil.example")), limits)
    assert dup.status == 400 and "Host" in dup.message
    gz = check_transport(ok + _h(("content-encoding", "gzip")), limits)
    assert gz.status == 415 and "gzip" in gz.message
    te = check_transport(ok + _h(("transfer-encoding", "gzip, chunked")), limits)
    assert te.status == 501 and "gzip, chunked" in te.message


def test_ingress_defaults_leave_room_for_health_and_refuse_a_cap_below_the_model():
    cfg = load_app_config({"model": {"name": "tiny"}})
    assert cfg.ingress.max_ongoing_requests == INGRESS_DEFAULT_CAP == 256
    assert cfg.limits.max_in_flight == 256 - INGRESS_RESERVED_SLOTS
    custom = load_app_config(
        {"ingress": {"max_ongoing_requests": 100}, "routed_model": {"max_ongoing_requests": 64}}
    )
    assert custom.limits.max_in_flight == 100 - INGRESS_RESERVED_SLOTS
    with pytest.raises(ConfigError, match=r"ingress.max_ongoing_requests \(32\) must be >= routed_model"):
        load_app_config(
            {"ingress": {"max_ongoing_requests": 32}, "routed_model": {"max_ongoing_requests": 64}}
        )
    with pytest.raises(ConfigError, match=r"limits.max_in_flight \(250\) must be <="):
        load_app_config({"limits": {"max_in_flight": 250}})
    # a validated config (check_artifacts dumps and re-validates it) keeps its derived values
    again = load_app_config(cfg.model_dump())
    assert again.limits.max_in_flight == cfg.limits.max_in_flight


def test_every_shipped_serve_config_keeps_health_out_of_the_generation_queue():
    from pathlib import Path

    from mdkif.serving.config import load_serve_file

    for path in sorted((Path(__file__).resolve().parents[2] / "serve").glob("*.yaml")):
        _, apps = load_serve_file(path)
        for _, cfg in apps:
            assert cfg.ingress.max_ongoing_requests >= cfg.routed_model.max_ongoing_requests, path
            assert cfg.limits.max_in_flight <= cfg.ingress.max_ongoing_requests - INGRESS_RESERVED_SLOTS
