"""CPU cost of the per-request recording path (``Recorder``) alone, and of rendering /metrics.

    .venv/bin/python benchmarks/recording_path.py [--n 20000] [--reps 5] [--full-only | --slo-pieces] [--json PATH]
    .venv/bin/python benchmarks/recording_path.py --old REV [--slo-pieces] [--n 5000] [--reps 10]

Builds a ``Recorder`` over real SDK providers, the way ``ernie-serve`` does standalone: a
MeterProvider with the ``ErniePrometheusReader`` and a TracerProvider whose BatchSpanProcessor
exports to a no-op exporter. Times ``start() + set_request_params() + finish()`` for synthetic
requests with realistic timestamps (queued, first token, finished; token counts), plus the
recorder's ``flush()`` -- the histograms and spans its telemetry thread records off the request
path -- with ``time.process_time()``: CPU of the whole process, so the span processor's worker
thread, which does the export work, is counted too (its queue is sized so no span is dropped and
each repetition ends with a flush). With the access log on, the telemetry thread also writes one
JSON line per request (to /dev/null) and one OTLP log record (a BatchLogRecordProcessor to a no-op
exporter, as ernie-serve has under opentelemetry-instrument). Then each piece separately, to show
where the time goes and how it splits between the request path and the telemetry thread.

``--old REV`` compares this tree with REV's code side by side: REV is checked out into a temporary
git worktree, and each repetition runs this script (``--full-only``, one repetition) once per tree,
in a fresh process with that tree first on ``PYTHONPATH``, the order alternating; the table gives
each variant's median per tree and the median of the per-round ratios.

Target (docs/benchmarks.md): at most 150 µs CPU per request.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler
from opentelemetry.trace import NoOpTracerProvider
from starlette.datastructures import Headers

from ernie_otel import names
from ernie_otel.slo import HEADER_TTFT, SloTargets
from ernie_otel.stats import EngineStats, RequestStats
from ernie_otel.telemetry.logs import JsonFormatter, OtelLogHandler
from ernie_otel.telemetry.prometheus import ErniePrometheusReader
from ernie_otel.telemetry.recorder import Recorder, RequestTelemetry
from ernie_otel.telemetry.request_path import Finished
from ernie_otel.telemetry.sdk_internals import SdkSpanWriter
from ernie_otel.tenancy import DEFAULT_TENANT_HEADER, Price, TenantResolver

TARGET_US = 150.0
REPO = Path(__file__).resolve().parent.parent
MODEL = "ernie-4.5-tiny"
OP = names.Operation.CHAT.value
OK = names.Status.OK.value
# What a request brings for attribution: a browser-like header set (Starlette's case-insensitive
# Headers, as the server reads them) with an allow-listed tenant and a gateway's TTFT target.
REQUEST_HEADERS = Headers(raw=[(k.encode(), v.encode()) for k, v in (
    ("host", "127.0.0.1:8180"), ("user-agent", "OpenAI/Python 1.99.0"), ("accept", "application/json"),
    ("content-type", "application/json"), ("content-length", "187"), ("authorization", "Bearer sk-x"),
    (DEFAULT_TENANT_HEADER, "team-a"), (HEADER_TTFT, "300"))])


class NoOpExporter(SpanExporter):
    """Accepts spans and drops them: the cost measured is ours and the SDK's, not a network's."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class NoOpLogExporter(LogRecordExporter):
    def __init__(self) -> None:
        self.exported = 0

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        self.exported += len(batch)
        return LogRecordExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        pass


_loggers = 0


