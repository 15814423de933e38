"""The OpenAI wire format without Ray or torch: parsing, limits, errors, auth, model names, SSE."""

from __future__ import annotations

import json

import pytest

from mdkif.serving.protocol import (
    SSE_DONE,
    APIError,
    ChatRequest,
    CompletionRequest,
    LimitsConfig,
    ModelNames,
    chat_response,
    check_api_key,
    check_limits,
    generation_params,
    parse_body,
    sse,
    stream_chunk,
)

LIMITS = LimitsConfig(max_request_bytes=2000, max_prompt_chars=100, max_tokens=64, default_max_tokens=16)


def _err(fn, *args) -> APIError:
    with pytest.raises(APIError) as info:
        fn(*args)
    return info.value


def _chat(**kw) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}
    return json.dumps(body).encode()


def test_valid_chat_and_completion_parse():
    req = parse_body(_chat(max_tokens=8, stop="x"), ChatRequest, LIMITS)
    assert req.messages[0].text() == "hi" and req.stops == ["x"]
    comp = parse_body(b'{"model": "m", "prompt": ["one"]}', CompletionRequest, LIMITS)
    assert comp.prompt == "one"


@pytest.mark.parametrize(
    ("raw", "status", "param", "code"),
    [
        (b"{not json", 400, None, "invalid_json"),
        (b"[1, 2]", 400, None, "invalid_json"),
        (b'{"model": "m"}', 400, "messages", "missing_field"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model", "missing_field"),
        (_chat(temperature=5), 400, "temperature", "invalid_value"),
        (_chat(max_tokens=0), 400, "max_tokens", "invalid_value"),
        (_chat(n=2), 400, "n", "invalid_value"),
        (_chat(stop=["", "a"]), 400, "stop", "invalid_value"),
        (
            b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}',
            400,
            "messages.0.role",
            "invalid_value",
        ),
        (b"x" * 2001, 413, None, "request_too_large"),
    ],
)
def test_bad_requests_name_the_field(raw, status, param, code):
    exc = _err(parse_body, raw, ChatRequest, LIMITS)
    assert (exc.status, exc.param, exc.code) == (status, param, code)
    body = exc.body()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    if param:
        assert f"'{param}'" in body["message"]


def test_limits():
    long = parse_body(_chat(messages=[{"role": "user", "content": "x" * 101}]), ChatRequest, LIMITS)
    exc = _err(check_limits, long, LIMITS)
    assert (exc.status, exc.param, exc.code) == (400, "messages", "context_length_exceeded")
    exc = _err(check_limits, parse_body(_chat(max_tokens=65), ChatRequest, LIMITS), LIMITS)
    assert exc.param == "max_tokens" and "64" in exc.message
    exc = _err(check_limits, parse_body(_chat(stop=list("abcde")), ChatRequest, LIMITS), LIMITS)
    assert exc.param == "stop"
    comp = parse_body(json.dumps({"model": "m", "prompt": "y" * 101}).encode(), CompletionRequest, LIMITS)
    assert _err(check_limits, comp, LIMITS).param == "prompt"
    check_limits(parse_body(_chat(), ChatRequest, LIMITS), LIMITS)  # within limits: no error


def test_generation_params_defaults_and_caps():
    p = generation_params(parse_body(_chat(), ChatRequest, LIMITS), LIMITS, 0.0)
    assert p == {
        "max_tokens": 16,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": None,
        "stop": [],
        "ignore_eos": False,
    }
    p = generation_params(
        parse_body(_chat(max_completion_tokens=9, temperature=0.7, seed=3), ChatRequest, LIMITS), LIMITS, 0.0
    )
    assert (p["max_tokens"], p["temperature"], p["seed"]) == (9, 0.7, 3)


def test_api_key():
    check_api_key(None, None)  # no key configured: open
    check_api_key("Bearer s3cret", "s3cret")
    for header in (None, "s3cret", "Bearer", "Bearer wrong", "Basic s3cret"):
        exc = _err(check_api_key, header, "s3cret")
        assert exc.status == 401 and exc.code == "invalid_api_key" and exc.type == "authentication_error"


def test_model_names():
    names = ModelNames("smol", ["pubmedqa", "rag"])
    assert names.ids() == ["smol", "smol:pubmedqa", "smol:rag"]
    assert names.resolve("smol") is None and names.resolve("smol:rag") == "rag"
    for bad in ("rag", "other:rag", "smol:nope", "gpt-4"):
        exc = _err(names.resolve, bad)
        assert exc.status == 404 and exc.param == "model" and "smol, smol:pubmedqa, smol:rag" in exc.message


def test_sse_and_responses():
    chunk = stream_chunk("chat", "id1", "m", "hel", None, role=True)
    line = sse(chunk)
    assert line.startswith("data: {") and line.endswith("\n\n")
    assert json.loads(line[6:])["choices"][0]["delta"] == {"role": "assistant", "content": "hel"}
    assert SSE_DONE == "data: [DONE]\n\n"
    text = stream_chunk("completion", "id2", "m", "x", "stop")
    assert text["object"] == "text_completion" and text["choices"][0]["finish_reason"] == "stop"
    out = chat_response(
        "m", {"text": "ok", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 1}
    )
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "ok"}
