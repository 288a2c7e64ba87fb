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

Histograms likewise: the SDK's ``Histogram.record`` cleans the attributes into a new dict, copies
it again, and hashes it (sorted keys, recursively) on every call, ~60% of a record's ~7-13 µs,
seven records per request. The recorder's attribute dicts are built once at start-up from plain
strings and ints (``AttributeSets``), so ``fast_histogram`` hashes each one once, keeps the
aggregation it finds under that key, and hands the measurement to it directly: the same
aggregation, exemplar filter and reservoir the public call reaches. It needs
``Histogram._measurement_consumer``, ``SynchronousMeasurementConsumer._reader_storages`` and
``_sdk_config``, ``MetricReaderStorage._get_or_init_view_instrument_match``, and
``_ViewInstrumentMatch._attributes_aggregation``, ``_view`` and ``_reset_on_collect``; any other
case (another meter provider, a view that filters attributes, delta temporality, a value the SDK
would warn about, a first record of a series) takes the SDK's own path.
"""

from __future__ import annotations

import functools
import math
import traceback
from collections.abc import Sequence
from time import time_ns
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import Histogram
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags, Tracer, TracerProvider
from opentelemetry.trace import Status as SpanStatus
from opentelemetry.util.types import Attributes

from ..stats import RequestStats
from .request_path import RequestTelemetry

if TYPE_CHECKING:
    from .instruments import AttributeSets, Attrs

# A phase child span: name, start and end (Unix ns), attributes.
Phase = tuple[str, int, int, "Attrs"]


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


# ------------------------------------------------------------------------------- histograms
class Recordable(Protocol):
    """What the recorder asks of a histogram: the SDK's, or fast_histogram's wrapper of it."""

    def record(self, amount: float, attributes: Attributes = None, context: Context | None = None) -> None: ...


@functools.cache
def _sdk_histogram_parts() -> tuple[Any, Any, Any, Any] | None:
    """The SDK's histogram and measurement-consumer classes, a Measurement that skips cleaning, and
    the SDK's attribute hash; None when this SDK version lacks any of them."""
    try:
        from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
        from opentelemetry.sdk.metrics._internal.instrument import Histogram as SdkHistogram
        from opentelemetry.sdk.metrics._internal.measurement import Measurement
        from opentelemetry.sdk.metrics._internal.measurement_consumer import SynchronousMeasurementConsumer
    except ImportError:
        return None

    class CleanMeasurement(Measurement):
        """A Measurement whose attributes are already clean (the recorder's prebuilt dicts)."""

        def __post_init__(self) -> None:
            pass

    return SdkHistogram, SynchronousMeasurementConsumer, CleanMeasurement, _hash_attributes


def fast_histogram(histogram: Histogram) -> Recordable:
    """``histogram`` behind the fast path (see the module docstring) when it is the SDK's own and
    the internals are there; otherwise ``histogram`` itself."""
    parts = _sdk_histogram_parts()
    if parts is None:
        return histogram
    sdk_histogram, sync_consumer, clean_measurement, hash_attributes = parts
    consumer = getattr(histogram, "_measurement_consumer", None)
    exemplar_filter = getattr(getattr(consumer, "_sdk_config", None), "exemplar_filter", None)
    # The SDK's histogram (its _Histogram subclass included), its record() not overridden.
    if (not isinstance(histogram, sdk_histogram) or type(histogram).record is not sdk_histogram.record
            or not isinstance(consumer, sync_consumer)
            or exemplar_filter is None or not hasattr(consumer, "_reader_storages")
            or not callable(getattr(histogram, "_is_enabled", None))):
        return histogram
    return FastHistogram(histogram, consumer, exemplar_filter, clean_measurement, hash_attributes)


_MAX_KEYS = 4096


class FastHistogram:
    """The SDK histogram's ``record``, minus the per-call attribute cleaning, copying and hashing."""

    __slots__ = ("_consumer", "_enabled", "_filter", "_hash", "_histogram", "_keys", "_matches", "_measurement",
                 "_storages")

    def __init__(self, histogram: Any, consumer: Any, exemplar_filter: Any, measurement: Any, hash_: Any) -> None:
        self._histogram = histogram
        self._consumer = consumer
        self._filter = exemplar_filter
        self._measurement = measurement
        self._hash = hash_
        self._enabled = histogram._is_enabled
        self._storages: Any = None
        # Per reader and view: its match, and whether the fast path may feed it (a view that
        # filters attributes, or delta temporality, keeps the SDK's own step).
        self._matches: list[tuple[Any, bool]] = []
        # The SDK's hashed key of every attribute dict seen so far, the same for every match:
        # id -> (the dict, so that the id stays its; its key).
        self._keys: dict[int, tuple[Attributes, Any]] = {}

    def _resolve(self, storages: Any) -> None:
        """The readers' view matches (again when a reader is added or removed)."""
        self._matches = [
            (match, match._view._attribute_keys is None and not match._reset_on_collect
             and isinstance(getattr(match, "_attributes_aggregation", None), dict))
            for storage in storages.values() for match in storage._get_or_init_view_instrument_match(self._histogram)]
        self._storages = storages

    def record(self, amount: float, attributes: Attributes = None, context: Context | None = None) -> None:
        if (attributes is None or context is None or not amount >= 0.0 or amount == math.inf
                or not self._enabled()):
            self._histogram.record(amount, attributes, context)  # the SDK's path, warnings and all
            return
        storages = self._consumer._reader_storages
        if storages is not self._storages:
            self._resolve(storages)
        known = self._keys.get(id(attributes))
        if known is None or known[0] is not attributes:
            if len(self._keys) >= _MAX_KEYS:  # a caller building dicts per call: stay bounded
                self._keys.clear()
            known = self._keys[id(attributes)] = (attributes, self._hash(attributes))
        key = known[1]
        now = time_ns()
        measurement = self._measurement(amount, now, self._histogram, context, attributes)
        sample = self._filter.should_sample(amount, now, attributes, context)
        for match, fast in self._matches:
            aggregation = match._attributes_aggregation.get(key) if fast else None
            if aggregation is None:
                # The SDK's own step: a series' first record (or its overflow), a filtering view,
                # delta temporality.
                match.consume_measurement(measurement, sample)
            else:
                aggregation.aggregate(measurement, sample)
