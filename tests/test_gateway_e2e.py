"""Gateway end to end: a gateway ernie-serve in front of the stack's ernie-serve, both under
opentelemetry-instrument sending to the real Collector -> one trace in Jaeger holds both
services' spans, correctly parented; both services' metrics reach Prometheus."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_client import E2EStack, wait_for
from serve_helpers import Served, run_server

from ernie_otel import names

GATEWAY_SERVICE = "ernie-gateway"


@pytest.fixture(scope="module")
def gateway(e2e_stack: E2EStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = {"OTEL_SERVICE_NAME": GATEWAY_SERVICE, "OTEL_EXPORTER_OTLP_ENDPOINT": e2e_stack.stack.url("otlp_grpc"),
           "OTEL_PYTHON_DISTRO": "ernie_otel", "OTEL_PYTHON_CONFIGURATOR": "ernie_otel"}
    with run_server(tmp_path_factory.mktemp("gw"), "--upstream", e2e_stack.serve, instrument=True, env=env,
                    name="gateway") as served:
        yield served


pytestmark = pytest.mark.integration


def test_one_trace_spans_gateway_and_engine(e2e_stack: E2EStack, gateway: Served, tmp_path: Path) -> None:
    trace_id, caller = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    body = json.dumps({"model": e2e_stack.model, "max_tokens": 4, "stream": True,
                       "messages": [{"role": "user", "content": "through the gateway"}]}).encode()
    req = urllib.request.Request(gateway.base + "/v1/chat/completions", data=body, method="POST", headers={
        "Content-Type": "application/json", "traceparent": f"00-{trace_id}-{caller}-01"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200 and b"[DONE]" in r.read()
    # gateway: SERVER + GenAI + queue/prefill/decode; engine: SERVER + GenAI + queue/prefill/decode
    trace = e2e_stack.wait_trace(trace_id, min_spans=10, timeout=40)
    service_of = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    spans = {s["spanID"]: s for s in trace["spans"]}

    def parent(span: dict) -> str | None:
        refs = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
        return refs[0] if refs else None

    genai_name = names.genai_span_name("chat", e2e_stack.model)
    by_service: dict[str, dict[str, dict]] = {}
    for s in spans.values():
        by_service.setdefault(service_of[s["processID"]], {})[s["operationName"]] = s
    assert set(by_service) == {GATEWAY_SERVICE, names.SERVICE_NAME}, set(by_service)
    gw, engine = by_service[GATEWAY_SERVICE], by_service[names.SERVICE_NAME]
    gw_server = gw["POST /v1/chat/completions"]
    assert parent(gw_server) == caller
    assert parent(gw[genai_name]) == gw_server["spanID"]
    for phase in (names.SPAN_PREFILL, names.SPAN_DECODE):
        assert parent(gw[phase]) == gw[genai_name]["spanID"]
    # The engine's SERVER span hangs off the gateway's GenAI span: the context went upstream.
    engine_server = engine["POST /v1/chat/completions"]
    assert parent(engine_server) == gw[genai_name]["spanID"]
    assert parent(engine[genai_name]) == engine_server["spanID"]
    for phase in (names.SPAN_QUEUE, names.SPAN_PREFILL, names.SPAN_DECODE):
        assert parent(engine[phase]) == engine[genai_name]["spanID"]


def test_both_services_metrics_reach_prometheus(e2e_stack: E2EStack, gateway: Served) -> None:
    family = names.REQUESTS.prom_name
    for job in (GATEWAY_SERVICE, names.SERVICE_NAME):
        wait_for(lambda job=job: e2e_stack.scalar(f'sum({family}{{job="{job}", status="ok"}})') or None, 40,
                 f"{family} of {job} through the Collector")
    tokens = e2e_stack.scalar(f'sum({names.GENERATION_TOKENS.prom_name}{{job="{GATEWAY_SERVICE}"}})')
    assert tokens is not None and tokens >= 4
