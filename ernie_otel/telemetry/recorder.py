"""Turns the engine's plain stats into OTel metrics and spans, off the request path.

Cost model (see docs/benchmarks.md): an SDK instrument call costs ~10 µs and a span ~15-50 µs in a
tight loop, and several times that in a busy server, where each call finds cold caches between two
model steps. So the request path only does plain Python, and one telemetry thread does the SDK work
for many requests at a time. ``Recorder`` wires four parts together, each its own module:

- ``instruments``: the instruments and every attribute set, built once at start-up; counters are
  observable instruments over plain integers that ``finish()`` adds to, so they are exact at every
  collection, and every collection drains the queue first, so a scrape never sees a request
  counted but not yet in the histograms;
- ``request_path``: ``start()`` at arrival decides sampling and draws the GenAI span's ids (so the
  trace id can go into response headers and upstream ``traceparent`` at once; nothing is exported
  yet), ``finish()`` counts the request and queues it;
- ``batch``: the ``ernie-telemetry`` thread drains the queue every ``flush_interval`` seconds,
  records each histogram once inside the GenAI span's context (trace-based exemplars) and builds
  the span tree (GenAI span, queue/prefill/decode children) from the engine's timestamps;
- ``logs``: the access log, one record per request, written by the same thread (optional);
- ``genai_events``: with the latest GenAI names on and a ``LoggerProvider``, the
  ``gen_ai.client.inference.operation.details`` event per request, written by the same thread;
- ``sdk_internals``: the only module that touches the SDK's private parts, to hand finished
  ``ReadableSpan`` objects to the span processors; with a tracer provider that is not the SDK's,
  spans go through the public API instead.

Any telemetry failure is logged once and swallowed; it never fails a request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from opentelemetry._logs import LoggerProvider
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from .. import names
from ..ports import DEFAULT_PORTS, HOST
from ..slo import NO_TARGETS, SloTargets
from ..stats import EngineStats
from ..tenancy import Price, TenantResolver
from .batch import TelemetryThread
from .engine_metrics import EngineInstruments
from .genai_events import InferenceDetails
from .instruments import AttributeSets, Instruments
from .keep import KeepRule
from .logs import AccessLog
from .request_path import LogOnce, RequestPath
from .request_path import RequestTelemetry as RequestTelemetry
from .sdk_internals import span_writer

log = logging.getLogger(__name__)


def _capture_content_enabled() -> bool:
    return os.environ.get(names.CAPTURE_CONTENT_ENV, "").strip().lower() in ("1", "true", "yes")


class Recorder(RequestPath):
    """The request-path API (inherited, so a request pays no extra call) over its parts."""

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
        slo_targets: SloTargets = NO_TARGETS,
        slo_objective: float = 0.99,
        tenants: TenantResolver | None = None,
        tenant_header: str | None = None,
        price: Price | None = None,
        batch_slots: int = 1,
        keep: KeepRule | None = None,
        access_logger: logging.Logger | None = None,
        genai_semconv: names.GenAiSemconv = names.GenAiSemconv.OLD,
        logger_provider: LoggerProvider | None = None,
    ) -> None:
        self.model = model
        self.tracer = tracer_provider.get_tracer(names.TRACER_NAME)
        self.attrs = AttributeSets(model, server_address, server_port)
        self.spans = span_writer(self.tracer, tracer_provider, self.attrs)
        log_once = LogOnce(log)
        # Collections call flush() before reading the counters; it only runs once __init__ is done.
        self.instruments = Instruments(meter_provider, self.attrs, engine_stats, bucket_overrides=bucket_overrides,
                                       before_collect=self.flush, genai_semconv=genai_semconv)
        capture = _capture_content_enabled() if capture_content is None else capture_content
        # The access log is written by the telemetry thread too: the request path only queues.
        self.access_log = (AccessLog(access_logger, model, capture_content=capture)
                           if access_logger is not None else None)
        # The latest GenAI conventions' event, a log record: only with their names on and records exported.
        self.genai_event = (InferenceDetails(logger_provider, self.attrs)
                            if logger_provider is not None and genai_semconv.latest else None)
        self.engine = EngineInstruments(meter_provider.get_meter(names.METER_NAME), self.tracer, model, engine_stats,
                                        bucket_overrides)
        self.batch = TelemetryThread(self.instruments, self.attrs, self.spans, flush_interval=flush_interval,
                                     log_once=log_once, keep=keep, access_log=self.access_log,
                                     genai_event=self.genai_event,
                                     engine_drain=self.engine.drain)
        self.instruments.accounting.configure(slo_targets, slo_objective, priced=price is not None)
        super().__init__(instruments=self.instruments, begin=self.spans.begin, batch=self.batch,
                         capture_content=capture,
                         log_once=log_once, slo_targets=slo_targets, tenants=tenants, tenant_header=tenant_header,
                         price=price, batch_slots=batch_slots)

    @property
    def uses_sdk_internals(self) -> bool:
        """Whether spans take the SDK fast path (False: the public API)."""
        return self.spans.uses_sdk_internals

    def flush(self, yield_gil: bool = False) -> None:
        """Record everything queued so far (collections and tests call this)."""
        self.batch.flush(yield_gil)

    def close(self) -> None:
        """Stop the telemetry thread and record what is queued (before the providers shut down)."""
        self.batch.close()
