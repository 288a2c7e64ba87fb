"""Issue 13.4: in the fleet profile, exemplars never point at a trace the tail sampler drops.

The recorder applies the sampling Collectors' rule (ernie_otel/telemetry/keep.py) with their
parameters (the same OTELCOL_SAMPLING_* variables) and attaches exemplars only to kept traces:
errors, cancelled, slow, slow first token (queue + prefill), baseline-picked. Unit level with the SDK's in-memory
metric reader; tests/test_fleet_traces.py runs the real samplers against the same hash rule.
"""

from __future__ import annotations

import random
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from e2e_client import E2EStack, wait_for
from helpers import REPO_ROOT
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from test_fleet_traces import (
    BASELINE_PERCENT,
    DECISION_WAIT_S,
    HASH_SALT,
    LATENCY_MS,
    TTFT_MS,
    Fleet,
    SentTrace,
    jaeger_trace,
    wait_kept,
)
from test_fleet_traces import baseline_keeps as reference_baseline_keeps
from test_fleet_traces import fleet as fleet  # the fixture: real Collector tiers and Jaeger

from ernie_otel import names
from ernie_otel.config import ConfigError
from ernie_otel.kinds import EXEMPLARS_FOLLOW_SAMPLING_ENV, ErrorType, FinishReason, Status
from ernie_otel.stack import Stack, StackError, components, free_ports
from ernie_otel.stack.fleet import stack_components
from ernie_otel.telemetry.keep import KeepRule, baseline_keeps, baseline_threshold, fnv1a64
from ernie_otel.telemetry.recorder import Recorder
from ernie_otel.telemetry.settings import TelemetrySettings
from ernie_otel.telemetry.setup import exemplar_filter_kwargs

SAMPLER_YAML = REPO_ROOT / "collector" / "fleet" / "sampler.yaml"
OTELCOL_CONFIG = REPO_ROOT / "collector" / "otelcol.yaml"
AGENT_OVERLAY = REPO_ROOT / "collector" / "fleet" / "agent.yaml"
# Small thresholds and a large baseline so one test sees every clause and both baseline outcomes.
# The fleet fixture's sampler parameters (tests/test_fleet_traces.py).
RULE = KeepRule(baseline_percent=BASELINE_PERCENT, hash_salt=HASH_SALT, latency_ms=LATENCY_MS, ttft_ms=TTFT_MS)
MS = 1_000_000
KEPT_KINDS = frozenset({"error", "rejected", "cancelled", "slow", "slow_queue", "slow_prefill"})


# ------------------------------------------------------------------------ the rule itself
def test_fnv1a64_matches_the_published_vectors() -> None:
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


@pytest.mark.parametrize("percent", [10, 30, 12.5])
def test_baseline_agrees_with_the_sampler_reference_on_1000_random_ids(percent: float) -> None:
    rng = random.Random(1304)
    ids = [rng.getrandbits(128) for _ in range(1000)]
    rule = KeepRule(percent, "ernie-otel", 10_000, 2000)
    ours = [rule.keeps(t, failed=False, error_type=None, finish_reason="stop", duration_ns=MS, ttft_s=0.001)
            for t in ids]
    assert ours == [reference_baseline_keeps(t, percent, "ernie-otel") for t in ids]
    # The share picked is the percent (binomial, n=1000: 5 sigma is under 7 points at 30%).
    assert abs(sum(ours) / len(ids) - percent / 100) < 0.07


def test_baseline_threshold_edges() -> None:
    assert baseline_threshold(0) == 0
    assert baseline_threshold(100) == 2**64 - 1
    assert baseline_threshold(50) == (2**64 - 1) // 2
    # The salt is part of the hash: another salt picks another set. (Random ids: FNV-1a mixes the
    # last bytes into the low bits only, so ids 1..N that differ in two bytes all hash alike.)
    rng = random.Random(13)
    ids = [rng.getrandbits(128) for _ in range(200)]
    threshold = baseline_threshold(30)
    assert [baseline_keeps(t, "ernie-otel", threshold) for t in ids] != [baseline_keeps(t, "x", threshold)
                                                                         for t in ids]


