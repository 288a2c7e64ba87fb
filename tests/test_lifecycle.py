"""ernie-serve's lifecycle and access: SIGTERM drains, API keys from a file reloaded on SIGHUP.

Real ``ernie-serve`` processes (tiny model) with streams in flight while the signals arrive.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import Served, run_server
from starlette.requests import Request

from ernie_otel import names
from ernie_otel.auth import DEFAULT_KEY_NAME, KeyFileError, KeyRing, parse_key_file
from ernie_otel.kinds import SHUTDOWN_MESSAGE
from ernie_otel.protocol import APIError
from ernie_otel.serve import ServeConfig
from ernie_otel.server import ErnieServer

KEY = "drain-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Streams long enough to be mid-way when the signal comes, short enough to finish in the grace.
FINISHING_TOKENS = 120
# Streams that cannot finish in any grace a test waits for (thousands of tiny-model steps).
HOLD_TOKENS = 4000


# --------------------------------------------------------------------------- key ring (unit)
def test_key_file_parsing(tmp_path: Path) -> None:
    keys = parse_key_file("# comment\n\nalice:alice-key-123\nbob: bob-key-4567 \nplain-key-890\n", "f")
    assert [(k.name, k.secret) for k in keys] == [
        ("alice", b"alice-key-123"), ("bob", b"bob-key-4567"), (DEFAULT_KEY_NAME, b"plain-key-890")]
    for bad, why in [("", "no keys"), ("a:short", "at least 8"), ("bad name:abcdefgh1", "key name"),
                     ("x:abcdefgh1\ny:abcdefgh1", "twice")]:
        with pytest.raises(KeyFileError, match=why) as info:
            parse_key_file(bad, "f")
        assert "abcdefgh1" not in str(info.value)  # a key never appears in an error


def test_key_ring_identifies_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("alice:alice-key-123\nbob:bob-key-4567\n")
    ring = KeyRing("cli-key-000", path)
    assert ring.required and ring.names() == ["alice", "bob", DEFAULT_KEY_NAME]
    assert ring.identify("bob-key-4567") == "bob" and ring.identify("cli-key-000") == DEFAULT_KEY_NAME
    assert ring.identify("bob-key-456") is None and ring.identify("") is None and ring.identify(None) is None
    assert ring.identify("bob-key-4567\u00e9") is None  # non-ASCII does not upset compare_digest
    path.write_text("carol:carol-key-99\n")
    assert ring.reload() and ring.identify("carol-key-99") == "carol" and ring.identify("bob-key-4567") is None
    path.write_text("broken")  # a bad file keeps the keys in force
    assert not ring.reload() and ring.identify("carol-key-99") == "carol"
    assert not KeyRing().required and KeyRing().identify("anything") is None


def _request(authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode("latin-1"))] if authorization is not None else []
    return Request({"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers})


def test_server_exposes_the_key_name_not_the_key(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("tenant-a:key-aaaaaaaa\n")
    server = ErnieServer(ServeConfig(model="tiny", api_key_file=str(path)), lambda *_: None)  # type: ignore[arg-type,return-value]
    request = _request("Bearer key-aaaaaaaa")
    server._check_auth(request)
    assert request.state.api_key_name == "tenant-a"
    for header in (None, "Bearer key-aaaaaaab", "Basic key-aaaaaaaa", "key-aaaaaaaa"):
        with pytest.raises(APIError) as info:
            server._check_auth(_request(header))
        assert info.value.status_code == 401 and "key-aaaa" not in info.value.message
    open_server = ErnieServer(ServeConfig(model="tiny"), lambda *_: None)  # type: ignore[arg-type,return-value]
    request = _request(None)
    open_server._check_auth(request)
    assert request.state.api_key_name is None


# --------------------------------------------------------------------------- keys (real server)
@pytest.mark.integration
def test_key_file_sighup_rotation_and_401s_counted(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("alice:alice-key-123\nbob:bob-key-4567\n")
    with run_server(tmp_path, "--api-key-file", str(path), "--max-model-len", "64", name="keys") as served:
        def status(key: str) -> int:
            # The tenant header claims bob: a named key's name wins over it.
            return httpx.post(served.base + "/v1/completions", json={"prompt": "hi", "max_tokens": 1},
                              headers={"Authorization": f"Bearer {key}", "x-tenant-id": "bob"},
                              timeout=30).status_code

        fam = names.ERRORS.prom_name
        before = served.metric_sum(fam, error_type="authentication_error")
        assert status("alice-key-123") == 200 and status("bob-key-4567") == 200
        assert status("mallory-key-0") == 401
        assert served.metric_sum(fam, error_type="authentication_error") == before + 1
        tenants = names.TENANT_REQUESTS.prom_name
        assert served.metric_sum(tenants, tenant="alice") == 1 and served.metric_sum(tenants, tenant="bob") == 1
        # Operators' endpoints answer without a key.
        for url in (served.base + "/health", served.base + "/stats", served.metrics_url):
            assert httpx.get(url, timeout=10).status_code == 200, url
        path.write_text("carol:carol-key-99\n")
        served.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while status("carol-key-99") != 200:
            assert time.monotonic() < deadline, served.log()[-2000:]
            time.sleep(0.2)
        assert status("alice-key-123") == 401
        log = served.log()
        assert "carol" in log  # the names are logged ...
        for secret in ("alice-key-123", "bob-key-4567", "carol-key-99", "mallory-key-0"):
            assert secret not in log  # ... the keys never


@pytest.mark.integration
def test_bad_key_file_fails_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "keys"
    path.write_text("x:short\n")
    bin_dir = Path(sys.executable).parent
    done = subprocess.run([str(bin_dir / "ernie-serve"), "--model", "tiny", "--api-key-file", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "line 1" in done.stderr and done.stderr.count("\n") == 1, done.stderr


# --------------------------------------------------------------------------- drain
class Stream:
    """One streamed completion read in a thread: its chunks, finish reasons, errors and [DONE]."""

    def __init__(self, base: str, max_tokens: int) -> None:
        self.started = threading.Event()
        self.finish: list[str] = []
        self.errors: list[dict[str, Any]] = []
        self.done = False
        self.chunks = 0
        self.base, self.max_tokens = base, max_tokens

    def run(self) -> Stream:
        body = {"prompt": "hello", "max_tokens": self.max_tokens, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", self.base + "/v1/completions", json=body, headers=AUTH, timeout=120) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    self.done = True
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    self.errors.append(event["error"])
                    continue
                self.chunks += 1
                if self.chunks >= 3:
                    self.started.set()
                self.finish += [c["finish_reason"] for c in event["choices"] if c["finish_reason"]]
        return self


def _start_streams(pool: concurrent.futures.Executor, served: Served, n: int,
                   max_tokens: int) -> list[concurrent.futures.Future[Stream]]:
    streams = [Stream(served.base, max_tokens) for _ in range(n)]
    futures = [pool.submit(s.run) for s in streams]
    for s, f in zip(streams, futures, strict=True):
        while not s.started.wait(0.2):
            assert not f.done(), f.result()
    return futures


def _exit_code(served: Served, timeout: float) -> int:
    return served.proc.wait(timeout=timeout)


@pytest.mark.integration
def test_sigterm_drains_streams_in_flight(tmp_path: Path) -> None:
    with run_server(tmp_path, "--api-key", KEY, "--max-model-len", "4096", "--shutdown-grace", "120",
                    name="drain") as served, concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = _start_streams(pool, served, 3, FINISHING_TOKENS)
        served.proc.send_signal(signal.SIGTERM)
        # At once: not healthy, and new requests are refused with a retryable 503.
        deadline = time.monotonic() + 5
        while httpx.get(served.base + "/health", timeout=5).status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = httpx.post(served.base + "/v1/completions", json={"prompt": "hi", "max_tokens": 1},
                             headers=AUTH, timeout=10)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
        assert refused.json()["error"]["code"] == "shutting_down"
        assert not any(f.done() for f in futures)  # the streams were still running when it was refused
        for f in futures:  # every stream in flight finished normally
            s = f.result(timeout=120)
            assert s.finish == ["length"] and s.errors == [] and s.done
        assert _exit_code(served, 30) == 0, served.log()[-3000:]
        assert "Traceback" not in served.log()


@pytest.mark.integration
@pytest.mark.parametrize("how", ["grace_over", "second_sigterm"])
def test_unfinished_streams_are_cancelled_with_a_clear_error(tmp_path: Path, how: str) -> None:
    grace = "2" if how == "grace_over" else "300"
    with run_server(tmp_path, "--api-key", KEY, "--max-model-len", "4096", "--shutdown-grace", grace,
                    name=how) as served, concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = _start_streams(pool, served, 2, HOLD_TOKENS)
        t0 = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        if how == "second_sigterm":
            time.sleep(0.5)
            served.proc.send_signal(signal.SIGTERM)
        for f in futures:
            s = f.result(timeout=60)
            assert s.finish == [] and s.done, vars(s)
            assert [e["message"] for e in s.errors] == [SHUTDOWN_MESSAGE]
            assert s.errors[0]["type"] == "service_unavailable_error"
        assert time.monotonic() - t0 < 30  # neither waited for 4,000 tokens nor for a 300 s grace
        assert _exit_code(served, 30) == 0, served.log()[-3000:]
        assert "Traceback" not in served.log()


@pytest.mark.integration
def test_gateway_drain_cancels_with_the_same_clear_error(tmp_path: Path) -> None:
    """Gateway mode: the grace period ends, the upstream connections close, and the client reads the
    shutdown message (a cancel), not an 'upstream broke off' failure."""
    with run_server(tmp_path, "--max-model-len", "4096", name="engine") as engine, \
            run_server(tmp_path, "--upstream", engine.base, "--api-key", KEY, "--shutdown-grace", "2",
                       name="gateway") as gateway, concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = _start_streams(pool, gateway, 2, HOLD_TOKENS)
        gateway.proc.send_signal(signal.SIGTERM)
        for f in futures:
            s = f.result(timeout=60)
            assert s.finish == [] and [e["message"] for e in s.errors] == [SHUTDOWN_MESSAGE], vars(s)
        assert _exit_code(gateway, 30) == 0, gateway.log()[-3000:]
        # The engine behind it saw its clients go away and is idle again, still serving.
        deadline = time.monotonic() + 30
        while engine.stats()["engine"]["running"]:
            assert time.monotonic() < deadline, engine.stats()
            time.sleep(0.2)
