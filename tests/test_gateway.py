"""Gateway mode (``ernie-serve --upstream``): forwarding, streaming pass-through, telemetry, trace
propagation, and every upstream failure kind mapped to its status and error type."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from helpers import free_port
from serve_helpers import Served, run_server

from ernie_otel import names

MODEL = "ernie-4.5-tiny"


def metric(served: Served, family: str, **labels: str) -> float:
    total = 0.0
    for line in served.metrics_text().splitlines():
        if line.startswith(family + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with run_server(tmp_path_factory.mktemp("up"), "--api-key", "engine-key", name="upstream") as served:
        yield served


@pytest.fixture(scope="module")
def gateway(upstream: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with run_server(tmp_path_factory.mktemp("gw"), "--upstream", upstream.base, "--upstream-api-key", "engine-key",
                    name="gateway") as served:
        yield served


def test_gateway_chat_stream_usage_and_metrics(gateway: Served, upstream: Served) -> None:
    client = openai.OpenAI(base_url=gateway.base + "/v1", api_key="x", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == [MODEL]  # discovered from the upstream
    before_up = metric(upstream, names.REQUESTS.prom_name, status="ok")
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=5, stream=True, extra_body={"ignore_eos": True}))
    assert all(c.usage is None for c in chunks), "the usage chunk the gateway asked for must not leak"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    with_usage = list(client.completions.create(model=MODEL, prompt="hello", max_tokens=4, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
    assert with_usage[-1].usage.completion_tokens == 4
    assert metric(upstream, names.REQUESTS.prom_name, status="ok") == before_up + 3
    assert metric(gateway, names.REQUESTS.prom_name, status="ok") >= 3
    assert metric(gateway, names.GENERATION_TOKENS.prom_name) >= 6 + 5 + 4
    assert metric(gateway, names.GENAI_TTFT.prom_name + "_count") >= 3


def test_gateway_propagates_the_trace(gateway: Served) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    r = httpx.post(gateway.base + "/v1/completions", timeout=60,
                   headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
                   json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200
    assert r.headers[names.TRACE_ID_HEADER] == trace_id
    # Server-Timing: the upstream ernie-serve's own phases pass through, the gateway's follow.
    timing = [part.strip().split(";")[0] for part in r.headers[names.SERVER_TIMING_HEADER].split(",")]
    ours = [names.GATEWAY_TIMING_PREFIX + p for p in ("queue", "prefill", "decode", "total")]
    assert timing == ["queue", "prefill", "decode", "total", *ours], timing


def test_upstream_4xx_passes_through(upstream: Served, tmp_path: Path) -> None:
    # The gateway lacks the engine's key: the engine's 401 comes back as it is.
    with run_server(tmp_path, "--upstream", upstream.base, "--served-model-name", MODEL, name="nokey") as gw:
        before = metric(gw, names.ERRORS.prom_name, error_type="upstream_http_error")
        r = httpx.post(gw.base + "/v1/chat/completions", timeout=30,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert metric(gw, names.ERRORS.prom_name, error_type="upstream_http_error") == before + 1


# ------------------------------------------------------------------ failure injection
class FaultyEngine(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that fails on purpose, by mode."""

    mode = "ok"

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._json(200, {"object": "list", "data": [{"id": "faulty", "object": "model"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        mode = FaultyEngine.mode
        if mode == "500":
            self._json(500, {"error": {"message": "boom", "type": "server_error", "code": None, "param": None}})
        elif mode == "cut":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i in range(2):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "faulty",
                         "choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
            self.close_connection = True  # cut: no finish, no [DONE]
        elif mode == "hang":
            time.sleep(5)
            self._json(200, {})
        else:
            self._json(200, {"id": "c2", "object": "chat.completion", "model": "faulty", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str]]:
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), FaultyEngine)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with run_server(tmp_path_factory.mktemp("gwf"), "--upstream", f"http://127.0.0.1:{port}", "--upstream-timeout",
                    "1.5", name="gw-faulty") as gw:
        yield gw, "faulty"
    server.shutdown()


def _chat(base: str, model: str, stream: bool = False) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})


@pytest.mark.parametrize(("mode", "stream", "status", "error_type"), [
    ("500", False, 502, "upstream_http_error"),
    ("hang", False, 504, "upstream_timeout"),
    ("cut", True, 200, "upstream_stream_error"),
])
def test_upstream_failures_map_to_errors(faulty: tuple[Served, str], mode: str, stream: bool, status: int,
                                         error_type: str) -> None:
    gw, model = faulty
    before = metric(gw, names.ERRORS.prom_name, error_type=error_type)
    FaultyEngine.mode = mode
    try:
        r = _chat(gw.base, model, stream)
    finally:
        FaultyEngine.mode = "ok"
    assert r.status_code == status, r.text
    if stream:
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[0])["choices"][0]["delta"]["content"] == "t0"  # passed through before the cut
        assert json.loads(events[-1])["error"]["code"] == error_type
    else:
        assert r.json()["error"]["code"] == error_type
    assert metric(gw, names.ERRORS.prom_name, error_type=error_type) == before + 1
    ok = _chat(gw.base, model)  # the gateway keeps serving
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "fine"


def test_upstream_refused(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with run_server(tmp_path, "--upstream", f"http://127.0.0.1:{dead}", "--served-model-name", "x",
                    name="refused") as gw:
        r = _chat(gw.base, "x")
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_connect_error"
        assert metric(gw, names.ERRORS.prom_name, error_type="upstream_connect_error") == 1
        assert httpx.get(gw.base + "/health").status_code == 200


# ------------------------------------------------------------- a real third-party upstream
@pytest.fixture(scope="module")
def transformers_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`transformers serve` (transformers[serving]) on the tiny model: a real OpenAI-compatible peer."""
    import os
    import subprocess
    import sys

    from helpers import wait_http

    from ernie_otel.tiny_model import ensure_tiny_model

    model_dir = str(ensure_tiny_model())
    port = free_port()
    log = tmp_path_factory.mktemp("tserve") / "transformers-serve.log"
    cli = Path(sys.executable).parent / "transformers"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(cli), "serve", "--host", "127.0.0.1", "--port", str(port), model_dir],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_gateway_in_front_of_transformers_serve(transformers_serve: str, tmp_path: Path) -> None:
    with run_server(tmp_path, "--upstream", transformers_serve, "--served-model-name", "ernie-tiny",
                    name="gw-transformers") as gw:
        client = openai.OpenAI(base_url=gw.base + "/v1", api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(model="ernie-tiny", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=5)
        assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens >= 1
        chunks = list(client.chat.completions.create(
            model="ernie-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
            stream_options={"include_usage": True}))
        usage = [c.usage for c in chunks if c.usage]
        assert usage and usage[-1].completion_tokens >= 1
        plain = list(client.chat.completions.create(model="ernie-tiny", messages=[{"role": "user", "content": "x"}],
                                                    max_tokens=3, stream=True))
        assert all(c.usage is None for c in plain)
        assert metric(gw, names.REQUESTS.prom_name, status="ok", model="ernie-tiny") == 3
        assert metric(gw, names.ERRORS.prom_name) == 0
        assert metric(gw, names.GENERATION_TOKENS.prom_name) >= r.usage.completion_tokens + usage[-1].completion_tokens
        assert metric(gw, names.GENAI_TTFT.prom_name + "_count") >= 2
