"""Fleet traces with the real servers: two ernie-serve engine replicas (tiny ERNIE model) and an
ernie-serve gateway (`--upstream`) in front of replica 0, all under opentelemetry-instrument
exporting OTLP to the agent Collector -> load-balancing Collector -> two tail-sampling Collectors
-> Jaeger (badger). Every binary is the real one, on free 127.0.0.1 ports.

The client sends each request with its own W3C `traceparent` (trace ids from a seeded generator,
so which OK traces the baseline keeps is known in advance): some through the gateway, some straight
to either replica, some failing (a prompt longer than the model, relayed by the gateway as an
upstream error; a model name the replica does not serve). What is proven, from the components'
own APIs:

- the traces in Jaeger are exactly those the policies keep (every error, the baseline's OK picks),
  and each is complete: one root, whose parent is the client's span; every other span's parent in
  the trace; the gateway's spans and the engine replica's (its own service.instance.id) together;
- every trace's spans went through exactly one sampler: the samplers' counts of new trace ids add
  up to the requests sent (a trace split over both would count twice) and both got some; the spans
  the samplers accepted are the spans the agent and the load balancer accepted; the spans the
  samplers exported to Jaeger are the spans Jaeger holds.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import RunningProcess, free_port, http_get, run_process
from test_fleet_traces import DECISION_WAIT_S, Fleet, baseline_keeps, jaeger_trace, metric_sum
from test_fleet_traces import fleet as fleet  # the fixture: real Collector tiers and Jaeger

from ernie_otel import names

pytestmark = pytest.mark.integration

BIN_DIR = Path(sys.executable).parent
GATEWAY_SERVICE = "ernie-fleet-gateway"
# Thresholds no tiny-model request on a busy 2-core machine reaches: which traces are kept is
# then decided by errors and the baseline alone, both known before the run.
SLOW_MS = 120_000
BASELINE_PERCENT = 30
# Through the gateway: OK (plain and streamed) and errors; straight to replica 0 and replica 1.
PLAN = (["gateway"] * 8 + ["gateway_stream"] * 4 + ["gateway_error"] * 2
        + ["direct0"] * 4 + ["direct1"] * 4 + ["direct0_stream", "direct1_stream"] + ["direct_error"] * 2)
SEED = 1313
# Replica 0 takes shorter prompts than the gateway in front of it (2048 tokens): the gateway's
# error requests pass the gateway and fail at the engine.
REPLICA0_MAX_LEN = 512


@dataclass
class Server:
    running: RunningProcess
    port: int
    metrics_port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _server_env(fleet: Fleet, service: str | None) -> dict[str, str | None]:
    env: dict[str, str | None] = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{fleet.agent_env['OTELCOL_OTLP_GRPC_ENDPOINT']}",
        "OTEL_PYTHON_DISTRO": "ernie_otel",
        "OTEL_PYTHON_CONFIGURATOR": "ernie_otel",
        # Spans leave within 0.2 s: a trace's gateway and engine halves reach the sampler well
        # inside one decision_wait.
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OMP_NUM_THREADS": "1",
        "OTEL_SERVICE_NAME": service,
        # The model list (the gateway asks its upstream for it; so does this test) is no request
        # of the plan: untraced, every trace the samplers count is one the test sent.
        "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "health,metrics,v1/models",
    }
    return env


@contextlib.contextmanager
def _servers(fleet: Fleet, work: Path) -> Iterator[tuple[Server, Server, Server]]:
    """Replica 0, replica 1 and the gateway in front of replica 0; the replicas load in parallel."""
    with contextlib.ExitStack() as stack:
        started: list[Server] = []
        for i in range(2):
            port, metrics = free_port(), free_port()
            cmd = [str(BIN_DIR / "opentelemetry-instrument"), str(BIN_DIR / "ernie-serve"), "--model", "tiny",
                   "--port", str(port), "--metrics-port", str(metrics), "--max-model-len", str(REPLICA0_MAX_LEN)]
            if i:
                cmd = cmd[:-2]
            proc = stack.enter_context(run_process(cmd, work / f"replica{i}.log", env=_server_env(fleet, None)))
            started.append(Server(proc, port, metrics))
        for server in started:
            server.running.wait_http(f"{server.base}/health", timeout=180)
        port, metrics = free_port(), free_port()
        cmd = [str(BIN_DIR / "opentelemetry-instrument"), str(BIN_DIR / "ernie-serve"), "--model", "tiny",
               "--upstream", started[0].base, "--port", str(port), "--metrics-port", str(metrics)]
        gw_env = _server_env(fleet, GATEWAY_SERVICE)
        gw = Server(stack.enter_context(run_process(cmd, work / "gateway.log", env=gw_env)), port, metrics)
        gw.running.wait_http(f"{gw.base}/health", timeout=60)
        yield started[0], started[1], gw


def _instance_id(server: Server) -> str:
    """The replica's service.instance.id, as its own /metrics states it (target_info)."""
    code, body = http_get(f"http://127.0.0.1:{server.metrics_port}/metrics")
    assert code == 200, body[:300]
    ids = set(re.findall(r'^target_info\{.*?service_instance_id="([^"]+)"', body, flags=re.M))
    assert len(ids) == 1, ids
    return ids.pop()


