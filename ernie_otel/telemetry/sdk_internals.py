"""Every use of the OpenTelemetry SDK's internals, and the public-API fallback without them.

Why internals at all: a live SDK span costs ~30 µs to start and end, four per request. With the
SDK's tracer the recorder instead takes at arrival only what ``Tracer.start_span`` would decide
(parent, sampling decision, trace and span ids; no span object), and at the end hands finished
``ReadableSpan`` objects, built from the engine's timestamps, straight to the tracer's span
processor (whose ``on_start`` is therefore not called for them). That needs attributes the SDK
does not document as public: ``Tracer.sampler``, ``id_generator``, ``span_processor``,
``resource``, ``_instrumentation_scope``, ``_is_enabled`` and ``TracerProvider._span_limits``.
They are read here and nowhere else; when any is missing (another tracer provider, or an SDK
version that renamed one), ``span_writer`` returns the public-API writer, which produces the same
span tree with ``tracer.start_span``.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags, Tracer, TracerProvider
from opentelemetry.trace import Status as SpanStatus

from ..stats import RequestStats
from .instruments import AttributeSets, Attrs
from .request_path import RequestTelemetry

# A phase child span: name, start and end (Unix ns), attributes.
Phase = tuple[str, int, int, Attrs]


class SpanWriter(Protocol):
    """Makes a request's GenAI span: its context at arrival, the finished span tree at the end."""

    uses_sdk_internals: bool

    def begin(self, stats: RequestStats) -> RequestTelemetry: ...

    def recording(self, rt: RequestTelemetry) -> bool: ...

    def write(self, rt: RequestTelemetry, attrs: dict[str, Any], phases: Sequence[Phase], end_ns: int,
              exception: BaseException | None, *, failed: bool, error_type: str | None) -> None: ...


def span_writer(tracer: Tracer, tracer_provider: TracerProvider, attrs: AttributeSets) -> SpanWriter:
    return SdkSpanWriter.from_tracer(tracer, tracer_provider, attrs) or ApiSpanWriter(tracer, attrs)


