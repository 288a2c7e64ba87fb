"""ernie-serve through real HTTP: the official openai client, batching, back-pressure, errors."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from serve_helpers import Served, run_server

from ernie_otel import names

MODEL = "ernie-4.5-tiny"
MAX_MODEL_LEN = 4096
# A generation that holds an engine slot while a test arranges the queue around it: thousands of
# tiny-model steps (many seconds even on an idle machine, where a test's requests take
# milliseconds), ended by closing its stream, which cancels it.
HOLD_TOKENS = 4000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with run_server(tmp_path_factory.mktemp("serve"), "--max-num-seqs", "8", "--max-queue-len", "32",
                    "--max-model-len", str(MAX_MODEL_LEN), "--api-key", "sekret") as served:
        yield served


@pytest.fixture(scope="module")
def client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key="sekret", max_retries=0, timeout=60)


def test_chat_non_streamed(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=7,
                                       extra_body={"ignore_eos": True})
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7 and r.usage.prompt_tokens > 3
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7


def test_chat_streamed_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        max_tokens=9, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text  # the random model still produces text


def test_completions_both_ways(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="the model serves", max_tokens=5,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=MODEL, prompt="hello", max_tokens=6, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].usage.completion_tokens == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def once() -> str:
        r = client.completions.create(model=MODEL, prompt="hello", max_tokens=12, temperature=1.0, top_p=0.9,
                                      seed=1234, extra_body={"ignore_eos": True})
        return r.choices[0].text
    assert once() == once()


def test_stop_string_ends_with_stop(client: openai.OpenAI) -> None:
    # Find text the greedy model produces, then ask it to stop at a piece of that text.
    base = client.completions.create(model=MODEL, prompt="hello", max_tokens=20, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = base[len(base) // 2: len(base) // 2 + 2]
    assert stop.strip(), f"greedy text too short to pick a stop string from: {base!r}"
    r = client.completions.create(model=MODEL, prompt="hello", max_tokens=20, temperature=0, stop=[stop],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].text and base.startswith(r.choices[0].text)


def test_models_and_health(server: Served, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    with urllib.request.urlopen(server.base + "/health") as r:
        assert json.load(r)["status"] == "ok"


def test_sixteen_concurrent_streams_are_batched(server: Served, client: openai.OpenAI) -> None:
    wanted = [8 + i for i in range(16)]

    def one(n: int) -> int:
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"count {n}"}], max_tokens=n, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
        return chunks[-1].usage.completion_tokens

    # However fast the machine runs the sixteen one after another, each decodes at least next to
    # the held generation.
    with _holding(server, "sekret"):
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            got = list(pool.map(one, wanted))
        engine = server.stats()["engine"]
        assert engine["running"] >= 1, "the held generation ended before the sixteen"
    assert got == wanted
    assert engine["max_batch_seen"] > 1


# --------------------------------------------------------------------------- bad input
def _post(base: str, path: str, body: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"Authorization": "Bearer sekret", "Content-Type": "application/json", **(headers or {})}
    return httpx.post(base + path, content=body, headers=h, timeout=30)


def _j(obj: object) -> str:
    return json.dumps(obj)


MSG = [{"role": "user", "content": "hi"}]
BAD_INPUTS = [
    # (path, body, headers, status, code, param)
    ("/v1/chat/completions", "{not json", None, 400, "invalid_json", None),
    ("/v1/chat/completions", _j([1, 2]), None, 400, "invalid_request", None),
    ("/v1/chat/completions", _j({"model": MODEL}), None, 400, "invalid_request", "messages"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": []}), None, 400, "invalid_request", "messages"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": "hi"}), None, 400, "invalid_request", "messages"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}), None, 400,
     "invalid_request", "messages[0].role"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": [{"role": "user"}]}), None, 400, "invalid_request",
     "messages[0].content"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": MSG, "max_tokens": -3}), None, 400, "invalid_request",
     "max_tokens"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": MSG, "max_tokens": "ten"}), None, 400,
     "invalid_request", "max_tokens"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": MSG, "temperature": 7}), None, 400, "invalid_request",
     "temperature"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": MSG, "temperature": "hot"}), None, 400,
     "invalid_request", "temperature"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": MSG, "stream": "yes"}), None, 400, "invalid_request",
     "stream"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": MSG, "max_tokens": 100000}), None, 400,
     "context_length_exceeded", "max_tokens"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": [{"role": "user", "content": "word " * 2000}]}), None,
     400, "context_length_exceeded", "messages"),
    ("/v1/chat/completions", _j({"model": "gpt-4o", "messages": MSG}), None, 404, "model_not_found", "model"),
    ("/v1/completions", _j({"model": MODEL}), None, 400, "invalid_request", "prompt"),
    ("/v1/completions", _j({"model": MODEL, "prompt": 42}), None, 400, "invalid_request", "prompt"),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": MSG}), {"Authorization": "Bearer wrong"}, 401,
     "invalid_api_key", None),
    ("/v1/chat/completions", _j({"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}),
     None, 413, "payload_too_large", None),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "code", "param"), BAD_INPUTS,
                         ids=[f"{c[3]}-{c[4]}-{c[5]}-{i}" for i, c in enumerate(BAD_INPUTS)])
def test_bad_input_gets_openai_error(server: Served, path: str, body: str, headers: dict[str, str] | None,
                                     status: int, code: str, param: str | None) -> None:
    r = _post(server.base, path, body, headers)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["param"] == param and err["message"]
    # The server keeps serving everyone else.
    ok = _post(server.base, "/v1/completions", _j({"model": MODEL, "prompt": "hi", "max_tokens": 2}))
    assert ok.status_code == 200, ok.text


def _metric_sum(text: str, family: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(family + "{") and not line.startswith(family + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_bad_input_is_counted_in_error_metrics(server: Served) -> None:
    before = server.metrics_text()
    _post(server.base, "/v1/chat/completions", _j({"model": "nope", "messages": MSG}))
    _post(server.base, "/v1/chat/completions", "{")
    after = server.metrics_text()
    fam = names.ERRORS.prom_name
    assert _metric_sum(after, fam, error_type="model_not_found") == _metric_sum(
        before, fam, error_type="model_not_found") + 1
    assert _metric_sum(after, fam, error_type="invalid_json") == _metric_sum(before, fam, error_type="invalid_json") + 1
    req = names.REQUESTS.prom_name
    assert _metric_sum(after, req, status="error") == _metric_sum(before, req, status="error") + 2


# --------------------------------------------------------------------------- back-pressure
@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with run_server(tmp_path_factory.mktemp("small"), "--max-num-seqs", "1", "--max-queue-len", "1",
                    "--max-model-len", str(MAX_MODEL_LEN), name="small") as served:
        yield served


def _long_stream(base: str, max_tokens: int) -> Iterator[dict]:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[6:])


def _wait_for(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


@contextlib.contextmanager
def _holding(served: Served, api_key: str | None = None) -> Iterator[None]:
    """A streamed ``HOLD_TOKENS`` generation in the running batch for the duration of the block.

    Nobody reads it; leaving the block closes the connection, the server cancels the request, and
    the block returns once the engine has nothing left running."""
    body = {"model": MODEL, "prompt": "hello", "max_tokens": HOLD_TOKENS, "stream": True, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    running = served.stats()["engine"]["running"]
    with httpx.stream("POST", served.base + "/v1/completions", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        _wait_for(lambda: served.stats()["engine"]["running"] == running + 1)
        yield
    _wait_for(lambda: served.stats()["engine"]["running"] == 0)


def test_queue_full_rejects_at_once_while_running_finish(small_server: Served) -> None:
    base = small_server.base
    cancelled = _metric_sum(small_server.metrics_text(), names.REQUESTS.prom_name, status="cancelled")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with _holding(small_server):  # the one slot
            waiting = pool.submit(lambda: list(_long_stream(base, 20)))  # the one queue place
            _wait_for(lambda: small_server.stats()["engine"]["waiting"] == 1)
            r = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5},
                           timeout=30)
            assert r.status_code == 429 and r.headers.get("retry-after")
            assert r.json()["error"]["code"] == "queue_full"
            # At once: the answer came while the slot and the queue place were still taken, so
            # it did not wait for either (a request that waited would still be waiting here).
            engine = small_server.stats()["engine"]
            assert (engine["running"], engine["waiting"]) == (1, 1)
        # The held request was cancelled; the queued one then ran to its end.
        assert waiting.result()[-1]["usage"]["completion_tokens"] == 20
    text = small_server.metrics_text()
    assert _metric_sum(text, names.REQUESTS.prom_name, status="rejected") >= 1
    assert _metric_sum(text, names.ERRORS.prom_name, error_type="queue_full") >= 1
    assert _metric_sum(text, names.REQUESTS.prom_name, status="cancelled") == cancelled + 1


def test_disconnect_mid_stream_frees_the_slot(small_server: Served) -> None:
    base = small_server.base
    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": HOLD_TOKENS, "stream": True,
                       "ignore_eos": True}).encode()
    before = _metric_sum(small_server.metrics_text(), names.REQUESTS.prom_name, status="cancelled")
    steps = small_server.stats()["engine"]["steps"]
    # A raw socket, so the disconnect is a real TCP close mid-stream.
    sock = socket.create_connection(("127.0.0.1", small_server.port), timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while received.count(b"data: ") < 5:
        chunk = sock.recv(4096)
        assert chunk, f"the server ended the stream: {received[-300:]!r}"
        received += chunk
    sock.close()
    r = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "next", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200
    # One slot: the next request ran only once the abandoned one had left the engine. Had that
    # needed its end, the engine would have decoded all its HOLD_TOKENS - 1 steps first.
    decoded = small_server.stats()["engine"]["steps"] - steps
    assert decoded < HOLD_TOKENS - 1, f"the next request waited for the abandoned one ({decoded} steps)"
    _wait_for(lambda: _metric_sum(small_server.metrics_text(), names.REQUESTS.prom_name, status="cancelled")
              == before + 1)
    _wait_for(lambda: small_server.stats()["engine"]["running"] == 0)


def test_missing_weights_exit_with_one_clear_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": str(bin_dir)}
    p = subprocess.run([str(bin_dir / "ernie-serve"), "--model", "baidu/ERNIE-4.5-0.3B-PT", "--port", "0"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert "--model tiny" in p.stderr and "hf download" in p.stderr


def test_sse_data_lines_escape_unicode_line_separators() -> None:
    """A token holding U+2028/U+2029/U+0085 stays inside one ``data:`` line for every client."""
    from ernie_otel.protocol import sse_event as _sse

    text = "a\u2028b\u2029c\x85d é 文"
    body = _sse({"choices": [{"delta": {"content": text}}]})
    assert body.startswith(b"data: ") and body.endswith(b"\n\n")
    line = body.decode()[:-2]
    assert line.splitlines() == [line]  # str.splitlines: the strictest reader there is
    assert json.loads(line[6:])["choices"][0]["delta"]["content"] == text
    assert "é 文" in line  # everything else stays raw UTF-8
