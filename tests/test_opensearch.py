"""The fleet's distributed trace store: Jaeger on a real 2-node OpenSearch cluster.

One JVM runs both nodes (deploy/opensearch/, OpenSearch 2.19.1 from Maven Central), every listener
on 127.0.0.1 and free ports. Jaeger (collector/jaeger.yaml + collector/jaeger-opensearch.yaml)
takes spans over OTLP from the Python SDK exporter; the test checks that every Jaeger index has
one replica and that each shard has a copy on both nodes, then stops the node that is the cluster
manager (the harder one to lose) and reads every trace back through Jaeger's query API.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port, free_ports, http_get, run_process, wait_http
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, set_span_in_context

from ernie_otel.stack import components

TRACES = 20
SPANS_PER_TRACE = 3
INDEX_PREFIX = "ernie-test"
GREEN_TIMEOUT_S = 180.0
SERVICE = "opensearch-test"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_node_ports() -> tuple[int, int]:
    """(HTTP, transport) of node 0 such that node k's ports (+10k) are free too."""
    for _ in range(200):
        http, transport = free_port(), free_port()
        wanted = [components.opensearch_node_ports(http, transport, k) for k in range(components.OPENSEARCH_NODES)]
        ports = [p for pair in wanted for p in pair]
        if len(set(ports)) == len(ports) and all(p < 65536 and _port_free(p) for p in ports):
            return http, transport
    raise AssertionError("no free OpenSearch port pairs")


@dataclass
class Cluster:
    proc: subprocess.Popen[bytes]
    http: int
    log: Path

    def url(self, node: int = 0) -> str:
        return components.opensearch_url(self.http, node)

    def get(self, path: str, node: int = 0) -> object:
        code, body = http_get(f"{self.url(node)}{path}", timeout=70.0)
        assert code == 200, f"GET {path} on node {node}: {code} {body[:500]}"
        return json.loads(body)

    def stop_node(self, node: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"stop {node}\n".encode())
        self.proc.stdin.flush()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    home = components.opensearch_home(timeout=900)
    http, transport = _free_node_ports()
    log = tmp_path / "opensearch.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(components.opensearch_command(home, tmp_path / "opensearch", http, transport),
                                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    c = Cluster(proc, http, log)
    try:
        deadline = time.monotonic() + GREEN_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"OpenSearch exited ({proc.returncode}):\n{c.log_tail()}"
            try:
                health = c.get(f"/_cluster/health?wait_for_status=green&wait_for_nodes={components.OPENSEARCH_NODES}"
                               "&timeout=5s")
                if isinstance(health, dict) and health.get("status") == "green" and not health.get("timed_out"):
                    break
            except (OSError, AssertionError):
                pass
            assert time.monotonic() < deadline, f"cluster not green in {GREEN_TIMEOUT_S:.0f}s:\n{c.log_tail()}"
            time.sleep(1)
        yield c
    finally:
        # End of stdin closes every node; then the usual TERM, KILL.
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _send_traces(endpoint: str) -> list[str]:
    """TRACES traces of SPANS_PER_TRACE spans each over OTLP/gRPC; their trace ids (hex)."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    tracer = provider.get_tracer("test_opensearch")
    ids = []
    for i in range(TRACES):
        root = tracer.start_span(f"request {i}", kind=SpanKind.SERVER)
        ctx = set_span_in_context(root)
        for name in ("prefill", "decode"):
            tracer.start_span(name, context=ctx).end()
        root.end()
        ids.append(f"{root.get_span_context().trace_id:032x}")
    assert provider.force_flush(30_000)
    provider.shutdown()
    return ids


def _read_all(query: str, ids: list[str], timeout: float) -> dict[str, int]:
    """Span count per trace id read back through Jaeger's query API (polls until all are whole)."""
    got: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while True:
        for trace_id in ids:
            if got.get(trace_id) == SPANS_PER_TRACE:
                continue
            try:
                code, body = http_get(f"{query}/api/traces/{trace_id}", timeout=30.0)
            except OSError:
                continue
            data = json.loads(body).get("data") if code == 200 else None
            if data:
                got[trace_id] = len(data[0]["spans"])
        if all(got.get(t) == SPANS_PER_TRACE for t in ids) or time.monotonic() > deadline:
            return got
        time.sleep(1)


