"""SLO targets, header parsing, tenant attribution and cost: the pure rules, then the recorder's
exact counters through an InMemoryMetricReader (requests with set timings below and above each
target), then bad configuration at the real ``ernie-serve`` command line (exit 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from helpers import in_memory_server
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.datastructures import Headers

from ernie_otel import names, slo
from ernie_otel.kinds import ErrorType, Status
from ernie_otel.serve import ServeConfig
from ernie_otel.server import ErnieServer
from ernie_otel.slo import HeaderProblem, Slo, SloTargets
from ernie_otel.telemetry.recorder import Recorder
from ernie_otel.tenancy import OTHER_TENANT, Overflow, Price, TenantResolver, load_pricing, resolve_tenant

MODEL = "m"


# ----------------------------------------------------------------------------- pure rules
def test_header_targets_are_clamped_and_bad_ones_ignored() -> None:
    assert slo.parse_header_ms("250") == (0.25, None)
    assert slo.parse_header_ms(" 12.5 ") == (0.0125, None)
    assert slo.parse_header_ms("0") == (0.001, HeaderProblem.CLAMPED)
    assert slo.parse_header_ms("-5") == (0.001, HeaderProblem.CLAMPED)
    assert slo.parse_header_ms("9e9") == (600.0, HeaderProblem.CLAMPED)
    for bad in ("", "abc", "nan", "inf", "1" * 40, "5ms", "0x10"):
        assert slo.parse_header_ms(bad) == (None, HeaderProblem.INVALID), bad
    base = SloTargets(ttft=0.5, tpot=0.05, e2e=10.0)
    assert slo.request_targets(base, {}) == (base, [])
    targets, problems = slo.request_targets(base, {slo.HEADER_TTFT: "100", slo.HEADER_TPOT: "junk"})
    assert targets == SloTargets(ttft=0.1, tpot=0.05, e2e=10.0)
    assert problems == [(slo.HEADER_TPOT, HeaderProblem.INVALID)]


def test_remembered_header_targets_equal_parsed_ones_and_the_memo_stays_bounded() -> None:
    base = SloTargets(ttft=0.5, tpot=0.05, e2e=10.0)
    memo = slo.HeaderTargets(base, max_entries=8)
    values = [None, "250", " 12.5 ", "0", "9e9", "abc", "", "1" * 40, "nan"]
    for _ in range(2):  # the second pass answers from the memo
        for ttft in values:
            for tpot in values:
                targets, problems = slo.header_targets(base, ttft, tpot)
                assert memo(ttft, tpot) == (targets, tuple(problems)), (ttft, tpot)
    for i in range(1000):  # a client varying its headers: parsed every time, never hoarded
        assert memo(str(i + 1), None)[0].ttft == (i + 1) / 1000
        assert len(memo._memo) <= 8
    memo("7" * 1000, None)
    assert ("7" * 1000, None) not in memo._memo


def test_evaluation_follows_the_documented_definitions() -> None:
    t = SloTargets(ttft=0.5, tpot=0.05, e2e=2.0)
    ok = Status.OK.value
    assert slo.evaluate(t, ok, None, 0.5, 0.05, 2.0) == (
        (Slo.TTFT, True), (Slo.TPOT, True), (Slo.E2E, True), (Slo.ALL, True))  # at the target is met
    assert slo.evaluate(t, ok, None, 0.6, 0.01, 1.0)[-1] == (Slo.ALL, False)
    # One output token: no TPOT figure, so TPOT is not judged.
    assert slo.evaluate(t, ok, None, 0.1, None, 0.1) == ((Slo.TTFT, True), (Slo.E2E, True), (Slo.ALL, True))
    # The server's failures miss everything configured; a caller's mistake and a cancel are not judged.
    failed = slo.evaluate(t, Status.ERROR.value, ErrorType.ENGINE_ERROR.value, None, None, 0.1)
    assert failed == tuple((s, False) for s in (Slo.TTFT, Slo.TPOT, Slo.E2E, Slo.ALL))
    assert slo.evaluate(t, Status.REJECTED.value, ErrorType.QUEUE_FULL.value, None, None, 0.0)[-1] == (Slo.ALL, False)
    assert slo.evaluate(t, Status.ERROR.value, ErrorType.INVALID_REQUEST.value, None, None, 0.0) == ()
    assert slo.evaluate(t, Status.CANCELLED.value, None, 0.1, None, 0.2) == ()
    assert slo.evaluate(slo.NO_TARGETS, ok, None, 0.1, 0.1, 0.1) == ()


def test_targets_json_form() -> None:
    assert slo.targets_from_json('{"ttft_ms": 500, "e2e_ms": 20000}') == SloTargets(ttft=0.5, e2e=20.0)
    for bad in ("{", "[]", '{"ttft": 1}', '{"ttft_ms": "1"}', '{"ttft_ms": 0}', '{"tpot_ms": true}'):
        with pytest.raises(ValueError):
            slo.targets_from_json(bad)
    config = ServeConfig(slo_targets=SloTargets(ttft=0.5, tpot=0.05), slo_ttft=0.2)
    assert config.slo() == SloTargets(ttft=0.2, tpot=0.05)  # the flag wins over the JSON


def test_tenants_only_from_the_allow_list_and_the_cap_holds_under_1000_values() -> None:
    resolver = TenantResolver(frozenset({"team-a", "team-b", "team-c"}), max_tenants=2)
    assert resolve_tenant(resolver, None) == ("default", None)
    assert resolve_tenant(resolver, "team-a") == ("team-a", None)
    assert resolve_tenant(resolver, "team-b") == ("team-b", None)
    assert resolve_tenant(resolver, "team-c") == (OTHER_TENANT, Overflow.CAP)  # allowed, but past the cap
    assert resolve_tenant(resolver, "mallory") == (OTHER_TENANT, Overflow.UNKNOWN)
    # An authenticated key's name (operator-given) is admitted without the allow-list, under the cap.
    open_resolver = TenantResolver(frozenset(), max_tenants=5)
    seen = {resolve_tenant(open_resolver, f"tenant-{i}", key_name=f"key-{i}")[0] for i in range(1000)}
    assert seen == {f"key-{i}" for i in range(5)} | {OTHER_TENANT}
    header_only = {resolve_tenant(open_resolver, f"tenant-{i}")[0] for i in range(1000)}
    assert header_only == {OTHER_TENANT}


def test_pricing_file(tmp_path: Path) -> None:
    good = tmp_path / "prices.json"
    good.write_text(json.dumps({"currency": "EUR", "models": {MODEL: {"input_per_1m": 1.0, "output_per_1m": 4.0}},
                                "default": {"gpu_hour": 3.6}}))
    pricing = load_pricing(str(good))
    assert pricing.currency == "EUR"
    assert pricing.for_model(MODEL) == Price(1.0, 4.0)
    assert pricing.for_model("else") == Price(gpu_hour=3.6)
    assert Price(1.0, 4.0).cost(1_000_000, 500_000, 9.0, 8) == pytest.approx(3.0)
    assert Price(gpu_hour=3.6).cost(0, 0, 10.0, 4) == pytest.approx(0.0025)
    for bad in ("{", "[]", '{"models": {"m": {"input_per_1m": -1}}}', '{"models": {"m": {"per_token": 1}}}',
                '{"currency": "dollars", "default": {"gpu_hour": 1}}', "{}", '{"models": {"m": {}}}'):
        path = tmp_path / "bad.json"
        path.write_text(bad)
        with pytest.raises(ValueError):
            load_pricing(str(path))
    with pytest.raises(ValueError):
        load_pricing(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("args", [
    ["--pricing-file", "MISSING"], ["--pricing-file", "BAD"], ["--slo-ttft", "abc"], ["--slo-tpot", "-1"],
    ["--slo-targets", '{"ttft": 5}'], ["--slo-objective", "1.5"], ["--tenants", "ok,has space"],
    ["--max-tenants", "0"]])
def test_bad_configuration_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": {"m": {"input_per_1m": "free"}}}')
    args = [{"MISSING": str(tmp_path / "none.json"), "BAD": str(bad)}.get(a, a) for a in args]
    proc = subprocess.run([sys.executable, "-m", "ernie_otel.serve", "--model", "tiny", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ernie-serve: ") and args[0] in lines[0], proc.stderr


# ----------------------------------------------------------------------------- the recorder
class Rig:
    def __init__(self, **kw: Any) -> None:
        self.reader = InMemoryMetricReader()
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.recorder = Recorder(MeterProvider(metric_readers=[self.reader]), tracer_provider, MODEL,
                                 lambda: None, **kw)

    def request(self, *, ttft: float | None, e2e: float, tokens: int = 5, status: str = Status.OK.value,
                error_type: str | None = None, headers: dict[str, str] | None = None) -> Any:
        rt = self.recorder.start("chat", "id")
        self.recorder.attribute(rt, headers or {})
        st = rt.stats
        st.scheduled = st.arrival
        if ttft is not None:
            st.first_token = st.arrival + ttft
        st.finished = st.arrival + e2e
        st.prompt_tokens, st.output_tokens = 7, tokens
        self.recorder.finish(rt, status, error_type=error_type)
        return st

    def counts(self, spec: names.MetricSpec) -> dict[tuple[Any, ...], float]:
        self.recorder.flush()
        data = self.reader.get_metrics_data()
        out: dict[tuple[Any, ...], float] = {}
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == spec.otel_name:
                        for p in m.data.data_points:
                            assert p.attributes[names.ATTR_MODEL] == MODEL
                            out[tuple(p.attributes[k] for k in spec.labels[1:])] = p.value
        return out


def test_exact_met_and_missed_counts_goodput_and_span_attributes() -> None:
    # Targets well away from any bucket edge: the counts are exact, not interpolated.
    rig = Rig(slo_targets=SloTargets(ttft=0.123, tpot=0.0177, e2e=0.777))
    rig.request(ttft=0.100, e2e=0.150, tokens=3)  # tpot 0.025: misses TPOT only
    rig.request(ttft=0.122, e2e=0.180, tokens=6)  # tpot 0.0116: meets everything
    rig.request(ttft=0.124, e2e=0.190, tokens=5)  # tpot 0.0165: misses TTFT only
    rig.request(ttft=0.050, e2e=0.778, tokens=1)  # no TPOT; misses e2e
    rig.request(ttft=None, e2e=0.01, tokens=0, status=Status.REJECTED.value, error_type=ErrorType.QUEUE_FULL.value)
    rig.request(ttft=None, e2e=0.01, tokens=0, status=Status.ERROR.value, error_type=ErrorType.INVALID_REQUEST.value)
    rig.request(ttft=0.01, e2e=0.05, tokens=4, headers={slo.HEADER_TTFT: "5"})  # its own 5 ms target: missed
    counts = rig.counts(names.SLO_REQUESTS)
    expected = {
        ("default", "ttft", "met"): 3, ("default", "ttft", "missed"): 3,
        ("default", "tpot", "met"): 3, ("default", "tpot", "missed"): 2,
        ("default", "e2e", "met"): 4, ("default", "e2e", "missed"): 2,
        ("default", "all", "met"): 1, ("default", "all", "missed"): 5,
    }
    assert counts == expected
    assert rig.counts(names.GOODPUT_TOKENS) == {("default",): 6}
    targets = rig.counts(names.SLO_TARGET)
    assert targets == {("ttft",): 0.123, ("tpot",): 0.0177, ("e2e",): 0.777}
    assert rig.counts(names.SLO_OBJECTIVE) == {(): 0.99}
    spans = {s.attributes.get(names.GEN_AI_USAGE_OUTPUT_TOKENS): s for s in rig.spans.get_finished_spans()
             if s.name == names.genai_span_name("chat", MODEL)}
    good, own = spans[6], spans[4]
    assert good.attributes[names.SPAN_ATTR_SLO_MET] is True
    assert own.attributes[names.SPAN_ATTR_SLO_MET] is False
    assert list(own.attributes[names.SPAN_ATTR_SLO_MISSED]) == ["ttft"]
    assert own.attributes[names.span_attr_slo_target("ttft")] == 5.0
    assert good.attributes[names.span_attr_slo_target("ttft")] == 123.0
    assert good.attributes[names.SPAN_ATTR_TENANT] == "default"


def test_bad_headers_are_counted_never_raised() -> None:
    rig = Rig(slo_targets=SloTargets(ttft=0.5))
    rig.request(ttft=0.1, e2e=0.2, headers={slo.HEADER_TTFT: "abc", slo.HEADER_TPOT: "1e12"})
    rig.request(ttft=0.1, e2e=0.2, headers={slo.HEADER_TTFT: "0"})
    problems = {k: v for k, v in rig.counts(names.SLO_HEADER_PROBLEMS).items() if v}
    assert problems == {(slo.HEADER_TTFT, "invalid"): 1, (slo.HEADER_TPOT, "clamped"): 1,
                        (slo.HEADER_TTFT, "clamped"): 1}
    # the invalid one kept the server's 500 ms target: met; the clamped 1 ms target: missed
    assert rig.counts(names.SLO_REQUESTS)[("default", "ttft", "met")] == 1


def test_starlette_headers_are_read_in_one_pass() -> None:
    # attribute() reads Starlette's raw header list in one pass: names compared without case (on
    # either side), and the first of repeated headers wins, as with Headers.get.
    rig = Rig(slo_targets=SloTargets(ttft=0.5, tpot=0.05), tenants=TenantResolver(frozenset({"a", "b"})),
              tenant_header="X-Tenant-Id")
    raw = [(b"host", b"x"), (b"x-slo-ttft-ms", b"250"), (b"x-tenant-id", b"a"), (b"x-slo-ttft-ms", b"999"),
           (b"x-tenant-id", b"b"), (b"X-SLO-TPOT-MS", b"20")]
    headers = Headers(raw=raw)
    rt = rig.recorder.start("chat", "id")
    rig.recorder.attribute(rt, headers)
    assert (headers.get("x-slo-ttft-ms"), headers.get("X-Tenant-Id")) == ("250", "a")
    assert rt.stats.tenant == "a"
    assert rt.stats.slo == SloTargets(ttft=0.25, tpot=0.02)
    rt = rig.recorder.start("chat", "id")
    rig.recorder.attribute(rt, Headers(raw=[(b"host", b"x")]))
    assert rt.stats.tenant == "default" and rt.stats.slo == SloTargets(ttft=0.5, tpot=0.05)


def test_tenant_counters_cap_and_cost() -> None:
    rig = Rig(slo_targets=SloTargets(e2e=1.0), tenants=TenantResolver(frozenset({"a", "b"}), max_tenants=1),
              tenant_header="x-tenant-id", price=Price(input_per_1m=1e6, output_per_1m=2e6), batch_slots=4)
    rig.request(ttft=0.1, e2e=0.2, tokens=3, headers={"x-tenant-id": "a"})
    rig.request(ttft=0.1, e2e=0.2, tokens=3, headers={"x-tenant-id": "a"})
    rig.request(ttft=0.1, e2e=0.2, tokens=2, headers={"x-tenant-id": "b"})  # allowed, past the cap of 1
    for i in range(1000):
        rig.request(ttft=0.1, e2e=2.0, tokens=1, headers={"x-tenant-id": f"client-made-{i}"})
    rig.request(ttft=0.1, e2e=0.2, tokens=1)
    requests = rig.counts(names.TENANT_REQUESTS)
    assert {k[0] for k in requests} == {"default", "a", "other"}  # label values only from the allow-list
    assert requests[("a", "ok")] == 2 and requests[("other", "ok")] == 1001 and requests[("default", "ok")] == 1
    assert rig.counts(names.TENANT_OVERFLOW) == {("unknown",): 1000, ("cap",): 1}
    tokens = rig.counts(names.TENANT_TOKENS)
    assert tokens[("a", "output")] == 6 and tokens[("a", "input")] == 14
    slo_counts = rig.counts(names.SLO_REQUESTS)
    assert slo_counts[("other", "e2e", "missed")] == 1000 and slo_counts[("a", "all", "met")] == 2
    assert rig.counts(names.GOODPUT_TOKENS) == {("default",): 1, ("a",): 6, ("other",): 2}
    cost = rig.counts(names.COST)
    assert cost[("a",)] == pytest.approx(2 * (7 * 1.0 + 3 * 2.0))
    assert set(cost) == {("default",), ("a",), ("other",)}


def test_no_targets_no_slo_series_and_no_cost_without_pricing() -> None:
    rig = Rig()
    rig.request(ttft=0.1, e2e=0.2)
    assert rig.counts(names.SLO_REQUESTS) == {}
    assert rig.counts(names.COST) == {}
    assert rig.counts(names.TENANT_REQUESTS)[("default", "ok")] == 1


def test_attribution_and_accounting_make_no_opentelemetry_call() -> None:
    """attribute() and finish() with SLO targets, tenants and cost are dict arithmetic on the request
    path: not one call into OpenTelemetry (what they cost is benchmarks/recording_path.py's to measure)."""
    rig = Rig(slo_targets=SloTargets(ttft=0.5, tpot=0.05, e2e=5.0),
              tenants=TenantResolver(frozenset({"a"})), tenant_header="x-tenant-id", price=Price(1.0, 2.0))
    rig.request(ttft=0.1, e2e=0.3)  # the telemetry thread exists from here on
    rt = rig.recorder.start("chat", "id")
    st = rt.stats
    st.scheduled, st.first_token, st.finished = st.arrival, st.arrival + 0.1, st.arrival + 0.2
    st.prompt_tokens, st.output_tokens = 7, 5
    calls: list[str] = []

    def profile(frame: Any, event: str, _: Any) -> None:
        module = str(frame.f_globals.get("__name__", ""))
        if event == "call" and module.startswith("opentelemetry"):
            calls.append(f"{module}.{frame.f_code.co_qualname}")
    sys.setprofile(profile)  # this thread only: the telemetry thread's SDK work is not counted
    try:
        rig.recorder.attribute(rt, {"x-tenant-id": "a", slo.HEADER_TTFT: "300"})
        rig.recorder.finish(rt, Status.OK.value)
    finally:
        sys.setprofile(None)
    assert calls == []
    # ... and the accounting did run.
    assert st.tenant == "a"
    assert st.cost == pytest.approx((7 * 1.0 + 5 * 2.0) / 1e6)
    assert st.slo.ttft == pytest.approx(0.3)  # the header's target
    assert st.slo_verdicts and all(met for _, met in st.slo_verdicts)


# ----------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    config = ServeConfig(model="tiny", max_num_seqs=2, max_queue_len=4, max_model_len=1024, response_metrics=True,
                         slo_ttft=60.0, slo_e2e=120.0, tenants=frozenset({"team-a"}))

    def recorder(meter_provider: Any, tracer_provider: Any, model: str, stats: Any) -> Recorder:
        return Recorder(meter_provider, tracer_provider, model, stats, slo_targets=config.slo(),
                        tenants=TenantResolver(frozenset({"team-a"}), 4), tenant_header=config.tenant_header)

    with in_memory_server(config, recorder) as (base, reader, spans, server):
        yield Served(base, reader, spans, server)


