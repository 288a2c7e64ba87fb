"""Turns the engine's plain stats into OTel metrics and spans, once per request.

Cost model (see docs/benchmarks.md): an SDK instrument call costs ~10 µs and a span ~15-50 µs on
a small CPU, so the request path does as little as it can:
- counters are observable instruments over plain integers, so a request adds to a dict and the
  SDK reads the totals at collection time;
- histograms are recorded once each, at the end, inside the GenAI span's context so that
  trace-based exemplars link a bucket to the request's trace;
- attribute dicts are built once, at start-up, for every allowed label combination;
- the queue/prefill/decode spans are placed afterwards from recorded timestamps: nothing runs
  per token. They are finished spans from the start, so they go to the span processor as
  ``ReadableSpan`` objects (about a fifth of the cost of a live span; processors' ``on_start``
  is not called for them);
- request parameters go onto the GenAI span in the same single ``set_attributes`` call as the
  outcome.
Any telemetry failure is logged once and swallowed (habit 5); it never fails a request.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Span, SpanContext, SpanKind, StatusCode, TracerProvider
from opentelemetry.trace import Status as SpanStatus

from .. import names
from ..names import ErrorType, Operation, Status, TokenType
from ..stats import EngineStats, RequestStats

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestTelemetry:
    """The handle a request carries from arrival to its last byte."""

    stats: RequestStats
    span: Span
    done: bool = False
    params_set: bool = False
    input_messages: Any = None
    output_text: list[str] = field(default_factory=list)


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
        server_address: str = "127.0.0.1",
        server_port: int = 8180,
        bucket_overrides: dict[str, list[float]] | None = None,
        capture_content: bool | None = None,
    ) -> None:
        self.model = model
        self.capture_content = _capture_content_enabled() if capture_content is None else capture_content
        self._engine_stats = engine_stats
        self._logged: set[str] = set()
        meter = meter_provider.get_meter(names.METER_NAME)
        self.tracer = tracer_provider.get_tracer(names.TRACER_NAME)
        self._id_generator = getattr(tracer_provider, "id_generator", None)

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

        def counter(spec: names.MetricSpec, totals: dict[Any, int], attrs: dict[Any, dict[str, Any]]) -> None:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(v, attrs[k]) for k, v in list(totals.items())]
            meter.create_observable_counter(spec.otel_name, callbacks=[observe], unit=spec.unit,
                                            description=spec.description)

        counter(names.REQUESTS, self.requests, self._req_attrs)
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
            span = self.tracer.start_span(self._span_names[operation], kind=SpanKind.INTERNAL,
                                          attributes=self._span_base[operation], start_time=stats.arrival_unix_ns)
        except Exception as exc:
            self._log_once("span", exc)
            span = trace.INVALID_SPAN
        return RequestTelemetry(stats, span)

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
        """Record everything about a finished request; idempotent, never raises."""
        if rt.done:
            return
        rt.done = True
        st = rt.stats
        if st.finished is None:
            st.finished = time.perf_counter()
        st.status = status
        st.error_type = error_type
        op = st.operation
        # Plain arithmetic first: observable counters read these.
        self.requests[(op, status)] += 1
        if error_type is not None:
            self.errors[(op, error_type)] += 1
        self.prompt_tokens[op] += st.prompt_tokens
        self.generation_tokens[op] += st.output_tokens
        try:
            self._record_histograms(rt, status, error_type)
        except Exception as exc:
            self._log_once("metrics", exc)
        try:
            self._end_spans(rt, status, error_type, exception, response_id, output_text)
        except Exception as exc:
            self._log_once("spans", exc)

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

    def _end_spans(self, rt: RequestTelemetry, status: str, error_type: str | None,
                   exception: BaseException | None, response_id: str | None, output_text: str | None) -> None:
        span = rt.span
        if not span.is_recording():
            return
        st = rt.stats
        end_ns = st.to_unix_ns(st.finished)  # type: ignore[arg-type]
        phases = (
            (names.SPAN_QUEUE, st.arrival, st.scheduled, {names.SPAN_ATTR_QUEUE_POSITION: st.queue_length_at_arrival}),
            (names.SPAN_PREFILL, st.scheduled, st.first_token, {names.GEN_AI_USAGE_INPUT_TOKENS: st.prompt_tokens}),
            (names.SPAN_DECODE, st.first_token, st.finished if st.first_token is not None else None,
             {names.GEN_AI_USAGE_OUTPUT_TOKENS: st.output_tokens, names.SPAN_ATTR_DECODE_STEPS: st.decode_steps,
              names.SPAN_ATTR_BATCH_SIZE: st.max_batch_size}),
        )
        for name, begin, end, phase_attrs in phases:
            if begin is not None and end is not None:
                self._phase_span(span, name, st.to_unix_ns(begin), st.to_unix_ns(end), phase_attrs)
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
        if response_id:
            attrs[names.GEN_AI_RESPONSE_ID] = response_id
        if st.finish_reason:
            attrs[names.GEN_AI_RESPONSE_FINISH_REASONS] = [st.finish_reason]
        if self.capture_content:
            if rt.input_messages is not None:
                attrs[names.GEN_AI_INPUT_MESSAGES] = json.dumps(rt.input_messages, ensure_ascii=False)
            if output_text is not None:
                attrs[names.GEN_AI_OUTPUT_MESSAGES] = json.dumps(
                    [{"role": "assistant", "content": output_text}], ensure_ascii=False)
        if error_type is not None:
            attrs[names.ATTR_ERROR_TYPE] = error_type
        span.set_attributes(attrs)
        if exception is not None:
            span.record_exception(exception, timestamp=end_ns)
        if status in (Status.ERROR.value, Status.REJECTED.value):
            span.set_status(SpanStatus(StatusCode.ERROR, error_type))
        span.end(end_time=end_ns)

    def _phase_span(self, parent: Span, name: str, start_ns: int, end_ns: int, attrs: dict[str, Any]) -> None:
        processor = getattr(parent, "_span_processor", None)
        if processor is None or self._id_generator is None:  # not the SDK span we know: the public way
            child = self.tracer.start_span(name, context=trace.set_span_in_context(parent), start_time=start_ns,
                                           attributes=attrs)
            child.end(end_time=end_ns)
            return
        pctx = parent.get_span_context()
        ctx = SpanContext(pctx.trace_id, self._id_generator.generate_span_id(), is_remote=False,
                          trace_flags=pctx.trace_flags, trace_state=pctx.trace_state)
        processor.on_end(ReadableSpan(
            name, context=ctx, parent=pctx, resource=parent.resource, attributes=attrs,  # type: ignore[attr-defined]
            kind=SpanKind.INTERNAL, start_time=start_ns, end_time=end_ns,
            instrumentation_scope=parent.instrumentation_scope))  # type: ignore[attr-defined]

    def _log_once(self, what: str, exc: Exception) -> None:
        if what not in self._logged:
            self._logged.add(what)
            log.warning("telemetry %s failed and is skipped from now on silently: %r", what, exc)
