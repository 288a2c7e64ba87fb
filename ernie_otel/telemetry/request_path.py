"""The recorder's request-path API: ``start`` at arrival, ``finish`` at the end of a request.

Runs on the event loop for every request, so it is plain Python and cheap (a few µs): ``start``
asks the span writer for the GenAI span's context (sampling decision and ids, no span object is
built with the SDK), ``finish`` adds to integer totals and queues the request for the telemetry
thread. Neither ever raises into the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext
from opentelemetry.util.types import Attributes

from .. import names
from ..kinds import Status
from ..slo import HEADER_TPOT, HEADER_TTFT, NO_TARGETS, HeaderTargets, Slo, SloResult, SloTargets, evaluate
from ..stats import RequestStats
from ..tenancy import Price, TenantResolver

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
        slo_targets: SloTargets = NO_TARGETS,
        tenants: TenantResolver | None = None,
        tenant_header: str | None = None,
        price: Price | None = None,
        batch_slots: int = 1,
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
        acc = instruments.accounting
        self._slo_counts = acc.slo
        self._goodput = acc.goodput
        self._tenant_requests = acc.requests
        self._tenant_tokens = acc.tokens
        self._overflow = acc.overflow
        self._header_problems = acc.header_problems
        self._cost = acc.cost
        # Accountability (see ernie_otel.slo / ernie_otel.tenancy).
        self.slo_targets = slo_targets
        self.tenants = tenants
        self.tenant_header = tenant_header
        self.price = price
        self.batch_slots = batch_slots
        # Built once: the header targets' memo, and the raw (lower-case) names of the headers
        # attribute() reads.
        self._slo_headers = HeaderTargets(slo_targets) if slo_targets.any else None
        wanted = [HEADER_TTFT, HEADER_TPOT] if self._slo_headers is not None else []
        if tenants is not None and tenant_header:
            wanted.append(tenant_header)
        self._wanted = {h.lower().encode("latin-1"): h for h in wanted}

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

    def attribute(self, rt: RequestTelemetry, headers: Mapping[str, str], key_name: str | None = None) -> None:
        """Whose request this is and which targets it is judged against, from its headers (and the
        name of the API key that authenticated it). Bad headers are counted, never an error."""
        if self.tenants is None and self._slo_headers is None:
            return
        try:
            values = self._header_values(headers)
            st = rt.stats
            if self.tenants is not None:
                tenant, overflow = self.tenants.resolve(
                    values.get(self.tenant_header) if self.tenant_header else None, key_name)
                st.tenant = tenant
                if overflow is not None:
                    self._overflow[overflow.value] += 1
            if self._slo_headers is not None:
                st.slo, problems = self._slo_headers(values.get(HEADER_TTFT), values.get(HEADER_TPOT))
                for header, problem in problems:
                    self._header_problems[(header, problem.value)] += 1
        except Exception as exc:
            self._log_once("attribution", exc)

    def _header_values(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """The headers attribute() reads, found in one pass where the mapping exposes the raw ASGI
        list (Starlette's ``Headers.raw``): its ``get`` scans that list once per name and raises
        and catches a KeyError for an absent one, ~2 µs for three look-ups against <1 µs for one
        pass. The first occurrence wins, as with ``get``."""
        raw = getattr(headers, "raw", None)
        if not isinstance(raw, list):
            return headers
        wanted = self._wanted
        found: dict[str, str] = {}
        for key, value in raw:
            name = wanted.get(key.lower())
            if name is not None and name not in found:
                found[name] = value.decode("latin-1")
        return found

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
        try:
            self._account(st, status, error_type)
        except Exception as exc:
            self._log_once("accounting", exc)
        self._pending.append(Finished(rt, status, error_type, exception, response_id,
                                      output_text if self.capture_content else None))
        if not self._wake.is_set():
            if self._batch.thread is None:
                self._batch.start()
            self._wake.set()

    def _account(self, st: RequestStats, status: str, error_type: str | None) -> None:
        """Tenant, SLO, goodput and cost totals of a finished request: dict arithmetic only."""
        tenant = st.tenant
        key = (tenant, status)
        self._tenant_requests[key] = self._tenant_requests.get(key, 0) + 1
        if st.prompt_tokens or st.output_tokens:
            for token_type, n in (("input", st.prompt_tokens), ("output", st.output_tokens)):
                tk = (tenant, token_type)
                self._tenant_tokens[tk] = self._tenant_tokens.get(tk, 0) + n
        if st.slo.any:
            assert st.finished is not None
            verdicts = evaluate(st.slo, status, error_type, st.ttft, st.time_per_output_token,
                                st.finished - st.arrival)
            st.slo_verdicts = verdicts
            for slo, met in verdicts:
                sk = (tenant, _SLO_VALUES[slo], _MET if met else _MISSED)
                self._slo_counts[sk] = self._slo_counts.get(sk, 0) + 1
            if verdicts and verdicts[-1][1]:
                self._goodput[tenant] = self._goodput.get(tenant, 0) + st.output_tokens
        if self.price is not None and status != _REJECTED:
            assert st.finished is not None
            cost = self.price.cost(st.prompt_tokens, st.output_tokens, st.finished - st.arrival, self.batch_slots)
            st.cost = cost
            self._cost[tenant] = self._cost.get(tenant, 0.0) + cost


# Enum ``.value`` is a descriptor call: the request path reads these plain strings instead.
_SLO_VALUES = {s: s.value for s in Slo}
_MET = SloResult.MET.value
_MISSED = SloResult.MISSED.value
_REJECTED = Status.REJECTED.value
