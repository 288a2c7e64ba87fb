"""The telemetry thread: the SDK work for finished requests, many at a time, off the request path.

``ernie-telemetry`` wakes when a request finishes, lets a batch gather for ``flush_interval``
seconds, then for each request records its histograms once, inside the GenAI span's context (so
trace-based exemplars link a bucket to the request's trace), and hands the GenAI span and its
queue/prefill/decode children to the span writer. Collections and tests call ``flush`` too.
"""

from __future__ import annotations

import collections
import functools
import json
import threading
import time
from collections.abc import Callable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from .. import names
from ..kinds import Status, TokenType
from ..slo import Slo, SloTargets
from .genai_events import input_messages, output_messages, response_attributes
from .instruments import AttributeSets, Attrs, Instruments
from .keep import KeepRule
from .request_path import Finished, LogOnce, RequestTelemetry
from .sdk_internals import Phase, SpanWriter

_FAILED = (Status.ERROR.value, Status.REJECTED.value)
_SLO_TARGET_KEYS = tuple((s.value, names.span_attr_slo_target(s.value)) for s in (Slo.TTFT, Slo.TPOT, Slo.E2E))
# The invalid span, explicitly: the trace-based exemplar filter attaches nothing to a record made in
# this context. (An empty Context() would not do: the SDK takes a falsy context as "use the current one".)
_NO_EXEMPLAR = trace.set_span_in_context(trace.INVALID_SPAN)
# Marks the records of a trace the fleet's samplers keep; when exemplars follow sampling, the SDK's
# exemplar filter (exemplar_filter.py) admits only measurements that carry it.
KEPT_TRACE = otel_context.create_key("ernie-otel.exemplar-trace-kept")


@functools.lru_cache(maxsize=256)
def _slo_target_attributes(targets: SloTargets) -> dict[str, float]:
    """A request's targets as span attributes (ms), once per distinct set of targets: a server sees
    few (its own and the gateway's usual headers), and rounding three floats per span cost ~1 µs.
    Callers copy from the result, never change it."""
    ms = targets.as_ms()
    return {key: ms[slo] for slo, key in _SLO_TARGET_KEYS if slo in ms}