def test_jaeger_traces_survive_losing_a_node(cluster: Cluster, pipeline_bin: Path, tmp_path: Path) -> None:
    ports = free_ports(["jaeger_otlp_grpc", "jaeger_otlp_http", "jaeger_query", "jaeger_query_grpc",
                        "jaeger_health", "jaeger_metrics"])
    env = {**components.jaeger_env(ports, tmp_path / "jaeger-data"), **components.jaeger_opensearch_env(cluster.http),
           "JAEGER_OPENSEARCH_INDEX_PREFIX": INDEX_PREFIX}
    query = f"http://{env['JAEGER_QUERY_HTTP_ENDPOINT']}"
    with run_process(components.jaeger_opensearch_command(pipeline_bin), tmp_path / "jaeger.log", env=env) as jaeger:
        wait_http(f"{query}/api/services", timeout=90, proc=jaeger.proc)
        ids = _send_traces(env["JAEGER_OTLP_GRPC_ENDPOINT"])
        before = _read_all(query, ids, timeout=90)
        assert before == dict.fromkeys(ids, SPANS_PER_TRACE), f"before: {before}\n{jaeger.log_tail(3000)}"

        # Every Jaeger index: 1 replica, each shard's primary and replica started on different nodes,
        # and both nodes hold shards.
        health = cluster.get("/_cluster/health?wait_for_status=green&timeout=60s")
        assert isinstance(health, dict) and health["status"] == "green", health
        shards = cluster.get(f"/_cat/shards/{INDEX_PREFIX}-*?format=json")
        assert isinstance(shards, list) and shards, "no Jaeger indices"
        indices = {row["index"] for row in shards}
        assert any("jaeger-span-" in index for index in indices), indices
        copies: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
        for row in shards:
            assert row["state"] == "STARTED", row
            copies[(row["index"], row["shard"])][row["prirep"]] = row["node"]
        for key, where in copies.items():
            assert set(where) == {"p", "r"}, f"{key}: {where}"
            assert where["p"] != where["r"], f"{key}: primary and replica on one node"
        assert {row["node"] for row in shards} == {"node-0", "node-1"}
        settings = cluster.get(f"/{INDEX_PREFIX}-*/_settings/index.number_of_replicas")
        assert isinstance(settings, dict)
        assert {v["settings"]["index"]["number_of_replicas"] for v in settings.values()} == {"1"}, settings

        # Lose the cluster manager: the other node has no quorum to elect itself, yet reads still
        # work (OpenSearch only blocks writes without a manager) from the replicas it holds.
        managers = cluster.get("/_cat/cluster_manager?format=json")
        assert isinstance(managers, list)
        victim = int(managers[0]["node"].removeprefix("node-"))
        survivor = 1 - victim
        cluster.stop_node(victim)
        deadline = time.monotonic() + 60
        while True:
            try:
                http_get(f"{cluster.url(victim)}/", timeout=2.0)
            except OSError:
                break
            assert time.monotonic() < deadline, f"node-{victim} still answers:\n{cluster.log_tail()}"
            time.sleep(0.5)
        assert cluster.proc.poll() is None, cluster.log_tail()
        code, _ = http_get(f"{cluster.url(survivor)}/", timeout=10.0)
        assert code == 200

        after = _read_all(query, ids, timeout=120)
        assert after == dict.fromkeys(ids, SPANS_PER_TRACE), \
            f"after losing node-{victim}: {after}\n{jaeger.log_tail(3000)}\n{cluster.log_tail()}"
        # The service list reads the services index (also replicated).
        code, body = http_get(f"{query}/api/services", timeout=30.0)
        assert code == 200 and SERVICE in json.loads(body)["data"], body