@dataclass
class Sent:
    kind: str
    trace_id: int
    caller: str
    status: int
    services: set[str]
    instance: str | None  # the engine replica that served it (None: none did)

    @property
    def hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def error(self) -> bool:
        return self.status >= 400

    @property
    def kept(self) -> bool:
        return self.error or baseline_keeps(self.trace_id, BASELINE_PERCENT)


def _request(url: str, model: str, trace_id: int, caller: int, *, stream: bool, error: bool,
             via_gateway: bool) -> tuple[int, str]:
    # A prompt within the gateway's limit but over replica 0's fails at the engine
    # (context_length_exceeded), whose answer the gateway relays (upstream_http_error); a model
    # name the server does not serve fails where it is sent.
    text = "hello fleet " * (150 if error else 1)
    body = {"model": "no-such-model" if error and not via_gateway else model, "max_tokens": 4,
            "stream": stream, "messages": [{"role": "user", "content": text}]}
    request = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "traceparent": f"00-{trace_id:032x}-{caller:016x}-01"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _parent(span: dict) -> str | None:
    refs = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    return refs[0] if refs else None


def _summary(got: dict | None) -> list[tuple[str, str]] | None:
    """(service, span name) of every span of a Jaeger trace: what a failure message shows."""
    if got is None:
        return None
    return sorted((got["processes"][s["processID"]]["serviceName"], s["operationName"]) for s in got["spans"])


def assert_complete(sent: Sent, got: dict) -> None:
    spans = {s["spanID"]: s for s in got["spans"]}
    roots = [s for s in spans.values() if _parent(s) not in spans]
    assert len(roots) == 1 and _parent(roots[0]) == sent.caller, \
        f"{sent.hex} ({sent.kind}): roots {[(r['operationName'], _parent(r)) for r in roots]}, caller {sent.caller}"
    processes = got["processes"]
    services = {p["serviceName"] for p in processes.values()}
    assert services == sent.services, f"{sent.hex} ({sent.kind}): services {services}, expected {sent.services}"
    if sent.instance is not None:
        engine = {tag["value"] for p in processes.values() if p["serviceName"] == names.SERVICE_NAME
                  for tag in p.get("tags", []) if tag["key"] == "service.instance.id"}
        assert engine == {sent.instance}, f"{sent.hex} ({sent.kind}): engine replicas {engine}, sent to {sent.instance}"
    # Each service wrote its GenAI span; an OK one carries the exact TTFT the sampler looks at.
    for process_id, process in processes.items():
        genai = [s for s in spans.values() if s["processID"] == process_id and s["operationName"].startswith("chat ")]
        assert len(genai) == 1, f"{sent.hex}: {process['serviceName']} wrote {len(genai)} GenAI spans"
        tags = {t["key"]: t["value"] for t in genai[0]["tags"]}
        if not sent.error:
            assert 0 < float(tags[names.SPAN_ATTR_TTFT]) < SLOW_MS / 1000, tags
        else:
            assert names.ATTR_ERROR_TYPE in tags, tags


def _model_load_traces(query: str, since_s: float) -> list[dict]:
    """The replicas' start-up traces (root span ernie.model.load) that Jaeger holds."""
    start_us = int(since_s * 1e6)
    code, body = http_get(f"{query}/api/traces?service={names.SERVICE_NAME}&operation={names.SPAN_MODEL_LOAD}"
                          f"&start={start_us}&end={int(time.time() * 1e6)}&limit=100")
    assert code == 200, body[:300]
    return list(json.loads(body).get("data") or [])


