"""The recorder's instruments and every attribute set, built once at start-up.

Nothing here runs per request. The request path only looks attribute dicts up by key and adds to
the plain integer totals in ``Instruments``; the observable counters read those totals at
collection time, and the histograms are recorded by the telemetry thread
(``ernie_otel.telemetry.batch``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Counter, Meter, MeterProvider, Observation
from opentelemetry.util.types import AttributeValue

from .. import names
from ..kinds import ErrorType, Operation, Status, TokenType
from ..slo import HEADER_TPOT, HEADER_TTFT, HeaderProblem, Slo, SloResult, SloTargets
from ..stats import EngineStats
from ..tenancy import DEFAULT_TENANT, Overflow
from .sdk_internals import Recordable, fast_histogram

Attrs = dict[str, AttributeValue]


class AttributeSets:
    """Every attribute dict a metric or span of this server can carry, for every allowed label
    combination: looked up, never built, on the request path and the telemetry thread."""

    def __init__(self, model: str, server_address: str, server_port: int) -> None:
        ops = [o.value for o in Operation]
        self.model = model
        self.model_only: Attrs = {names.ATTR_MODEL: model}
        # ernie_* metrics: model/operation[/status | /error.type]
        self.request: dict[tuple[str, str], Attrs] = {
            (o, s.value): {names.ATTR_MODEL: model, names.ATTR_OPERATION: o, names.ATTR_STATUS: s.value}
            for o in ops for s in Status}
        self.operation: dict[str, Attrs] = {o: {names.ATTR_MODEL: model, names.ATTR_OPERATION: o} for o in ops}
        self.error: dict[tuple[str, str], Attrs] = {
            (o, e.value): {**self.operation[o], names.ATTR_ERROR_TYPE: e.value} for o in ops for e in ErrorType}
        # GenAI semconv metrics
        self.genai: dict[str, Attrs] = {
            o: {names.GEN_AI_OPERATION_NAME: o, names.GEN_AI_PROVIDER_NAME: names.PROVIDER_NAME,
                names.GEN_AI_REQUEST_MODEL: model} for o in ops}
        self.genai_error: dict[tuple[str, str], Attrs] = {
            (o, e.value): {**self.genai[o], names.ATTR_ERROR_TYPE: e.value} for o in ops for e in ErrorType}
        self.token: dict[tuple[str, str], Attrs] = {
            (o, t.value): {**self.genai[o], names.GEN_AI_TOKEN_TYPE: t.value} for o in ops for t in TokenType}
        # The latest GenAI usage counters: by modality (text, the only one this server has).
        self.usage: dict[str, Attrs] = {
            o: {**self.genai[o], names.GEN_AI_TOKEN_MODALITY: names.TOKEN_MODALITY_TEXT} for o in ops}
        # The GenAI span: its name and the attributes known at arrival (also what the sampler sees).
        self.span_base: dict[str, Attrs] = {
            o: {**self.genai[o], names.SERVER_ADDRESS: server_address, names.SERVER_PORT: server_port} for o in ops}
        self.span_names: dict[str, str] = {o: names.genai_span_name(o, model) for o in ops}


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


class LatestGenAi:
    """The latest GenAI semconv token instruments (OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental[/dup]):
    per-operation histograms and usage counters, input and output apart. Recorded by the telemetry thread."""

    def __init__(self, meter: Meter, hist: Callable[[names.MetricSpec], Recordable]) -> None:
        def counter(spec: names.MetricSpec) -> Counter:
            return meter.create_counter(spec.otel_name, unit=spec.unit, description=spec.description)

        self.operation_input = hist(names.GENAI_OPERATION_INPUT)
        self.operation_output = hist(names.GENAI_OPERATION_OUTPUT)
        self.usage_input = counter(names.GENAI_USAGE_INPUT)
        self.usage_output = counter(names.GENAI_USAGE_OUTPUT)


class Instruments:
    """The histograms, and the observable counters and gauges with the totals they read.

    ``before_collect`` runs at the start of every collection (from the first counter's callback),
    so the histograms catch up with the counters before a reader sees either.
    """

    def __init__(
        self,
        meter_provider: MeterProvider,
        attrs: AttributeSets,
        engine_stats: Callable[[], EngineStats | None],
        *,
        bucket_overrides: dict[str, list[float]] | None,
        before_collect: Callable[[], None],
        genai_semconv: names.GenAiSemconv = names.GenAiSemconv.OLD,
    ) -> None:
        meter = meter_provider.get_meter(names.METER_NAME)

        def hist(spec: names.MetricSpec) -> Recordable:
            return histogram(meter, spec, bucket_overrides)

        self.latency = hist(names.LATENCY)
        self.queue_time = hist(names.QUEUE_TIME)
        self.genai_duration = hist(names.GENAI_DURATION)
        self.ttft = hist(names.GENAI_TTFT)
        self.tpot = hist(names.GENAI_TPOT)
        # Old and/or latest GenAI token metrics, as OTEL_SEMCONV_STABILITY_OPT_IN chose (names.GenAiSemconv).
        self.token_usage = hist(names.GENAI_TOKEN_USAGE) if genai_semconv.old else None
        self.latest_genai = LatestGenAi(meter, hist) if genai_semconv.latest else None

        # Cumulative totals behind the observable counters; every allowed series starts at 0 so
        # rate() and alerts see a series from start-up.
        ops = [o.value for o in Operation]
        self.requests: dict[tuple[str, str], int] = dict.fromkeys(attrs.request, 0)
        self.errors: dict[tuple[str, str], int] = dict.fromkeys(attrs.error, 0)
        self.prompt_tokens: dict[str, int] = dict.fromkeys(ops, 0)
        self.generation_tokens: dict[str, int] = dict.fromkeys(ops, 0)

        _counter(meter, names.REQUESTS, self.requests, attrs.request, before_collect)
        _counter(meter, names.ERRORS, self.errors, attrs.error)
        _counter(meter, names.PROMPT_TOKENS, self.prompt_tokens, attrs.operation)
        _counter(meter, names.GENERATION_TOKENS, self.generation_tokens, attrs.operation)

        model_attrs = attrs.model_only

        def gauge(spec: names.MetricSpec, read: Callable[[EngineStats], float]) -> None:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                stats = engine_stats()
                # Before the model has loaded the engine is not there: report an empty server.
                return [Observation(read(stats) if stats is not None else 0, model_attrs)]
            meter.create_observable_gauge(spec.otel_name, callbacks=[observe], unit=spec.unit,
                                          description=spec.description)

        gauge(names.QUEUE_LENGTH, lambda s: s.waiting)
        gauge(names.RUNNING, lambda s: s.running)
        gauge(names.TOKEN_THROUGHPUT, lambda s: s.tokens.rate())
        gauge(names.QUEUE_CAPACITY, lambda s: s.max_queue_len)
        gauge(names.RUNNING_CAPACITY, lambda s: s.max_num_seqs)
        self.accounting = Accounting(meter, attrs.model)
        meter.create_observable_counter(names.PROCESS_CPU.otel_name, callbacks=[_process_cpu],
                                        unit=names.PROCESS_CPU.unit, description=names.PROCESS_CPU.description)
        meter.create_observable_gauge(names.PROCESS_MEMORY.otel_name, callbacks=[_process_memory],
                                      unit=names.PROCESS_MEMORY.unit, description=names.PROCESS_MEMORY.description)


def histogram(meter: Meter, spec: names.MetricSpec, bucket_overrides: dict[str, list[float]] | None) -> Recordable:
    """The histogram of ``spec``, with its buckets (or the operator's override) as advisory
    boundaries; behind the SDK fast path where it applies (sdk_internals.fast_histogram)."""
    return fast_histogram(meter.create_histogram(
        spec.otel_name, unit=spec.unit, description=spec.description,
        explicit_bucket_boundaries_advisory=list(names.histogram_buckets(spec, bucket_overrides)),
    ))


def _counter(meter: Meter, spec: names.MetricSpec, totals: dict[Any, int], attrs: Mapping[Any, Attrs],
             before_collect: Callable[[], None] | None = None) -> None:
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        if before_collect is not None:
            before_collect()
        # list(): the request path may add a key's value meanwhile; the keys never change.
        return [Observation(v, attrs[k]) for k, v in list(totals.items())]
    meter.create_observable_counter(spec.otel_name, callbacks=[observe], unit=spec.unit,
                                    description=spec.description)


class Accounting:
    """SLO, goodput, tenant and cost totals: keyed by tenant, so their keys grow as tenants appear
    (at most the tenant cap + 2); the request path adds with ``dict.get``, the callbacks build each
    key's attribute set once and keep it."""

    def __init__(self, meter: Meter, model: str) -> None:
        self.model = model
        self.targets: SloTargets | None = None
        self.objective: float | None = None
        # (tenant, slo, result); the default tenant's series exist from start-up once targets are set.
        self.slo: dict[tuple[str, str, str], int] = {}
        self.goodput: dict[str, int] = {}
        self.requests: dict[tuple[str, str], int] = {(DEFAULT_TENANT, s.value): 0 for s in Status}
        self.tokens: dict[tuple[str, str], int] = {(DEFAULT_TENANT, t.value): 0 for t in TokenType}
        self.overflow: dict[str, int] = dict.fromkeys((o.value for o in Overflow), 0)
        self.header_problems: dict[tuple[str, str], int] = {
            (h, p.value): 0 for h in (HEADER_TTFT, HEADER_TPOT) for p in HeaderProblem}
        self.cost: dict[str, float] = {}
        m: Attrs = {names.ATTR_MODEL: model}
        _lazy_counter(meter, names.SLO_REQUESTS, self.slo, (names.ATTR_TENANT, names.ATTR_SLO, names.ATTR_RESULT), m)
        _lazy_counter(meter, names.GOODPUT_TOKENS, self.goodput, (names.ATTR_TENANT,), m)
        _lazy_counter(meter, names.TENANT_REQUESTS, self.requests, (names.ATTR_TENANT, names.ATTR_STATUS), m)
        _lazy_counter(meter, names.TENANT_TOKENS, self.tokens, (names.ATTR_TENANT, names.ATTR_TOKEN_TYPE), m)
        _lazy_counter(meter, names.TENANT_OVERFLOW, self.overflow, (names.ATTR_REASON,), m)
        _lazy_counter(meter, names.SLO_HEADER_PROBLEMS, self.header_problems, (names.ATTR_HEADER, names.ATTR_REASON), m)
        self._cost_counter = (meter, m)

        def targets(_: CallbackOptions) -> Iterable[Observation]:
            t = self.targets
            if t is None:
                return []
            return [Observation(getattr(t, s.value), {**m, names.ATTR_SLO: s.value})
                    for s in t.configured() if s is not Slo.ALL]

        def objective(_: CallbackOptions) -> Iterable[Observation]:
            return [] if self.objective is None else [Observation(self.objective, m)]

        meter.create_observable_gauge(names.SLO_TARGET.otel_name, callbacks=[targets], unit=names.SLO_TARGET.unit,
                                      description=names.SLO_TARGET.description)
        meter.create_observable_gauge(names.SLO_OBJECTIVE.otel_name, callbacks=[objective],
                                      unit=names.SLO_OBJECTIVE.unit, description=names.SLO_OBJECTIVE.description)

    def configure(self, targets: SloTargets, objective: float, priced: bool) -> None:
        """Start-up: the server's targets (their series start at 0) and whether cost is counted."""
        self.targets, self.objective = targets, objective
        for slo in targets.configured():
            for result in SloResult:
                self.slo.setdefault((DEFAULT_TENANT, slo.value, result.value), 0)
        if targets.any:
            self.goodput.setdefault(DEFAULT_TENANT, 0)
        if priced:
            self.cost.setdefault(DEFAULT_TENANT, 0.0)
            meter, m = self._cost_counter
            _lazy_counter(meter, names.COST, self.cost, (names.ATTR_TENANT,), m)


def _lazy_counter(meter: Meter, spec: names.MetricSpec, totals: dict[Any, Any], keys: tuple[str, ...],
                  base: Attrs) -> None:
    cache: dict[Any, Attrs] = {}

    def attrs_of(key: Any) -> Attrs:
        found = cache.get(key)
        if found is None:
            values = key if isinstance(key, tuple) else (key,)
            found = cache[key] = {**base, **dict(zip(keys, values, strict=True))}
        return found

    def observe(_: CallbackOptions) -> Iterable[Observation]:
        # list(): the request path may add keys meanwhile (a new tenant); copying is atomic under the GIL.
        return [Observation(v, attrs_of(k)) for k, v in list(totals.items())]
    meter.create_observable_counter(spec.otel_name, callbacks=[observe], unit=spec.unit,
                                    description=spec.description)
