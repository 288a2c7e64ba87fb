"""``ernie-serve``: an OpenAI-compatible server for ERNIE-4.5, instrumented with OpenTelemetry."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import AsyncDeliverer, Engine, EngineStoppedError, Event, QueueFullError, SamplingParams, Sequence
from .gateway import Gateway
from .gateway import error_response as gateway_error_response
from .model_loading import ModelUnavailableError as ModelUnavailableError  # moved; old imports work
from .model_loading import load_model, resolve_model_path
from .names import ErrorType, FinishReason, Operation, Status
from .protocol import APIError, GenerationRequest, parse_chat, parse_completion, parse_json
from .serve import ServeConfig
from .serve import main as main  # the entry point of installs made before ernie-serve moved to ernie_otel.serve
from .stats import EngineStats
from .telemetry.recorder import Recorder, RequestTelemetry
from .telemetry.setup import describe_telemetry

log = logging.getLogger("ernie_otel.server")

# Valid raw in JSON, but line breaks to str.splitlines-based stream readers (httpx's aiter_lines,
# for one) and to JavaScript before ES2019: escaped, the data line stays one line for every client.
_SSE_ESCAPES = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _sse(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if not text.isascii():
        text = text.translate(_SSE_ESCAPES)
    return b"data: " + text.encode() + b"\n\n"


class ErnieServer:
    """Routes, request lifecycle and the bridge between asyncio and the engine thread."""

    def __init__(self, config: ServeConfig, recorder_factory: Any) -> None:
        self.config = config
        self.model_name = config.served_model_name or (
            "ernie-4.5-tiny" if config.model == "tiny" else config.model.rstrip("/").split("/")[-1])
        self.engine: Engine | None = None
        self.gateway: Gateway | None = None
        if config.upstream:
            self.gateway = Gateway(config.upstream, timeout=config.upstream_timeout,
                                   max_in_flight=config.max_num_seqs + config.max_queue_len,
                                   api_key=config.upstream_api_key)

        self.tokenizer: Any = None
        self.model_path: Path | None = None
        self.load_error: str | None = None
        self.recorder: Recorder = recorder_factory(self.model_name, self._engine_stats)
        self.created = int(time.time())

    def _engine_stats(self) -> EngineStats | None:
        if self.gateway is not None:
            return self.gateway.stats
        return self.engine.stats if self.engine is not None else None

    @property
    def ready(self) -> bool:
        return self.gateway is not None or self.engine is not None

    async def connect_upstream(self) -> None:
        """Learn the upstream's model id, to name it in forwarded requests; until then requests go
        out under the served name (an upstream that is down answers them with 502)."""
        assert self.gateway is not None
        delay = 0.5
        while True:
            try:
                upstream_model = await self.gateway.discover_model()
                log.info("gateway: upstream %s serves %r; exposed as %r", self.gateway.base, upstream_model,
                         self.model_name)
                return
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                log.warning("gateway: upstream %s not answering /v1/models yet (%r)", self.gateway.base, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # -------------------------------------------------------------------- loading
    def load(self) -> None:
        try:
            path = resolve_model_path(self.config.model)
            model, tokenizer = load_model(path, self.config.device, self.config.dtype, self.config.torch_threads)
            limit = getattr(model.config, "max_position_embeddings", None)
            if limit and self.config.max_model_len > limit:
                log.warning("--max-model-len %d exceeds the model's %d; using %d",
                            self.config.max_model_len, limit, limit)
                self.config = dataclasses.replace(self.config, max_model_len=limit)  # the config is frozen
            engine = Engine(model, tokenizer, max_num_seqs=self.config.max_num_seqs,
                            max_queue_len=self.config.max_queue_len, max_model_len=self.config.max_model_len,
                            max_num_batched_tokens=self.config.max_num_batched_tokens)
            # torch, transformers and the model leave ~450k long-lived objects that every full
            # garbage collection would walk again (~200 ms each, stalling the event loop and the
            # engine); freezing them keeps collections to what requests allocate.
            gc.collect()
            gc.freeze()
            engine.start()
            self.tokenizer, self.model_path, self.engine = tokenizer, path, engine
            log.info("model %s loaded from %s; serving as %r", self.config.model, path, self.model_name)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model load failed: %s", self.load_error)

    # -------------------------------------------------------------------- helpers
    def _check_auth(self, request: Request) -> None:
        if not self.config.api_key:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else None
        if token != self.config.api_key:
            raise APIError(401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
                           ErrorType.AUTHENTICATION, openai_type="authentication_error", code="invalid_api_key")

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

    def _tokenize(self, req: GenerationRequest) -> list[int]:
        tok = self.tokenizer
        if req.messages is not None:
            text = tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        ids = list(tok(req.prompt, add_special_tokens=False)["input_ids"])
        if tok.bos_token_id is not None:
            ids.insert(0, tok.bos_token_id)
        return ids

    def _max_tokens(self, req: GenerationRequest, prompt_len: int) -> int:
        limit = self.config.max_model_len
        if prompt_len >= limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens; the prompt has "
                           f"{prompt_len} tokens.", ErrorType.CONTEXT_LENGTH_EXCEEDED, param="messages"
                           if req.messages is not None else "prompt", code="context_length_exceeded")
        if req.max_tokens is None:
            return min(self.config.default_max_tokens, limit - prompt_len)
        if prompt_len + req.max_tokens > limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens; the prompt has "
                           f"{prompt_len} tokens and max_tokens asks for {req.max_tokens} more.",
                           ErrorType.CONTEXT_LENGTH_EXCEEDED, param="max_tokens", code="context_length_exceeded")
        return req.max_tokens

    def _error_response(self, err: APIError, rt: RequestTelemetry | None = None) -> JSONResponse:
        headers = dict(err.headers)
        if rt is not None:
            headers.update(self.recorder.trace_headers(rt))
        return JSONResponse(err.body(), status_code=err.status_code, headers=headers)

    # -------------------------------------------------------------------- the request path
    async def handle(self, request: Request, operation: Operation) -> Response:
        op = operation.value
        prefix = "chatcmpl" if operation is Operation.CHAT else "cmpl"
        response_id = f"{prefix}-{uuid.uuid4().hex}"
        rt = self.recorder.start(op, response_id)
        try:
            self._check_auth(request)
            if not self.ready:
                raise APIError(503, "The model is still loading; retry shortly." if self.load_error is None
                               else "The model failed to load.", ErrorType.NOT_READY,
                               openai_type="service_unavailable_error", status=Status.REJECTED,
                               headers={"Retry-After": "5"})
            data = parse_json(await self._read_body(request))
            req = parse_chat(data) if operation is Operation.CHAT else parse_completion(data)
            self._check_model(req.model)
            if self.gateway is not None:
                st = rt.stats
                st.max_tokens, st.stream = req.max_tokens, req.stream
                st.temperature, st.top_p, st.seed = req.temperature, req.top_p, req.seed
                self.recorder.set_request_params(rt, req.messages if req.messages is not None else req.prompt)
                return await self.gateway.forward(operation, req, data, rt, self.recorder)
            prompt_ids = self._tokenize(req)
            max_tokens = self._max_tokens(req, len(prompt_ids))
            st = rt.stats
            st.prompt_tokens, st.max_tokens, st.stream = len(prompt_ids), max_tokens, req.stream
            st.temperature, st.top_p, st.seed = req.temperature, req.top_p, req.seed
            self.recorder.set_request_params(rt, req.messages if req.messages is not None else req.prompt)
            events: asyncio.Queue[Event] = asyncio.Queue()
            seq = Sequence(prompt_ids, SamplingParams(max_tokens, req.temperature, req.top_p, req.seed, req.stop,
                                                      req.ignore_eos),
                           st, AsyncDeliverer(asyncio.get_running_loop(), events))
            try:
                self.engine.submit(seq)
            except QueueFullError:
                raise APIError(429, f"The server is at capacity: {self.config.max_queue_len} requests are already "
                               "waiting. Retry after a short wait.", ErrorType.QUEUE_FULL,
                               openai_type="rate_limit_error",
                               code="queue_full", status=Status.REJECTED, headers={"Retry-After": "1"}) from None
            except EngineStoppedError:
                raise APIError(503, "The server is shutting down.", ErrorType.NOT_READY,
                               openai_type="service_unavailable_error", status=Status.REJECTED) from None
        except APIError as err:
            self.recorder.finish(rt, err.status.value, error_type=err.error_type.value, exception=err)
            return gateway_error_response(err, self.recorder.trace_headers(rt))

        headers = self.recorder.trace_headers(rt)
        if req.stream:
            return StreamingResponse(self._stream(request, operation, req, seq, events, rt, response_id),
                                     media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
        return await self._complete(request, operation, seq, events, rt, response_id, headers)

    def _usage(self, seq: Sequence) -> dict[str, int]:
        p, c = seq.stats.prompt_tokens, seq.stats.output_tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _engine_failed(self, rt: RequestTelemetry, event: Event) -> APIError:
        err = APIError(500, event.error or "The engine failed.", ErrorType.ENGINE_ERROR, openai_type="server_error",
                       code="engine_error")
        self.recorder.finish(rt, Status.ERROR.value, error_type=ErrorType.ENGINE_ERROR.value, exception=err)
        return err

    async def _complete(self, request: Request, operation: Operation, seq: Sequence, events: asyncio.Queue[Event],
                        rt: RequestTelemetry, response_id: str, headers: dict[str, str]) -> Response:
        parts: list[str] = []
        finish: Event | None = None
        try:
            while finish is None:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise asyncio.CancelledError from None
                    continue
                parts.append(event.delta)
                if event.finish_reason is not None:
                    finish = event
        except asyncio.CancelledError:
            self._abandon(seq, rt)
            raise
        if finish.finish_reason == FinishReason.ERROR.value:
            return self._error_response(self._engine_failed(rt, finish), rt)
        text = "".join(parts)
        if finish.finish_reason == FinishReason.CANCELLED.value:  # server shutting down
            err = APIError(503, finish.error or "cancelled", ErrorType.NOT_READY,
                           openai_type="service_unavailable_error", status=Status.CANCELLED)
            self.recorder.finish(rt, Status.CANCELLED.value, error_type=None, exception=err)
            return self._error_response(err, rt)
        self.recorder.finish(rt, Status.OK.value, response_id=response_id, output_text=text)
        base = {"id": response_id, "created": int(time.time()), "model": self.model_name,
                "usage": self._usage(seq)}
        if operation is Operation.CHAT:
            body = {**base, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish.finish_reason}]}
        else:
            body = {**base, "object": "text_completion", "choices": [{
                "index": 0, "text": text, "logprobs": None, "finish_reason": finish.finish_reason}]}
        return JSONResponse(body, headers=headers)

    def _abandon(self, seq: Sequence, rt: RequestTelemetry) -> None:
        """The client went away: free the slot and count the request as cancelled."""
        if self.engine is not None and not seq.finished:
            self.engine.cancel(seq)
        if seq.stats.finish_reason is None:
            seq.stats.finish_reason = FinishReason.CANCELLED.value
        self.recorder.finish(rt, Status.CANCELLED.value)

    async def _stream(self, request: Request, operation: Operation, req: GenerationRequest, seq: Sequence,
                      events: asyncio.Queue[Event], rt: RequestTelemetry, response_id: str) -> AsyncIterator[bytes]:
        created = int(time.time())
        chat = operation is Operation.CHAT
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish_reason: str | None, first: bool = False) -> dict[str, Any]:
            if chat:
                d: dict[str, Any] = {"role": "assistant", "content": delta or ""} if first else (
                    {"content": delta} if delta else {})
                choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish_reason}
            out = {"id": response_id, "object": obj, "created": created, "model": self.model_name, "choices": [choice]}
            if req.include_usage:
                out["usage"] = None
            return out

        parts: list[str] = []
        try:
            if chat:
                yield _sse(chunk("", None, first=True))
            while True:
                event = await events.get()
                if event.finish_reason == FinishReason.ERROR.value:
                    err = self._engine_failed(rt, event)
                    yield _sse(err.body())
                    break
                if event.finish_reason == FinishReason.CANCELLED.value:
                    self.recorder.finish(rt, Status.CANCELLED.value)
                    yield _sse(APIError(503, event.error or "cancelled", ErrorType.NOT_READY,
                                        openai_type="service_unavailable_error").body())
                    break
                if event.delta:
                    parts.append(event.delta)
                if event.finish_reason is None:
                    yield _sse(chunk(event.delta, None))
                    continue
                if event.delta:
                    yield _sse(chunk(event.delta, None))
                yield _sse(chunk(None, event.finish_reason))
                if req.include_usage:
                    yield _sse({"id": response_id, "object": obj, "created": created, "model": self.model_name,
                                "choices": [], "usage": self._usage(seq)})
                self.recorder.finish(rt, Status.OK.value, response_id=response_id, output_text="".join(parts))
                break
            yield b"data: [DONE]\n\n"
        finally:
            # GeneratorExit/CancelledError: the client disconnected mid-stream.
            if not rt.done:
                self._abandon(seq, rt)

    # -------------------------------------------------------------------- app
    def create_app(self, telemetry: Any = None) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            connect = None
            if self.gateway is not None:
                connect = asyncio.create_task(self.connect_upstream())
            else:
                threading.Thread(target=self.load, name="ernie-load", daemon=True).start()
            yield
            if connect is not None:
                connect.cancel()
            if self.gateway is not None:
                await self.gateway.close()
            if self.engine is not None:
                await asyncio.to_thread(self.engine.shutdown)

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

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            return await self.handle(request, Operation.CHAT)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self.handle(request, Operation.TEXT_COMPLETION)

        @app.get("/v1/models")
        async def models(request: Request) -> Response:
            try:
                self._check_auth(request)
            except APIError as err:
                return self._error_response(err)
            return JSONResponse({"object": "list", "data": [{
                "id": self.model_name, "object": "model", "created": self.created, "owned_by": "ernie-otel",
                "root": str(self.model_path or self.config.model), "max_model_len": self.config.max_model_len}]})

        @app.get("/stats")
        async def stats() -> Response:
            """Engine and telemetry state for operators and tests (not an OpenAI route)."""
            engine = self._engine_stats()
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
            if self.ready:
                return JSONResponse({"status": "ok", "model": self.model_name})
            state = "failed" if self.load_error else "loading"
            return JSONResponse({"status": state, "error": self.load_error}, status_code=503)

        if telemetry is not None and telemetry.mode != "disabled" and not getattr(
                app, "_is_instrumented_by_opentelemetry", False):
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

            # send/receive spans would add one span per SSE chunk: per-token telemetry work.
            FastAPIInstrumentor.instrument_app(
                app, tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                excluded_urls=os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "health,metrics"),
                exclude_spans=["receive", "send"])
        return app