def access_logger(n: int) -> tuple[logging.Logger, LoggerProvider]:
    """ernie-serve's access logger as telemetry.logs.install builds it: a JSON line per request
    (here to /dev/null) and our OTel bridge to an SDK LoggerProvider exporting in batches."""
    global _loggers
    _loggers += 1
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(NoOpLogExporter(), max_queue_size=4 * n + 16,
                                                              max_export_batch_size=512))
    logger = logging.getLogger(f"{names.ACCESS_LOGGER}.bench{_loggers}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    local = logging.StreamHandler(open(os.devnull, "w"))  # lives as long as the process
    local.setFormatter(JsonFormatter())
    logger.addHandler(local)
    logger.addHandler(OtelLogHandler(provider))
    return logger, provider


class Setup:
    def __init__(self, n: int, telemetry: bool = True, sampler: Sampler | None = None,
                 traces: bool = True, otlp_reader: bool = False, accounting: str = "",
                 access_log: bool = False) -> None:
        self.exporter = NoOpExporter()
        self.logger_provider: LoggerProvider | None = None
        logger: logging.Logger | None = None
        if access_log:
            logger, self.logger_provider = access_logger(n)
        if telemetry:
            self.reader: ErniePrometheusReader | None = ErniePrometheusReader()
            # With --otlp-endpoint a second reader (OTLP) holds its own copy of every aggregate:
            # an in-memory reader stands in for it without the network.
            readers: list[Any] = [self.reader, InMemoryMetricReader()] if otlp_reader else [self.reader]
            self.meter_provider: Any = MeterProvider(metric_readers=readers)
            self.tracer_provider: Any = TracerProvider(sampler=sampler) if traces else NoOpTracerProvider()
            # Room for every span of a repetition: dropping spans would make the path look cheaper.
            self.processor: BatchSpanProcessor | None = BatchSpanProcessor(
                self.exporter, max_queue_size=4 * n + 16, max_export_batch_size=512)
            if traces:
                self.tracer_provider.add_span_processor(self.processor)
        else:
            self.reader, self.processor = None, None
            self.meter_provider, self.tracer_provider = NoOpMeterProvider(), NoOpTracerProvider()
        stats = EngineStats(max_num_seqs=8, max_queue_len=64)
        # The figures are CPU of the whole process, so the telemetry thread's work counts wherever it
        # runs; it is parked (a long interval) so that each measurement ends with one explicit flush.
        # accounting "slo": SLO targets (three objectives, TTFT overridden by a header); "all": plus
        # tenants from a header and a price: every counter ernie-serve adds when configured with
        # --slo-*, --tenants and --pricing-file.
        extra: dict[str, Any] = dict(slo_targets=SloTargets(ttft=0.5, tpot=0.05, e2e=2.0)) if accounting else {}
        if accounting == "all":
            extra.update(tenants=TenantResolver(frozenset({"team-a"})), tenant_header=DEFAULT_TENANT_HEADER,
                         price=Price(0.1, 0.4, 2.0), batch_slots=8)
        self.headers: Headers | None = REQUEST_HEADERS if accounting else None
        self.recorder = Recorder(self.meter_provider, self.tracer_provider, MODEL, lambda: stats,
                                 flush_interval=3600, access_logger=logger, **extra)

    def flush(self) -> None:
        self.recorder.flush()
        if self.processor is not None:
            self.processor.force_flush()
        if self.logger_provider is not None:
            self.logger_provider.force_flush()

    def shutdown(self) -> None:
        for p in (self.meter_provider, self.tracer_provider, self.logger_provider):
            getattr(p, "shutdown", lambda: None)()


def fill(st: RequestStats, i: int) -> None:
    """What the server and engine write into a request's stats: realistic offsets (2 ms queued,
    48 ms prefill, 32 tokens decoded in 0.75 s)."""
    st.prompt_tokens, st.max_tokens, st.stream = 40 + i % 7, 32, True
    st.temperature, st.top_p = 0.7, 0.9
    st.scheduled = st.arrival + 0.002
    st.first_token = st.arrival + 0.050
    st.finished = st.arrival + 0.800
    st.output_tokens, st.decode_steps, st.max_batch_size = 32, 31, 8
    st.finish_reason = names.FinishReason.LENGTH.value


def cpu(fn: Callable[[], None]) -> float:
    gc.collect()
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def median_us(samples: list[float], n: int) -> float:
    return statistics.median(samples) / n * 1e6


# ------------------------------------------------------------------------------ the measurements
def full_path(s: Setup, n: int) -> float:
    rec = s.recorder

    def run() -> None:
        for i in range(n):
            rt = rec.start(OP, "chatcmpl-bench")
            if s.headers is not None:
                rec.attribute(rt, s.headers)
            fill(rt.stats, i)
            rec.set_request_params(rt, None)
            rec.finish(rt, OK, response_id="chatcmpl-bench")
        s.flush()

    return cpu(run)


def baseline(_: Setup, n: int) -> float:
    def run() -> None:
        for i in range(n):
            fill(RequestStats("chatcmpl-bench", OP), i)

    return cpu(run)


def started(s: Setup, n: int) -> list[RequestTelemetry]:
    out = []
    for i in range(n):
        rt = s.recorder.start(OP, "chatcmpl-bench")
        fill(rt.stats, i)
        out.append(rt)
    return out


def piece_start(s: Setup, n: int) -> float:
    rec = s.recorder
    rts: list[RequestTelemetry] = []

    def run() -> None:
        for _ in range(n):
            rts.append(rec.start(OP, "chatcmpl-bench"))

    return cpu(run)


def piece_attribute(s: Setup, n: int) -> float:
    """Tenant and per-request SLO targets from the headers (with SLO/tenant/cost configured)."""
    acc = Setup(n, accounting="all")
    rts = started(acc, n)
    rec = acc.recorder
    try:
        return cpu(lambda: [rec.attribute(rt, REQUEST_HEADERS) for rt in rts] and None)
    finally:
        acc.shutdown()


def piece_finish_accounting(s: Setup, n: int) -> float:
    """finish() with SLO verdicts, goodput, tenant and cost totals added."""
    acc = Setup(n, accounting="all")
    rts = started(acc, n)
    rec = acc.recorder
    for rt in rts:
        rec.attribute(rt, REQUEST_HEADERS)
    try:
        return cpu(lambda: [rec.finish(rt, OK, response_id="chatcmpl-bench") for rt in rts] and None)
    finally:
        acc.shutdown()


def piece_params(s: Setup, n: int) -> float:
    rts = started(s, n)
    rec = s.recorder
    return cpu(lambda: [rec.set_request_params(rt, None) for rt in rts] and None)


def piece_finish(s: Setup, n: int) -> float:
    """The request path's share of finish(): counters and the queue (the telemetry thread sleeps)."""
    rts = started(s, n)
    rec = s.recorder
    return cpu(lambda: [rec.finish(rt, OK, response_id="chatcmpl-bench") for rt in rts] and None)


def piece_flush(s: Setup, n: int) -> float:
    """The telemetry thread's share: histograms and spans of n queued requests, export included."""
    rts = started(s, n)
    rec = s.recorder
    for rt in rts:
        rec.finish(rt, OK, response_id="chatcmpl-bench")
    return cpu(s.flush)


def piece_histograms(s: Setup, n: int) -> float:
    """The seven histogram records of a request, inside its span's context (exemplars)."""
    rts = started(s, n)
    rec = s.recorder
    return cpu(lambda: [rec.batch.record_histograms(rt, OK, None) for rt in rts] and None)


def piece_spans(s: Setup, n: int) -> float:
    """A request's spans: the GenAI span and three phase spans as ReadableSpans, export included."""
    rts = started(s, n)
    rec = s.recorder

    def run() -> None:
        for rt in rts:
            rec.batch.end_spans(Finished(rt, OK, None, None, "chatcmpl-bench", None))
        s.flush()

    return cpu(run)


def piece_access_record(s: Setup, n: int) -> float:
    """The telemetry thread's access log: one JSON line and one OTLP log record per request (+export)."""
    logged = Setup(n, access_log=True)
    rts = started(logged, n)
    access = logged.recorder.access_log
    assert access is not None
    items = [Finished(rt, OK, None, None, "chatcmpl-bench", None) for rt in rts]
    for rt in rts:
        assert rt.stats.finished is not None

    def run() -> None:
        for item in items:
            access(item)
        assert logged.logger_provider is not None
        logged.logger_provider.force_flush()

    try:
        return cpu(run)
    finally:
        logged.shutdown()


def piece_one_histogram(s: Setup, n: int) -> float:
    h, attrs = s.recorder.instruments.ttft, s.recorder.attrs.genai[OP]
    return cpu(lambda: [h.record(0.05, attrs) for _ in range(n)] and None)


def piece_one_histogram_in_span(s: Setup, n: int) -> float:
    """One record with a sampled span's context: the trace-based exemplar filter keeps an exemplar."""
    ctx = trace.set_span_in_context(started(s, 1)[0].span)
    h, attrs = s.recorder.instruments.ttft, s.recorder.attrs.genai[OP]
    return cpu(lambda: [h.record(0.05, attrs, ctx) for _ in range(n)] and None)


def piece_readable_span(s: Setup, n: int) -> float:
    """One finished span handed to the processor the way the recorder does it (export included)."""
    writer = s.recorder.spans
    assert isinstance(writer, SdkSpanWriter)
    ctx = started(s, 1)[0].span.get_span_context()
    attrs: dict[str, Any] = {names.GEN_AI_USAGE_INPUT_TOKENS: 40}

    def run() -> None:
        for _ in range(n):
            writer.write_one(names.SPAN_PREFILL, ctx, attrs)
        s.flush()

    return cpu(run)


def piece_live_span(s: Setup, n: int) -> float:
    """One span via tracer.start_span + end (+export): what the recorder avoids, for comparison."""
    parent = trace.set_span_in_context(started(s, 1)[0].span)
    tracer = s.recorder.tracer
    attrs = {names.GEN_AI_USAGE_INPUT_TOKENS: 40}

    def run() -> None:
        for _ in range(n):
            tracer.start_span(names.SPAN_PREFILL, context=parent, start_time=1, attributes=attrs).end(end_time=2)
        s.flush()

    return cpu(run)


PIECES: list[tuple[str, Callable[[Setup, int], float]]] = [
    ("request path: start() (sampling decision, span ids)", piece_start),
    ("request path: set_request_params()", piece_params),
    ("request path: finish() (counters, queue)", piece_finish),
    ("request path: attribute() (tenant, SLO header targets)", piece_attribute),
    ("request path: finish() with SLO, goodput, tenant and cost totals", piece_finish_accounting),
    ("telemetry thread: flush() per request (histograms + spans + export)", piece_flush),
    ("  7 histogram records (span context passed for exemplars)", piece_histograms),
    ("  spans: GenAI + 3 phase ReadableSpans (+export)", piece_spans),
    ("  access log: JSON line + OTLP log record (+export), when on", piece_access_record),
    ("one histogram record, no span context (4 attributes)", piece_one_histogram),
    ("one histogram record inside a sampled span (exemplar)", piece_one_histogram_in_span),
    ("one ReadableSpan to the processor (+export)", piece_readable_span),
    ("one live span via tracer.start_span + end (+export), for comparison", piece_live_span),
]


def render_times(reader: ErniePrometheusReader, count: int) -> tuple[float, float, int]:
    """Median CPU and wall milliseconds of one /metrics render, and the body's size."""
    cpus, walls, size = [], [], 0
    for _ in range(count):
        w0, c0 = time.perf_counter(), time.process_time()
        body, _ = reader.render()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
        size = len(body)
    return statistics.median(cpus) * 1e3, statistics.median(walls) * 1e3, size


# ------------------------------------------------------------------------------ SLO accounting alone
class AttributesOnlyWriter:
    """Takes the finished request's span attributes and hands nothing to the SDK: what end_spans()
    adds for SLO accounting is attribute building, the same SDK hand-over follows either way."""

    def recording(self, rt: RequestTelemetry) -> bool:
        return True

    def write(self, *args: Any, **kwargs: Any) -> None:
        pass


def best_thread_us(fn: Callable[[], None], n: int, rounds: int) -> float:
    """Best of ``rounds`` batches of n calls, thread CPU (``time.thread_time``) per call in µs. The
    minimum rather than the median: on a loaded machine preemption and cache thrash only add."""
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        best = min(best, time.thread_time() - t0)
    return best / n * 1e6


def slo_pieces(n: int, rounds: int) -> dict[str, float]:
    """What SLO accounting adds to one request, piece by piece, against the same calls with nothing
    configured (``_account`` is finish()'s accounting step, called directly to time it alone)."""
    plain, slo, acc = Setup(1000), Setup(1000, accounting="slo"), Setup(1000, accounting="all")
    out: dict[str, float] = {}
    try:
        for label, setup in (("nothing configured", plain), ("SLO targets", slo),
                             ("SLO targets, tenants, cost", acc)):
            rec = setup.recorder
            rt = started(setup, 1)[0]
            st = rt.stats
            rec.attribute(rt, REQUEST_HEADERS)
            rec.finish(rt, OK, response_id="chatcmpl-bench")  # sets the verdicts end_spans() reads
            rec.batch.writer = AttributesOnlyWriter()
            item = Finished(rt, OK, None, None, "chatcmpl-bench", None)
            out[f"attribute(), {label}"] = best_thread_us(partial(rec.attribute, rt, REQUEST_HEADERS), n, rounds)
            out[f"finish()'s accounting, {label}"] = best_thread_us(partial(rec._account, st, OK, None), n, rounds)
            out[f"end_spans() attributes, {label}"] = best_thread_us(partial(rec.batch.end_spans, item), n, rounds)
    finally:
        for setup in (plain, slo, acc):
            setup.shutdown()
    for label in ("SLO targets", "SLO targets, tenants, cost"):
        out[f"added by {label} (sum of the three, minus nothing configured)"] = sum(
            out[f"{piece}, {label}"] - out[f"{piece}, nothing configured"]
            for piece in ("attribute()", "finish()'s accounting", "end_spans() attributes"))
    return out


ON = "telemetry on"
LOGS = "telemetry on + access log (JSON line + OTLP log record)"
SLO = "telemetry on + SLO targets (one from a header)"
ACCOUNTING = "telemetry on + SLO targets, tenants, cost"
TWO_READERS = "telemetry on, Prometheus + second (OTLP-like) metric reader"
TWO_READERS_ACCOUNTING = "Prometheus + OTLP-like reader + SLO targets, tenants, cost"
BASELINE = "baseline (stats only)"
# The configurations ernie-serve runs with telemetry on: the budget holds for the costliest. The
# access log is reported next to them, not in the budget, which predates it (its cost is its own
# line in docs/benchmarks.md).
BUDGETED = (ON, SLO, ACCOUNTING, TWO_READERS, TWO_READERS_ACCOUNTING)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="requests per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--renders", type=int, default=200)
    ap.add_argument("--full-only", action="store_true", help="only the whole-path variants (no breakdown, no render)")
    ap.add_argument("--slo-pieces", action="store_true",
                    help="only SLO accounting's pieces: thread CPU, best of --reps batches of --n calls")
    ap.add_argument("--old", default=None, metavar="REV",
                    help="git revision to compare with, side by side (fresh processes, alternating)")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    if args.old:
        return compare(args)
    n, reps = args.n, args.reps
    if args.slo_pieces:
        pieces = slo_pieces(n, reps)
        print(f"SLO accounting alone, thread CPU µs per call (best of {reps} batches of {n}); {load()}\n")
        print("| piece | µs |\n|---|---:|")
        for k, v in pieces.items():
            print(f"| {k} | {v:.2f} |")
        if args.json_path:
            Path(args.json_path).write_text(json.dumps({"slo_pieces_us": pieces}, indent=2) + "\n")
        return 0
    load_before = load()

    on = Setup(n)
    logs_on = Setup(n, access_log=True)
    slo_on = Setup(n, accounting="slo")
    acc_on = Setup(n, accounting="all")
    off = Setup(n, telemetry=False)
    two_readers = Setup(n, otlp_reader=True)
    two_readers_acc = Setup(n, otlp_reader=True, accounting="all")
    unsampled = Setup(n, sampler=ALWAYS_OFF)
    metrics_only = Setup(n, traces=False)
    setups = (on, logs_on, slo_on, acc_on, two_readers, two_readers_acc, unsampled, metrics_only)
    for setup in setups:  # warm-up: first-call imports and caches out of the figures
        full_path(setup, min(n, 2000))
    results: dict[str, Any] = {"n": n, "reps": reps, "target_us": TARGET_US}

    # Alternate the variants inside each repetition so background load hits them alike.
    variants: dict[str, Callable[[], float]] = {
        ON: lambda: full_path(on, n),
        LOGS: lambda: full_path(logs_on, n),
        SLO: lambda: full_path(slo_on, n),
        ACCOUNTING: lambda: full_path(acc_on, n),
        TWO_READERS: lambda: full_path(two_readers, n),
        TWO_READERS_ACCOUNTING: lambda: full_path(two_readers_acc, n),
        "traces not sampled (sampler always_off; metrics on)": lambda: full_path(unsampled, n),
        "metrics only (no-op tracer provider)": lambda: full_path(metrics_only, n),
        "telemetry off (no-op providers)": lambda: full_path(off, n),
        BASELINE: lambda: baseline(on, n),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for k, fn in variants.items():
            samples[k].append(fn())
    full = {k: median_us(v, n) for k, v in samples.items()}
    results["full_path_us"] = full
    results["full_path_spread_us"] = {k: [round(x / n * 1e6, 1) for x in v] for k, v in samples.items()}
    # SLO accounting's cost, paired: each repetition's difference, then the median.
    results["slo_delta_us"] = {k: statistics.median((a - b) / n * 1e6
                                                     for a, b in zip(samples[k], samples[ref], strict=True))
                               for k, ref in ((SLO, ON), (ACCOUNTING, ON), (TWO_READERS_ACCOUNTING, TWO_READERS))}

    print(f"Recording path, N={n} requests x {reps} repetitions, CPU µs per request (median; "
          f"time.process_time, all threads); {load_before} at start\n")
    print("| path | µs/request |\n|---|---:|")
    for k, v in full.items():
        print(f"| {k} | {v:.1f} |")
    net = full[ON] - full[BASELINE]
    print(f"| **telemetry on − baseline** (the recorder's cost) | **{net:.1f}** |")
    logs_cost = full[LOGS] - full[ON]
    print(f"| **access log on − off** (the log pipeline's cost, on the telemetry thread) | **{logs_cost:.1f}** |")
    results["access_log_us"] = logs_cost
    print("\nSLO accounting's cost (median of the per-repetition differences):\n")
    for k, d in results["slo_delta_us"].items():
        print(f"- {k}: {d:+.1f} µs")
    worst_name = max(BUDGETED, key=lambda k: full[k])
    worst = full[worst_name]
    verdict = "within" if worst <= TARGET_US else "OVER"
    print(f"\nTarget ≤ {TARGET_US:.0f} µs per request: {verdict} ({worst:.1f} µs, the costliest configuration: "
          f"{worst_name}).\n")
    results["net_recorder_us"] = net
    results["within_target"] = worst <= TARGET_US

    if not args.full_only:
        piece_n = max(1000, n // 4)
        breakdown: dict[str, float] = {}
        for label, fn in PIECES:
            runs = []
            for _ in range(reps):
                setup = Setup(piece_n)
                runs.append(fn(setup, piece_n))
                setup.shutdown()  # one span-processor thread at a time
            breakdown[label] = median_us(runs, piece_n)
        results["breakdown_us"] = breakdown
        assert on.reader is not None
        render_cpu, render_wall, size = render_times(on.reader, args.renders)
        results["render"] = {"cpu_ms_median": render_cpu, "wall_ms_median": render_wall, "bytes": size}
        print(f"Breakdown (each piece alone, N={piece_n}, median of {reps}):\n")
        print("| piece | µs |\n|---|---:|")
        for k, v in breakdown.items():
            print(f"| {k} | {v:.1f} |")
        print(f"\n/metrics render (ErniePrometheusReader.render, after {reps * n + 2000} requests, "
              f"{size} bytes): median {render_cpu:.2f} ms CPU, {render_wall:.2f} ms wall over {args.renders} renders")
    results["spans_exported"] = on.exporter.exported
    for setup in setups:
        setup.shutdown()
    results["load"] = {"before": load_before, "after": load()}
    print(f"\n{load()} at the end")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


def compare(args: argparse.Namespace) -> int:
    """This tree against ``--old REV``: per repetition one fresh ``--full-only`` (or ``--slo-pieces``,
    best of 5 batches) process per tree."""
    work = Path(tempfile.mkdtemp(prefix="ernie-recording-"))
    old_tree = work / "old"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old_tree), args.old], check=True)
    trees = {"this tree": REPO, args.old: old_tree}
    rounds: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    load_before = load()
    try:
        for rnd in range(args.reps):
            order = list(trees) if rnd % 2 == 0 else list(reversed(trees))
            for name in order:
                out = work / f"round-{rnd}-{'new' if trees[name] == REPO else 'old'}.json"
                # This script, with the tree's package first on the path (ahead of the editable install).
                mode = ["--slo-pieces", "--reps", "5"] if args.slo_pieces else ["--full-only", "--reps", "1"]
                env = {**os.environ, "PYTHONPATH": str(trees[name])}
                subprocess.run([sys.executable, __file__, *mode, "--n", str(args.n), "--json", str(out)],
                               check=True, stdout=subprocess.DEVNULL, env=env)
                rounds[name].append(json.loads(out.read_text())["slo_pieces_us" if args.slo_pieces else "full_path_us"])
                print(f"round {rnd + 1}/{args.reps} {name}: " + ", ".join(
                    f"{v:.1f}" for v in list(rounds[name][-1].values())[:3]) + f" µs; {load()}", file=sys.stderr)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], check=False)
    new, old = (rounds[t] for t in trees)
    what = (f"SLO accounting's pieces (thread CPU, best of 5 batches of {args.n} calls)" if args.slo_pieces else
            f"every variant once over N={args.n} requests (CPU of the process)")
    print(f"Recording path, this tree vs {args.old}: {args.reps} rounds, each a fresh process per tree (order "
          f"alternating) measuring {what}; µs per request, medians over the rounds.\n"
          f"{load_before} at start, {load()} at the end.\n")
    print(f"| path | this tree | {args.old} | this tree / {args.old} (median per-round ratio) |\n|---|---:|---:|---:|")
    results: dict[str, Any] = {"old": args.old, "n": args.n, "rounds": args.reps, "variants": {}}
    for k in new[0]:
        a = statistics.median(r[k] for r in new)
        b = statistics.median(r[k] for r in old)
        ratio = statistics.median(x[k] / y[k] for x, y in zip(new, old, strict=True))
        results["variants"][k] = {"new_us": a, "old_us": b, "ratio": ratio}
        print(f"| {k} | {a:.2f} | {b:.2f} | {ratio * 100:.1f}% |")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({**results, "rounds_us": rounds}, indent=2) + "\n")
    if args.slo_pieces:
        return 0
    print("\nSLO accounting's cost (median of the per-round differences within one process):\n")
    print(f"| difference | this tree | {args.old} |\n|---|---:|---:|")
    for k, ref in ((SLO, ON), (ACCOUNTING, ON), (TWO_READERS_ACCOUNTING, TWO_READERS)):
        d_new = statistics.median(r[k] - r[ref] for r in new)
        d_old = statistics.median(r[k] - r[ref] for r in old)
        results["variants"][f"{k} - {ref}"] = {"new_us": d_new, "old_us": d_old}
        print(f"| {k} − {ref} | {d_new:+.1f} | {d_old:+.1f} |")
    worst_name = max(BUDGETED, key=lambda k: results["variants"][k]["new_us"])
    worst = results["variants"][worst_name]["new_us"]
    print(f"\nTarget ≤ {TARGET_US:.0f} µs per request (this tree): {'within' if worst <= TARGET_US else 'OVER'} "
          f"({worst:.1f} µs, {worst_name}).")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({**results, "rounds_us": rounds}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
