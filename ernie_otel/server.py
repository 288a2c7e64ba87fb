"""``ernie-serve``: an OpenAI-compatible server for ERNIE-4.5, instrumented with OpenTelemetry."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import DEFAULT_KEY_NAME, KeyRing
from .backends import Backend, Call, Outcome, error_response, make_backend, record_outcome, timing_headers
from .kinds import ErrorType, Operation, Status
from .protocol import (
    CHAT_REQUEST_SCHEMA,
    COMPLETION_REQUEST_SCHEMA,
    APIError,
    parse_chat,
    parse_completion,
    parse_json,
)
from .serve import ServeConfig
from .stats import EngineStats
from .telemetry.recorder import Recorder
from .telemetry.setup import describe_telemetry

log = logging.getLogger("ernie_otel.server")


class ErnieServer:
    """Routes, and the steps of a request that are the same for every backend (auth, body limit,
    validation, the model name, error answers); the backend generates the answer."""

    def __init__(self, config: ServeConfig,
                 recorder_factory: Callable[[str, Callable[[], EngineStats | None]], Recorder],
                 keys: KeyRing | None = None) -> None:
        self.config = config
        self.keys = keys if keys is not None else KeyRing(config.api_key, config.api_key_file)
        # Lifecycle: after SIGTERM the server drains (ernie_otel.lifecycle) -- /health and new API
        # requests answer 503 while the requests in flight (counted by InFlight) finish.
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.model_name = config.served_model_name or (
            "ernie-4.5-tiny" if config.model == "tiny" else config.model.rstrip("/").split("/")[-1])
        self.backend: Backend = make_backend(config, self.model_name)
        self.recorder: Recorder = recorder_factory(self.model_name, self._backend_stats)
        self.created = int(time.time())

    def _backend_stats(self) -> EngineStats | None:
        return self.backend.stats

    # -------------------------------------------------------------------- checks
    def _check_auth(self, request: Request) -> None:
        """Refuse a request without a valid key; else put the key's name (never the key) on
        ``request.state.api_key_name`` (None when no key is required) for tenant attribution."""
        request.state.api_key_name = None
        if not self.keys.required:
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        name = self.keys.identify(token)
        if name is None:
            raise APIError(401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
                           ErrorType.AUTHENTICATION, openai_type="authentication_error", code="invalid_api_key")
        request.state.api_key_name = name

    def _check_serving(self) -> None:
        if self.draining:
            raise APIError(503, "The server is shutting down; retry on another replica or shortly.",
                           ErrorType.NOT_READY, openai_type="service_unavailable_error", status=Status.REJECTED,
                           code="shutting_down", headers={"Retry-After": "1"})

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_request_bytes
        declared = request.headers.get("content-length")
        too_large = APIError(413, f"Request body exceeds the limit of {limit} bytes.", ErrorType.PAYLOAD_TOO_LARGE,
                             code="payload_too_large")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.model_name:
            raise APIError(404, f"The model '{requested}' does not exist. This server serves '{self.model_name}'.",
                           ErrorType.MODEL_NOT_FOUND, param="model", code="model_not_found")

    # -------------------------------------------------------------------- the request path
    async def handle(self, request: Request, operation: Operation) -> Response:
        prefix = "chatcmpl" if operation is Operation.CHAT else "cmpl"
        response_id = f"{prefix}-{uuid.uuid4().hex}"
        rt = self.recorder.start(operation.value, response_id)
        try:
            self._check_serving()
            self._check_auth(request)
            # After auth: a named API key decides the tenant; an unnamed one ("default") leaves it
            # to the tenant header, as with a single --api-key.
            key_name = request.state.api_key_name
            self.recorder.attribute(rt, request.headers, None if key_name == DEFAULT_KEY_NAME else key_name)
            if not self.backend.ready:
                raise APIError(503, "The model is still loading; retry shortly." if self.backend.load_error is None
                               else "The model failed to load.", ErrorType.NOT_READY,
                               openai_type="service_unavailable_error", status=Status.REJECTED,
                               headers={"Retry-After": "5"})
            data = parse_json(await self._read_body(request))
            req = parse_chat(data) if operation is Operation.CHAT else parse_completion(data)
            self._check_model(req.model)
            return await self.backend.generate(Call(operation, req, data, response_id, request, rt, self.recorder,
                                                    self.config.response_metrics and req.return_metrics))
        except APIError as err:
            record_outcome(self.recorder, rt, Outcome.ERROR, err)
            return error_response(err, {**self.recorder.trace_headers(rt), **timing_headers(rt)})

    # -------------------------------------------------------------------- app
    def create_app(self, telemetry: Any = None) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            await self.backend.start()
            yield
            await self.backend.stop()

        app = FastAPI(title="ernie-serve", lifespan=lifespan, docs_url=None, redoc_url=None)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
            kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
            return JSONResponse({"error": {"message": str(exc.detail), "type": kind, "param": None,
                                           "code": str(exc.status_code)}}, status_code=exc.status_code,
                                headers=getattr(exc, "headers", None))

        @app.exception_handler(RequestValidationError)
        async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
            return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error", "param": None,
                                           "code": None}}, status_code=400)

        @app.exception_handler(Exception)
        async def internal_error(_: Request, exc: Exception) -> JSONResponse:
            log.exception("unhandled error")
            return JSONResponse({"error": {"message": "Internal server error.", "type": "server_error",
                                           "param": None, "code": "internal_error"}}, status_code=500)

        def body_schema(schema: dict[str, Any]) -> dict[str, Any]:
            # The handlers read the raw body (for the size limit and OpenAI-style errors), so FastAPI
            # cannot infer it: the OpenAPI document gets the schema from the protocol module.
            return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

        @app.post("/v1/chat/completions", openapi_extra=body_schema(CHAT_REQUEST_SCHEMA))
        async def chat_completions(request: Request) -> Response:
            return await self.handle(request, Operation.CHAT)

        @app.post("/v1/completions", openapi_extra=body_schema(COMPLETION_REQUEST_SCHEMA))
        async def completions(request: Request) -> Response:
            return await self.handle(request, Operation.TEXT_COMPLETION)

        @app.get("/v1/models")
        async def models(request: Request) -> Response:
            try:
                self._check_serving()
                self._check_auth(request)
            except APIError as err:
                return error_response(err, {})
            return JSONResponse({"object": "list", "data": [{
                "id": self.model_name, "object": "model", "created": self.created, "owned_by": "ernie-otel",
                "root": self.backend.root, "max_model_len": self.backend.max_model_len}]})

        @app.get("/stats")
        async def stats() -> Response:
            """Engine and telemetry state for operators and tests (not an OpenAI route)."""
            engine = self.backend.stats
            return JSONResponse({
                "model": self.model_name,
                "engine": None if engine is None else {
                    "waiting": engine.waiting, "running": engine.running, "steps": engine.steps,
                    "max_batch_seen": engine.max_batch_seen, "max_num_seqs": engine.max_num_seqs,
                    "max_queue_len": engine.max_queue_len, "tokens_per_second": engine.tokens.rate()},
                "telemetry": describe_telemetry(telemetry),
            })

        @app.get("/health")
        async def health() -> Response:
            if self.draining:  # load balancers stop sending here at once
                return JSONResponse({"status": "draining", "in_flight": self.in_flight}, status_code=503)
            if self.backend.ready:
                return JSONResponse({"status": "ok", "model": self.model_name})
            error = self.backend.load_error
            return JSONResponse({"status": "failed" if error else "loading", "error": error}, status_code=503)

        app.add_middleware(InFlight, server=self)
        if telemetry is not None and telemetry.mode != "disabled" and not getattr(
                app, "_is_instrumented_by_opentelemetry", False):
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

            # send/receive spans would add one span per SSE chunk: per-token telemetry work.
            FastAPIInstrumentor.instrument_app(
                app, tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                excluded_urls=os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "health,metrics"),
                exclude_spans=["receive", "send"])
        return app

    # -------------------------------------------------------------------- lifecycle
    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no API request is in flight; False if ``timeout`` seconds pass first."""
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def drain(self, grace: float) -> None:
        """Refuse new requests, give those in flight ``grace`` seconds, then cancel the rest."""
        self.draining = True
        log.info("draining: %d requests in flight, up to %gs to finish", self.in_flight, grace)
        if not await self.wait_idle(grace):
            await self.cancel_in_flight(f"the shutdown grace period of {grace:g}s ended")

    async def cancel_in_flight(self, why: str) -> None:
        """End every request still running; a stream gets an error event saying the server stopped."""
        self.draining = True
        if self.in_flight:
            log.warning("%s: cancelling %d requests in flight", why, self.in_flight)
        await self.backend.stop()  # the engine finishes what it holds as cancelled by the shutdown
        await self.wait_idle(5.0)


class InFlight:
    """ASGI middleware counting API requests until their last byte is sent (a stream included)."""

    def __init__(self, app: ASGIApp, server: ErnieServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        self.server.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.server.leave()
