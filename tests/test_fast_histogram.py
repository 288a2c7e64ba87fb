"""The SDK histogram fast path (telemetry/sdk_internals.fast_histogram) against the SDK's own
``Histogram.record``: the same records through both, two meter providers with the same readers
and views, must export the same points: counts, sums, buckets, min/max and exemplars, for a
cumulative reader, a delta reader, a view that filters attributes, and a reader added later."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import Histogram as SdkHistogramKind
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from ernie_otel.telemetry.sdk_internals import FastHistogram, fast_histogram

BUCKETS = [0.01, 0.1, 1.0, 10.0]
ATTRS = [{"model": "ernie", "operation": op, "status": s}
         for op in ("chat", "text_completion") for s in ("ok", "error")]


def _readers() -> tuple[InMemoryMetricReader, InMemoryMetricReader]:
    delta = InMemoryMetricReader(preferred_temporality={SdkHistogramKind: AggregationTemporality.DELTA})
    return InMemoryMetricReader(), delta


def _provider(readers: Any) -> MeterProvider:
    # A view that keeps only `operation` on the filtered histogram: the fast path must leave it to the SDK.
    return MeterProvider(metric_readers=list(readers),
                         views=[View(instrument_name="filtered", attribute_keys={"operation"})])


def _context(i: int) -> Any:
    flags = TraceFlags.SAMPLED if i % 3 else TraceFlags.DEFAULT  # exemplars only from sampled spans
    span = NonRecordingSpan(SpanContext(0x1000 + i, 0x2000 + i, is_remote=False, trace_flags=TraceFlags(flags)))
    return trace.set_span_in_context(span)


def _points(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[Any, ...]], Any]:
    data = reader.get_metrics_data()
    out: dict[tuple[str, tuple[Any, ...]], Any] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    exemplars = sorted((e.value, e.trace_id, e.span_id,
                                        tuple(sorted((e.filtered_attributes or {}).items()))) for e in p.exemplars)
                    out[(metric.name, tuple(sorted(p.attributes.items())))] = (
                        p.count, round(p.sum, 9), tuple(p.bucket_counts), p.min, p.max, exemplars)
    return out


def test_fast_path_exports_what_the_sdk_exports() -> None:
    fast_readers, sdk_readers = _readers(), _readers()
    fast_provider, sdk_provider = _provider(fast_readers), _provider(sdk_readers)
    fast_meter, sdk_meter = fast_provider.get_meter("t"), sdk_provider.get_meter("t")
    fast = [fast_histogram(fast_meter.create_histogram(n, explicit_bucket_boundaries_advisory=BUCKETS))
            for n in ("latency", "filtered")]
    sdk = [sdk_meter.create_histogram(n, explicit_bucket_boundaries_advisory=BUCKETS) for n in ("latency", "filtered")]
    assert all(isinstance(h, FastHistogram) for h in fast)

    values = [0.005 * (i % 7) + 0.3 * (i % 5) + (12.0 if i % 11 == 0 else 0) for i in range(300)]
    values[17] = -1.0  # dropped by both, with the SDK's warning
    values[18] = float("nan")
    for round_ in range(2):  # the delta reader resets between collections
        chunk = values[round_ * 150:(round_ + 1) * 150]
        for i, value in enumerate(chunk):
            ctx, attrs = _context(i), ATTRS[i % len(ATTRS)]
            for h in fast:
                h.record(value, attrs, ctx)
            for h in sdk:
                h.record(value, attrs, ctx)
        for f, s in zip(fast_readers, sdk_readers, strict=True):
            got, want = _points(f), _points(s)
            assert got == want
            assert got, "nothing exported"
        assert {name for name, _ in _points(fast_readers[0])} == {"latency", "filtered"}

    # A reader added later sees later records only, through the fast path as through the SDK.
    fast_late, sdk_late = InMemoryMetricReader(), InMemoryMetricReader()
    fast_provider.add_metric_reader(fast_late)
    sdk_provider.add_metric_reader(sdk_late)
    for i in range(40):
        for h in fast:
            h.record(0.2 * i, ATTRS[0], _context(i))
        for h in sdk:
            h.record(0.2 * i, ATTRS[0], _context(i))
    assert _points(fast_late) == _points(sdk_late) != {}
    assert _points(fast_readers[0]) == _points(sdk_readers[0])
    # No context: the SDK's own path (it takes the current one).
    fast[0].record(0.5, ATTRS[1])
    sdk[0].record(0.5, ATTRS[1])
    assert _points(fast_readers[0]) == _points(sdk_readers[0])


def test_not_the_sdk_histogram_is_left_as_it_is() -> None:
    noop = NoOpMeterProvider().get_meter("t").create_histogram("x")
    assert fast_histogram(noop) is noop
