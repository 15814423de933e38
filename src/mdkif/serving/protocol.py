"""The OpenAI-compatible wire format: request schemas, limits, errors, auth and server-sent events.

Nothing here imports torch or Ray, so the ingress replica stays light and every rule is unit-testable.
Requests are parsed by hand (bytes -> JSON -> pydantic) instead of through FastAPI's body binding, so each
failure becomes one OpenAI-style error naming the offending field (`param`), never FastAPI's `detail`.

Two optional extensions beyond OpenAI's schema: `rag` (force retrieval on or off for this request) and
`ignore_eos` (vLLM's name; lets tests and benchmarks ask for an exact number of tokens).
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mdkif.config import StrictModel


class LimitsConfig(StrictModel):
    """What one request may ask for; anything beyond is a 4xx naming the field."""

    max_request_bytes: int = Field(65536, ge=256, description="Largest accepted request body (413 above).")
    max_prompt_chars: int = Field(16000, ge=1, description="Characters of prompt/messages text (400 above).")
    max_prompt_tokens: int = Field(
        1024, ge=1, description="Prompt tokens after the chat template and retrieved context (400 above)."
    )
    max_tokens: int = Field(512, ge=1, description="Highest max_tokens a request may ask for.")
    default_max_tokens: int = Field(128, ge=1, description="max_tokens when the request gives none.")
    max_messages: int = Field(64, ge=1, description="Most chat messages in one request.")
    max_stop: int = Field(4, ge=0, description="Most stop sequences (OpenAI allows 4).")
    request_timeout_s: float = Field(
        120.0, gt=0, description="The ingress gives up on the model after this long (504)."
    )
    body_timeout_s: float = Field(
        5.0, gt=0, description="A request body not fully received after this long is refused (408)."
    )
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Generation requests (chat, completions, route) one ingress replica handles at once, "
        "body reads and streams included; more get 503 with Retry-After at once instead of waiting. Default: "
        "the ingress's max_ongoing_requests minus the slots kept for /healthz, /v1/models and /v1/stats.",
    )
    max_in_flight_per_client: int = Field(
        8,
        ge=0,
        description="Of those, most from one client address; more get 429 with Retry-After (0: no bound). "
        "Behind a proxy every client has the proxy's address: set client_address_header, or raise this.",
    )
    client_address_header: str | None = Field(
        None,
        description="Header a trusted reverse proxy puts the client address in (e.g. x-forwarded-for: its "
        "first entry counts); default: the TCP peer. Never set it without such a proxy: clients forge it.",
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After of the 429 / 503 answers above.")
    max_header_bytes: int = Field(
        16384, ge=1024, description="Request header names + values, in bytes (431 above)."
    )
    max_headers: int = Field(64, ge=8, description="Request header fields (431 above).")


class APIError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type, message, offending field and code."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or error_type(status)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
INGRESS_RESERVED_SLOTS = 16  # ingress slots generation never takes: /healthz, /v1/models, /v1/stats


class Admission:
    """Which generation requests one ingress replica takes on: at most `limit` at once, `per_client` from
    one client address; the others are refused at once (503 / 429 with Retry-After) instead of queueing.

    The ingress only parses, validates and awaits, so a request it holds costs a coroutine; what must not
    happen is that slow or long requests take every slot Serve gives the replica (`max_ongoing_requests`),
    which would queue health checks and model listings behind them. `limit` stays below that cap by the
    slots kept for those (INGRESS_RESERVED_SLOTS), and a request holds its slot from admission until its
    response ends (a stream: until its last event).
    """

    def __init__(self, limit: int, per_client: int, retry_after_s: int = 1) -> None:
        self.limit, self.per_client, self.retry_after = limit, per_client, str(retry_after_s)
        self.total = 0
        self.by_client: dict[str, int] = {}
        self.refused = {429: 0, 503: 0}

    def enter(self, client: str) -> None:
        """Take a slot for `client`, or raise the refusal (nothing is taken then)."""
        if self.total >= self.limit:
            self.refused[503] += 1
            raise APIError(
                503,
                f"the server is at its limit of {self.limit} requests in progress; retry shortly",
                code="overloaded",
                headers={"Retry-After": self.retry_after},
            )
        held = self.by_client.get(client, 0)
        if self.per_client and held >= self.per_client:
            self.refused[429] += 1
            raise APIError(
                429,
                f"this client already has {held} requests in progress (the limit per client is "
                f"{self.per_client}); retry when one has finished",
                code="rate_limit_exceeded",
                type="rate_limit_error",
                headers={"Retry-After": self.retry_after},
            )
        self.total += 1
        self.by_client[client] = held + 1

    def leave(self, client: str) -> None:
        """Give the slot back (exactly once per successful `enter`)."""
        self.total -= 1
        left = self.by_client.get(client, 1) - 1
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)

    def stats(self) -> dict[str, Any]:
        return {
            "in_flight": self.total,
            "limit": self.limit,
            "per_client": self.per_client,
            "clients": len(self.by_client),
            "refused": {str(k): v for k, v in self.refused.items()},
        }


def client_address(peer: Any, headers: dict[str, str], header: str | None) -> str:
    """The client a request counts against: the trusted proxy's header (first entry), else the TCP peer."""
    if header:
        value = headers.get(header.lower(), "").split(",", 1)[0].strip()
        if value:
            return value
    return str(peer[0]) if peer else "unknown"


