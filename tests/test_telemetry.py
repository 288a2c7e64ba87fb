"""Telemetry through SDK objects: a real tiny-model ernie-serve app (uvicorn in a thread) recorded by
InMemoryMetricReader / InMemorySpanExporter; plus the two ways to run, as real processes."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from helpers import in_memory_server
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from serve_helpers import run_server

from ernie_otel import names
from ernie_otel.backends.local import LocalBackend
from ernie_otel.serve import ServeConfig
from ernie_otel.server import ErnieServer
from ernie_otel.stats import ThroughputWindow
from ernie_otel.telemetry.gpu import NvmlSampler, load_nvml, register_gpu_metrics
from ernie_otel.telemetry.recorder import Recorder

MODEL = "ernie-4.5-tiny"


@dataclass
class Env:
    base: str
    reader: InMemoryMetricReader
    spans: InMemorySpanExporter
    server: ErnieServer

    def post(self, path: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
        return httpx.post(self.base + path, json=body, timeout=60, **kw)

    def finished_spans(self) -> tuple[Any, ...]:
        self.server.recorder.flush()  # the GenAI and phase spans leave from the telemetry thread
        return self.spans.get_finished_spans()

    def metrics(self) -> dict[str, Any]:
        data = self.reader.get_metrics_data()
        out: dict[str, Any] = {}
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out[m.name] = m
        return out


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    config = ServeConfig(model="tiny", max_num_seqs=1, max_queue_len=0, max_model_len=1024)
    with in_memory_server(config, Recorder) as (base, reader, spans, server):
        yield Env(base, reader, spans, server)


def _points(metric: Any) -> list[Any]:
    return list(metric.data.data_points)


def _value(metric: Any, **attrs: Any) -> float:
    total = 0.0
    for p in _points(metric):
        if all(p.attributes.get(k) == v for k, v in attrs.items()):
            total += p.value if hasattr(p, "value") else p.count
    return total


def _hist(metric: Any, **attrs: Any) -> tuple[int, float]:
    count, total = 0, 0.0
    for p in _points(metric):
        if all(p.attributes.get(k) == v for k, v in attrs.items()):
            count += p.count
            total += p.sum
    return count, total


def _chat(env: Env, n: int = 6, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": n,
            "ignore_eos": True, **extra}
    r = env.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    return r


def test_every_catalogued_metric_has_its_unit_labels_and_buckets(env: Env) -> None:
    _chat(env)
    metrics = env.metrics()
    allowed = {names.ATTR_MODEL: {MODEL}, names.ATTR_OPERATION: {o.value for o in names.Operation},
               names.ATTR_STATUS: {s.value for s in names.Status},
               names.ATTR_ERROR_TYPE: {e.value for e in names.ErrorType},
               names.GEN_AI_REQUEST_MODEL: {MODEL},
               names.GEN_AI_OPERATION_NAME: {o.value for o in names.Operation},
               names.GEN_AI_PROVIDER_NAME: {names.PROVIDER_NAME},
               names.GEN_AI_TOKEN_TYPE: {t.value for t in names.TokenType},
               names.ATTR_REASON: set(names.EVICTION_REASONS)}
    for spec in names.CATALOGUE:
        if spec in names.SLO_METRICS:
            continue  # need targets, tenants or prices configured: tests/test_slo.py
        if spec in names.GPU_METRICS:
            assert spec.otel_name not in metrics, "no GPU here: GPU series must be absent, not zero"
            continue
        assert spec.otel_name in metrics, f"{spec.otel_name} missing"
        metric = metrics[spec.otel_name]
        assert metric.unit == spec.unit, spec.otel_name
        points = _points(metric)
        assert points, spec.otel_name
        for p in points:
            keys = set(p.attributes)
            assert keys <= set(spec.labels), (spec.otel_name, keys)
            required = set(spec.labels) - {names.ATTR_ERROR_TYPE} if spec is names.GENAI_DURATION else set(spec.labels)
            assert required <= keys, (spec.otel_name, keys)
            for key, value in p.attributes.items():
                assert value in allowed[key], (spec.otel_name, key, value)
            if spec.kind is names.Kind.HISTOGRAM:
                assert tuple(p.explicit_bounds) == spec.buckets, spec.otel_name
    assert len([s for s in names.CATALOGUE]) >= 12


def test_counts_agree_and_ttft_within_latency(env: Env) -> None:
    _chat(env, n=2)  # every histogram has a point to subtract from, whichever test ran first
    before = env.metrics()
    r = _chat(env, n=9)
    after = env.metrics()
    usage = r.json()["usage"]

    def delta_count(spec: names.MetricSpec, **attrs: Any) -> int:
        return _hist(after[spec.otel_name], **attrs)[0] - _hist(before[spec.otel_name], **attrs)[0]

    def delta_sum(spec: names.MetricSpec, **attrs: Any) -> float:
        return _hist(after[spec.otel_name], **attrs)[1] - _hist(before[spec.otel_name], **attrs)[1]

    req = _value(after[names.REQUESTS.otel_name]) - _value(before[names.REQUESTS.otel_name])
    assert req == 1 == delta_count(names.LATENCY) == delta_count(names.GENAI_DURATION) == delta_count(names.GENAI_TTFT)
    assert 0 < delta_sum(names.GENAI_TTFT) <= delta_sum(names.LATENCY)
    assert delta_sum(names.QUEUE_TIME) <= delta_sum(names.GENAI_TTFT)
    gen = _value(after[names.GENERATION_TOKENS.otel_name]) - _value(before[names.GENERATION_TOKENS.otel_name])
    prompt = _value(after[names.PROMPT_TOKENS.otel_name]) - _value(before[names.PROMPT_TOKENS.otel_name])
    assert gen == usage["completion_tokens"] == 9 and prompt == usage["prompt_tokens"]
    out_sum = delta_sum(names.GENAI_TOKEN_USAGE, **{names.GEN_AI_TOKEN_TYPE: "output"})
    in_sum = delta_sum(names.GENAI_TOKEN_USAGE, **{names.GEN_AI_TOKEN_TYPE: "input"})
    assert (in_sum, out_sum) == (usage["prompt_tokens"], usage["completion_tokens"])


def test_exemplar_carries_the_request_trace_id(env: Env) -> None:
    r = _chat(env)
    trace_id = r.headers[names.TRACE_ID_HEADER]
    assert r.headers[names.TRACE_RESPONSE_HEADER].split("-")[1] == trace_id
    latency = env.metrics()[names.LATENCY.otel_name]
    found = {format(e.trace_id, "032x") for p in _points(latency) for e in p.exemplars if e.trace_id}
    assert trace_id in found


def test_span_tree_follows_incoming_traceparent(env: Env) -> None:
    env.spans.clear()
    parent_trace, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = httpx.post(env.base + "/v1/chat/completions", timeout=60,
                   headers={"traceparent": f"00-{parent_trace}-{parent_span}-01"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                         "ignore_eos": True, "stream": True, "temperature": 0.5, "top_p": 0.8})
    assert r.status_code == 200 and r.headers[names.TRACE_ID_HEADER] == parent_trace
    # The SERVER span ends once the server has sent the last byte, which the client can have read
    # before that: wait for it rather than race it.
    deadline = time.monotonic() + 20
    while True:
        spans = [s for s in env.finished_spans() if format(s.context.trace_id, "032x") == parent_trace]
        if any(s.kind is SpanKind.SERVER for s in spans) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    by_name = {s.name: s for s in spans}
    server = next(s for s in spans if s.kind is SpanKind.SERVER)
    assert format(server.parent.span_id, "016x") == parent_span
    genai = by_name[names.genai_span_name("chat", MODEL)]
    assert genai.parent.span_id == server.context.span_id
    for child in (names.SPAN_QUEUE, names.SPAN_PREFILL, names.SPAN_DECODE):
        assert by_name[child].parent.span_id == genai.context.span_id, child
        assert genai.start_time <= by_name[child].start_time <= by_name[child].end_time <= genai.end_time
    assert by_name[names.SPAN_QUEUE].end_time <= by_name[names.SPAN_PREFILL].start_time
    a = genai.attributes
    assert a[names.GEN_AI_REQUEST_MAX_TOKENS] == 4 and a[names.GEN_AI_REQUEST_STREAM] is True
    assert a[names.GEN_AI_REQUEST_TEMPERATURE] == 0.5 and a[names.GEN_AI_REQUEST_TOP_P] == 0.8
    assert a[names.GEN_AI_RESPONSE_MODEL] == MODEL and a[names.GEN_AI_RESPONSE_ID].startswith("chatcmpl-")
    assert tuple(a[names.GEN_AI_RESPONSE_FINISH_REASONS]) == ("length",)
    assert a[names.GEN_AI_USAGE_OUTPUT_TOKENS] == 4 and a[names.GEN_AI_USAGE_INPUT_TOKENS] > 0
    assert names.GEN_AI_INPUT_MESSAGES not in a and names.GEN_AI_OUTPUT_MESSAGES not in a
    # TTFT (what the fleet's slow-first-token policy reads): arrival to first token, the GenAI
    # span's start to the prefill span's end, in seconds (the spans' ns are truncated: 2 us slack).
    ttft_ns = by_name[names.SPAN_PREFILL].end_time - genai.start_time
    assert abs(a[names.SPAN_ATTR_TTFT] * 1e9 - ttft_ns) < 2000, (a[names.SPAN_ATTR_TTFT], ttft_ns)
    # health is excluded from tracing
    env.spans.clear()
    httpx.get(env.base + "/health")
    assert env.finished_spans() == ()


def test_content_only_with_opt_in(env: Env) -> None:
    env.spans.clear()
    env.server.recorder.capture_content = True
    try:
        r = _chat(env, n=3)
    finally:
        env.server.recorder.capture_content = False
    genai = next(s for s in env.finished_spans() if s.name == names.genai_span_name("chat", MODEL))
    # The convention's message schema (role + parts), the same as on the operation-details event.
    assert json.loads(genai.attributes[names.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "hello there"}]}]
    out = json.loads(genai.attributes[names.GEN_AI_OUTPUT_MESSAGES])
    assert out == [{"role": "assistant", "finish_reason": "length",
                    "parts": [{"type": "text", "content": r.json()["choices"][0]["message"]["content"]}]}]


def test_error_request_lands_in_error_series_with_error_span(env: Env) -> None:
    before = env.metrics()
    env.spans.clear()
    r = env.post("/v1/chat/completions", {"model": MODEL, "messages": [], "max_tokens": 3})
    assert r.status_code == 400
    after = env.metrics()
    err = {names.ATTR_ERROR_TYPE: names.ErrorType.INVALID_REQUEST.value}
    assert _value(after[names.ERRORS.otel_name], **err) == _value(before[names.ERRORS.otel_name], **err) + 1
    st = {names.ATTR_STATUS: "error"}
    assert _value(after[names.REQUESTS.otel_name], **st) == _value(before[names.REQUESTS.otel_name], **st) + 1
    assert _hist(after[names.GENAI_DURATION.otel_name], **err)[0] == _hist(
        before[names.GENAI_DURATION.otel_name], **err)[0] + 1
    genai = next(s for s in env.finished_spans() if s.name == names.genai_span_name("chat", MODEL))
    assert genai.status.status_code is StatusCode.ERROR
    assert genai.attributes[names.ATTR_ERROR_TYPE] == "invalid_request"
    assert any(e.name == "exception" for e in genai.events)


def test_rejected_and_cancelled_requests(env: Env) -> None:
    before = env.metrics()
    backend = env.server.backend
    assert isinstance(backend, LocalBackend) and backend.engine is not None
    engine = backend.engine
    release = threading.Event()

    def pause() -> None:  # engine thread, between steps: the long request cannot finish meanwhile
        release.wait(60)

    body = {"model": MODEL, "prompt": "hello", "max_tokens": 900, "ignore_eos": True, "stream": True}
    engine.step_hook = pause
    try:
        with httpx.stream("POST", env.base + "/v1/completions", json=body, timeout=60) as long_stream:
            lines = long_stream.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            # max_num_seqs=1, max_queue_len=0: the running request holds the only slot.
            r = env.post("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2})
            assert r.status_code == 429
        # leaving the block closed the stream mid-way: a cancelled request
    finally:
        engine.step_hook = None
        release.set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = env.metrics()
        if _value(after[names.REQUESTS.otel_name], status="cancelled") > _value(
                before[names.REQUESTS.otel_name], status="cancelled"):
            break
        time.sleep(0.1)
    assert _value(after[names.REQUESTS.otel_name], status="cancelled") == _value(
        before[names.REQUESTS.otel_name], status="cancelled") + 1
    assert _value(after[names.REQUESTS.otel_name], status="rejected") == _value(
        before[names.REQUESTS.otel_name], status="rejected") + 1
    qf = {names.ATTR_ERROR_TYPE: "queue_full"}
    assert _value(after[names.ERRORS.otel_name], **qf) == _value(before[names.ERRORS.otel_name], **qf) + 1
    engine = env.server.backend.stats
    assert engine is not None
    deadline = time.monotonic() + 10
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.running == 0


def test_throughput_is_a_sliding_window_over_all_requests() -> None:
    w = ThroughputWindow(window_s=10)
    w._started = 0.0
    for t in range(20):
        w.add(5, now=float(t))  # two sequences producing 5 tokens per step each second
    assert w.rate(now=19.5) == pytest.approx(50 / 10)
    assert w.rate(now=100.0) == 0


# ------------------------------------------------------------------------------------- GPU
class FakeNvml(SimpleNamespace):
    """A stand-in at the NVML function boundary: two GPUs, the second fails temperature reads."""

    def __init__(self, count: int = 2, fail_init: bool = False) -> None:
        super().__init__()
        self.count, self.fail_init = count, fail_init

    def nvmlInit(self) -> None:  # noqa: N802
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:  # noqa: N802
        return b"NVIDIA H200"

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802
        return f"GPU-{h}"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:  # noqa: N802
        return SimpleNamespace(gpu=40 + h)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:  # noqa: N802
        return SimpleNamespace(used=(h + 1) * 2**30, total=8 * 2**30)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:  # noqa: N802
        if h == 1:
            raise RuntimeError("read failed")
        return 55

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:  # noqa: N802
        return 150_000


def _collect(nvml: Any) -> dict[str, Any]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    register_gpu_metrics(provider.get_meter("t"), nvml)
    data = reader.get_metrics_data()
    return {m.name: m for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics
            for m in sm.metrics}


def test_gpu_gauges_from_nvml_stand_in() -> None:
    metrics = _collect(FakeNvml())
    usage = {p.attributes[names.GPU_INDEX]: p.value for p in _points(metrics[names.GPU_MEMORY_USAGE.otel_name])}
    assert usage == {0: pytest.approx(12.5), 1: pytest.approx(25.0)}
    point = _points(metrics[names.GPU_POWER.otel_name])[0]
    assert point.value == 150.0
    assert set(point.attributes) == {names.GPU_INDEX, names.GPU_UUID, names.GPU_NAME}
    # a failed read is no observation for that GPU, not a zero
    temps = {p.attributes[names.GPU_INDEX]: p.value for p in _points(metrics[names.GPU_TEMPERATURE.otel_name])}
    assert temps == {0: 55}
    assert {m for m in metrics} == {s.otel_name for s in names.GPU_METRICS}


def test_no_nvml_means_no_gpu_series() -> None:
    assert _collect(FakeNvml(fail_init=True)) == {}
    assert _collect(FakeNvml(count=0)) == {}
    nvml = load_nvml()  # the real library: no NVIDIA driver on this machine
    if nvml is not None and NvmlSampler(nvml).gpus:
        pytest.fail("this test expects a machine without an NVIDIA GPU; run the GPU check on the device machine")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    assert register_gpu_metrics(provider.get_meter("t")) is None
    assert reader.get_metrics_data() is None or not any(
        sm.metrics for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics)


# ------------------------------------------------------------------ the two ways to run
def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def test_standalone_metrics_pass_promtool(tmp_path: Path) -> None:
    # SLO targets and a price: every family of the catalogue (the SLO and cost ones need them).
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"default": {"input_per_1m": 0.1, "output_per_1m": 0.4}}))
    with run_server(tmp_path, "--slo-ttft", "60000", "--slo-tpot", "10000", "--slo-e2e", "120000",
                    "--pricing-file", str(prices)) as served:
        httpx.post(served.base + "/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        text = served.metrics_text()
        info = served.stats()["telemetry"]
        openmetrics = urllib.request.urlopen(urllib.request.Request(
            served.metrics_url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})).read()
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    for spec in names.CATALOGUE:
        if spec not in names.GPU_METRICS:
            assert spec.prom_name in text, spec.prom_name
    assert "python_gc_" not in text  # our own registry: only our families
    assert openmetrics.rstrip().endswith(b"# EOF")
    assert info["mode"] == "standalone" and info["span_exporters"] == [] and info["log_exporters"] == []


def test_opentelemetry_instrument_uses_one_sdk_aimed_at_localhost_4317(tmp_path: Path) -> None:
    with run_server(tmp_path, instrument=True, env={"OTEL_SERVICE_NAME": None, "OTEL_EXPORTER_OTLP_ENDPOINT": None,
                                                        "OTEL_TRACES_EXPORTER": None, "OTEL_METRICS_EXPORTER": None}
                    ) as served:
        info = served.stats()["telemetry"]
        text = served.metrics_text()
    assert info["mode"] == "instrumented"
    assert info["prometheus_readers"] == 1, "a second SDK was built"
    assert info["service_name"] == names.SERVICE_NAME
    otlp = [r for r in info["metric_readers"] if r["exporter"] == "OTLPMetricExporter"]
    assert [r["endpoint"] for r in otlp] == ["localhost:4317"]
    assert [s["endpoint"] for s in info["span_exporters"]] == ["localhost:4317"]
    assert [s["endpoint"] for s in info["log_exporters"]] == ["localhost:4317"]  # logs go where spans go
    assert names.REQUESTS.prom_name in text


def test_sdk_disabled_switches_everything_off(tmp_path: Path) -> None:
    with run_server(tmp_path, env={"OTEL_SDK_DISABLED": "true"}) as served:
        assert served.stats()["telemetry"]["mode"] == "disabled"
        r = httpx.post(served.base + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200 and names.TRACE_ID_HEADER not in r.headers
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(served.metrics_url, timeout=3)


def test_a_tracer_provider_that_is_not_the_sdks_gets_the_same_span_tree() -> None:
    """Without the SDK's tracer internals the recorder goes through the public API: the GenAI span
    is live from start() and its queue/prefill/decode children are made with tracer.start_span."""
    from opentelemetry import trace as trace_api

    spans = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(spans))

    class PublicOnly(trace_api.TracerProvider):  # a provider exposing nothing but the API
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace_api.Tracer:
            inner = sdk.get_tracer(*args, **kwargs)
            return SimpleNamespace(start_span=inner.start_span)  # type: ignore[return-value]

    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    recorder = Recorder(meter_provider, PublicOnly(), MODEL, lambda: None)
    assert not recorder.uses_sdk_internals
    rt = recorder.start(names.Operation.CHAT.value, "chatcmpl-x")
    st = rt.stats
    st.prompt_tokens, st.output_tokens = 5, 3
    st.scheduled, st.first_token, st.finished = st.arrival + 0.01, st.arrival + 0.02, st.arrival + 0.05
    recorder.finish(rt, names.Status.OK.value, response_id="chatcmpl-x")
    recorder.flush()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    genai = by_name[names.genai_span_name("chat", MODEL)]
    assert genai.attributes[names.GEN_AI_RESPONSE_ID] == "chatcmpl-x"
    assert genai.attributes[names.GEN_AI_REQUEST_MODEL] == MODEL
    assert genai.attributes[names.SPAN_ATTR_TTFT] == pytest.approx(0.02)
    for child in (names.SPAN_QUEUE, names.SPAN_PREFILL, names.SPAN_DECODE):
        assert by_name[child].parent.span_id == genai.context.span_id, child
        assert genai.start_time <= by_name[child].start_time <= by_name[child].end_time <= genai.end_time
    recorder.close()
