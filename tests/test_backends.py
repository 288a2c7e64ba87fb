"""How a request ended -> its telemetry: ``record_outcome``, the one mapping both backends use,
checked against a real Recorder over the OTel SDK (in-memory reader and span exporter)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from ernie_otel import names
from ernie_otel.backends import Outcome, record_outcome
from ernie_otel.kinds import ErrorType, FinishReason, Operation, Status
from ernie_otel.protocol import APIError
from ernie_otel.telemetry.recorder import Recorder, RequestTelemetry

MODEL = "m"
CHAT = Operation.CHAT.value


@dataclass
class Rig:
    recorder: Recorder
    reader: InMemoryMetricReader
    spans: InMemorySpanExporter

    def genai_span(self, rt: RequestTelemetry) -> ReadableSpan:
        self.recorder.flush()
        found = [s for s in self.spans.get_finished_spans()
                 if s.name == names.genai_span_name(CHAT, MODEL)
                 and s.context.trace_id == rt.span.get_span_context().trace_id]
        assert len(found) == 1
        return found[0]

    def counter(self, spec: names.MetricSpec, **attrs: Any) -> float:
        data = self.reader.get_metrics_data()
        total = 0.0
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == spec.otel_name:
                        total += sum(p.value for p in m.data.data_points  # type: ignore[union-attr]
                                     if all(p.attributes.get(k) == v for k, v in attrs.items()))
        return total


@pytest.fixture
def rig() -> Iterator[Rig]:
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    recorder = Recorder(MeterProvider(metric_readers=[reader]), tracer_provider, MODEL, lambda: None)
    yield Rig(recorder, reader, spans)
    recorder.close()


def _started(rig: Rig, finish_reason: str | None = None) -> RequestTelemetry:
    rt = rig.recorder.start(CHAT, "chatcmpl-t")
    rt.stats.finish_reason = finish_reason
    return rt


def test_ok(rig: Rig) -> None:
    rt = _started(rig, FinishReason.LENGTH.value)
    record_outcome(rig.recorder, rt, Outcome.OK, response_id="chatcmpl-t")
    span = rig.genai_span(rt)
    assert rt.stats.status == Status.OK.value and span.status.status_code is StatusCode.UNSET
    assert span.attributes[names.GEN_AI_RESPONSE_ID] == "chatcmpl-t"
    assert not span.events


def test_api_error_keeps_the_errors_status_and_type(rig: Rig) -> None:
    rt = _started(rig)
    err = APIError(429, "full", ErrorType.QUEUE_FULL, status=Status.REJECTED)
    record_outcome(rig.recorder, rt, Outcome.ERROR, err)
    span = rig.genai_span(rt)
    assert rt.stats.status == Status.REJECTED.value and rt.stats.finish_reason is None
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[names.ATTR_ERROR_TYPE] == ErrorType.QUEUE_FULL.value
    assert rig.counter(names.ERRORS, **{names.ATTR_ERROR_TYPE: ErrorType.QUEUE_FULL.value}) == 1


def test_failure_mid_generation_sets_finish_reason_error(rig: Rig) -> None:
    rt = _started(rig)
    err = APIError(502, "cut", ErrorType.UPSTREAM_STREAM, openai_type="server_error")
    record_outcome(rig.recorder, rt, Outcome.FAILED, err)
    span = rig.genai_span(rt)
    assert rt.stats.status == Status.ERROR.value
    assert tuple(span.attributes[names.GEN_AI_RESPONSE_FINISH_REASONS]) == (FinishReason.ERROR.value,)
    assert [e.name for e in span.events] == ["exception"]


def test_client_disconnect_is_a_cancel_without_exception(rig: Rig) -> None:
    rt = _started(rig)
    record_outcome(rig.recorder, rt, Outcome.DISCONNECTED)
    span = rig.genai_span(rt)
    assert rt.stats.status == Status.CANCELLED.value and rt.stats.error_type is None
    assert rt.stats.finish_reason == FinishReason.CANCELLED.value
    assert span.status.status_code is StatusCode.UNSET and not span.events
    assert rig.counter(names.REQUESTS, **{names.ATTR_STATUS: Status.CANCELLED.value}) == 1
    assert rig.counter(names.ERRORS) == 0


def test_shutdown_cancel_is_a_cancel_that_carries_the_503(rig: Rig) -> None:
    """The same for a streamed and a non-streamed request, on either backend: one code path."""
    rt = _started(rig)
    err = APIError(503, "server shutting down", ErrorType.NOT_READY, status=Status.CANCELLED)
    record_outcome(rig.recorder, rt, Outcome.SHUTDOWN, err)
    span = rig.genai_span(rt)
    assert rt.stats.status == Status.CANCELLED.value and rt.stats.error_type is None
    assert span.status.status_code is StatusCode.UNSET
    assert [e.name for e in span.events] == ["exception"]
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["exception.message"] == "server shutting down"
    assert rig.counter(names.ERRORS) == 0


def test_a_cancel_keeps_the_finish_reason_the_generation_reached(rig: Rig) -> None:
    rt = _started(rig, FinishReason.STOP.value)
    record_outcome(rig.recorder, rt, Outcome.DISCONNECTED)
    assert rt.stats.finish_reason == FinishReason.STOP.value


def test_only_the_first_outcome_counts(rig: Rig) -> None:
    rt = _started(rig)
    record_outcome(rig.recorder, rt, Outcome.OK)
    record_outcome(rig.recorder, rt, Outcome.DISCONNECTED)
    assert rt.stats.status == Status.OK.value
    assert rig.counter(names.REQUESTS) == 1
