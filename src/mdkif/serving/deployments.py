"""The three Serve deployments: Ingress (FastAPI, OpenAI API) -> RoutedModel (batched) -> Retriever (Chroma).

They are composed by handles: `build_app` binds the Retriever into the RoutedModel and the RoutedModel into
the Ingress, and Serve passes each replica a `DeploymentHandle` to the next one. This module imports no
torch at the top: the ingress replica only parses, checks and forwards requests.

Across the handle the ingress sends one typed `ModelCall` (profile, text, `SamplingParams` built once from
the validated request) and the RoutedModel answers a bad request or a failed generation with a `Failure`
value (never an exception, so the ingress needs no exception translation across Ray); the ingress turns a dead
or restarting replica (Ray actor errors, back-pressure) into a 503 and a slow one into a 504 after
`limits.request_timeout_s`, both as OpenAI-style JSON, so no request hangs.
"""

# No `from __future__ import annotations`: FastAPI must see real classes (Request) in the ingress methods.

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from mdkif.serving.protocol import (
    LOOPBACK_HOSTS,
    SSE_DONE,
    Admission,
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
    check_transport,
    client_address,
    completion_response,
    error_body,
    error_type,
    new_id,
    parse_body,
    sse,
    stream_chunk,
    usage,
)

log = logging.getLogger("ray.serve")


# ---- Retriever ----------------------------------------------------------------------------------------
@serve.deployment(name="Retriever", ray_actor_options={"num_cpus": 0.5})
class RetrieverDeployment:
    """The persistent Chroma index (dense, BM25 or hybrid), queried with the question only.

    Deployed as `Retriever` (its Serve name); the class has its own name so it is never confused with
    the `mdkif.rag.types.Retriever` protocol that evaluation's retrievers satisfy.
    """

    def __init__(self, rag: dict[str, Any]) -> None:
        from mdkif.rag.retriever import ChromaRetriever

        self.retriever = ChromaRetriever.open(rag["persist_dir"], rag.get("collection"), mode=rag["mode"])

    def retrieve(self, question: str, k: int) -> list[dict[str, Any]]:
        return [p.model_dump() for p in self.retriever.retrieve(question, k)]