@dataclass
class Served:
    base: str
    reader: InMemoryMetricReader
    spans: InMemorySpanExporter
    server: ErnieServer

    def chat(self, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
        body = {"model": "ernie-4.5-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                "ignore_eos": True, **extra}
        r = httpx.post(self.base + "/v1/chat/completions", json=body, headers=headers or {}, timeout=60)
        assert r.status_code == 200, r.text
        return r

    def span(self, trace_id: str, name: str) -> Any:
        self.server.recorder.flush()
        return next(s for s in self.spans.get_finished_spans()
                    if s.name == name and format(s.context.trace_id, "032x") == trace_id)

    def slo_counts(self) -> dict[tuple[str, str, str], float]:
        self.server.recorder.flush()
        out: dict[tuple[str, str, str], float] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == names.SLO_REQUESTS.otel_name:
                        for p in m.data.data_points:
                            a = p.attributes
                            out[(a[names.ATTR_TENANT], a[names.ATTR_SLO], a[names.ATTR_RESULT])] = p.value
        return out


def _timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        out[name] = float(dur)
    return out


def _ms(span: Any) -> float:
    return (span.end_time - span.start_time) / 1e6


def test_server_timing_and_response_metrics_equal_the_spans(served: Served) -> None:
    r = served.chat(return_metrics=True)
    trace_id = r.headers[names.TRACE_ID_HEADER]
    timing = _timing(r.headers[names.SERVER_TIMING_HEADER])
    assert set(timing) == {"queue", "prefill", "decode", "total"}
    genai = served.span(trace_id, names.genai_span_name("chat", "ernie-4.5-tiny"))
    queue, prefill, decode = (served.span(trace_id, s) for s in (names.SPAN_QUEUE, names.SPAN_PREFILL,
                                                                   names.SPAN_DECODE))
    for phase, span in (("queue", queue), ("prefill", prefill), ("decode", decode), ("total", genai)):
        assert abs(timing[phase] - _ms(span)) <= 1.0, (phase, timing[phase], _ms(span))
    metrics = r.json()["metrics"]
    assert set(metrics) == {"time_to_first_token_ms", "generation_time_ms", "queue_time_ms", "mean_itl_ms",
                            "tokens_per_second"}
    assert abs(metrics["queue_time_ms"] - _ms(queue)) <= 1.0
    assert abs(metrics["time_to_first_token_ms"] - (_ms(queue) + _ms(prefill))) <= 1.0
    assert abs(metrics["generation_time_ms"] - (_ms(prefill) + _ms(decode))) <= 1.0
    assert abs(metrics["mean_itl_ms"] - _ms(decode) / 4) <= 1.0
    assert metrics["tokens_per_second"] == pytest.approx(5 / (metrics["generation_time_ms"] / 1000), rel=0.01)
    # Not asked: not given (the header is on every response).
    plain = served.chat()
    assert "metrics" not in plain.json() and names.SERVER_TIMING_HEADER in plain.headers


def test_stream_final_chunk_carries_the_metrics(served: Served) -> None:
    with httpx.stream("POST", served.base + "/v1/chat/completions", timeout=60, json={
            "model": "ernie-4.5-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "ignore_eos": True, "stream": True, "return_metrics": True}) as r:
        assert r.status_code == 200
        assert names.SERVER_TIMING_HEADER in r.headers
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert [c for c in chunks[:-1] if "metrics" in c] == []
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["metrics"]["mean_itl_ms"] is not None


def test_the_openai_client_ignores_the_extra_fields(served: Served) -> None:
    client = openai.OpenAI(base_url=served.base + "/v1", api_key="none")
    done = client.chat.completions.create(model="ernie-4.5-tiny", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=3, extra_body={"return_metrics": True, "ignore_eos": True})
    assert done.choices[0].message.content is not None and done.usage is not None
    assert done.usage.completion_tokens == 3
    stream = client.chat.completions.create(model="ernie-4.5-tiny", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=3, stream=True,
                                            extra_body={"return_metrics": True, "ignore_eos": True})
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == "length"


def test_exact_counts_through_the_server_and_header_targets(served: Served) -> None:
    before = served.slo_counts()
    served.chat()  # 60 s TTFT, 120 s e2e targets: met
    served.chat(headers={"x-slo-ttft-ms": "1", "x-tenant-id": "team-a"})  # 1 ms TTFT: missed
    served.chat(headers={"x-slo-ttft-ms": "lots", "x-tenant-id": "mallory"})  # ignored -> met, tenant other
    unknown_model = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(served.base + "/v1/chat/completions", json=unknown_model, timeout=30)
    assert r.status_code == 404 and names.SERVER_TIMING_HEADER in r.headers  # not judged
    after = served.slo_counts()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert {k: v for k, v in delta.items() if v} == {
        ("default", "ttft", "met"): 1, ("default", "e2e", "met"): 1, ("default", "all", "met"): 1,
        ("team-a", "ttft", "missed"): 1, ("team-a", "e2e", "met"): 1, ("team-a", "all", "missed"): 1,
        ("other", "ttft", "met"): 1, ("other", "e2e", "met"): 1, ("other", "all", "met"): 1,
    }


# Client-side TTFT adds the HTTP response and SSE framing to the server's first-token instant, plus
# whatever the OS takes to schedule the client on a busy 2-core machine; only requests whose
# server-side TTFT lies within that gap below the target can be judged differently. The bench runs as
# its own process (`ernie-otel bench`, one request at a time), as a user runs it. With targets clear
# of the TTFTs (3x a warm p90, and 1 ms) the measured differences were 0 to 0.05; the stated
# tolerance is 0.25, and the client is never more lenient than the server.
ATTAINMENT_TOLERANCE = 0.25


def _bench(served: Served, tmp: Path, offset: int, *extra: str) -> dict[str, Any]:
    out = tmp / f"bench-{offset}.json"
    subprocess.run([str(Path(sys.executable).parent / "ernie-otel"), "bench", "--url", served.base, "--model",
                    "ernie-4.5-tiny", "--requests", "40", "--concurrency", "1", "--max-tokens", "4", "--ignore-eos",
                    "--quiet", "--json", str(out), *extra], check=True, capture_output=True, timeout=300)
    return json.loads(out.read_text())


def test_bench_goodput_agrees_with_the_server(served: Served, tmp_path: Path) -> None:
    """Client and server judge the same requests by the same definition: with a target well above
    the TTFTs both see (3x the warm run's p90) and one below every TTFT (1 ms), their attainments
    agree within the stated tolerance. A target inside the distribution is no test of agreement:
    the client's TTFT adds the HTTP round trip to the server's, a gap that swings with the load on
    a shared machine (0.33 vs 0.98 was seen at load average 8)."""
    _bench(served, tmp_path, 0)  # warm-up
    warm = _bench(served, tmp_path, 1)
    for offset, target_ms in ((2, round(3 * warm["ttft_ms"]["p90"], 1)), (3, 1.0)):
        before = served.slo_counts()
        result = _bench(served, tmp_path, offset, "--slo-ttft", str(target_ms), "--slo-headers")
        after = served.slo_counts()
        assert result["requests_ok"] == 40 and result["slo_targets_ms"] == {"ttft": target_ms}
        server_met = after.get(("default", "ttft", "met"), 0) - before.get(("default", "ttft", "met"), 0)
        server_missed = after.get(("default", "ttft", "missed"), 0) - before.get(("default", "ttft", "missed"), 0)
        assert server_met + server_missed == 40 == result["slo_judged"]["ttft"]
        client = result["slo_attainment"]["ttft"]
        server = server_met / 40
        print(f"TTFT target {target_ms} ms: client attainment {client:.3f}, server {server:.3f}")
        assert abs(client - server) <= ATTAINMENT_TOLERANCE
        assert client <= server + 1 / 40  # the client's TTFT is never shorter than the server's
        assert result["goodput_tokens_per_s"] <= result["output_tokens_per_s"]
        if target_ms == 1.0:
            assert server == client == 0.0 and result["goodput_tokens_per_s"] == 0
        else:
            assert server >= 0.9, "a target at 3x the warm p90 should be met by the server"