def check_transport(raw_headers: list[tuple[bytes, bytes]], limits: LimitsConfig) -> APIError | None:
    """What the HTTP layer under the proxy lets through and we refuse (None: the request may go on):
    oversized header sections (431), a repeated Host (400, as HTTP/1.1 requires), a body encoding we do not
    decode (415) and a transfer coding other than chunked (501)."""
    size = sum(len(k) + len(v) for k, v in raw_headers)
    if len(raw_headers) > limits.max_headers or size > limits.max_header_bytes:
        return APIError(
            431,
            f"request headers are too large ({len(raw_headers)} fields, {size} bytes; the limits are "
            f"{limits.max_headers} fields and {limits.max_header_bytes} bytes)",
            code="headers_too_large",
        )
    names = [k.decode("latin-1").lower() for k, _ in raw_headers]
    if names.count("host") > 1:
        return APIError(400, "more than one Host header", code="bad_host")
    values = {k.decode("latin-1").lower(): v.decode("latin-1").strip().lower() for k, v in raw_headers}
    encoding = values.get("content-encoding")
    if encoding not in (None, "", "identity"):
        return APIError(
            415,
            f"Content-Encoding '{encoding}' is not accepted; send the body uncompressed",
            code="bad_encoding",
        )
    codings = [c.strip() for c in values.get("transfer-encoding", "").split(",") if c.strip()]
    if any(c != "chunked" for c in codings):
        return APIError(
            501,
            f"Transfer-Encoding '{values['transfer-encoding']}' is not supported (only chunked)",
            code="bad_transfer_encoding",
        )
    return None


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status < 500:
        return "invalid_request_error"
    return "server_error"


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# Strict types: OpenAI refuses "8" for an integer, true for a number and "yes" for a boolean, so do we.
StrictPositiveInt = Annotated[int, Field(ge=1, strict=True)]
Seed = Annotated[int, Field(ge=0, le=2**64 - 1, strict=True)]
Text = Annotated[str, Field(strict=True)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: Annotated[bool, Field(strict=True)] = False


class _Request(BaseModel):
    # Every field OpenAI defines is either implemented here or accepted only at its no-op value
    # (`UNSUPPORTED`); anything else is refused naming it, like OpenAI's "Unrecognized request argument".
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1, strict=True)]
    max_tokens: StrictPositiveInt | None = None
    max_completion_tokens: StrictPositiveInt | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False, strict=True)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False, strict=True)] | None = None
    seed: Seed | None = None
    stop: Text | list[Text] | None = None
    stream: Annotated[bool, Field(strict=True)] = False
    n: Annotated[int, Field(ge=1, le=1, strict=True, description="one choice per request")] = 1
    rag: (
        Annotated[bool, Field(strict=True, description="force retrieval on or off (default: profile)")] | None
    ) = None
    ignore_eos: Annotated[bool, Field(strict=True)] = False
    stream_options: StreamOptions | None = None
    user: Text | None = None  # OpenAI's end-user id: accepted, not used
    metadata: dict[str, Text] | None = None

    @field_validator("stop")
    @classmethod
    def _stops_non_empty(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        return v

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[dict[str, Any]]
    name: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _history_fields(cls, data: Any) -> Any:
        # A client that sends back a previous response's message (openai's `message.model_dump()`) adds
        # these as null / []; accept them so, refuse them with content (no tools or audio here).
        if isinstance(data, dict):
            data = dict(data)
            for key in ("refusal", "tool_calls", "function_call", "audio", "annotations", "tool_call_id"):
                if key in data:
                    if data[key] not in (None, []):
                        raise ValueError(f"'{key}' is not supported by this server (only null)")
                    del data[key]
        return data

    def text(self) -> str:
        """The message text; OpenAI's content parts are accepted when they are all `text` parts."""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Request):
    prompt: Text | list[Text]
    echo: Annotated[bool, Field(strict=True)] = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("send one prompt per request (a list of exactly one string)")
            v = v[0]
        if not v:
            raise ValueError("the prompt is empty")
        return v


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1, strict=True)]
    prompt: Annotated[str, Field(min_length=1, strict=True)] | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)