# ---- RoutedModel --------------------------------------------------------------------------------------
@serve.deployment(ray_actor_options={"num_cpus": 1})
class RoutedModel:
    """The base model with the skill bank; requests decoded together by one continuous decode loop."""

    def __init__(self, cfg: dict[str, Any], retriever: DeploymentHandle | None = None) -> None:
        from mdkif.serving.batcher import DecodeLoop
        from mdkif.serving.config import ServeAppConfig
        from mdkif.serving.engine import RoutedEngine

        self.cfg = ServeAppConfig.model_validate(cfg)
        self.engine = RoutedEngine(self.cfg)
        self.retriever = retriever
        b = self.cfg.batching
        self.batching = b.enabled
        # Continuous batching: requests join the running batch at the next decode step (off: one at a time).
        self.loop = DecodeLoop(self.engine, b.max_batch_size) if b.enabled else None

    async def _prepare(self, call: ModelCall) -> Any:
        """ModelCall -> GenRequest: profile, retrieval, chat template, token limits."""
        from mdkif.rag.types import Passage
        from mdkif.serving.engine import GenRequest

        prof = self.engine.profile(call.profile)
        use_rag = prof.rag if call.rag is None else call.rag
        passages: list[Passage] = []
        if use_rag:
            if self.retriever is None:
                raise APIError(
                    400, "'rag': retrieval is not configured on this server", "rag", "invalid_value"
                )
            question = self.engine.question(call.messages, call.prompt)
            found = await self.retriever.retrieve.remote(question, prof.k)
            passages = [Passage(**p) for p in found]
        ids = self.engine.render(messages=call.messages, prompt=call.prompt, passages=passages)
        self.engine.check_length(ids, call.params.max_tokens, call.param)
        meta = {"profile": call.profile, "passages": [{"id": p.id, "title": p.title} for p in passages]}
        return GenRequest(ids, call.profile, call.params, meta=meta)

    async def generate(self, call: ModelCall) -> dict[str, Any] | Failure:
        try:
            gen = await self._prepare(call)
        except APIError as exc:
            return Failure.of(exc)
        try:
            if self.loop is None:
                return (await asyncio.to_thread(self.engine.generate_each, [gen]))[0]
            from mdkif.serving.sampling import result

            aio = asyncio.get_running_loop()
            done: asyncio.Future = aio.create_future()

            def notify(row: Any, failure: Failure | None) -> None:
                if failure is not None or row.finish is not None:
                    aio.call_soon_threadsafe(_settle, done, failure if failure is not None else result(row))

            self.loop.submit(gen, notify)
            return await done
        except asyncio.CancelledError:
            # The client has gone (Serve cancels the call): its row leaves the token loop at the next step
            # instead of generating to the end for nobody; the rest of its batch goes on.
            gen.cancelled.set()
            log.info("generation cancelled by its caller (client disconnected); its row stops")
            raise

    async def stream(self, call: ModelCall) -> AsyncIterator[dict[str, Any] | Failure]:
        """First yields `{"ok": True}` (or a Failure) once the request is accepted, then the text chunks."""
        from mdkif.serving.sampling import StreamCutter

        try:
            gen = await self._prepare(call)
        except APIError as exc:
            yield Failure.of(exc)
            return
        yield {"ok": True}
        if self.loop is None:  # one request, one token loop, in a thread
            async for chunk in self._stream_alone(gen):
                yield chunk
            return
        aio = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()
        cut = StreamCutter(gen)

        def notify(row: Any, failure: Failure | None) -> None:
            chunk = failure if failure is not None else cut.feed(row)
            if chunk is not None:
                aio.call_soon_threadsafe(chunks.put_nowait, chunk)

        self.loop.submit(gen, notify)
        try:
            while True:
                chunk = await chunks.get()
                yield chunk
                if isinstance(chunk, Failure) or chunk.get("finish_reason") is not None:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            gen.cancelled.set()
            log.info("stream cancelled by its caller (client disconnected)")
            raise

    async def _stream_alone(self, gen: Any) -> AsyncIterator[dict[str, Any] | Failure]:
        steps = self.engine.stream(gen)
        while True:
            try:
                chunk = await asyncio.to_thread(next, steps, None)
            except asyncio.CancelledError:
                log.info("stream cancelled by its caller (client disconnected)")
                raise
            except Exception as exc:  # noqa: BLE001 - the ingress already answered 200: an in-band error
                log.exception("streamed generation failed")
                yield Failure.of(
                    APIError(500, f"generation failed: {type(exc).__name__}", code="internal_error")
                )
                return
            if chunk is None:
                return
            yield chunk

    async def route(self, call: ModelCall) -> dict[str, Any] | Failure:
        try:
            ids = self.engine.render(messages=call.messages, prompt=call.prompt)
            self.engine.check_length(ids, 0, call.param)
        except APIError as exc:
            return Failure.of(exc)
        return await asyncio.to_thread(self.engine.route, call.profile, ids)

    def stats(self, _: dict[str, Any] | None = None) -> dict[str, Any]:
        loop = self.loop.stats() if self.loop is not None else None
        return {**self.engine.stats(), "batching": self.batching, "decode_loop": loop}


# ---- Ingress ------------------------------------------------------------------------------------------
# The docs pages are opt-in (`docs: true`); the replica's __init__ records the setting here, which the
# middleware below reads (one ingress app per replica process).
_SETTINGS: dict[str, Any] = {
    "docs": False,
    "allowed_hosts": list(LOOPBACK_HOSTS),
    "limits": LimitsConfig(),
}
_DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")

# No redirect from /v1/chat/completions/ to the slashless path (an empty 307 for a POST): such paths 404.
api = FastAPI(
    title="MDKIF", description="OpenAI-compatible API over the routed medical model", redirect_slashes=False
)


def _json_error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def _host_allowed(host: str, allowed: list[str]) -> bool:
    if "*" in allowed:
        return True
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host  # host:port, or [::1]:port
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    return name.lower() in allowed


