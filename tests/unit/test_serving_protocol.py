"""The OpenAI wire format without Ray or torch: parsing, limits, errors, auth, model names, SSE."""

from __future__ import annotations

import json
import pickle

import pytest

from mdkif.serving.protocol import (
    SSE_DONE,
    APIError,
    ChatRequest,
    CompletionRequest,
    Failure,
    LimitsConfig,
    ModelCall,
    ModelNames,
    RouteRequest,
    SamplingParams,
    chat_response,
    check_api_key,
    check_limits,
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
        # Strict types, as OpenAI: no "8" for an integer, true for a number, "yes" for a boolean.
        (_chat(max_tokens="8"), 400, "max_tokens", "invalid_value"),
        (_chat(max_tokens=True), 400, "max_tokens", "invalid_value"),
        (_chat(temperature="0.5"), 400, "temperature", "invalid_value"),
        (_chat(stream="yes"), 400, "stream", "invalid_value"),
        (_chat(seed=10**30), 400, "seed", "invalid_value"),
        (_chat(seed=-1), 400, "seed", "invalid_value"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
            400,
            None,
            "invalid_json",
        ),
        (_chat(stream_options={"include_usage": 1}), 400, "stream_options.include_usage", "invalid_value"),
        # Unimplemented OpenAI parameters and unknown fields are refused by name.
        (
            _chat(tools=[{"type": "function", "function": {"name": "f"}}]),
            400,
            "tools",
            "unsupported_parameter",
        ),
        (_chat(response_format={"type": "json_object"}), 400, "response_format", "unsupported_parameter"),
        (_chat(logprobs=True), 400, "logprobs", "unsupported_parameter"),
        (_chat(frequency_penalty=0.5), 400, "frequency_penalty", "unsupported_parameter"),
        (_chat(temprature=0.5), 400, "temprature", "unknown_parameter"),
        # Text no UTF-8 can carry, and JSON nested past any real request.
        (
            _chat(messages=[{"role": "user", "content": "a\ud800b"}]),
            400,
            "messages.0.content",
            "invalid_value",
        ),
        (b'{"model": "m", "messages": ' + b"[" * 600 + b"]" * 600 + b"}", 400, "messages", "invalid_json"),
        (
            _chat(messages=[{"role": "user", "content": [[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]}]),
            400,
            "messages",
            "invalid_json",
        ),
    ],
)
def test_bad_requests_name_the_field(raw, status, param, code):
    exc = _err(parse_body, raw, ChatRequest, LIMITS)
    assert (exc.status, exc.param, exc.code) == (status, param, code)
    body = exc.body()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    if param:
        assert f"'{param}'" in body["message"]


def test_unimplemented_parameters_at_their_no_op_values_are_accepted():
    req = parse_body(
        _chat(tools=[], logprobs=False, presence_penalty=0, response_format={"type": "text"}, user="u1"),
        ChatRequest,
        LIMITS,
    )
    assert req.messages[0].text() == "hi"
    assert _err(parse_body, _chat(logprobs=1), ChatRequest, LIMITS).param == "logprobs"


def test_a_previous_response_message_can_be_sent_back():
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "refusal": None, "tool_calls": None, "audio": None},
        {"role": "user", "content": "and?"},
    ]
    req = parse_body(json.dumps({"model": "m", "messages": history}).encode(), ChatRequest, LIMITS)
    assert [m.text() for m in req.messages] == ["hi", "hello", "and?"]
    history[1]["tool_calls"] = [{"id": "c1"}]
    exc = _err(parse_body, json.dumps({"model": "m", "messages": history}).encode(), ChatRequest, LIMITS)
    assert exc.param == "messages.1" and "tool_calls" in exc.message


def test_empty_prompt_and_empty_route_messages_are_400s():
    exc = _err(parse_body, b'{"model": "m", "prompt": ""}', CompletionRequest, LIMITS)
    assert (exc.status, exc.param) == (400, "prompt") and "empty" in exc.message
    assert _err(parse_body, b'{"model": "m", "prompt": [""]}', CompletionRequest, LIMITS).param == "prompt"
    exc = _err(parse_body, b'{"model": "m", "messages": []}', RouteRequest, LIMITS)
    assert (exc.status, exc.param) == (400, "messages")
    exc = _err(parse_body, b'{"model": "m", "prompt": "a\\udc00"}', CompletionRequest, LIMITS)
    assert (exc.status, exc.param) == (400, "prompt") and "surrogate" in exc.message


def test_json_nested_past_the_parser_is_a_400():
    raw = b'{"model": "m", "prompt": ' + b"[" * 10000 + b"]" * 10000 + b"}"
    exc = _err(parse_body, raw, CompletionRequest, LimitsConfig(max_request_bytes=100_000))
    assert (exc.status, exc.code) == (400, "invalid_json") and "nested" in exc.message


def test_nan_temperature_is_named_as_not_finite():
    exc = _err(parse_body, _chat(temperature=float("inf")), ChatRequest, LIMITS)
    assert "not valid JSON" in exc.message  # json.dumps writes Infinity, which JSON does not have
    exc = _err(parse_body, b'{"model": "m", "prompt": "x", "top_p": -Infinity}', CompletionRequest, LIMITS)
    assert exc.code == "invalid_json" and "<=" not in exc.message


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


def test_sampling_params_defaults_and_caps():
    p = SamplingParams.from_request(parse_body(_chat(), ChatRequest, LIMITS), LIMITS, 0.0)
    assert p == SamplingParams(
        max_tokens=16, temperature=0.0, top_p=1.0, seed=None, stop=(), ignore_eos=False
    )
    p = SamplingParams.from_request(
        parse_body(_chat(max_completion_tokens=9, temperature=0.7, seed=3, stop="END"), ChatRequest, LIMITS),
        LIMITS,
        0.0,
    )
    assert (p.max_tokens, p.temperature, p.seed, p.stop) == (9, 0.7, 3, ("END",))
    assert (
        SamplingParams.from_request(
            parse_body(_chat(max_tokens=10**6), ChatRequest, LIMITS), LIMITS, 0.0
        ).max_tokens
        == LIMITS.max_tokens
    )
    assert pickle.loads(pickle.dumps(p)) == p  # it crosses the Serve handle as it is


def test_a_failure_crosses_a_handle_as_a_value_with_the_openai_body():
    f = Failure.of(APIError(400, "bad 'top_p'", param="top_p", code="invalid_value"))
    assert pickle.loads(pickle.dumps(f)) == f
    assert f.status == 400 and f.body() == {
        "error": {
            "message": "bad 'top_p'",
            "type": "invalid_request_error",
            "param": "top_p",
            "code": "invalid_value",
        }
    }
    call = ModelCall("triage", messages=[{"role": "user", "content": "hi"}])
    assert call.param == "messages" and call.params == SamplingParams()
    assert ModelCall(None, prompt="x").param == "prompt"


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
