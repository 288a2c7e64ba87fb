"""``ernie-serve``: an OpenAI-compatible server for ERNIE-4.5, instrumented with OpenTelemetry."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import names
from .backends import Backend, Call, Outcome, error_response, make_backend, record_outcome
from .backends.loading import ModelUnavailableError, resolve_model_path
from .kinds import ErrorType, Operation, Status
from .ports import DEFAULT_PORTS, HOST
from .protocol import APIError, parse_chat, parse_completion, parse_json
from .stats import EngineStats
from .telemetry.recorder import Recorder
from .telemetry.setup import describe_telemetry

log = logging.getLogger("ernie_otel.server")

DEFAULT_MODEL = "baidu/ERNIE-4.5-0.3B-PT"


@dataclass
class ServeConfig:
    model: str = DEFAULT_MODEL
    served_model_name: str | None = None
    host: str = HOST
    port: int = DEFAULT_PORTS["serve"]
    metrics_port: int = DEFAULT_PORTS["serve_metrics"]
    max_model_len: int = 2048
    max_num_seqs: int = 8
    max_queue_len: int = 64
    device: str = "auto"
    dtype: str = "auto"
    api_key: str | None = None
    default_max_tokens: int = 256
    max_request_bytes: int = 1 << 20
    otlp_endpoint: str | None = None
    access_log: bool = False
    log_level: str = "info"
    torch_threads: int = 0  # 0: all cores but one
    upstream: str | None = None
    upstream_timeout: float = 120.0
    upstream_api_key: str | None = None


class ErnieServer:
    """Routes, and the steps of a request that are the same for every backend (auth, body limit,
    validation, the model name, error answers); the backend generates the answer."""

    def __init__(self, config: ServeConfig,
                 recorder_factory: Callable[[str, Callable[[], EngineStats | None]], Recorder]) -> None:
        self.config = config
        self.model_name = config.served_model_name or (
            "ernie-4.5-tiny" if config.model == "tiny" else config.model.rstrip("/").split("/")[-1])
        self.backend: Backend = make_backend(config, self.model_name)
        self.recorder: Recorder = recorder_factory(self.model_name, self._backend_stats)
        self.created = int(time.time())

    def _backend_stats(self) -> EngineStats | None:
        return self.backend.stats

    # -------------------------------------------------------------------- checks
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

    # -------------------------------------------------------------------- the request path
    async def handle(self, request: Request, operation: Operation) -> Response:
        prefix = "chatcmpl" if operation is Operation.CHAT else "cmpl"
        response_id = f"{prefix}-{uuid.uuid4().hex}"
        rt = self.recorder.start(operation.value, response_id)
        try:
            self._check_auth(request)
            if not self.backend.ready:
                raise APIError(503, "The model is still loading; retry shortly." if self.backend.load_error is None
                               else "The model failed to load.", ErrorType.NOT_READY,
                               openai_type="service_unavailable_error", status=Status.REJECTED,
                               headers={"Retry-After": "5"})
            data = parse_json(await self._read_body(request))
            req = parse_chat(data) if operation is Operation.CHAT else parse_completion(data)
            self._check_model(req.model)
            return await self.backend.generate(Call(operation, req, data, response_id, request, rt, self.recorder))
        except APIError as err:
            record_outcome(self.recorder, rt, Outcome.ERROR, err)
            return error_response(err, self.recorder.trace_headers(rt))

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
            if self.backend.ready:
                return JSONResponse({"status": "ok", "model": self.model_name})
            error = self.backend.load_error
            return JSONResponse({"status": "failed" if error else "loading", "error": error}, status_code=503)

        if telemetry is not None and telemetry.mode != "disabled" and not getattr(
                app, "_is_instrumented_by_opentelemetry", False):
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

            # send/receive spans would add one span per SSE chunk: per-token telemetry work.
            FastAPIInstrumentor.instrument_app(
                app, tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                excluded_urls=os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "health,metrics"),
                exclude_spans=["receive", "send"])
        return app


def discover_upstream_model(upstream: str, api_key: str | None, timeout: float = 30.0) -> str:
    base = upstream.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(base + "/v1/models", headers=headers, timeout=5)
            r.raise_for_status()
            return str(r.json()["data"][0]["id"])
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ernie-serve", description="OpenAI-compatible ERNIE-4.5 server with "
                                "OpenTelemetry metrics and traces.")
    d = ServeConfig()
    p.add_argument("--model", default=d.model, help="local model directory, Hugging Face id (loaded offline from "
                   "the HF cache), or 'tiny' for the built-in small random-weight ERNIE-4.5 (default: %(default)s)")
    p.add_argument("--served-model-name", default=None, help="model name in the API and in metric labels")
    p.add_argument("--host", default=os.environ.get("ERNIE_SERVE_HOST", d.host))
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--metrics-port", type=int, default=d.metrics_port, help="Prometheus /metrics port (0: off)")
    p.add_argument("--max-model-len", type=int, default=d.max_model_len, help="prompt + output token limit")
    p.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help="requests running at once")
    p.add_argument("--max-queue-len", type=int, default=d.max_queue_len, help="requests waiting; beyond: 429")
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default=d.dtype, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--torch-threads", type=int, default=0,
                   help="CPU threads for inference (default 0: 1 for small models, else all cores, "
                   "leaving one to the server beyond two)")
    p.add_argument("--api-key", default=os.environ.get("ERNIE_SERVE_API_KEY"), help="require this bearer token")
    p.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens,
                   help="output limit when a request names none")
    p.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes, help="request body limit (413)")
    p.add_argument("--otlp-endpoint", default=None, help="export metrics and spans over OTLP/gRPC to this endpoint "
                   "(standalone mode; the OTEL_* variables work too)")
    p.add_argument("--upstream", default=None, help="gateway mode: forward the OpenAI API to this "
                   "OpenAI-compatible server (FastDeploy, vLLM, ...) instead of loading a model")
    p.add_argument("--upstream-timeout", type=float, default=d.upstream_timeout,
                   help="seconds to wait for the upstream (504 beyond)")
    p.add_argument("--upstream-api-key", default=os.environ.get("ERNIE_UPSTREAM_API_KEY"))
    p.add_argument("--access-log", action="store_true")
    p.add_argument("--log-level", default=d.log_level)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = ServeConfig(**{k: v for k, v in vars(args).items() if k in ServeConfig.__dataclass_fields__})
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream request is noise
    for flag, value in (("--max-num-seqs", config.max_num_seqs), ("--max-model-len", config.max_model_len)):
        if value < 1:
            print(f"ernie-serve: {flag} must be at least 1", file=sys.stderr)
            return 2
    if config.max_queue_len < 0:
        print("ernie-serve: --max-queue-len must be 0 or more", file=sys.stderr)
        return 2
    if config.upstream is None and config.model != "tiny":
        try:
            resolve_model_path(config.model)  # fail before binding ports, with one clear message
        except ModelUnavailableError as exc:
            print(f"ernie-serve: {exc}", file=sys.stderr)
            return 2

    if config.upstream is not None and config.served_model_name is None:
        try:
            config.served_model_name = discover_upstream_model(config.upstream, config.upstream_api_key)
        except Exception as exc:
            print(f"ernie-serve: cannot ask the upstream {config.upstream} for its model ({exc!r}); start it first "
                  "or pass --served-model-name", file=sys.stderr)
            return 2

    from .telemetry.setup import configure

    try:
        names.load_bucket_overrides()
        telemetry = configure(config.otlp_endpoint, prometheus=bool(config.metrics_port))
    except ValueError as exc:
        print(f"ernie-serve: bad telemetry configuration: {exc}", file=sys.stderr)
        return 2

    def recorder_factory(model_name: str, engine_stats: Any) -> Recorder:
        return Recorder(telemetry.meter_provider, telemetry.tracer_provider, model_name, engine_stats,
                        server_address=config.host, server_port=config.port)

    server = ErnieServer(config, recorder_factory)
    if telemetry.prometheus is not None and config.metrics_port:
        from .telemetry.prometheus import serve_metrics

        try:
            serve_metrics(telemetry.prometheus, config.host, config.metrics_port)
        except OSError as exc:
            print(f"ernie-serve: cannot serve metrics on {config.host}:{config.metrics_port}: {exc}", file=sys.stderr)
            return 2
    if telemetry.mode != "disabled":
        from .telemetry.gpu import register_gpu_metrics

        register_gpu_metrics(telemetry.meter_provider.get_meter(names.METER_NAME))
    app = server.create_app(telemetry)

    import uvicorn

    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                               access_log=config.access_log, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(uv_config).run()
    finally:
        server.recorder.close()  # what the telemetry thread has not recorded yet, before the exporters go
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