class _Guard:
    """Pure ASGI middleware: header limits and encodings (`check_transport`), Host header (DNS rebinding),
    JSON Content-Type on POST, docs pages opt-in.

    (Not BaseHTTPMiddleware, which would wrap every streamed response and its disconnect handling.)
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = scope.get("headers", [])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
        # The app's own path: under a route prefix (`route_prefix: /mdkif`) the scope's path carries it.
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        refusal = check_transport(raw, _SETTINGS["limits"]) or self._refusal(scope, headers, path)
        if refusal is None:
            return await self.app(scope, receive, send)
        return await _json_error(refusal)(scope, receive, send)

    @staticmethod
    def _refusal(scope: dict[str, Any], headers: dict[str, str], path: str) -> APIError | None:
        if path != "/healthz" and not _host_allowed(headers.get("host", ""), _SETTINGS["allowed_hosts"]):
            return APIError(
                421, "this Host is not served here (see allowed_hosts in the serve config)", code="bad_host"
            )
        if path in _DOC_PATHS and not _SETTINGS["docs"]:
            return APIError(404, f"Not Found: {path} (set docs: true to serve it)", code="not_found")
        if scope.get("method") == "POST":
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                return APIError(
                    415,
                    f"Content-Type must be application/json, not '{ctype or 'none'}'",
                    code="unsupported_media_type",
                )
        return None


api.add_middleware(_Guard)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown paths and wrong methods get the same JSON error shape as everything else.
    return JSONResponse(error_body(str(exc.detail), error_type(exc.status_code)), status_code=exc.status_code)


def _cancelled(exc: BaseException) -> bool:
    """A call cancelled because its client went away (Serve cancels the request and its model call)."""
    from ray.exceptions import TaskCancelledError

    return isinstance(exc, asyncio.CancelledError | TaskCancelledError)


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    if _cancelled(exc):
        log.info("request to %s cancelled (client disconnected)", request.url.path)
        return _json_error(APIError(499, "request cancelled", code="cancelled"))
    log.exception("unhandled error on %s", request.url.path)
    return _json_error(APIError(500, f"internal error: {type(exc).__name__}", code="internal_error"))


def _failure(exc: BaseException, timeout: float) -> APIError:
    """A failed call to the model: 504 when it timed out, 503 when the replica is gone, else 500 (a call
    cancelled because the client left is logged at INFO: nobody reads its answer)."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if _cancelled(exc):
        log.info("model call cancelled (client disconnected)")
        return APIError(499, "request cancelled", code="cancelled")
    if isinstance(exc, TimeoutError):
        return APIError(504, f"the model did not answer within {timeout:g} s", code="timeout")
    if isinstance(exc, RayActorError | BackPressureError | DeploymentUnavailableError):
        return APIError(
            503,
            "the model replica is unavailable (restarting, or its queue is full); retry",
            code="unavailable",
            headers={"Retry-After": "1"},
        )
    log.exception("model call failed")
    return APIError(500, f"internal error: {type(exc).__name__}", code="internal_error")


async def _releasing(body: AsyncIterator[Any], release: Any) -> AsyncIterator[Any]:
    """A streamed body that gives its admission slot back when it ends, fails or is cancelled."""
    try:
        async for part in body:
            yield part
    finally:
        release()


STATS_WAIT_S = 2.0  # how long /v1/stats waits for the model replica's counters


def _settle(future: asyncio.Future, result: Any) -> None:
    if not future.done():  # a cancelled caller's future stays cancelled
        future.set_result(result)


