"""The engine's insides as telemetry: KV cache, padding, batch composition, per-request phase
times, inter-token latency, admissions/evictions and the model-load span.

The engine never calls OpenTelemetry: it writes plain numbers into ``EngineStats`` at step
boundaries. Here, gauges and counters read those numbers when a collection asks, and ``drain``
(called by every telemetry flush: the telemetry thread and each collection, before the readers
see anything) moves the engine's bounded sample deques into histograms. Instruments and attribute
sets are built once; nothing here runs on the request path or on the engine thread.

Without a local engine (gateway mode, or before the model has loaded) every series here is
absent, not zero: an upstream engine's KV cache is its own families' business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import SpanKind, Tracer

from .. import names
from ..stats import EngineStats
from .instruments import Attrs, histogram
from .sdk_internals import Recordable

# Drained samples are recorded in no span's context, so no exemplar points at an unrelated trace.
_NO_SPAN = trace.set_span_in_context(trace.INVALID_SPAN)
# A drain gives the GIL away after this many records (~10 us each), so a collection that drains
# thousands of steps at once delays the engine thread by a fraction of a millisecond, not by the
# interpreter's 5 ms switch interval.
_RECORDS_PER_SLICE = 32


def _local(stats: EngineStats | None) -> EngineStats | None:
    """The stats of a local engine, or None (gateway mode has EngineStats but no KV budget)."""
    return stats if stats is not None and stats.kv_budget_tokens > 0 else None


class EngineInstruments:
    def __init__(self, meter: Meter, tracer: Tracer, model: str, engine_stats: Callable[[], EngineStats | None],
                 bucket_overrides: dict[str, list[float]] | None = None) -> None:
        self._stats = engine_stats
        self._tracer = tracer
        self._model = model
        self._attrs: Attrs = {names.ATTR_MODEL: model}
        self._evicted_attrs: dict[str, Attrs] = {
            reason: {names.ATTR_MODEL: model, names.ATTR_REASON: reason} for reason in names.EVICTION_REASONS}
        self._load_span_written = False

        def hist(spec: names.MetricSpec) -> Recordable:
            return histogram(meter, spec, bucket_overrides)

        self.batch_size = hist(names.BATCH_SIZE)
        self.iteration_tokens = hist(names.ITERATION_TOKENS)
        self.prefill_time = hist(names.PREFILL_TIME)
        self.decode_time = hist(names.DECODE_TIME)
        self.itl = hist(names.INTER_TOKEN_LATENCY)

        attrs = self._attrs

        def gauge(spec: names.MetricSpec, read: Callable[[EngineStats], float | None]) -> None:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                stats = _local(engine_stats())
                value = None if stats is None else read(stats)
                return [] if value is None else [Observation(value, attrs)]
            meter.create_observable_gauge(spec.otel_name, callbacks=[observe], unit=spec.unit,
                                          description=spec.description)

        gauge(names.KV_CACHE_USED, lambda s: s.kv_used_bytes)
        gauge(names.KV_CACHE_BUDGET, lambda s: s.kv_budget_bytes)
        gauge(names.KV_CACHE_USAGE, lambda s: s.kv_positions / s.kv_budget_tokens)
        gauge(names.KV_CACHE_PADDING, lambda s: s.kv_padding / s.kv_positions if s.kv_positions else 0.0)
        gauge(names.MODEL_LOAD_TIME, lambda s: None if s.model_load is None else s.model_load.seconds)

        def counter(spec: names.MetricSpec, read: Callable[[EngineStats], Iterable[tuple[int, Attrs]]]) -> None:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                stats = _local(engine_stats())
                return [] if stats is None else [Observation(v, a) for v, a in read(stats)]
            meter.create_observable_counter(spec.otel_name, callbacks=[observe], unit=spec.unit,
                                            description=spec.description)

        counter(names.ENGINE_ADMISSIONS, lambda s: [(s.admitted, attrs)])
        counter(names.ENGINE_STEPS, lambda s: [(s.steps, attrs)])
        # Every reason's series exists from start-up (0), so rate() and alerts see it at once.
        counter(names.ENGINE_EVICTIONS,
                lambda s: [(s.evicted.get(r, 0), a) for r, a in self._evicted_attrs.items()])

    def drain(self) -> None:
        """Move the engine's samples into the histograms; write the model-load span once."""
        stats = _local(self._stats())
        if stats is None:
            return
        attrs, ctx = self._attrs, _NO_SPAN
        pop = stats.iteration_samples.popleft
        while stats.iteration_samples:
            rows, tokens = pop()
            self.batch_size.record(rows, attrs, ctx)
            self.iteration_tokens.record(tokens, attrs, ctx)
        pop = stats.phase_samples.popleft
        while stats.phase_samples:
            prefill, decode = pop()
            self.prefill_time.record(prefill, attrs, ctx)
            self.decode_time.record(decode, attrs, ctx)
        pop = stats.itl_samples.popleft
        record = self.itl.record
        since_yield = 0
        while stats.itl_samples:
            gap, count = pop()
            for _ in range(int(count)):
                record(gap, attrs, ctx)
            since_yield += int(count)
            if since_yield >= _RECORDS_PER_SLICE:
                since_yield = 0
                time.sleep(0)
        if not self._load_span_written and stats.model_load is not None:
            self._load_span_written = True
            self._write_load_span(stats)

    def _write_load_span(self, stats: EngineStats) -> None:
        load = stats.model_load
        assert load is not None
        attributes: dict[str, Any] = {
            names.GEN_AI_REQUEST_MODEL: self._model,
            names.SPAN_ATTR_MODEL_SOURCE: load.model,
            names.SPAN_ATTR_MODEL_DEVICE: load.device,
            names.SPAN_ATTR_MODEL_DTYPE: load.dtype,
        }
        # A root span (the invalid parent) with the load's own timestamps, whenever it is written.
        span = self._tracer.start_span(names.SPAN_MODEL_LOAD, context=_NO_SPAN, kind=SpanKind.INTERNAL,
                                       attributes=attributes, start_time=load.start_unix_ns)
        span.end(end_time=load.end_unix_ns)