def test_real_servers_gateway_and_replicas_through_the_tiers(fleet: Fleet, tmp_path: Path) -> None:
    test_started = time.time()
    for env in fleet.sampler_envs:
        env.update({"OTELCOL_SAMPLING_BASELINE_PERCENT": str(BASELINE_PERCENT), "OTELCOL_SAMPLING_LATENCY_MS":
                    str(SLOW_MS), "OTELCOL_SAMPLING_TTFT_MS": str(SLOW_MS)})
    fleet.start_jaeger()
    fleet.start_sampler(0)
    fleet.start_sampler(1)
    fleet.start_lb()
    fleet.start_agent()
    rng = random.Random(SEED)
    sent: list[Sent] = []
    with _servers(fleet, tmp_path) as (replica0, replica1, gateway):
        model = json.loads(http_get(f"{replica0.base}/v1/models")[1])["data"][0]["id"]
        instances = [_instance_id(replica0), _instance_id(replica1)]
        assert instances[0] != instances[1]
        for kind in PLAN:
            trace_id, caller = rng.getrandbits(128), rng.getrandbits(64)
            via_gateway = kind.startswith("gateway")
            target = gateway if via_gateway else (replica1 if "1" in kind else replica0)
            status, body = _request(target.base, model, trace_id, caller, stream=kind.endswith("stream"),
                                    error=kind.endswith("error"), via_gateway=via_gateway)
            assert (status >= 400) == kind.endswith("error"), (kind, status, body[:300])
            services = {GATEWAY_SERVICE, names.SERVICE_NAME} if via_gateway else {names.SERVICE_NAME}
            # A model the replica does not serve is refused before any engine work, but its
            # SERVER and GenAI spans are the replica's all the same.
            instance = instances[0] if via_gateway or "1" not in kind else instances[1]
            sent.append(Sent(kind, trace_id, f"{caller:016x}", status, services, instance))
        # Let the servers' batch span processors (0.2 s) and the agent's batch (1 s) send everything.
        time.sleep(3)
        for name, proc in fleet.procs.items():
            assert proc.proc.poll() is None, f"{name} exited:\n{proc.log_tail()}"
    # The servers are stopped (their last spans flushed at shutdown); wait for the decisions.
    kept = [s for s in sent if s.kept]
    dropped = [s for s in sent if not s.kept]
    assert dropped and len(kept) > sum(s.error for s in sent), "the seed made the baseline keep all or none"
    deadline = time.monotonic() + 60 + 3 * DECISION_WAIT_S
    found: dict[str, dict] = {}
    while time.monotonic() < deadline and len(found) < len(kept):
        for s in kept:
            got = jaeger_trace(fleet.query, s.hex)
            if got is not None and {p["serviceName"] for p in got["processes"].values()} == s.services:
                found[s.hex] = got
        time.sleep(1)
    missing = [(s.hex, s.kind, _summary(jaeger_trace(fleet.query, s.hex))) for s in kept if s.hex not in found]
    assert not missing, f"kept traces not (whole) in Jaeger: {missing}\n{fleet.logs()}"
    time.sleep(2)  # late spans, if any, would land now
    for s in kept:
        got = jaeger_trace(fleet.query, s.hex)
        assert got is not None
        assert_complete(s, got)
        found[s.hex] = got
    leaked = [(s.hex, s.kind) for s in dropped if jaeger_trace(fleet.query, s.hex) is not None]
    assert not leaked, f"traces in Jaeger that the policies drop: {leaked}"

    # The split, from the Collectors' own counters.
    def telemetry(env: dict) -> str:
        return f"http://127.0.0.1:{env['OTELCOL_TELEMETRY_PORT']}/metrics"

    samplers = [telemetry(env) for env in fleet.sampler_envs]
    new_ids = [metric_sum(url, "otelcol_processor_tail_sampling_new_trace_id_received") for url in samplers]
    assert all(n > 0 for n in new_ids), f"a sampler got no trace: {new_ids}"
    # Besides one trace per request, each engine replica starts one trace of its own: the start-up
    # span ernie.model.load (a root span; the gateway loads no model). The policies judge those like
    # any trace (a load slower than the latency threshold is kept), so the kept ones are read back.
    startup_traces = 2
    assert sum(new_ids) == len(sent) + startup_traces, \
        f"new trace ids per sampler {new_ids}; {len(sent)} requests sent + {startup_traces} model loads"
    startup_kept = _model_load_traces(fleet.query, since_s=test_started)
    accepted = [metric_sum(url, "otelcol_receiver_accepted_spans") for url in samplers]
    lb_accepted = metric_sum(telemetry(fleet.lb_env), "otelcol_receiver_accepted_spans")
    agent_accepted = metric_sum(telemetry(fleet.agent_env), "otelcol_receiver_accepted_spans",
                                'transport="grpc"')
    assert sum(accepted) == lb_accepted == agent_accepted > 0, \
        f"spans accepted: samplers {accepted}, lb {lb_accepted}, agent {agent_accepted}"
    sampled = sum(metric_sum(url, "otelcol_processor_tail_sampling_global_count_traces_sampled", 'sampled="true"')
                  for url in samplers)
    assert sampled == len(kept) + len(startup_kept), \
        f"samplers kept {sampled} traces, the policies keep {len(kept)} + {len(startup_kept)} model loads"
    exported = sum(metric_sum(url, "otelcol_exporter_sent_spans") for url in samplers)
    in_jaeger = sum(len(t["spans"]) for t in [*found.values(), *startup_kept])
    assert exported == in_jaeger, f"samplers sent {exported} spans to Jaeger, which holds {in_jaeger}"
    print(f"\n{len(sent)} traces, {len(kept)} kept; new trace ids per sampler {new_ids}; spans: agent "
          f"{agent_accepted}, lb {lb_accepted}, samplers {accepted}, Jaeger {in_jaeger}")
