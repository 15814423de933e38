"""The three Serve deployments: Ingress (FastAPI, OpenAI API) -> RoutedModel (batched) -> Retriever (Chroma).

They are composed by handles: `build_app` binds the Retriever into the RoutedModel and the RoutedModel into
the Ingress, and Serve passes each replica a `DeploymentHandle` to the next one. This module imports no
torch at the top: the ingress replica only parses, checks and forwards requests.

Failure handling: the RoutedModel answers a bad request with an `{"error": ..., "status": ...}` dict
(never an exception, so the ingress needs no exception translation across Ray); the ingress turns a dead
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
    SSE_DONE,
    APIError,
    ChatRequest,
    CompletionRequest,
    LimitsConfig,
    ModelNames,
    RouteRequest,
    chat_response,
    check_api_key,
    check_limits,
    completion_response,
    error_body,
    generation_params,
    new_id,
    parse_body,
    sse,
    stream_chunk,
    usage,
)

log = logging.getLogger("ray.serve")


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"status": status, **APIError(status, message, param, code).body()}


# ---- Retriever ----------------------------------------------------------------------------------------
@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Retriever:
    """The persistent Chroma index (dense, BM25 or hybrid), queried with the question only."""

    def __init__(self, rag: dict[str, Any]) -> None:
        from mdkif.rag.retriever import ChromaRetriever

        self.retriever = ChromaRetriever.open(rag["persist_dir"], rag.get("collection"), mode=rag["mode"])

    def retrieve(self, question: str, k: int) -> list[dict[str, Any]]:
        return [p.model_dump() for p in self.retriever.retrieve(question, k)]


# ---- RoutedModel --------------------------------------------------------------------------------------
@serve.deployment(ray_actor_options={"num_cpus": 1})
class RoutedModel:
    """The base model with the skill bank; same-profile requests batched by `@serve.batch`."""

    def __init__(self, cfg: dict[str, Any], retriever: DeploymentHandle | None = None) -> None:
        from mdkif.serving.config import ServeAppConfig
        from mdkif.serving.engine import RoutedEngine

        self.cfg = ServeAppConfig.model_validate(cfg)
        self.engine = RoutedEngine(self.cfg)
        self.retriever = retriever
        b = self.cfg.batching
        self.batching = b.enabled
        self.generate_batched.set_max_batch_size(b.max_batch_size)
        self.generate_batched.set_batch_wait_timeout_s(b.batch_wait_timeout_s)
        self.batch_sizes: dict[int, int] = {}  # how many batches of each size ran (see /healthz)

    async def _prepare(self, req: dict[str, Any]) -> Any:
        """Request dict -> GenRequest: profile, retrieval, chat template, token limits."""
        from mdkif.rag.types import Passage
        from mdkif.serving.engine import GenRequest

        prof = self.engine.profile(req["profile"])
        use_rag = prof.rag if req.get("rag") is None else req["rag"]
        messages, prompt = req.get("messages"), req.get("prompt")
        passages: list[Passage] = []
        if use_rag:
            if self.retriever is None:
                raise APIError(
                    400, "'rag': retrieval is not configured on this server", "rag", "invalid_value"
                )
            found = await self.retriever.retrieve.remote(self.engine.question(messages, prompt), prof.k)
            passages = [Passage(**p) for p in found]
        ids = self.engine.render(messages=messages, prompt=prompt, passages=passages)
        self.engine.check_length(ids, req["max_tokens"], "messages" if messages is not None else "prompt")
        meta = {"profile": req["profile"], "passages": [{"id": p.id, "title": p.title} for p in passages]}
        keys = ("max_tokens", "temperature", "top_p", "seed", "stop", "ignore_eos")
        return GenRequest(ids, req["profile"], **{k: req[k] for k in keys}, meta=meta)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def generate_batched(self, reqs: list[Any]) -> list[dict[str, Any]]:
        # The forward runs in a thread so the replica keeps accepting (and batching) requests meanwhile.
        self.batch_sizes[len(reqs)] = self.batch_sizes.get(len(reqs), 0) + 1
        return await asyncio.to_thread(self.engine.generate_batch, reqs)

    async def generate(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            gen = await self._prepare(req)
        except APIError as exc:
            return {"status": exc.status, **exc.body()}
        if self.batching:
            return await self.generate_batched(gen)
        return (await asyncio.to_thread(self.engine.generate_batch, [gen]))[0]

    async def stream(self, req: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """First yields `{"ok": True}` (or an error) once the request is accepted, then the text chunks."""
        try:
            gen = await self._prepare(req)
        except APIError as exc:
            yield {"status": exc.status, **exc.body()}
            return
        yield {"ok": True}
        steps = self.engine.stream(gen)  # streaming bypasses batching: one request, one token loop
        while True:
            chunk = await asyncio.to_thread(next, steps, None)
            if chunk is None:
                return
            yield chunk

    async def route(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            ids = self.engine.render(messages=req.get("messages"), prompt=req.get("prompt"))
            self.engine.check_length(ids, 0, "messages" if req.get("messages") is not None else "prompt")
        except APIError as exc:
            return {"status": exc.status, **exc.body()}
        return await asyncio.to_thread(self.engine.route, req["profile"], ids)

    def stats(self) -> dict[str, Any]:
        sizes = dict(sorted(self.batch_sizes.items()))
        return {**self.engine.stats(), "pid": os.getpid(), "batching": self.batching, "batch_sizes": sizes}


# ---- Ingress ------------------------------------------------------------------------------------------
api = FastAPI(title="MDKIF", description="OpenAI-compatible API over the routed medical model")


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown paths and wrong methods get the same JSON error shape as everything else.
    return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)


def _json_error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _failure(exc: BaseException, timeout: float) -> JSONResponse:
    """A failed call to the model: 504 when it timed out, 503 when the replica is gone, else 500."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, TimeoutError):
        return _json_error(APIError(504, f"the model did not answer within {timeout:g} s", code="timeout"))
    if isinstance(exc, RayActorError | BackPressureError | DeploymentUnavailableError):
        return _json_error(
            APIError(
                503, "the model replica is unavailable (restarting or overloaded); retry", code="unavailable"
            )
        )
    log.exception("model call failed")
    return _json_error(APIError(500, f"internal error: {type(exc).__name__}", code="internal_error"))


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    """POST /v1/chat/completions, /v1/completions, /v1/route; GET /v1/models, /healthz."""

    def __init__(self, model: DeploymentHandle, info: dict[str, Any]) -> None:
        self.model = model
        self.info = info
        self.limits = LimitsConfig.model_validate(info["limits"])
        self.names = ModelNames(info["served_name"], list(info["profiles"]))
        env = info.get("api_key_env")
        self.api_key = os.environ.get(env) if env else None
        if info.get("require_api_key") and not self.api_key:
            raise RuntimeError(f"require_api_key is set but ${env} is empty in the ingress replica")

    async def _read(self, request: Request, schema: type) -> Any:
        check_api_key(request.headers.get("authorization"), self.api_key)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.limits.max_request_bytes:
            raise APIError(
                413,
                f"request body is {length} bytes; the limit is {self.limits.max_request_bytes}",
                code="request_too_large",
            )
        req = parse_body(await request.body(), schema, self.limits)
        check_limits(req, self.limits)
        return req

    async def _call(self, method: str, payload: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        timeout = self.limits.request_timeout_s
        try:
            return await asyncio.wait_for(getattr(self.model, method).remote(payload), timeout)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON answer, never a hang
            return _failure(exc, timeout)

    async def _complete(self, request: Request, kind: str) -> Any:
        schema = ChatRequest if kind == "chat" else CompletionRequest
        try:
            req = await self._read(request, schema)
            profile = self.names.resolve(req.model)
        except APIError as exc:
            return _json_error(exc)
        payload: dict[str, Any] = {
            "profile": profile,
            "rag": req.rag,
            **generation_params(req, self.limits, self.info["default_temperature"]),
        }
        if kind == "chat":
            payload["messages"] = [{"role": m.role, "content": m.text()} for m in req.messages]
        else:
            payload["prompt"] = req.prompt
        if req.stream:
            return await self._stream(payload, kind, req)
        result = await self._call("generate", payload)
        if isinstance(result, JSONResponse):
            return result
        if "error" in result:
            return JSONResponse({"error": result["error"]}, status_code=result["status"])
        if kind == "chat":
            return chat_response(req.model, result)
        return completion_response(req.model, result, req.prompt if req.echo else "")

    async def _stream(self, payload: dict[str, Any], kind: str, req: Any) -> Any:
        timeout = self.limits.request_timeout_s
        gen = self.model.options(stream=True).stream.remote(payload)
        try:  # wait for the replica to accept (or refuse) the request before answering 200
            first = await asyncio.wait_for(gen.__anext__(), timeout)
        except Exception as exc:  # noqa: BLE001
            gen.cancel()
            return _failure(exc, timeout)
        if "error" in first:
            return JSONResponse({"error": first["error"]}, status_code=first["status"])
        id_ = new_id("chatcmpl" if kind == "chat" else "cmpl")
        include_usage = bool((req.stream_options or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            if kind == "chat":
                yield sse(stream_chunk(kind, id_, req.model, None, None, role=True))
            try:
                while True:
                    try:
                        chunk = await asyncio.wait_for(gen.__anext__(), timeout)
                    except StopAsyncIteration:
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
                yield sse(
                    error_body(f"stream aborted: {err.body.decode()}", "server_error", code="stream_aborted")
                )
            yield SSE_DONE

        return StreamingResponse(events(), media_type="text/event-stream")

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        return await self._complete(request, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        return await self._complete(request, "completion")

    @api.post("/v1/route")
    async def route(self, request: Request) -> Any:
        """The skill weights a profile (fixed, static router or input-conditioned gate) gives a prompt."""
        try:
            req = await self._read(request, RouteRequest)
            profile = self.names.resolve(req.model)
            if (req.prompt is None) == (req.messages is None):
                raise APIError(400, "give exactly one of 'prompt' or 'messages'", "prompt", "invalid_value")
        except APIError as exc:
            return _json_error(exc)
        payload: dict[str, Any] = {"profile": profile}
        if req.messages is not None:
            payload["messages"] = [{"role": m.role, "content": m.text()} for m in req.messages]
        else:
            payload["prompt"] = req.prompt
        result = await self._call("route", payload)
        if isinstance(result, JSONResponse):
            return result
        if "error" in result:
            return JSONResponse({"error": result["error"]}, status_code=result["status"])
        return {"object": "route", "model": req.model, **result}

    @api.get("/v1/models")
    async def models(self, request: Request) -> Any:
        try:
            check_api_key(request.headers.get("authorization"), self.api_key)
        except APIError as exc:
            return _json_error(exc)
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
        return {"object": "list", "data": data}

    @api.get("/healthz")
    async def healthz(self) -> Any:
        """200 when the model replica answers within 5 s, else 503 (no key needed: for probes)."""
        try:
            stats = await asyncio.wait_for(self.model.stats.remote(), 5.0)
        except Exception as exc:  # noqa: BLE001
            return JSONResponse(
                {"status": "unavailable", **error_body(f"model: {type(exc).__name__}", "server_error")},
                status_code=503,
            )
        return {"status": "ok", "model": stats}