# OpenAI parameters this server does not implement, with the values that mean "off" (accepted, ignored).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, True, False),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
}
MAX_JSON_DEPTH = 16


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_json(data: Any) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and text no UTF-8 can carry (lone surrogates), by path."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        obj, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            top = path.split(".", 1)[0] or None
            raise APIError(
                400, f"'{top}': JSON nested deeper than {MAX_JSON_DEPTH} levels", top, "invalid_json"
            )
        items: Any = ()
        if isinstance(obj, dict):
            items = obj.items()
        elif isinstance(obj, list):
            items = enumerate(obj)
        elif isinstance(obj, str):
            try:
                obj.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(
                    400,
                    f"'{path}': the text holds a lone UTF-16 surrogate (not valid Unicode)",
                    path,
                    "invalid_value",
                ) from None
        for key, value in items:
            if isinstance(key, str):
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    raise APIError(
                        400, "a JSON key holds a lone UTF-16 surrogate", path or None, "invalid_json"
                    ) from None
            stack.append((value, f"{path}.{key}" if path else str(key), depth + 1))


def _check_unsupported(data: dict[str, Any], schema: type[BaseModel]) -> None:
    for name, off in UNSUPPORTED.items():
        if name in data and name not in schema.model_fields:
            value = data.pop(name)
            if not any(value == v and type(value) is type(v) for v in off):
                shown = " / ".join(json.dumps(v) for v in off)
                raise APIError(
                    400,
                    f"'{name}' is not supported by this server (accepted only as {shown})",
                    name,
                    "unsupported_parameter",
                )


def parse_body(raw: bytes, schema: type[BaseModel], limits: LimitsConfig) -> BaseModel:
    """Bytes -> validated request, or an :class:`APIError` naming the field (413 when over the size limit)."""
    if len(raw) > limits.max_request_bytes:
        raise APIError(
            413,
            f"request body is {len(raw)} bytes; the limit is {limits.max_request_bytes}",
            code="request_too_large",
        )
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise APIError(400, "request JSON is nested too deeply", code="invalid_json") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    _check_json(data)
    _check_unsupported(data, schema)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _param(err["loc"])
        if err["type"] == "missing":
            kind, what = "missing_field", "is required"
        elif err["type"] == "extra_forbidden":
            kind, what = "unknown_parameter", "unrecognized request argument"
        else:
            kind, what = "invalid_value", err["msg"]
        raise APIError(400, f"'{loc}': {what}", param=loc, code=kind) from None


