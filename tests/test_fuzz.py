"""Hostile input: no request body, header or encoding makes ernie-serve answer 5xx.

Two generators drive a real ``ernie-serve`` (tiny model) over HTTP:
- schemathesis, from the app's own OpenAPI document: valid and schema-violating requests for every
  operation (wrong types at every field, missing fields, out-of-range numbers);
- hypothesis, for what a schema cannot express: raw bytes that are not quite JSON -- deep nesting,
  huge numbers, NaN/Infinity, lone surrogates and other Unicode oddities, duplicate keys, truncated
  bodies, other content types and text encodings.

Bounded and derandomized (the same cases every run) to stay under a minute on a small machine; set
``ERNIE_FUZZ_EXAMPLES`` for a longer run (docs/security.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from serve_helpers import Served, run_server

from ernie_otel import names

pytestmark = pytest.mark.integration

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = int(os.environ.get("ERNIE_FUZZ_EXAMPLES", "100"))
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # A short context keeps every request that passes validation to a few tiny-model steps.
    with run_server(tmp_path_factory.mktemp("fuzz"), "--max-model-len", "64", "--default-max-tokens", "4",
                    "--api-key", KEY, name="fuzz") as served:
        yield served


@pytest.fixture(scope="module")
def api_schema(server: Served) -> Any:
    return schemathesis.openapi.from_url(server.base + "/openapi.json")


def _assert_sane(response: httpx.Response | Any, what: object) -> None:
    status = response.status_code
    assert status < 500, f"{status} for {what!r}: {response.text[:500]}"
    if status >= 400:  # every refusal is an OpenAI error body
        err = json.loads(response.content)["error"]
        assert set(err) == {"message", "type", "param", "code"}, err


def _assert_healthy(server: Served) -> None:
    assert httpx.get(server.base + "/health", timeout=10).status_code == 200
    ok = httpx.post(server.base + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, headers=AUTH,
                    timeout=60)
    assert ok.status_code == 200, ok.text
    assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.mark.parametrize("path", [*GENERATION_PATHS, "/v1/models", "/stats", "/health"])
def test_schema_fuzz_never_5xx(server: Served, api_schema: Any, path: str) -> None:
    method = "GET" if path in ("/v1/models", "/stats", "/health") else "POST"
    operation = api_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    examples = EXAMPLES if method == "POST" else 20
    seen: dict[int, int] = {}

    @settings(FUZZ_SETTINGS, max_examples=examples)
    @given(case=cases, authorised=st.booleans())
    def run(case: Any, authorised: bool) -> None:
        response = case.call(base_url=server.base, headers=AUTH if authorised else {}, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        _assert_sane(response, case.body if method == "POST" else path)

    run()
    if method == "POST":  # the generator reached the validators and the key check (the engine: below)
        assert seen.get(400, 0) > 0 and seen.get(401, 0) > 0, seen
    _assert_healthy(server)


# --------------------------------------------------------------------------- raw bodies
_JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
_JSON_VALUES = st.recursive(_JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
_FIELDS = ("model", "messages", "prompt", "stream", "stream_options", "max_tokens", "max_completion_tokens",
           "temperature", "top_p", "seed", "n", "stop", "ignore_eos")
_ODD_TEXT = st.sampled_from([
    '"\\ud800"', '"\\udfff x"', '"\\ud83d\\ude00"', '"\\u0000"', '"\u2028\u2029\x85"', '"\ufeff\ufffe"',
    '"' + "\u0301" * 200 + '"', '"\U0010ffff"', '"\\ud800\\ud800"', '"a\\udc80b"', '"' + "\U0001f600" * 50 + '"'])
_ODD_NUMBERS = st.sampled_from([
    "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 5000, "-0", "0.0", "1e-999", "9" * 30,
    str(2**64), str(-(2**63) - 1), "1.5", "true"])


@st.composite
def _hostile_body(draw: st.DrawFn) -> bytes:
    """A request body that is JSON, nearly JSON, or JSON with one field made hostile."""
    valid: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "max_tokens": 2}
    kind = draw(st.sampled_from(["field", "odd_text", "odd_number", "deep", "duplicate", "truncated", "bytes"]))
    if kind == "field":  # a wrong type (or a right one) at any field
        valid[draw(st.sampled_from(_FIELDS))] = draw(_JSON_VALUES)
        return json.dumps(valid).encode()
    if kind in ("odd_text", "odd_number"):
        field = draw(st.sampled_from((*_FIELDS, "content", "role", "text")))
        value = draw(_ODD_TEXT if kind == "odd_text" else _ODD_NUMBERS)
        if field in ("content", "role"):
            return (json.dumps(valid)[:-1] + f', "messages": [{{"role": "user", "{field}": {value}}}]}}').encode()
        if field == "text":
            return (json.dumps(valid)[:-1] + f', "messages": [{{"role": "user", "content": [{{"type": "text", '
                    f'"text": {value}}}]}}]}}').encode()
        return (json.dumps(valid)[:-1] + f', "{field}": {value}}}').encode()
    if kind == "deep":
        depth = draw(st.sampled_from([50, 900, 5_000, 100_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return ('{"messages": ' + opener * depth + "1" + closer * depth + "}").encode()
    if kind == "duplicate":
        key = draw(st.sampled_from(_FIELDS))
        return (json.dumps(valid)[:-1] + f', "{key}": {json.dumps(draw(_JSON_VALUES))}}}').encode()
    if kind == "truncated":
        text = json.dumps(valid).encode()
        return text[:draw(st.integers(min_value=0, max_value=len(text) - 1))]
    return draw(st.binary(max_size=64))


_ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"])
_CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json; charset=utf-16", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/json; charset=nonsense", "", "*/*; q=é"])


@pytest.mark.parametrize("path", GENERATION_PATHS)
def test_hostile_bodies_never_5xx(server: Served, path: str) -> None:
    errors_before = server.metric_sum(names.ERRORS.prom_name, error_type="invalid_json")

    seen: dict[int, int] = {}

    @FUZZ_SETTINGS
    @given(body=_hostile_body(), encoding=_ENCODINGS, content_type=_CONTENT_TYPES)
    def run(body: bytes, encoding: str, content_type: str) -> None:
        if encoding != "utf-8":
            body = body.decode("utf-8", "surrogateescape").encode(encoding, "replace")
        headers: dict[str, str | bytes] = {**AUTH}
        if content_type:
            headers["Content-Type"] = content_type.encode("latin-1")  # as sent on the wire, non-ASCII too
        response = httpx.post(server.base + path, content=body, headers=headers, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        _assert_sane(response, body[:200])

    run()
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0, seen  # the engine and the validators were reached
    # Every refusal of a body as JSON was counted as an error of its type.
    assert server.metric_sum(names.ERRORS.prom_name, error_type="invalid_json") > errors_before
    _assert_healthy(server)


@pytest.mark.parametrize("body", [
    b"[" * 100_000, b'{"prompt": "\\ud800"}', b'{"messages": [{"role": "user", "content": "\\udfff"}]}',
    b'{"prompt": "hi", "model": "\\ud800"}', b'{"prompt": "hi", "temperature": NaN}',
    b'{"prompt": "hi", "temperature": 1e999}', b'{"prompt": "hi", "seed": 1' + b"0" * 30 + b"}",
    b'{"prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}"], ids=[
    "deep", "surrogate-prompt", "surrogate-content", "surrogate-model", "nan", "overflow", "huge-seed", "digits"])
def test_known_500s_are_400s(server: Served, body: bytes) -> None:
    """The cases that once escaped as 500 (RecursionError, UnicodeEncodeError, seed overflow)."""
    for path in GENERATION_PATHS:
        response = httpx.post(server.base + path, content=body, headers=AUTH, timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("temperature", [1e-45, 1.3e-53, 5e-324])
def test_vanishing_temperature_is_greedy_not_500(server: Served, temperature: float) -> None:
    """Logits divided by a subnormal temperature overflow to inf; the engine samples greedily then."""
    response = httpx.post(server.base + "/v1/completions", headers=AUTH, timeout=60,
                          json={"prompt": "hi", "max_tokens": 2, "temperature": temperature, "ignore_eos": True})
    assert response.status_code == 200, response.text


def test_no_key_is_echoed(server: Served, tmp_path: Path) -> None:
    """A rejected key is never echoed back nor logged."""
    guess = "guessed-key-0123456789"
    response = httpx.post(server.base + "/v1/completions", json={"prompt": "hi"},
                          headers={"Authorization": f"Bearer {guess}"}, timeout=30)
    assert response.status_code == 401 and guess not in response.text
    assert guess not in server.log() and KEY not in server.log()
