"""The recorder's request-path API: ``start`` at arrival, ``finish`` at the end of a request.

Runs on the event loop for every request, so it is plain Python and cheap (a few µs): ``start``
asks the span writer for the GenAI span's context (sampling decision and ids, no span object is
built with the SDK), ``finish`` adds to integer totals and queues the request for the telemetry
thread. Neither ever raises into the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext
from opentelemetry.util.types import Attributes

from .. import names
from ..stats import RequestStats

if TYPE_CHECKING:
    from .batch import TelemetryThread
    from .instruments import Instruments


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
class Finished:
    """A finished request as queued for the telemetry thread."""

    rt: RequestTelemetry
    status: str
    error_type: str | None
    exception: BaseException | None
    response_id: str | None
    output_text: str | None


class LogOnce:
    """Telemetry failures are logged the first time per kind and then skipped silently: telemetry
    must never fail a request, nor flood the log once per request."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._logged: set[str] = set()

    def __call__(self, what: str, exc: Exception) -> None:
        if what not in self._logged:
            self._logged.add(what)
            self._log.warning("telemetry %s failed and is skipped from now on silently: %r", what, exc)


class RequestPath:
    """``start`` / ``trace_headers`` / ``set_request_params`` / ``finish``: what a request calls."""

    def __init__(
        self,
        *,
        instruments: Instruments,
        begin: Callable[[RequestStats], RequestTelemetry],
        batch: TelemetryThread,
        capture_content: bool,
        log_once: LogOnce,
    ) -> None:
        self.capture_content = capture_content
        self._begin = begin
        self._batch = batch
        self._pending = batch.pending
        self._wake = batch.wake
        self._log_once = log_once
        self._requests = instruments.requests
        self._errors = instruments.errors
        self._prompt_tokens = instruments.prompt_tokens
        self._generation_tokens = instruments.generation_tokens

    def start(self, operation: str, request_id: str) -> RequestTelemetry:
        stats = RequestStats(request_id=request_id, operation=operation)
        try:
            return self._begin(stats)
        except Exception as exc:
            self._log_once("span", exc)
            return RequestTelemetry(stats, trace.INVALID_SPAN)

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
        self._requests[(op, status)] += 1
        if error_type is not None:
            self._errors[(op, error_type)] += 1
        self._prompt_tokens[op] += st.prompt_tokens
        self._generation_tokens[op] += st.output_tokens
        self._pending.append(Finished(rt, status, error_type, exception, response_id,
                                      output_text if self.capture_content else None))
        if not self._wake.is_set():
            if self._batch.thread is None:
                self._batch.start()
            self._wake.set()
