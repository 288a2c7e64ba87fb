"""Turns the engine's plain stats into OTel metrics and spans, off the request path.

Cost model (see docs/benchmarks.md): an SDK instrument call costs ~10 µs and a span ~15-50 µs in a
tight loop, and several times that in a busy server, where each call finds cold caches between two
model steps. So the request path only does plain Python, and one telemetry thread does the SDK work
for many requests at a time:
- at arrival, ``start()`` decides sampling and draws the GenAI span's ids (so the trace id can go
  into response headers and upstream ``traceparent`` at once); nothing is exported yet;
- counters are observable instruments over plain integers that ``finish()`` adds to, so they are
  exact at every collection;
- ``finish()`` appends the request to a queue; the ``ernie-telemetry`` thread drains it every
  ``flush_interval`` seconds: it records each histogram once, inside the GenAI span's context so
  that trace-based exemplars link a bucket to the request's trace, and hands the GenAI span and its
  queue/prefill/decode children to the span processors as finished ``ReadableSpan`` objects built
  from the engine's timestamps (processors' ``on_start`` is not called for them);
- every metric collection drains the queue first (the first observable counter's callback calls
  ``flush()``), so a scrape never sees a request counted but not yet in the histograms;
- attribute dicts are built once, at start-up, for every allowed label combination.
With a tracer provider that is not the OTel SDK's, spans go through the public API instead.
Any telemetry failure is logged once and swallowed (habit 5); it never fails a request.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, StatusCode, TraceFlags, TracerProvider
from opentelemetry.trace import Status as SpanStatus
from opentelemetry.util.types import Attributes

from .. import names
from ..ports import DEFAULT_PORTS, HOST
from ..names import ErrorType, Operation, Status, TokenType
from ..stats import EngineStats, RequestStats

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestTelemetry:
    """The handle a request carries from arrival to its last byte.

    ``span`` carries the GenAI span's context (for headers, exemplars and upstream propagation):
    with the SDK it is a ``NonRecordingSpan`` whose ids the exported span will have; otherwise a
    live span of whatever tracer provider is installed.
    """

    stats: RequestStats
    span: Span
    parent: SpanContext | None = None
    recording: bool = False  # SDK fast path: the sampler said record
    sampling_attributes: Attributes = None
    done: bool = False
    params_set: bool = False
    input_messages: Any = None


@dataclass(slots=True)
class _Finished:
    rt: RequestTelemetry
    status: str
    error_type: str | None
    exception: BaseException | None
    response_id: str | None
    output_text: str | None


def _capture_content_enabled() -> bool:
    return os.environ.get(names.CAPTURE_CONTENT_ENV, "").strip().lower() in ("1", "true", "yes")


def _process_cpu(_: CallbackOptions) -> Iterable[Observation]:
    t = os.times()
    yield Observation(t.user + t.system, {})


def _process_memory(_: CallbackOptions) -> Iterable[Observation]:
    try:
        with open("/proc/self/statm") as f:
            rss_pages = int(f.read().split()[1])
        yield Observation(rss_pages * os.sysconf("SC_PAGE_SIZE"), {})
    except (OSError, ValueError, IndexError):
        return


class Recorder:
    def __init__(
        self,
        meter_provider: MeterProvider,
        tracer_provider: TracerProvider,
        model: str,
        engine_stats: Callable[[], EngineStats | None],
        *,
        server_address: str = HOST,
        server_port: int = DEFAULT_PORTS["serve"],
        bucket_overrides: dict[str, list[float]] | None = None,
        capture_content: bool | None = None,
        flush_interval: float = 0.1,
    ) -> None:
        self.model = model
        self.capture_content = _capture_content_enabled() if capture_content is None else capture_content
        self._engine_stats = engine_stats
        self._logged: set[str] = set()
        meter = meter_provider.get_meter(names.METER_NAME)
        self.tracer = tracer_provider.get_tracer(names.TRACER_NAME)
        # The SDK pieces the fast path builds spans with; any missing -> the public API.
        self._sampler = getattr(self.tracer, "sampler", None)
        self._id_generator = getattr(self.tracer, "id_generator", None)
        self._processor = getattr(self.tracer, "span_processor", None)
        self._resource = getattr(self.tracer, "resource", None)
        self._scope = getattr(self.tracer, "_instrumentation_scope", None)
        self._sdk_spans = None not in (self._sampler, self._id_generator, self._processor, self._scope)
        limits = getattr(tracer_provider, "_span_limits", None)
        self._attr_len_limit: int | None = getattr(limits, "max_span_attribute_length", None)

        self.flush_interval = flush_interval
        self._pending: collections.deque[_Finished] = collections.deque()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

        def hist(spec: names.MetricSpec) -> Any:
            return meter.create_histogram(
                spec.otel_name, unit=spec.unit, description=spec.description,
                explicit_bucket_boundaries_advisory=list(names.histogram_buckets(spec, bucket_overrides)),
            )

        self._latency = hist(names.LATENCY)
        self._queue_time = hist(names.QUEUE_TIME)
        self._genai_duration = hist(names.GENAI_DURATION)
        self._ttft = hist(names.GENAI_TTFT)
        self._tpot = hist(names.GENAI_TPOT)
        self._token_usage = hist(names.GENAI_TOKEN_USAGE)

        # Pre-built attribute sets: the request path only looks them up.
        ops = [o.value for o in Operation]
        self._req_attrs = {(o, s.value): {names.ATTR_MODEL: model, names.ATTR_OPERATION: o, names.ATTR_STATUS: s.value}
                           for o in ops for s in Status}
        self._op_attrs = {o: {names.ATTR_MODEL: model, names.ATTR_OPERATION: o} for o in ops}
        self._err_attrs = {(o, e.value): {**self._op_attrs[o], names.ATTR_ERROR_TYPE: e.value}
                           for o in ops for e in ErrorType}
        genai_base = {o: {names.GEN_AI_OPERATION_NAME: o, names.GEN_AI_PROVIDER_NAME: names.PROVIDER_NAME,
                          names.GEN_AI_REQUEST_MODEL: model} for o in ops}
        self._genai_attrs = genai_base
        self._genai_err_attrs = {(o, e.value): {**genai_base[o], names.ATTR_ERROR_TYPE: e.value}
                                 for o in ops for e in ErrorType}
        self._token_attrs = {(o, t.value): {**genai_base[o], names.GEN_AI_TOKEN_TYPE: t.value}
                             for o in ops for t in TokenType}
        self._span_base = {o: {names.GEN_AI_OPERATION_NAME: o, names.GEN_AI_PROVIDER_NAME: names.PROVIDER_NAME,
                               names.GEN_AI_REQUEST_MODEL: model, names.SERVER_ADDRESS: server_address,
                               names.SERVER_PORT: server_port} for o in ops}
        self._span_names = {o: names.genai_span_name(o, model) for o in ops}

        # Cumulative totals behind the observable counters; every allowed series starts at 0 so
        # rate() and alerts see a series from start-up.
        self.requests: dict[tuple[str, str], int] = dict.fromkeys(self._req_attrs, 0)
        self.errors: dict[tuple[str, str], int] = dict.fromkeys(self._err_attrs, 0)
        self.prompt_tokens: dict[str, int] = dict.fromkeys(ops, 0)
        self.generation_tokens: dict[str, int] = dict.fromkeys(ops, 0)

        def counter(spec: names.MetricSpec, totals: dict[Any, int], attrs: dict[Any, dict[str, Any]],
                    flush: bool = False) -> None:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                if flush:  # collection time: histograms catch up with the counters first
                    self.flush()
                return [Observation(v, attrs[k]) for k, v in list(totals.items())]
            meter.create_observable_counter(spec.otel_name, callbacks=[observe], unit=spec.unit,
                                            description=spec.description)

        counter(names.REQUESTS, self.requests, self._req_attrs, flush=True)
        counter(names.ERRORS, self.errors, self._err_attrs)
        counter(names.PROMPT_TOKENS, self.prompt_tokens, self._op_attrs)
        counter(names.GENERATION_TOKENS, self.generation_tokens, self._op_attrs)

        model_attrs = {names.ATTR_MODEL: model}

        def gauge(spec: names.MetricSpec, read: Callable[[EngineStats], float]) -> None:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                stats = self._engine_stats()
                # Before the model has loaded the engine is not there: report an empty server.
                return [Observation(read(stats) if stats is not None else 0, model_attrs)]
            meter.create_observable_gauge(spec.otel_name, callbacks=[observe], unit=spec.unit,
                                          description=spec.description)

        gauge(names.QUEUE_LENGTH, lambda s: s.waiting)
        gauge(names.RUNNING, lambda s: s.running)
        gauge(names.TOKEN_THROUGHPUT, lambda s: s.tokens.rate())
        gauge(names.QUEUE_CAPACITY, lambda s: s.max_queue_len)
        gauge(names.RUNNING_CAPACITY, lambda s: s.max_num_seqs)
        meter.create_observable_counter(names.PROCESS_CPU.otel_name, callbacks=[_process_cpu],
                                        unit=names.PROCESS_CPU.unit, description=names.PROCESS_CPU.description)
        meter.create_observable_gauge(names.PROCESS_MEMORY.otel_name, callbacks=[_process_memory],
                                      unit=names.PROCESS_MEMORY.unit, description=names.PROCESS_MEMORY.description)

    # ------------------------------------------------------------------------ request path
    def start(self, operation: str, request_id: str) -> RequestTelemetry:
        stats = RequestStats(request_id=request_id, operation=operation)
        try:
            if self._sdk_spans:
                return self._start_sdk(stats)
            span = self.tracer.start_span(self._span_names[operation], kind=SpanKind.INTERNAL,
                                          attributes=self._span_base[operation], start_time=stats.arrival_unix_ns)
        except Exception as exc:
            self._log_once("span", exc)
            span = trace.INVALID_SPAN
        return RequestTelemetry(stats, span)

    def _start_sdk(self, stats: RequestStats) -> RequestTelemetry:
        """What ``Tracer.start_span`` decides (parent, sampling, ids), without building the span."""
        is_enabled = getattr(self.tracer, "_is_enabled", None)
        if is_enabled is not None and not is_enabled():
            return RequestTelemetry(stats, trace.INVALID_SPAN)
        parent = trace.get_current_span().get_span_context()
        if parent.is_valid:
            trace_id = parent.trace_id
            random_id = parent.trace_flags.random_trace_id
        else:
            parent = None
            trace_id = self._id_generator.generate_trace_id()  # type: ignore[union-attr]
            random_id = self._id_generator.is_trace_id_random()  # type: ignore[union-attr]
        op = stats.operation
        result = self._sampler.should_sample(  # type: ignore[union-attr]
            None, trace_id, self._span_names[op], SpanKind.INTERNAL, self._span_base[op])
        flags = TraceFlags.SAMPLED if result.decision.is_sampled() else TraceFlags.DEFAULT
        if random_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        ctx = SpanContext(trace_id, self._id_generator.generate_span_id(),  # type: ignore[union-attr]
                          is_remote=False, trace_flags=TraceFlags(flags), trace_state=result.trace_state)
        return RequestTelemetry(stats, NonRecordingSpan(ctx), parent, result.decision.is_recording(),
                                result.attributes or None)

    def trace_headers(self, rt: RequestTelemetry) -> dict[str, str]:
        ctx = rt.span.get_span_context()
        if not ctx.is_valid:
            return {}
        trace_id = format(ctx.trace_id, "032x")
        return {
            names.TRACE_ID_HEADER: trace_id,
            names.TRACE_RESPONSE_HEADER: f"00-{trace_id}-{format(ctx.span_id, '016x')}-{int(ctx.trace_flags):02x}",
        }

    def set_request_params(self, rt: RequestTelemetry, messages: Any = None) -> None:
        """Parameters are in ``rt.stats``; only the (opt-in) content needs keeping here."""
        rt.params_set = True
        if self.capture_content and messages is not None:
            rt.input_messages = messages

    def finish(
        self,
        rt: RequestTelemetry,
        status: str,
        *,
        error_type: str | None = None,
        exception: BaseException | None = None,
        response_id: str | None = None,
        output_text: str | None = None,
    ) -> None:
        """Count the request now and queue the rest for the telemetry thread; idempotent, never raises."""
        if rt.done:
            return
        rt.done = True
        st = rt.stats
        if st.finished is None:
            st.finished = time.perf_counter()
        st.status = status
        st.error_type = error_type
        op = st.operation
        # Plain arithmetic: observable counters read these.
        self.requests[(op, status)] += 1
        if error_type is not None:
            self.errors[(op, error_type)] += 1
        self.prompt_tokens[op] += st.prompt_tokens
        self.generation_tokens[op] += st.output_tokens
        self._pending.append(_Finished(rt, status, error_type, exception, response_id,
                                       output_text if self.capture_content else None))
        if not self._wake.is_set():
            if self._thread is None:
                self._start_thread()
            self._wake.set()

    # ------------------------------------------------------------------------ telemetry thread
    def _start_thread(self) -> None:
        with self._thread_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="ernie-telemetry", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            # Let a batch gather: one pass over many requests finds the SDK's code and data warm.
            time.sleep(self.flush_interval)
            self._wake.clear()
            self.flush(yield_gil=True)

    def flush(self, yield_gil: bool = False) -> None:
        """Record everything queued so far (the telemetry thread, collections and tests call this).

        ``yield_gil``: give the GIL away after each request, so the engine thread waits for at most
        one request's recording (~0.1 ms) instead of a whole switch interval (5 ms).
        """
        with self._flush_lock:
            pending = self._pending
            while pending:
                if yield_gil:
                    time.sleep(0)
                try:
                    item = pending.popleft()
                except IndexError:
                    break
                try:
                    self._record_histograms(item.rt, item.status, item.error_type)
                except Exception as exc:
                    self._log_once("metrics", exc)
                try:
                    self._end_spans(item)
                except Exception as exc:
                    self._log_once("spans", exc)

    def close(self) -> None:
        """Stop the telemetry thread and record what is queued (before the providers shut down)."""
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        self.flush()

    def _record_histograms(self, rt: RequestTelemetry, status: str, error_type: str | None) -> None:
        st = rt.stats
        op = st.operation
        e2e = st.finished - st.arrival  # type: ignore[operator]
        # The span's context on every record: trace-based exemplars link buckets to this trace.
        ctx = trace.set_span_in_context(rt.span)
        self._latency.record(e2e, self._req_attrs[(op, status)], ctx)
        self._genai_duration.record(
            e2e, self._genai_attrs[op] if error_type is None else self._genai_err_attrs[(op, error_type)], ctx)
        if st.scheduled is not None:
            self._queue_time.record(st.scheduled - st.arrival, self._op_attrs[op], ctx)
        if status == Status.OK.value:
            if st.first_token is not None:
                self._ttft.record(st.first_token - st.arrival, self._genai_attrs[op], ctx)
            tpot = st.time_per_output_token
            if tpot is not None:
                self._tpot.record(tpot, self._genai_attrs[op], ctx)
        if st.prompt_tokens:
            self._token_usage.record(st.prompt_tokens, self._token_attrs[(op, TokenType.INPUT.value)], ctx)
            self._token_usage.record(st.output_tokens, self._token_attrs[(op, TokenType.OUTPUT.value)], ctx)

    def _end_spans(self, item: _Finished) -> None:
        rt = item.rt
        span = rt.span
        fast = self._sdk_spans and isinstance(span, NonRecordingSpan)
        if not (rt.recording if fast else span.is_recording()):
            return
        st = rt.stats
        status, error_type = item.status, item.error_type
        end_ns = st.to_unix_ns(st.finished)  # type: ignore[arg-type]
        op = st.operation
        attrs: dict[str, Any] = {
            names.GEN_AI_RESPONSE_MODEL: self.model,
            names.GEN_AI_USAGE_INPUT_TOKENS: st.prompt_tokens,
            names.GEN_AI_USAGE_OUTPUT_TOKENS: st.output_tokens,
        }
        if rt.params_set:
            attrs[names.GEN_AI_REQUEST_STREAM] = st.stream
            for key, value in ((names.GEN_AI_REQUEST_MAX_TOKENS, st.max_tokens),
                               (names.GEN_AI_REQUEST_TEMPERATURE, st.temperature),
                               (names.GEN_AI_REQUEST_TOP_P, st.top_p), (names.GEN_AI_REQUEST_SEED, st.seed)):
                if value is not None:
                    attrs[key] = value
        if item.response_id:
            attrs[names.GEN_AI_RESPONSE_ID] = item.response_id
        if st.finish_reason:
            attrs[names.GEN_AI_RESPONSE_FINISH_REASONS] = [st.finish_reason]
        # Content was kept only if capture was on when the request ran (set_request_params/finish).
        if rt.input_messages is not None:
            attrs[names.GEN_AI_INPUT_MESSAGES] = json.dumps(rt.input_messages, ensure_ascii=False)
        if item.output_text is not None:
            attrs[names.GEN_AI_OUTPUT_MESSAGES] = json.dumps(
                [{"role": "assistant", "content": item.output_text}], ensure_ascii=False)
        if error_type is not None:
            attrs[names.ATTR_ERROR_TYPE] = error_type
        failed = status in (Status.ERROR.value, Status.REJECTED.value)
        phases = (
            (names.SPAN_QUEUE, st.arrival, st.scheduled, {names.SPAN_ATTR_QUEUE_POSITION: st.queue_length_at_arrival}),
            (names.SPAN_PREFILL, st.scheduled, st.first_token, {names.GEN_AI_USAGE_INPUT_TOKENS: st.prompt_tokens}),
            (names.SPAN_DECODE, st.first_token, st.finished if st.first_token is not None else None,
             {names.GEN_AI_USAGE_OUTPUT_TOKENS: st.output_tokens, names.SPAN_ATTR_DECODE_STEPS: st.decode_steps,
              names.SPAN_ATTR_BATCH_SIZE: st.max_batch_size}),
        )
        spans = [(name, st.to_unix_ns(begin), st.to_unix_ns(end), phase_attrs)
                 for name, begin, end, phase_attrs in phases if begin is not None and end is not None]
        if not fast:  # a live span of another tracer provider: the public API (base attributes set at start)
            parent = trace.set_span_in_context(span)
            for name, start_ns, stop_ns, phase_attrs in spans:
                self.tracer.start_span(name, context=parent, start_time=start_ns,
                                       attributes=phase_attrs).end(end_time=stop_ns)
            span.set_attributes(attrs)
            if item.exception is not None:
                span.record_exception(item.exception, timestamp=end_ns)
            if failed:
                span.set_status(SpanStatus(StatusCode.ERROR, error_type))
            span.end(end_time=end_ns)
            return
        attrs = {**self._span_base[op], **attrs, **(rt.sampling_attributes or {})}
        if self._attr_len_limit is not None:
            attrs = {k: v[: self._attr_len_limit] if isinstance(v, str) else v for k, v in attrs.items()}
        ctx = span.get_span_context()
        events = (_exception_event(item.exception, end_ns),) if item.exception is not None else ()
        processor = self._processor
        processor.on_end(ReadableSpan(  # type: ignore[union-attr]
            self._span_names[op], context=ctx, parent=rt.parent, resource=self._resource, attributes=attrs,
            events=events, kind=SpanKind.INTERNAL, start_time=st.arrival_unix_ns, end_time=end_ns,
            status=SpanStatus(StatusCode.ERROR, error_type) if failed else SpanStatus(StatusCode.UNSET),
            instrumentation_scope=self._scope))
        for name, start_ns, stop_ns, phase_attrs in spans:
            child = SpanContext(ctx.trace_id, self._id_generator.generate_span_id(),  # type: ignore[union-attr]
                                is_remote=False, trace_flags=ctx.trace_flags, trace_state=ctx.trace_state)
            processor.on_end(ReadableSpan(  # type: ignore[union-attr]
                name, context=child, parent=ctx, resource=self._resource, attributes=phase_attrs,
                kind=SpanKind.INTERNAL, start_time=start_ns, end_time=stop_ns, instrumentation_scope=self._scope))

    def _log_once(self, what: str, exc: Exception) -> None:
        if what not in self._logged:
            self._logged.add(what)
            log.warning("telemetry %s failed and is skipped from now on silently: %r", what, exc)


def _exception_event(exc: BaseException, timestamp: int) -> Event:
    """The event ``Span.record_exception`` would add (OTel exception semantic conventions)."""
    module = type(exc).__module__
    qualname = type(exc).__qualname__
    return Event("exception", {
        "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
        "exception.message": str(exc),
        "exception.stacktrace": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "exception.escaped": "False",
    }, timestamp)