def _dropped_by_baseline(rule: KeepRule) -> int:
    rng = random.Random(4)
    return next(t for t in iter(lambda: rng.getrandbits(128), None)
                if not baseline_keeps(t, rule.hash_salt, rule.threshold))


def test_each_policy_clause_and_its_boundary() -> None:
    rule = RULE
    t = _dropped_by_baseline(rule)

    def keeps(**over: Any) -> bool:
        args: dict[str, Any] = dict(failed=False, error_type=None, finish_reason="stop", duration_ns=10 * MS,
                                    ttft_s=0.002)
        return rule.keeps(t, **{**args, **over})

    assert not keeps()
    assert keeps(failed=True)
    assert keeps(error_type=ErrorType.QUEUE_FULL.value)
    assert keeps(finish_reason=FinishReason.CANCELLED.value)
    # The latency policy: whole milliseconds >= threshold, i.e. ns >= threshold * 1e6.
    assert keeps(duration_ns=5000 * MS) and not keeps(duration_ns=5000 * MS - 1)
    # The slow-first-token policy: the TTFT attribute (seconds) >= TTFT_MS / 1000.0, bit for bit.
    assert keeps(ttft_s=1.0) and keeps(ttft_s=7.5) and not keeps(ttft_s=0.999999) and not keeps(ttft_s=None)


# ------------------------------------------------------------------------ configuration
def _sampler_default(variable: str) -> str:
    found = re.search(r"\$\{env:" + variable + r":-([^}]*)\}", SAMPLER_YAML.read_text())
    assert found, f"{variable} is not in {SAMPLER_YAML}"
    return found.group(1)


def test_settings_read_the_samplers_variables_with_the_samplers_defaults() -> None:
    off = TelemetrySettings.from_env({})
    assert off.keep_rule is None  # single server: every trace is kept, every exemplar resolves
    on = TelemetrySettings.from_env({EXEMPLARS_FOLLOW_SAMPLING_ENV: "true"}).keep_rule
    assert on == KeepRule(float(_sampler_default("OTELCOL_SAMPLING_BASELINE_PERCENT")),
                          _sampler_default("OTELCOL_SAMPLING_HASH_SALT"),
                          int(_sampler_default("OTELCOL_SAMPLING_LATENCY_MS")),
                          int(_sampler_default("OTELCOL_SAMPLING_TTFT_MS")))
    given = TelemetrySettings.from_env({
        EXEMPLARS_FOLLOW_SAMPLING_ENV: "1", "OTELCOL_SAMPLING_BASELINE_PERCENT": "30",
        "OTELCOL_SAMPLING_HASH_SALT": "s", "OTELCOL_SAMPLING_LATENCY_MS": "5000", "OTELCOL_SAMPLING_TTFT_MS": "1000"})
    assert given.keep_rule == KeepRule(30.0, "s", 5000, 1000)
    with pytest.raises(ConfigError, match="OTELCOL_SAMPLING_BASELINE_PERCENT"):
        TelemetrySettings.from_env({"OTELCOL_SAMPLING_BASELINE_PERCENT": "150"})


def test_the_fleet_profile_turns_it_on_for_every_replica_and_only_there() -> None:
    ctx = SimpleNamespace(model="tiny", url=lambda key: f"http://127.0.0.1:{key}", addr=lambda key: key,
                          ports={}, state_dir=REPO_ROOT)

    def serve_envs(table: tuple[components.Component, ...]) -> list[dict[str, str]]:
        return [c.env(ctx) for c in table if c.name.startswith("ernie_serve")]

    fleet = serve_envs(stack_components(3))
    assert len(fleet) == 3
    assert all(env[EXEMPLARS_FOLLOW_SAMPLING_ENV] == "true" for env in fleet)
    assert all(EXEMPLARS_FOLLOW_SAMPLING_ENV not in env for env in serve_envs(stack_components(1)))


