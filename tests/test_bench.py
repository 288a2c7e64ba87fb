"""``ernie-otel bench`` against a real ``ernie-serve --model tiny`` (and against nothing at all)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, run_process, wait_http

from ernie_otel.bench import BenchConfig, BenchResult, Percentiles, build_prompt, percentile, run_bench

BIN = Path(sys.executable).parent
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("bench") / "ernie-serve.log"
    # Telemetry off: this tests the client; the server's telemetry has its own tests.
    with run_process([BIN / "ernie-serve", "--model", "tiny", "--port", str(port), "--metrics-port", "0"], log,
                     env={"OTEL_SDK_DISABLED": "true"}) as running:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/health", timeout=120, proc=running)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{running.log_tail()}") from None
        yield url


def _check_ordered(p: Percentiles) -> None:
    assert p.count > 0
    assert p.p50 is not None and p.p90 is not None and p.p95 is not None and p.p99 is not None
    assert 0 <= p.p50 <= p.p90 <= p.p95 <= p.p99 <= p.max  # type: ignore[operator]


def _check_all_ok(r: BenchResult, n: int) -> None:
    assert r.errors == {}
    assert r.requests_ok == r.requests_sent == n
    # ignore_eos: every request runs to max_tokens, counted by the server's usage.
    assert r.output_tokens == n * MAX_TOKENS
    assert r.tokens_from_usage == n
    assert r.output_tokens_per_s > 0 and r.requests_per_s > 0
    _check_ordered(r.latency_ms)
    _check_ordered(r.ttft_ms)
    assert r.ttft_ms.p50 <= r.latency_ms.p50  # type: ignore[operator]
    assert r.ttft_ms.max <= r.latency_ms.max  # type: ignore[operator]


@pytest.mark.integration
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stream(server: str, endpoint: str) -> None:
    cfg = BenchConfig(url=server, endpoint=endpoint, requests=12, concurrency=4, max_tokens=MAX_TOKENS,
                      prompt_tokens=16, stream=True, ignore_eos=True)
    r = asyncio.run(run_bench(cfg))
    _check_all_ok(r, 12)
    assert r.model == "ernie-4.5-tiny"  # taken from GET /v1/models
    _check_ordered(r.tpot_ms)
    assert r.ttft_ms.p50 < r.latency_ms.p50  # type: ignore[operator]  # streamed: content before the end


@pytest.mark.integration
def test_no_stream(server: str) -> None:
    cfg = BenchConfig(url=server, requests=12, concurrency=4, max_tokens=MAX_TOKENS, stream=False, ignore_eos=True)
    r = asyncio.run(run_bench(cfg))
    _check_all_ok(r, 12)
    assert r.ttft_ms.p50 == r.latency_ms.p50  # no stream: the first content is the whole answer
    assert r.tpot_ms.count == 0


@pytest.mark.integration
def test_rate_and_duration(server: str) -> None:
    cfg = BenchConfig(url=server, requests=None, duration=1.5, concurrency=None, rate=6.0, max_tokens=2)
    r = asyncio.run(run_bench(cfg))
    assert r.errors == {}
    assert 1 <= r.requests_ok == r.requests_sent <= 30


@pytest.mark.integration
def test_until_cancelled(server: str) -> None:
    """Steady load (the stack's --load): runs until cancelled, and the caller's cancel wins."""
    from ernie_otel.bench import Bench

    async def go() -> Bench:
        bench = Bench(BenchConfig(url=server, requests=None, duration=None, concurrency=2, max_tokens=2,
                                  reservoir_size=4))
        task = asyncio.create_task(bench.run())
        while bench.ok < 6:
            await asyncio.sleep(0.05)
            assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return bench

    bench = asyncio.run(go())
    snap = bench.snapshot()
    assert snap.requests_ok >= 6 and snap.requests_failed == 0
    assert len(bench._latency.values) == 4  # bounded reservoir, whatever the request count
    assert snap.latency_ms.count == snap.requests_ok


@pytest.mark.integration
def test_cli_json(server: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [BIN / "ernie-otel", "bench", "--url", server, "--requests", "8", "--concurrency", "4", "--max-tokens",
         str(MAX_TOKENS), "--ignore-eos", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "TTFT (ms)" in proc.stdout and "output tokens/s" in proc.stdout
    assert "8/8 done" in proc.stderr  # the progress line's final state
    data = json.loads(out.read_text())
    assert data["requests_ok"] == 8 and data["requests_failed"] == 0
    assert data["output_tokens"] == 8 * MAX_TOKENS
    for key in ("ttft_ms", "tpot_ms", "latency_ms"):
        assert set(data[key]) >= {"p50", "p90", "p95", "p99"}
    assert data["latency_ms"]["p50"] <= data["latency_ms"]["p99"]


@pytest.mark.integration
def test_server_errors_by_type(server: str) -> None:
    cfg = BenchConfig(url=server, model="no-such-model", requests=3, concurrency=3, max_tokens=2)
    r = asyncio.run(run_bench(cfg))
    assert r.requests_ok == 0
    assert r.errors == {"HTTP 404 model_not_found": 3}


def test_closed_port_counts_connection_errors() -> None:
    port = free_port()  # nothing listens there
    cfg = BenchConfig(url=f"http://127.0.0.1:{port}", model="m", requests=5, concurrency=2, timeout=5)
    r = asyncio.run(run_bench(cfg))
    assert r.requests_ok == 0 and r.requests_failed == 5
    assert r.errors == {"ConnectError": 5}
    assert r.latency_ms.p50 is None and r.output_tokens_per_s == 0


def test_cli_closed_port_without_model_fails_cleanly() -> None:
    port = free_port()
    proc = subprocess.run([BIN / "ernie-otel", "bench", "--url", f"http://127.0.0.1:{port}", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "ConnectError" in proc.stderr and "Traceback" not in proc.stderr


def test_percentile_and_prompt() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert len(build_prompt(40, 3).split()) == 40
    assert build_prompt(8, 1) != build_prompt(8, 2)


def test_sse_lines_split_only_at_sse_line_ends() -> None:
    """JSON leaves U+2028/U+2029/U+0085 raw inside strings; a str.splitlines reader (httpx's
    aiter_lines) broke such a data line in two. SSE lines end at CRLF, LF or CR only."""
    from ernie_otel.protocol import sse_lines

    payload = json.dumps({"choices": [{"delta": {"content": "a\u2028b\u2029c\x85d\x1ce"}}]}, ensure_ascii=False)
    stream = f"data: {payload}\r\n\r\ndata: [DONE]\n\n"

    async def chunks(size: int):  # every split point, including one between CR and LF
        for i in range(0, len(stream), size):
            yield stream[i:i + size]

    async def lines(size: int) -> list[str]:
        return [line async for line in sse_lines(chunks(size))]

    for size in (1, 2, 3, 7, len(stream)):
        got = asyncio.run(lines(size))
        assert got == [f"data: {payload}", "", "data: [DONE]", ""], size
        assert json.loads(got[0][5:])["choices"][0]["delta"]["content"] == "a\u2028b\u2029c\x85d\x1ce"
