"""Plain helpers for the tests: import them (``from helpers import free_port, run_process``).

The process, port and HTTP helpers are the ones ``ernie-otel stack`` runs on
(ernie_otel/stack/procs.py and components.py); this module only shapes them the way a test wants
them: a server process as a context manager, and a wait that fails the test with an
AssertionError. Fixtures live in the plugin tests/plugins/ernie_pipeline.py, not here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ernie_otel.stack import components, procs
from ernie_otel.stack.procs import REPO_ROOT, free_port, free_ports, http_get, http_post_json
from ernie_otel.stack.procs import Running as RunningProcess

__all__ = [
    "REPO_ROOT",
    "RunningProcess",
    "app_in_thread",
    "collector_env",
    "free_port",
    "free_ports",
    "http_get",
    "http_post_json",
    "in_memory_server",
    "run_process",
    "wait_http",
]


def collector_env() -> dict[str, str]:
    """The Collector's environment with a free port for every listener, so a test's Collector
    never collides with a running stack (its Jaeger target has nothing behind it unless the test
    starts a Jaeger there)."""
    return components.collector_env(free_ports())


def run_process(args: Sequence[str | os.PathLike[str]], log_path: Path, env: Mapping[str, str | None] | None = None,
                cwd: Path = REPO_ROOT) -> AbstractContextManager[RunningProcess]:
    """A server process for the duration of the block, logging to log_path; always stopped
    (TERM, then KILL). An env value of None removes the variable."""
    return procs.running(log_path.stem, args, log_path, env, cwd=cwd)


def wait_http(url: str, timeout: float = 30.0, status: int = 200, headers: Mapping[str, str] | None = None,
              proc: subprocess.Popen[bytes] | RunningProcess | None = None) -> str:
    """Poll url until it answers `status`; returns the body. Fails the test (AssertionError) if
    `proc` exits first or time runs out; given a RunningProcess, the failure carries its log."""
    log_path = proc.log_path if isinstance(proc, RunningProcess) else None
    popen = proc.proc if isinstance(proc, RunningProcess) else proc
    try:
        return procs.wait_http(url, timeout=timeout, proc=popen, status=status, headers=headers, log_path=log_path)
    except procs.NotHealthyError as exc:
        raise AssertionError(str(exc)) from None


@contextlib.contextmanager
def in_memory_server(config: Any, make_recorder: Any) -> Iterator[tuple[str, Any, Any, Any]]:
    """An ErnieServer for ``config`` served by :func:`app_in_thread`, its telemetry into in-memory
    SDK readers: yields (base URL, InMemoryMetricReader, InMemorySpanExporter, server).
    ``make_recorder(meter_provider, tracer_provider, model, stats)`` builds each model's Recorder."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ernie_otel.server import ErnieServer
    from ernie_otel.telemetry.setup import Telemetry

    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Telemetry(meter_provider, tracer_provider, None, "standalone")
    server = ErnieServer(config, lambda model, stats: make_recorder(meter_provider, tracer_provider, model, stats))
    with app_in_thread(server.create_app(telemetry)) as base:
        yield base, reader, spans, server


@contextlib.contextmanager
def app_in_thread(app: Any, timeout: float = 120.0) -> Iterator[str]:
    """An ASGI app (ErnieServer.create_app) served by uvicorn on a free 127.0.0.1 port in a thread of
    the test's own process, for tests that read telemetry through in-memory SDK readers; yields its
    base URL once /health answers 200, and stops the server after the block."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=procs.HOST, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://{procs.HOST}:{port}"
    try:
        wait_http(base + "/health", timeout=timeout)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