# ------------------------------------------------------------------ exemplars in the recorder
def _settings(follow: bool) -> TelemetrySettings:
    return TelemetrySettings.from_env({EXEMPLARS_FOLLOW_SAMPLING_ENV: "true"} if follow else {})


def _recorder(keep: KeepRule | None) -> tuple[Recorder, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    # The exemplar filter build_sdk gives the MeterProvider with the same switch.
    meter_provider = MeterProvider(metric_readers=[reader], **exemplar_filter_kwargs(_settings(keep is not None)))
    recorder = Recorder(meter_provider, TracerProvider(), "ernie-gating-probe", lambda: None, keep=keep)
    return recorder, reader


def _exemplar_trace_ids(reader: InMemoryMetricReader) -> tuple[set[int], int]:
    """Trace ids of the exemplars collected now (the reservoirs start afresh after a collection),
    and how many histogram points had observations."""
    data = reader.get_metrics_data()
    found: set[int] = set()
    points = 0
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    if isinstance(point, HistogramDataPoint):
                        points += 1
                        found.update(e.trace_id for e in point.exemplars if e.trace_id)
    return found, points


def _request(recorder: Recorder, kind: str) -> tuple[int, bool]:
    """One finished request of `kind` (timings set by hand, as the engine would); returns its trace
    id and whether the sampler keeps it (RULE's parameters are the fleet fixture's)."""
    rt = recorder.start("chat", f"req-{kind}")
    st = rt.stats
    st.prompt_tokens, st.output_tokens, st.finish_reason = 4, 3, FinishReason.STOP.value
    queue, prefill, total = 0.010, 0.020, 0.100  # seconds: fast, under every threshold
    status, error_type = Status.OK.value, None
    if kind == "error":
        status, error_type, st.finish_reason = Status.ERROR.value, ErrorType.ENGINE_ERROR.value, None
    elif kind == "rejected":
        status, error_type, st.finish_reason = Status.REJECTED.value, ErrorType.QUEUE_FULL.value, None
    elif kind == "cancelled":
        status, st.finish_reason = Status.CANCELLED.value, FinishReason.CANCELLED.value
    elif kind == "slow":
        total = 6.0
    elif kind == "slow_queue":
        queue, total = 1.5, 1.6
    elif kind == "slow_prefill":
        prefill, total = 1.5, 1.6
    elif kind == "almost_slow":  # just under the thresholds: only the baseline may keep these
        total = 4.99
    elif kind == "almost_slow_ttft":  # queue + prefill = 0.99 s: neither phase alone, nor both, reach 1 s
        queue, total = 0.97, 1.2
    st.scheduled = st.arrival + queue
    st.first_token = st.scheduled + prefill
    st.finished = st.arrival + total
    recorder.finish(rt, status, error_type=error_type)
    trace_id = rt.span.get_span_context().trace_id
    kept = kind in KEPT_KINDS or reference_baseline_keeps(trace_id, RULE.baseline_percent, RULE.hash_salt)
    return trace_id, kept


def test_exemplars_exactly_for_the_traces_the_sampler_keeps() -> None:
    recorder, reader = _recorder(RULE)
    kinds = [*sorted(KEPT_KINDS), "almost_slow", "almost_slow_ttft"] + ["ok"] * 40
    outcomes = {"kept": 0, "dropped": 0}
    try:
        for kind in kinds:
            trace_id, kept = _request(recorder, kind)
            recorder.flush()
            found, points = _exemplar_trace_ids(reader)
            assert points, "the request recorded no histogram"
            assert found == ({trace_id} if kept else set()), (kind, format(trace_id, "032x"))
            outcomes["kept" if kept else "dropped"] += 1
    finally:
        recorder.close()
    # Both baseline outcomes happened (P(no OK trace picked at 30% of 40) ~ 6e-7), so the test can fail.
    assert outcomes["kept"] > 6 and outcomes["dropped"] > 0, outcomes


def test_without_the_rule_every_sampled_trace_has_exemplars() -> None:
    recorder, reader = _recorder(None)
    try:
        for _ in range(10):
            trace_id, _kept = _request(recorder, "ok")
            recorder.flush()
            assert _exemplar_trace_ids(reader)[0] == {trace_id}
    finally:
        recorder.close()


@pytest.mark.parametrize("follow", [False, True])
def test_other_instrumentations_get_no_exemplars_when_they_follow_sampling(follow: bool) -> None:
    """An HTTP server histogram recorded in its own sampled span (as the FastAPI instrumentation
    does) would name dropped traces: with the switch on, the SDK's filter admits no such exemplar."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], **exemplar_filter_kwargs(_settings(follow)))
    duration = meter_provider.get_meter("http-probe").create_histogram("http.server.request.duration", unit="s")
    with TracerProvider().get_tracer("http-probe").start_as_current_span("GET /probe") as span:
        duration.record(0.02, {"http.route": "/probe"})
        trace_id = span.get_span_context().trace_id
    assert _exemplar_trace_ids(reader)[0] == (set() if follow else {trace_id})
    meter_provider.shutdown()


# ------------------------------------------------------------------ the agent's span metrics
def _span_metrics_exemplars(pipeline_bin: Path, *configs: Path) -> bool:
    args = [str(pipeline_bin / "otelcol-ernie"), "print-config", "--mode", "unredacted"]
    for config in configs:
        args += ["--config", str(config)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return bool(yaml.safe_load(result.stdout)["connectors"]["span_metrics"]["exemplars"]["enabled"])


def test_fleet_agent_span_metrics_carry_no_exemplars(pipeline_bin: Path) -> None:
    """The agent computes span metrics from every span, before the samplers drop most traces: its
    exemplars would name dropped traces, so the fleet overlay turns them off (single server: on)."""
    assert _span_metrics_exemplars(pipeline_bin, OTELCOL_CONFIG)
    assert not _span_metrics_exemplars(pipeline_bin, OTELCOL_CONFIG, AGENT_OVERLAY)


# --------------------------------------------- end to end: real samplers, Jaeger, the agent's Prometheus
EXEMPLAR_TRACE_ID = re.compile(r'# \{[^}]*trace_id="([0-9a-f]{32})"')


def _agent_exemplars(fleet: Fleet) -> tuple[set[str], str]:
    """The trace ids of the exemplars on the agent's Prometheus endpoint (OpenMetrics), once some arrive."""
    request = urllib.request.Request(f"http://{fleet.agent_env['OTELCOL_PROMETHEUS_ENDPOINT']}/metrics",
                                     headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"})
    deadline, exemplars, body = time.monotonic() + 30, set(), ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
        exemplars = set(EXEMPLAR_TRACE_ID.findall(body))
        if exemplars:
            break
        time.sleep(0.5)
    return exemplars, body


def test_every_exemplar_resolves_after_real_tail_sampling(fleet: Fleet) -> None:
    """The recorder, exporting OTLP to the fleet's agent -> lb -> two samplers -> Jaeger: the traces
    in Jaeger are exactly those the rule keeps (errors, cancels, slow, slow first token, baseline;
    not the ones just under a threshold), and every exemplar the agent's Prometheus endpoint serves
    names one of them."""
    fleet.start_jaeger()
    fleet.start_sampler(0)
    fleet.start_sampler(1)
    fleet.start_lb()
    fleet.start_agent()
    otlp = fleet.agent_env["OTELCOL_OTLP_GRPC_ENDPOINT"]
    resource = Resource.create({"service.name": "ernie-exemplar-probe"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp, insecure=True),
                                                          schedule_delay_millis=200))
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=otlp, insecure=True), export_interval_millis=3_600_000)],
        **exemplar_filter_kwargs(_settings(True)))
    recorder = Recorder(meter_provider, tracer_provider, "ernie-exemplar-probe", lambda: None, keep=RULE)
    sent: dict[str, tuple[str, bool]] = {}
    try:
        for kind in [*sorted(KEPT_KINDS), "almost_slow", "almost_slow_ttft", "almost_slow"] + ["ok"] * 30:
            trace_id, kept = _request(recorder, kind)
            sent[format(trace_id, "032x")] = (kind, kept)
        recorder.flush()
        assert tracer_provider.force_flush(10_000) and meter_provider.force_flush(10_000)
        # Read the exemplars now: an exemplar travels in the one export after its observation (the
        # SDK's reservoirs start afresh), and the shutdown's final export would replace it.
        exemplars, body = _agent_exemplars(fleet)
    finally:
        recorder.close()
        meter_provider.shutdown()
        tracer_provider.shutdown()
    probe = [line for line in body.splitlines() if line.startswith("ernie_inference_latency_seconds_bucket")]
    assert exemplars, "no exemplars reached the agent's Prometheus endpoint:\n" + "\n".join(probe[:30])
    assert exemplars <= set(sent), f"exemplars of traces not sent here: {exemplars - set(sent)}"

    kept = [SentTrace(int(h, 16), kind, 4, {"ernie-exemplar-probe"}, set()) for h, (kind, k) in sent.items() if k]
    dropped = [h for h, (_, k) in sent.items() if not k]
    assert dropped and len(kept) > len(KEPT_KINDS), "the baseline kept all or none: the test could not fail"
    wait_kept(fleet, kept, timeout=30 + 3 * DECISION_WAIT_S)
    time.sleep(2)  # every decision is taken by now: the kept traces were written after theirs
    leaked = [(h, sent[h][0]) for h in dropped if jaeger_trace(fleet.query, h) is not None]
    assert not leaked, f"the samplers kept traces the recorder's rule drops: {leaked}"
    unresolved = [(h, sent[h][0]) for h in exemplars if jaeger_trace(fleet.query, h) is None]
    assert not unresolved, f"exemplars naming traces not in Jaeger: {unresolved}"