def _param(loc: tuple[Any, ...]) -> str | None:
    """A pydantic error location as the field path a client sent (without union-member tags)."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
    return ".".join(parts) or None


_UNION_TAGS = {"str", "list", "int", "float", "bool", "dict", "function-after", "function-before"}


def check_limits(req: ChatRequest | CompletionRequest | RouteRequest, limits: LimitsConfig) -> None:
    """Size limits that need no tokenizer: message count, prompt characters, max_tokens, stop count."""
    if getattr(req, "messages", None) is not None:
        if len(req.messages) > limits.max_messages:
            raise APIError(
                400,
                f"'messages': {len(req.messages)} messages; the limit is {limits.max_messages}",
                "messages",
                "too_many_messages",
            )
        try:
            chars = sum(len(m.text()) for m in req.messages)
        except ValueError as exc:
            raise APIError(400, f"'messages': {exc}", "messages", "invalid_value") from None
        field = "messages"
    else:
        chars, field = len(req.prompt or ""), "prompt"
    if chars > limits.max_prompt_chars:
        raise APIError(
            400,
            f"'{field}': prompt is {chars} characters; the limit is {limits.max_prompt_chars}",
            field,
            "context_length_exceeded",
        )
    if isinstance(req, _Request):
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(req, name)
            if value is not None and value > limits.max_tokens:
                raise APIError(
                    400, f"'{name}': {value} is over the limit of {limits.max_tokens}", name, "invalid_value"
                )
        if len(req.stops) > limits.max_stop:
            raise APIError(400, f"'stop': at most {limits.max_stop} sequences", "stop", "invalid_value")


def check_api_key(authorization: str | None, expected: str | None) -> None:
    """Bearer-token check in constant time; a server without a key accepts every request."""
    if not expected:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise APIError(401, "incorrect API key provided", code="invalid_api_key")


class ModelNames:
    """The served model ids: `<base>` (no skills) and `<base>:<profile>` per task profile."""

    def __init__(self, base: str, profiles: list[str]) -> None:
        self.base = base
        self.profiles = list(profiles)

    def ids(self) -> list[str]:
        return [self.base, *(f"{self.base}:{p}" for p in self.profiles)]

    def resolve(self, model: str) -> str | None:
        """The profile a model id names (None for the base model); 404 listing the valid ids otherwise."""
        if model == self.base:
            return None
        base, sep, profile = model.partition(":")
        if sep and base == self.base and profile in self.profiles:
            return profile
        raise APIError(
            404,
            f"The model '{model}' does not exist. Valid models: {', '.join(self.ids())}",
            param="model",
            code="model_not_found",
        )


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded. Built once from the validated request (`from_request`, where the
    ranges were checked by the request schema), then passed as is across the Serve handle into the token
    loop: the replica never re-reads or re-checks a dict."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @classmethod
    def from_request(
        cls, req: ChatRequest | CompletionRequest, limits: LimitsConfig, default_temperature: float
    ) -> SamplingParams:
        """The request's settings with the server's defaults filled in and max_tokens capped."""
        max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
        return cls(
            max_tokens=min(max_tokens, limits.max_tokens),
            temperature=default_temperature if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            stop=tuple(req.stops),
            ignore_eos=req.ignore_eos,
        )


@dataclass(frozen=True)
class ModelCall:
    """What the ingress asks the model replica for: a profile, the text (chat messages or a prompt), the
    sampling settings and the request's retrieval switch (None: the profile's own)."""

    profile: str | None
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    rag: bool | None = None

    @property
    def param(self) -> str:
        """The request field the text came in (what a length error names)."""
        return "messages" if self.messages is not None else "prompt"


@dataclass(frozen=True)
class Failure:
    """A refusal or a failed generation, returned (never raised) across a Serve handle: an exception
    raised in a replica is logged by Serve as the replica's failure, while a 4xx is the client's."""

    status: int
    error: dict[str, Any]

    @classmethod
    def of(cls, exc: APIError) -> Failure:
        return cls(exc.status, exc.body()["error"])

    def body(self) -> dict[str, Any]:
        return {"error": self.error}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(model: str, result: dict[str, Any]) -> dict[str, Any]:
    """A `chat.completion` object from the replica's result."""
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result["text"]},
                "finish_reason": result["finish_reason"],
                "logprobs": None,
            }
        ],
        "usage": usage(result["prompt_tokens"], result["completion_tokens"]),
        "mdkif": result.get("mdkif", {}),
    }


def completion_response(model: str, result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A `text_completion` object from the replica's result (`prefix` is the prompt when echo is on)."""
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": prefix + result["text"],
                "finish_reason": result["finish_reason"],
                "logprobs": None,
            }
        ],
        "usage": usage(result["prompt_tokens"], result["completion_tokens"]),
        "mdkif": result.get("mdkif", {}),
    }


def stream_chunk(
    kind: str, id_: str, model: str, delta: str | None, finish: str | None, role: bool = False
) -> dict:
    """One streamed chunk: `chat.completion.chunk` (delta) or `text_completion` (text)."""
    if kind == "chat":
        d: dict[str, Any] = {}
        if role:
            d["role"] = "assistant"
        if delta:
            d["content"] = delta
        choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": id_, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: `data: <json>` and a blank line (`data: [DONE]` ends the stream)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


SSE_DONE = sse("[DONE]")
