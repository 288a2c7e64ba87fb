"""The fleet's distributed trace store: Jaeger on a real 2-node OpenSearch cluster.

The stack's own entries (``stack up --fleet --trace-store opensearch``) run under the stack's
supervisor on free ports: one JVM with both nodes (deploy/opensearch/, OpenSearch 2.19.1 from
Maven Central), every listener on 127.0.0.1, and Jaeger with collector/jaeger-opensearch.yaml.
Spans go in over OTLP from the Python SDK exporter; the test checks that every Jaeger index has one
replica and that each shard has a copy on both nodes, then stops the node that is the cluster
manager (the harder one to lose) and reads every trace back through Jaeger's query API.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, free_ports, http_get
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, set_span_in_context

from ernie_otel.ports import HOST, fleet_port
from ernie_otel.stack import Stack, StackError, cli, components, fleet

TRACES = 20
SPANS_PER_TRACE = 3
SERVICE = "opensearch-test"
NODES = components.OPENSEARCH_NODES


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _opensearch_ports() -> dict[str, int]:
    """The cluster's port keys on free ports that keep the launcher's rule (node k = node 0 + 10k)."""
    for _ in range(200):
        http, transport = free_port(), free_port()
        ports = {}
        for k in range(NODES):
            ports[f"opensearch_http_{k}"], ports[f"opensearch_transport_{k}"] = \
                components.opensearch_node_ports(http, transport, k)
        values = list(ports.values())
        if len(set(values)) == len(values) and all(p < 65536 and _port_free(p) for p in values):
            return ports
    raise AssertionError("no free OpenSearch ports")


@pytest.fixture
def stack(pipeline_bin: Path, tmp_path: Path) -> Iterator[Stack]:
    jaeger = next(c for c in components.COMPONENTS if c.name == "jaeger")
    table = [components.opensearch_component(), components.with_opensearch(jaeger)]
    ports = {**free_ports([key for key in jaeger.ports]), **_opensearch_ports()}
    st = Stack(tmp_path / "state", components=table, ports=ports, bin_dir=pipeline_bin,
               say=lambda line: print(f"[stack] {line}"))
    try:
        st.up()
    except StackError as exc:
        pytest.fail(str(exc))
    try:
        yield st
    finally:
        st.down()


class Cluster:
    def __init__(self, stack: Stack) -> None:
        self.http = stack.ports["opensearch_http_0"]
        self.base = stack.state_dir / components.OPENSEARCH_DIR
        self.log = stack.state_dir / "logs"

    def url(self, node: int = 0) -> str:
        return components.opensearch_url(self.http, node)

    def get(self, path: str, node: int = 0) -> object:
        code, body = http_get(f"{self.url(node)}{path}", timeout=70.0)
        assert code == 200, f"GET {path} on node {node}: {code} {body[:500]}"
        return json.loads(body)


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


def test_jaeger_traces_survive_losing_a_node(stack: Stack) -> None:
    cluster = Cluster(stack)
    query = stack.url("jaeger_query")
    ids = _send_traces(stack.addr("jaeger_otlp_grpc"))
    before = _read_all(query, ids, timeout=90)
    assert before == dict.fromkeys(ids, SPANS_PER_TRACE), f"before: {before}"

    # Every Jaeger index: 1 replica, each shard's primary and replica started on different nodes,
    # and both nodes hold shards.
    health = cluster.get("/_cluster/health?wait_for_status=green&timeout=60s")
    assert isinstance(health, dict) and health["status"] == "green", health
    shards = cluster.get("/_cat/shards/*jaeger-*?format=json")
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
    assert {row["node"] for row in shards} == {f"node-{k}" for k in range(NODES)}
    settings = cluster.get("/*jaeger-*/_settings/index.number_of_replicas")
    assert isinstance(settings, dict)
    assert {v["settings"]["index"]["number_of_replicas"] for v in settings.values()} == {"1"}, settings

    # Lose the cluster manager: the other node has no quorum to elect itself, yet reads still work
    # (OpenSearch only blocks writes without a manager) from the copies it holds.
    managers = cluster.get("/_cat/cluster_manager?format=json")
    assert isinstance(managers, list)
    victim = int(managers[0]["node"].removeprefix("node-"))
    survivor = 1 - victim
    components.opensearch_stop_file(cluster.base, victim).touch()
    deadline = time.monotonic() + 60
    while True:
        try:
            http_get(f"{cluster.url(victim)}/", timeout=2.0)
        except OSError:
            break
        assert time.monotonic() < deadline, f"node-{victim} still answers"
        time.sleep(0.5)
    assert (cluster.base / f"stopped-node-{victim}").exists()
    assert (cluster.base / "ready").read_text() == "green\n"
    assert set(stack.running()) == {"opensearch", "jaeger"}, "the JVM must outlive one node"
    code, _ = http_get(f"{cluster.url(survivor)}/", timeout=10.0)
    assert code == 200

    after = _read_all(query, ids, timeout=120)
    assert after == dict.fromkeys(ids, SPANS_PER_TRACE), f"after losing node-{victim}: {after}"
    # The service list reads the services index (also replicated).
    code, body = http_get(f"{query}/api/services", timeout=30.0)
    assert code == 200 and SERVICE in json.loads(body)["data"], body


def test_overlay_validates_and_defaults_are_the_port_table(pipeline_bin: Path) -> None:
    """collector/jaeger-opensearch.yaml on top of collector/jaeger.yaml is a valid Jaeger config, and
    its default server URLs are node k's HTTP port of ernie_otel/ports.py (the YAML cannot import it)."""
    result = subprocess.run([*components.jaeger_opensearch_command(pipeline_bin)[:1], "validate",
                             *components.jaeger_opensearch_command(pipeline_bin)[1:]],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = components.JAEGER_OPENSEARCH_CONFIG.read_text()
    for k in range(NODES):
        defaults = set(re.findall(rf"\$\{{env:JAEGER_OPENSEARCH_URL_{k}:-([^}}]+)\}}", text))
        assert defaults == {f"http://{HOST}:{fleet_port('opensearch_http', k)}"}, (k, defaults)


def test_trace_store_flag_is_fleet_only_and_adds_one_entry(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["up", "--trace-store", "opensearch"])
    assert info.value.code == 2 and "--fleet" in capsys.readouterr().err
    badger = [c.name for c in fleet.stack_components(1, fleet=True)]
    table = fleet.stack_components(1, fleet=True, trace_store="opensearch")
    assert [c.name for c in table] == ["opensearch", *badger]
    jaeger = next(c for c in table if c.name == "jaeger")
    assert jaeger.title == "Jaeger (OpenSearch)"
    with pytest.raises(StackError, match="--fleet"):
        fleet.stack_components(1, trace_store="opensearch")