# ------------------------------------------- the default stack: exemplars still resolve after down && up
def _exemplar_ids(e: E2EStack, since: float) -> set[str]:
    found: set[str] = set()
    for spec in (names.LATENCY, names.GENAI_TTFT):
        data = e.prom("/api/v1/query_exemplars", query=f"{spec.prom_name}_bucket{{{e.via_collector}}}",
                      start=since, end=time.time())
        for series in data:
            found |= {ex["labels"].get("trace_id", "") for ex in series["exemplars"]}
    return found - {""}


@pytest.mark.integration
def test_earlier_exemplars_resolve_after_stack_down_and_up(pipeline_bin: Path, tmp_path: Path) -> None:
    """Prometheus keeps its exemplars across a restart (TSDB + WAL); Jaeger's badger store keeps the
    traces they name, so none of them opens "trace not found" after `stack down && stack up`."""
    stack = Stack(tmp_path / "stack", ports=free_ports(), bin_dir=pipeline_bin, say=lambda line: None)
    e = E2EStack(stack)
    since = time.time() - 60
    try:
        stack.up()
        ours = set()
        for i in range(3):
            result = e.chat(f"before restart {i}")
            assert result.status == 200 and result.trace_id, (result.status, result.headers)
            ours.add(result.trace_id)
        before = wait_for(lambda: _exemplar_ids(e, since) & ours or None, 60, f"exemplars of {sorted(ours)}")
        stack.down()
        stack.up()
        after = wait_for(lambda: _exemplar_ids(e, since) or None, 60, "the earlier exemplars after the restart")
        assert before <= after, f"Prometheus lost exemplars across the restart: {sorted(before - after)}"
        unresolved = [t for t in after if e.trace(t) is None]
        assert not unresolved, f"exemplars naming traces Jaeger no longer has: {unresolved}\n{e.logs('jaeger')}"
    except StackError as exc:
        pytest.fail(f"stack: {exc}\n{e.logs()}")
    finally:
        stack.down()