class TelemetryThread:
    def __init__(self, instruments: Instruments, attrs: AttributeSets, writer: SpanWriter, *,
                 flush_interval: float, log_once: LogOnce, keep: KeepRule | None = None,
                 access_log: Callable[[Finished], None] | None = None,
                 genai_event: Callable[[Finished], None] | None = None,
                 engine_drain: Callable[[], None] | None = None) -> None:
        self.instruments = instruments
        self.access_log = access_log  # telemetry.logs.AccessLog: one log record per request, here off the loop
        # telemetry.genai_events.InferenceDetails: the latest GenAI conventions' event, one per request.
        self.genai_event = genai_event
        # The engine's per-iteration samples into histograms (telemetry.engine_metrics), on every flush.
        self.engine_drain = engine_drain
        self.keep = keep
        self.attrs = attrs
        self.writer = writer
        self.flush_interval = flush_interval
        self.pending: collections.deque[Finished] = collections.deque()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self._log_once = log_once
        self._flush_lock = threading.Lock()
        self._thread_lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start the thread (the first finished request does, so an idle recorder holds none)."""
        with self._thread_lock:
            if self.thread is None and not self._closed:
                self.thread = threading.Thread(target=self._run, name="ernie-telemetry", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while not self._closed:
            self.wake.wait()
            # Let a batch gather: one pass over many requests finds the SDK's code and data warm.
            time.sleep(self.flush_interval)
            self.wake.clear()
            self.flush(yield_gil=True)

    def flush(self, yield_gil: bool = False) -> None:
        """Record everything queued so far (the telemetry thread, collections and tests call this).

        ``yield_gil``: give the GIL away after each request, so the engine thread waits for at most
        one request's recording (~0.1 ms) instead of a whole switch interval (5 ms).
        """
        with self._flush_lock:
            pending = self.pending
            while pending:
                if yield_gil:
                    time.sleep(0)
                try:
                    item = pending.popleft()
                except IndexError:
                    break
                try:
                    self.record_histograms(item.rt, item.status, item.error_type, self.exemplar_context(item))
                except Exception as exc:
                    self._log_once("metrics", exc)
                try:
                    self.end_spans(item)
                except Exception as exc:
                    self._log_once("spans", exc)
                if self.access_log is not None:
                    try:
                        self.access_log(item)
                    except Exception as exc:
                        self._log_once("access log", exc)
                if self.genai_event is not None:
                    try:
                        self.genai_event(item)
                    except Exception as exc:
                        self._log_once("genai event", exc)
            if self.engine_drain is not None:
                try:
                    self.engine_drain()
                except Exception as exc:
                    self._log_once("engine metrics", exc)

    def close(self) -> None:
        """Stop the thread and record what is queued (before the providers shut down)."""
        self._closed = True
        self.wake.set()
        thread = self.thread
        if thread is not None:
            thread.join(timeout=5)
        self.flush()

    def exemplar_context(self, item: Finished) -> Context:
        """The GenAI span's context, so trace-based exemplars link buckets to this trace -- unless
        the fleet's tail sampler will drop the trace: then no span, so no exemplar points at it."""
        rt = item.rt
        if self.keep is None:
            return trace.set_span_in_context(rt.span)
        st = rt.stats
        assert st.finished is not None  # finish() set it
        # The values end_spans gives the span, so the sampler judges the same numbers.
        kept = self.keep.keeps(
            rt.span.get_span_context().trace_id, failed=item.status in _FAILED, error_type=item.error_type,
            finish_reason=st.finish_reason, duration_ns=st.to_unix_ns(st.finished) - st.arrival_unix_ns,
            ttft_s=None if st.first_token is None else st.first_token - st.arrival)
        return otel_context.set_value(KEPT_TRACE, True, trace.set_span_in_context(rt.span)) if kept else _NO_EXEMPLAR

    def record_histograms(self, rt: RequestTelemetry, status: str, error_type: str | None,
                          ctx: Context | None = None) -> None:
        st = rt.stats
        op = st.operation
        ins, attrs = self.instruments, self.attrs
        assert st.finished is not None  # finish() set it
        e2e = st.finished - st.arrival
        # The same context on every record: exemplars link buckets to this trace (exemplar_context).
        if ctx is None:
            ctx = trace.set_span_in_context(rt.span)
        ins.latency.record(e2e, attrs.request[(op, status)], ctx)
        ins.genai_duration.record(
            e2e, attrs.genai[op] if error_type is None else attrs.genai_error[(op, error_type)], ctx)
        if st.scheduled is not None:
            ins.queue_time.record(st.scheduled - st.arrival, attrs.operation[op], ctx)
        if status == Status.OK.value:
            if st.first_token is not None:
                ins.ttft.record(st.first_token - st.arrival, attrs.genai[op], ctx)
            tpot = st.time_per_output_token
            if tpot is not None:
                ins.tpot.record(tpot, attrs.genai[op], ctx)
        if st.prompt_tokens:
            if ins.token_usage is not None:
                ins.token_usage.record(st.prompt_tokens, attrs.token[(op, TokenType.INPUT.value)], ctx)
                ins.token_usage.record(st.output_tokens, attrs.token[(op, TokenType.OUTPUT.value)], ctx)
            latest = ins.latest_genai
            if latest is not None:
                genai = attrs.genai[op]
                latest.operation_input.record(st.prompt_tokens, genai, ctx)
                latest.operation_output.record(st.output_tokens, genai, ctx)
                latest.usage_input.add(st.prompt_tokens, attrs.usage[op], ctx)
                latest.usage_output.add(st.output_tokens, attrs.usage[op], ctx)

    def end_spans(self, item: Finished) -> None:
        """The GenAI span's attributes and its phase children, from the request's stats."""
        rt = item.rt
        if not self.writer.recording(rt):
            return
        st = rt.stats
        assert st.finished is not None  # finish() set it
        attrs = response_attributes(self.attrs.model, item)
        if st.first_token is not None:
            # The exact TTFT the fleet's tail sampler keeps slow traces on (and keep.py checks).
            attrs[names.SPAN_ATTR_TTFT] = st.first_token - st.arrival
        # Content was kept only if capture was on when the request ran (set_request_params/finish).
        # The convention's message schema (as on the event), as JSON text: span attributes cannot nest.
        if rt.input_messages is not None:
            attrs[names.GEN_AI_INPUT_MESSAGES] = json.dumps(input_messages(rt.input_messages), ensure_ascii=False)
        if item.output_text is not None:
            attrs[names.GEN_AI_OUTPUT_MESSAGES] = json.dumps(
                output_messages(item.output_text, st.finish_reason), ensure_ascii=False)
        if item.error_type is not None:
            attrs[names.ATTR_ERROR_TYPE] = item.error_type
        attrs[names.SPAN_ATTR_TENANT] = st.tenant
        if st.slo.any:
            attrs.update(_slo_target_attributes(st.slo))
            if st.slo_verdicts:
                attrs[names.SPAN_ATTR_SLO_MET] = st.slo_verdicts[-1][1]
                attrs[names.SPAN_ATTR_SLO_MISSED] = [s.value for s, met in st.slo_verdicts[:-1] if not met]
        if st.cost is not None:
            attrs[names.SPAN_ATTR_COST] = st.cost
        decode_end = st.finished if st.first_token is not None else None
        phase_times: tuple[tuple[str, float | None, float | None, Attrs], ...] = (
            (names.SPAN_QUEUE, st.arrival, st.scheduled, {names.SPAN_ATTR_QUEUE_POSITION: st.queue_length_at_arrival}),
            (names.SPAN_PREFILL, st.scheduled, st.first_token, {names.GEN_AI_USAGE_INPUT_TOKENS: st.prompt_tokens}),
            (names.SPAN_DECODE, st.first_token, decode_end,
             {names.GEN_AI_USAGE_OUTPUT_TOKENS: st.output_tokens, names.SPAN_ATTR_DECODE_STEPS: st.decode_steps,
              names.SPAN_ATTR_BATCH_SIZE: st.max_batch_size}),
        )
        phases: list[Phase] = [(name, st.to_unix_ns(begin), st.to_unix_ns(end), phase_attrs)
                               for name, begin, end, phase_attrs in phase_times
                               if begin is not None and end is not None]
        self.writer.write(rt, attrs, phases, st.to_unix_ns(st.finished), item.exception,
                          failed=item.status in _FAILED, error_type=item.error_type)
