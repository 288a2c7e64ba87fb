"""ernie-serve's own engine: its insides (EngineStats) under a controlled workload. (Other engines'
native families through the Collector's engine scrape: tests/test_engine_aliases.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from transformers import AutoModelForCausalLM, AutoTokenizer

from ernie_otel import names
from ernie_otel.backends.local import LocalBackend
from ernie_otel.engine import Engine, Event, SamplingParams, Sequence
from ernie_otel.stats import EngineStats, RequestStats
from ernie_otel.telemetry.recorder import Recorder
from ernie_otel.tiny_model import ensure_tiny_model

# ---------------------------------------------------------------------------------------------
# ernie-serve's own engine: its insides (EngineStats) through the real recorder into an in-memory
# reader, under a controlled workload whose KV, padding and batch figures are computed here from
# first principles (left padding, one cache column per decode step, trim to the narrowest padding).

# (prompt length, max_tokens): all admitted in iteration 1 (left-padded to 22); the 22-token prompt
# leaves after its 3rd token, so the cache is trimmed under the others.
WORKLOAD = ((1, 6), (3, 6), (12, 6), (22, 3))
MAX_MODEL_LEN = 64


@dataclass
class EngineRig:
    engine: Engine
    recorder: Recorder
    reader: InMemoryMetricReader
    spans: InMemorySpanExporter

    def metrics(self) -> dict[str, Any]:
        data = self.reader.get_metrics_data()
        return {m.name: m for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics
                for m in sm.metrics}


# The model's dtype decides a cached token's size: float32 (4 bytes) as on a CPU, bfloat16 (2) as on a GPU.
DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2}


@pytest.fixture(scope="module", params=list(DTYPE_BYTES), ids=str)
def tiny(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    path = ensure_tiny_model()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=request.param, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


@pytest.fixture
def rig(tiny: tuple[Any, Any]) -> Iterator[EngineRig]:
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, max_num_seqs=len(WORKLOAD), max_queue_len=8, max_model_len=MAX_MODEL_LEN)
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    recorder = Recorder(MeterProvider(metric_readers=[reader]), tracer_provider, "tiny", lambda: engine.stats)
    yield EngineRig(engine, recorder, reader, spans)
    engine.step_hook = None
    engine.shutdown()
    recorder.close()


def _sequence(prompt_len: int, max_tokens: int, done: threading.Event | None = None) -> Sequence:
    def deliver(event: Event) -> None:
        if event.finish_reason is not None and done is not None:
            done.set()
    # Token ids only matter for what the model computes, not for the figures: plain ids past the specials.
    return Sequence(list(range(10, 10 + prompt_len)), SamplingParams(max_tokens, temperature=0.0, ignore_eos=True),
                    RequestStats(f"len{prompt_len}", "chat"), deliver)


def _gauge(metrics: dict[str, Any], spec: names.MetricSpec) -> float:
    points = list(metrics[spec.otel_name].data.data_points)
    assert len(points) == 1 and dict(points[0].attributes) == {names.ATTR_MODEL: "tiny"}, points
    return float(points[0].value)


def _histogram(metrics: dict[str, Any], spec: names.MetricSpec) -> tuple[int, float]:
    (point,) = metrics[spec.otel_name].data.data_points
    assert tuple(point.explicit_bounds) == spec.buckets
    return int(point.count), float(point.sum)


def test_engine_insides_under_a_controlled_workload(rig: EngineRig) -> None:
    engine = rig.engine
    cfg = engine.model.config
    # One token's keys and values in every layer: 2 x layers x kv_heads x head_dim x bytes of the dtype.
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * DTYPE_BYTES[engine.model.dtype]
    budget = len(WORKLOAD) * MAX_MODEL_LEN
    seqs = [_sequence(n, m) for n, m in WORKLOAD]
    snapshots: list[tuple[dict[str, float], int]] = []

    def hook() -> None:  # engine thread, between iterations: the stats are at a step boundary
        if engine.stats.steps == len(snapshots) + 1 and len(snapshots) < 6:
            m = rig.metrics()
            cache = engine._cache  # the real tensors, to check the byte count against
            real_bytes = 0 if cache is None else sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
            snapshots.append(({spec.otel_name: _gauge(m, spec) for spec in (
                names.KV_CACHE_USED, names.KV_CACHE_BUDGET, names.KV_CACHE_USAGE, names.KV_CACHE_PADDING)},
                real_bytes))

    engine.step_hook = hook
    for seq in seqs:
        engine.submit(seq)
    engine.start()
    deadline = time.monotonic() + 120
    while not all(s.finished for s in seqs) or len(snapshots) < max(m for _, m in WORKLOAD) - 1:
        assert time.monotonic() < deadline, "the workload did not finish"
        time.sleep(0.01)

    # Expected figures, iteration by iteration: after decode step k a sequence has k + 1 tokens and
    # len + k cached positions; the cache is as wide as the longest row (shorter rows padded on the left).
    expected: list[dict[str, float]] = []
    iterations: list[tuple[int, int]] = []
    for k in range(1, max(m for _, m in WORKLOAD)):
        in_step = [(n, m) for n, m in WORKLOAD if m >= k + 1]  # decoded in step k
        iterations.append((len(in_step), (sum(n for n, _ in WORKLOAD) if k == 1 else 0) + len(in_step)))
        running = [n + k for n, m in in_step if m > k + 1]  # still running after step k
        width = max(running, default=0)
        positions, padding = len(running) * width, sum(width - r for r in running)
        expected.append({names.KV_CACHE_USED.otel_name: positions * per_token,
                         names.KV_CACHE_BUDGET.otel_name: budget * per_token,
                         names.KV_CACHE_USAGE.otel_name: positions / budget,
                         names.KV_CACHE_PADDING.otel_name: padding / positions if positions else 0.0})
    assert expected[0][names.KV_CACHE_PADDING.otel_name] == pytest.approx(50 / 92)  # pads 21+19+10+0 of 4 x 23
    assert expected[1][names.KV_CACHE_PADDING.otel_name] == pytest.approx(20 / 42)  # trimmed: 11+9+0 of 3 x 14
    for (got, real_bytes), want in zip(snapshots, expected, strict=True):
        assert got == pytest.approx(want)
        assert got[names.KV_CACHE_USED.otel_name] == real_bytes  # the gauge is the cache's real size

    rig.recorder.flush()
    m = rig.metrics()
    assert _histogram(m, names.BATCH_SIZE) == (len(iterations), sum(r for r, _ in iterations))
    assert _histogram(m, names.ITERATION_TOKENS) == (len(iterations), sum(t for _, t in iterations))
    prefill = [s.stats.first_token - s.stats.scheduled for s in seqs]  # type: ignore[operator]
    decode = [s.stats.finished - s.stats.first_token for s in seqs]  # type: ignore[operator]
    count, total = _histogram(m, names.PREFILL_TIME)
    assert count == len(seqs) and total == pytest.approx(sum(prefill))
    count, total = _histogram(m, names.DECODE_TIME)
    assert count == len(seqs) and total == pytest.approx(sum(decode))
    # Every token after a sequence's first has one gap; a sequence's gaps add up to its decode time.
    count, total = _histogram(m, names.INTER_TOKEN_LATENCY)
    assert count == sum(mt - 1 for _, mt in WORKLOAD) and total == pytest.approx(sum(decode))
    assert _gauge(m, names.ENGINE_ADMISSIONS) == len(seqs)
    assert _gauge(m, names.ENGINE_STEPS) == len(iterations)
    evictions = {p.attributes[names.ATTR_REASON]: p.value for p in m[names.ENGINE_EVICTIONS.otel_name].data.data_points}
    assert evictions == dict.fromkeys(names.EVICTION_REASONS, 0)
    # After the last step the batch is empty.
    assert _gauge(m, names.KV_CACHE_USED) == 0 and _gauge(m, names.KV_CACHE_PADDING) == 0


def test_a_cancel_is_an_eviction(rig: EngineRig) -> None:
    engine = rig.engine
    done = threading.Event()
    seq = _sequence(4, MAX_MODEL_LEN - 8, done)

    def hook() -> None:
        if engine.stats.steps == 3:
            seq.cancelled = True  # what Engine.cancel sets, at a known step

    engine.step_hook = hook
    engine.submit(seq)
    engine.start()
    assert done.wait(60)
    m = rig.metrics()
    evictions = {p.attributes[names.ATTR_REASON]: p.value for p in m[names.ENGINE_EVICTIONS.otel_name].data.data_points}
    assert evictions == {names.FinishReason.CANCELLED.value: 1, names.FinishReason.ERROR.value: 0}
    assert _gauge(m, names.ENGINE_ADMISSIONS) == 1
    assert names.DECODE_TIME.otel_name not in m  # only requests that finished normally have phase times


def test_model_load_span_and_gauge() -> None:
    backend = LocalBackend(model="tiny", model_name="tiny", device="cpu", dtype="float32", torch_threads=1,
                           max_num_seqs=2, max_queue_len=2, max_model_len=MAX_MODEL_LEN, default_max_tokens=4)
    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    recorder = Recorder(MeterProvider(metric_readers=[reader]), tracer_provider, "tiny", lambda: backend.stats)
    try:
        backend.load()
        assert backend.engine is not None, backend.load_error
        data = reader.get_metrics_data()  # a collection drains the engine's stats: the span is written
        metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        seconds = _gauge(metrics, names.MODEL_LOAD_TIME)
        recorder.flush()  # only once
        (span,) = [s for s in spans.get_finished_spans() if s.name == names.SPAN_MODEL_LOAD]
        assert span.parent is None and span.kind == SpanKind.INTERNAL
        assert span.attributes[names.GEN_AI_REQUEST_MODEL] == "tiny"
        assert span.attributes[names.SPAN_ATTR_MODEL_SOURCE] == "tiny"
        assert span.attributes[names.SPAN_ATTR_MODEL_DEVICE] == "cpu"
        assert span.attributes[names.SPAN_ATTR_MODEL_DTYPE] == "torch.float32"
        assert span.end_time > span.start_time
        assert (span.end_time - span.start_time) / 1e9 == pytest.approx(seconds, abs=0.05)
    finally:
        if backend.engine is not None:
            backend.engine.shutdown()
        recorder.close()


def test_no_local_engine_no_engine_series() -> None:
    """Gateway mode's stats have no KV budget: the engine families are absent, not zero."""
    reader = InMemoryMetricReader()
    stats = EngineStats(max_num_seqs=4, max_queue_len=0)
    recorder = Recorder(MeterProvider(metric_readers=[reader]), TracerProvider(), "tiny", lambda: stats)
    data = reader.get_metrics_data()
    present = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert not present & {spec.otel_name for spec in names.LOCAL_ENGINE_METRICS}, present
    assert names.QUEUE_LENGTH.otel_name in present
    recorder.close()