class SdkSpanWriter:
    """The fast path over the SDK tracer's internals (see the module docstring)."""

    uses_sdk_internals = True

    def __init__(self, tracer: Any, sampler: Any, id_generator: Any, processor: Any, scope: Any,
                 attr_len_limit: int | None, attrs: AttributeSets) -> None:
        self._sampler = sampler
        self._id_generator = id_generator
        self._processor = processor
        self._scope = scope
        self._resource = getattr(tracer, "resource", None)
        self._is_enabled = getattr(tracer, "_is_enabled", None)
        self._attr_len_limit = attr_len_limit
        self._span_names = attrs.span_names
        self._span_base = attrs.span_base

    @classmethod
    def from_tracer(cls, tracer: Tracer, tracer_provider: TracerProvider,
                    attrs: AttributeSets) -> SdkSpanWriter | None:
        sampler = getattr(tracer, "sampler", None)
        id_generator = getattr(tracer, "id_generator", None)
        processor = getattr(tracer, "span_processor", None)
        scope = getattr(tracer, "_instrumentation_scope", None)
        if None in (sampler, id_generator, processor, scope):
            return None
        limits = getattr(tracer_provider, "_span_limits", None)
        limit: int | None = getattr(limits, "max_span_attribute_length", None)
        return cls(tracer, sampler, id_generator, processor, scope, limit, attrs)

    # ----------------------------------------------------------------- request path (arrival)
    def begin(self, stats: RequestStats) -> RequestTelemetry:
        """What ``Tracer.start_span`` decides (parent, sampling, ids), without building the span."""
        if self._is_enabled is not None and not self._is_enabled():
            return RequestTelemetry(stats, trace.INVALID_SPAN)
        parent: SpanContext | None = trace.get_current_span().get_span_context()
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
            random_id = parent.trace_flags.random_trace_id
        else:
            parent = None
            trace_id = self._id_generator.generate_trace_id()
            random_id = self._id_generator.is_trace_id_random()
        op = stats.operation
        result = self._sampler.should_sample(None, trace_id, self._span_names[op], SpanKind.INTERNAL,
                                             self._span_base[op])
        flags = TraceFlags.SAMPLED if result.decision.is_sampled() else TraceFlags.DEFAULT
        if random_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        ctx = SpanContext(trace_id, self._id_generator.generate_span_id(), is_remote=False,
                          trace_flags=TraceFlags(flags), trace_state=result.trace_state)
        return RequestTelemetry(stats, NonRecordingSpan(ctx), parent, result.decision.is_recording(),
                                result.attributes or None)

    # ----------------------------------------------------------------- telemetry thread (end)
    def recording(self, rt: RequestTelemetry) -> bool:
        return rt.recording

    def write(self, rt: RequestTelemetry, attrs: dict[str, Any], phases: Sequence[Phase], end_ns: int,
              exception: BaseException | None, *, failed: bool, error_type: str | None) -> None:
        st = rt.stats
        op = st.operation
        attrs = {**self._span_base[op], **attrs, **(rt.sampling_attributes or {})}
        if self._attr_len_limit is not None:
            limit = self._attr_len_limit
            attrs = {k: v[:limit] if isinstance(v, str) else v for k, v in attrs.items()}
        ctx = rt.span.get_span_context()
        events = (exception_event(exception, end_ns),) if exception is not None else ()
        processor, resource, scope = self._processor, self._resource, self._scope
        processor.on_end(ReadableSpan(
            self._span_names[op], context=ctx, parent=rt.parent, resource=resource, attributes=attrs,
            events=events, kind=SpanKind.INTERNAL, start_time=st.arrival_unix_ns, end_time=end_ns,
            status=SpanStatus(StatusCode.ERROR, error_type) if failed else SpanStatus(StatusCode.UNSET),
            instrumentation_scope=scope))
        for name, start_ns, stop_ns, phase_attrs in phases:
            child = SpanContext(ctx.trace_id, self._id_generator.generate_span_id(), is_remote=False,
                                trace_flags=ctx.trace_flags, trace_state=ctx.trace_state)
            processor.on_end(ReadableSpan(
                name, context=child, parent=ctx, resource=resource, attributes=phase_attrs,
                kind=SpanKind.INTERNAL, start_time=start_ns, end_time=stop_ns, instrumentation_scope=scope))

    # ----------------------------------------------------------------- for benchmarks/recording_path.py
    def write_one(self, name: str, ctx: SpanContext, attrs: Attrs) -> None:
        """One bare finished span to the processor, the way ``write`` hands each over."""
        self._processor.on_end(ReadableSpan(name, context=ctx, parent=ctx, resource=self._resource,
                                            attributes=attrs, start_time=1, end_time=2,
                                            instrumentation_scope=self._scope))


class ApiSpanWriter:
    """The public API: the GenAI span is live from arrival, its children are made at the end."""

    uses_sdk_internals = False

    def __init__(self, tracer: Tracer, attrs: AttributeSets) -> None:
        self._tracer = tracer
        self._span_names = attrs.span_names
        self._span_base = attrs.span_base

    def begin(self, stats: RequestStats) -> RequestTelemetry:
        op = stats.operation
        span = self._tracer.start_span(self._span_names[op], kind=SpanKind.INTERNAL, attributes=self._span_base[op],
                                       start_time=stats.arrival_unix_ns)
        return RequestTelemetry(stats, span)

    def recording(self, rt: RequestTelemetry) -> bool:
        return rt.span.is_recording()

    def write(self, rt: RequestTelemetry, attrs: dict[str, Any], phases: Sequence[Phase], end_ns: int,
              exception: BaseException | None, *, failed: bool, error_type: str | None) -> None:
        span = rt.span  # base attributes were set at start
        parent = trace.set_span_in_context(span)
        for name, start_ns, stop_ns, phase_attrs in phases:
            self._tracer.start_span(name, context=parent, start_time=start_ns,
                                    attributes=phase_attrs).end(end_time=stop_ns)
        span.set_attributes(attrs)
        if exception is not None:
            span.record_exception(exception, timestamp=end_ns)
        if failed:
            span.set_status(SpanStatus(StatusCode.ERROR, error_type))
        span.end(end_time=end_ns)


def exception_event(exc: BaseException, timestamp: int) -> Event:
    """The event ``Span.record_exception`` would add (OTel exception semantic conventions)."""
    module = type(exc).__module__
    qualname = type(exc).__qualname__
    return Event("exception", {
        "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
        "exception.message": str(exc),
        "exception.stacktrace": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "exception.escaped": "False",
    }, timestamp)