def _value(enum_or_str: Any) -> str:
    # (Defined above the class: Serve pickles the ingress class with the module globals it sees then.)
    return str(getattr(enum_or_str, "value", enum_or_str))


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    """POST /v1/chat/completions, /v1/completions, /v1/route; GET /v1/models[/{id}], /v1/stats, /healthz."""

    def __init__(self, model: DeploymentHandle, info: dict[str, Any]) -> None:
        self.model = model
        self.info = info
        self.limits = LimitsConfig.model_validate(info["limits"])
        self.names = ModelNames(info["served_name"], list(info["profiles"]))
        env = info.get("api_key_env")
        self.api_key = os.environ.get(env) if env else None
        if info.get("require_api_key") and not self.api_key:
            raise RuntimeError(f"require_api_key is set but ${env} is empty in the ingress replica")
        self.admission = Admission(
            self.limits.max_in_flight or 1, self.limits.max_in_flight_per_client, self.limits.retry_after_s
        )
        _SETTINGS["limits"] = self.limits
        _SETTINGS["docs"] = bool(info.get("docs", False))
        _SETTINGS["allowed_hosts"] = [
            h.lower() for h in info.get("allowed_hosts", _SETTINGS["allowed_hosts"])
        ]
        ctx = serve.get_replica_context()
        self.app_name = ctx.app_name if ctx is not None else None

    async def _body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it passes the size limit (also when chunked) and with
        408 when it is not complete within `limits.body_timeout_s` (e.g. shorter than its Content-Length)."""
        limit = self.limits.max_request_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise APIError(
                413, f"request body is {length} bytes; the limit is {limit}", code="request_too_large"
            )
        chunks: list[bytes] = []
        size = 0

        async def read() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise APIError(
                        413, f"request body is over the limit of {limit} bytes", code="request_too_large"
                    )
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), self.limits.body_timeout_s)
        except TimeoutError:
            raise APIError(
                408,
                f"the request body was not received within {self.limits.body_timeout_s:g} s",
                code="request_timeout",
            ) from None
        return b"".join(chunks)

    async def _read(self, request: Request, schema: type) -> Any:
        check_api_key(request.headers.get("authorization"), self.api_key)
        req = parse_body(await self._body(request), schema, self.limits)
        check_limits(req, self.limits)
        return req

    async def _call(self, method: str, call: ModelCall) -> dict[str, Any] | JSONResponse:
        timeout = self.limits.request_timeout_s
        try:
            result = await asyncio.wait_for(getattr(self.model, method).remote(call), timeout)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON answer, never a hang
            return _json_error(_failure(exc, timeout))
        if isinstance(result, Failure):
            return JSONResponse(result.body(), status_code=result.status)
        return result

    def _client(self, request: Request) -> str:
        return client_address(request.client, request.headers, self.limits.client_address_header)

    async def _admitted(self, request: Request, handler: Any, *args: Any) -> Any:
        """Run `handler` holding one admission slot for this client (refused at once when none is free);
        a streamed answer hands its slot to the stream, which gives it back after its last event."""
        client = self._client(request)
        try:
            self.admission.enter(client)
        except APIError as exc:
            return _json_error(exc)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.admission.leave(client)

        try:
            response = await handler(request, *args)
        except BaseException:
            release()
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = _releasing(response.body_iterator, release)
        else:
            release()
        return response

    async def _complete(self, request: Request, kind: str) -> Any:
        schema = ChatRequest if kind == "chat" else CompletionRequest
        try:
            req = await self._read(request, schema)
            profile = self.names.resolve(req.model)
        except APIError as exc:
            return _json_error(exc)
        call = ModelCall(
            profile,
            messages=[{"role": m.role, "content": m.text()} for m in req.messages]
            if kind == "chat"
            else None,
            prompt=req.prompt if kind != "chat" else None,
            params=SamplingParams.from_request(req, self.limits, self.info["default_temperature"]),
            rag=req.rag,
        )
        if req.stream:
            return await self._stream(call, kind, req)
        result = await self._call("generate", call)
        if isinstance(result, JSONResponse):
            return result
        if kind == "chat":
            return chat_response(req.model, result)
        return completion_response(req.model, result, req.prompt if req.echo else "")

    async def _stream(self, call: ModelCall, kind: str, req: Any) -> Any:
        timeout = self.limits.request_timeout_s
        gen = self.model.options(stream=True).stream.remote(call)
        try:  # wait for the replica to accept (or refuse) the request before answering 200
            first = await asyncio.wait_for(gen.__anext__(), timeout)
        except Exception as exc:  # noqa: BLE001
            gen.cancel()
            return _json_error(_failure(exc, timeout))
        if isinstance(first, Failure):
            return JSONResponse(first.body(), status_code=first.status)
        id_ = new_id("chatcmpl" if kind == "chat" else "cmpl")
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events() -> AsyncIterator[str]:
            if kind == "chat":
                yield sse(stream_chunk(kind, id_, req.model, None, None, role=True))
            elif req.echo:  # the prompt first, as OpenAI's streamed echo does
                yield sse(stream_chunk(kind, id_, req.model, req.prompt, None))
            try:
                while True:
                    try:
                        chunk = await asyncio.wait_for(gen.__anext__(), timeout)
                    except StopAsyncIteration:
                        break
                    if isinstance(chunk, Failure):  # generation failed after the 200: report in-band
                        yield sse(chunk.body())
                        break
                    yield sse(stream_chunk(kind, id_, req.model, chunk["delta"], chunk["finish_reason"]))
                    if chunk["finish_reason"] is not None and include_usage:
                        tail = stream_chunk(kind, id_, req.model, None, None)
                        tail["choices"] = []
                        tail["usage"] = usage(chunk["prompt_tokens"], chunk["completion_tokens"])
                        yield sse(tail)
            except Exception as exc:  # noqa: BLE001 - the status is already 200: report in-band
                gen.cancel()
                err = _failure(exc, timeout)
                yield sse(error_body(f"stream aborted: {err.message}", err.type, code="stream_aborted"))
            yield SSE_DONE

        return StreamingResponse(events(), media_type="text/event-stream")

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        return await self._admitted(request, self._complete, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        return await self._admitted(request, self._complete, "completion")

    @api.post("/v1/route")
    async def route(self, request: Request) -> Any:
        """The skill weights a profile (fixed, static router or input-conditioned gate) gives a prompt."""
        return await self._admitted(request, self._route)

    async def _route(self, request: Request) -> Any:
        try:
            req = await self._read(request, RouteRequest)
            profile = self.names.resolve(req.model)
            if (req.prompt is None) == (req.messages is None):
                raise APIError(400, "give exactly one of 'prompt' or 'messages'", "prompt", "invalid_value")
        except APIError as exc:
            return _json_error(exc)
        messages = (
            None if req.messages is None else [{"role": m.role, "content": m.text()} for m in req.messages]
        )
        result = await self._call("route", ModelCall(profile, messages=messages, prompt=req.prompt))
        if isinstance(result, JSONResponse):
            return result
        return {"object": "route", "model": req.model, **result}

    def _model_cards(self) -> list[dict[str, Any]]:
        data = [
            {"id": self.names.base, "object": "model", "created": 0, "owned_by": "mdkif", "profile": None}
        ]
        for name, p in self.info["profiles"].items():
            data.append(
                {
                    "id": f"{self.names.base}:{name}",
                    "object": "model",
                    "created": 0,
                    "owned_by": "mdkif",
                    "profile": name,
                    **p,
                }
            )
        return data

    def _refusal(self, request: Request, model_id: str | None = None) -> JSONResponse | None:
        """The 401 (wrong key) or 404 (unknown model id) for a GET, or None when it may proceed."""
        try:
            check_api_key(request.headers.get("authorization"), self.api_key)
            if model_id is not None:
                self.names.resolve(model_id)
        except APIError as exc:
            return _json_error(exc)
        return None

    @api.get("/v1/models")
    async def models(self, request: Request) -> Any:
        return self._refusal(request) or {"object": "list", "data": self._model_cards()}

    @api.get("/v1/models/{model_id:path}")
    async def model_card(self, model_id: str, request: Request) -> Any:
        return self._refusal(request, model_id) or next(m for m in self._model_cards() if m["id"] == model_id)

    @api.get("/v1/stats")
    async def stats(self, request: Request) -> Any:
        """The ingress's admission counters and the model replica's (merged-weight cache, batch sizes,
        cancelled rows); needs the key. The model's part waits at most STATS_WAIT_S: a replica at its
        request limit queues the call behind generation, and a stats page must not hang on that."""
        if (refused := self._refusal(request)) is not None:
            return refused
        out: dict[str, Any] = {"object": "stats", "ingress": self.admission.stats()}
        try:
            out["model"] = await asyncio.wait_for(self.model.stats.remote({}), STATS_WAIT_S)
        except Exception as exc:  # noqa: BLE001 - busy or restarting: say so, answer anyway
            err = _failure(exc, STATS_WAIT_S)
            out["model"] = {"status": "unavailable", "message": err.message}
        return out

    @api.get("/healthz")
    async def healthz(self) -> Any:
        """200 when Serve's controller counts a running model replica, else 503 (no key: for probes).

        It asks the controller, not the model replica, so a replica busy generating is not reported dead.
        """
        try:
            running = await asyncio.wait_for(asyncio.to_thread(self._running_model_replicas), 5.0)
        except Exception as exc:  # noqa: BLE001
            return JSONResponse(
                {
                    "status": "unavailable",
                    **error_body(f"controller: {type(exc).__name__}: {exc}", "server_error"),
                },
                status_code=503,
            )
        if running < 1:
            return JSONResponse(
                {
                    "status": "unavailable",
                    **error_body(f"no running model replica in app {self.app_name!r}", "server_error"),
                },
                status_code=503,
            )
        return {"status": "ok", "model_replicas": running}

    def _running_model_replicas(self) -> int:
        app = serve.status().applications.get(self.app_name or "")
        dep = app.deployments.get("RoutedModel") if app is not None else None
        if dep is None or _value(dep.status) == "UNHEALTHY":
            return 0
        return sum(int(n) for state, n in dep.replica_states.items() if _value(state) == "RUNNING")
