"""The fleet's distributed trace store: Jaeger on a real OpenSearch cluster, one JVM per node.

The stack's own entries (``stack up --fleet --trace-store opensearch``) run under the stack's
supervisor on free ports: two data nodes and a tie-breaker (cluster-manager-eligible, no data),
each its own launcher process (deploy/opensearch/, OpenSearch 2.19.1 from Maven Central), every
listener on 127.0.0.1, and Jaeger with collector/jaeger-opensearch.yaml. Spans go in over OTLP from
the Python SDK exporter; the test checks the cluster (three JVMs, three voters, every Jaeger shard
with a copy on both data nodes), SIGKILLs the JVM of a data node (the elected manager when it is
one), then reads every trace back through Jaeger's query API and writes new ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_ports, http_get
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
MEMBERS = components.OPENSEARCH_MEMBERS
TIEBREAKER = components.OPENSEARCH_TIEBREAKER


@pytest.fixture
def stack(pipeline_bin: Path, tmp_path: Path) -> Iterator[Stack]:
    jaeger = next(c for c in components.COMPONENTS if c.name == "jaeger")
    table = [*components.opensearch_components(), components.with_opensearch(jaeger)]
    ports = free_ports([key for comp in table for key in comp.ports])
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
        self.ports = stack.ports

    def url(self, node: int) -> str:
        return components.opensearch_url(self.ports, node)

    def get(self, path: str, node: int) -> object:
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


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and (Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1]
                                             not in ("Z", "X")):
        assert time.monotonic() < deadline, f"pid {pid} outlived SIGKILL"
        time.sleep(0.1)


def test_jaeger_reads_and_writes_survive_a_killed_node(stack: Stack) -> None:
    cluster = Cluster(stack)
    query = stack.url("jaeger_query")
    ids = _send_traces(stack.addr("jaeger_otlp_grpc"))
    before = _read_all(query, ids, timeout=90)
    assert before == dict.fromkeys(ids, SPANS_PER_TRACE), f"before: {before}"

    # One JVM per member, one cluster: two data nodes and a tie-breaker that holds no data, all
    # three in the voting configuration.
    pids = {k: stack.running()[f"opensearch_{k}"].pid for k in range(MEMBERS)}
    assert len(set(pids.values())) == MEMBERS, pids
    status = stack.status()
    assert all(status[f"opensearch_{k}"]["healthy"] for k in range(MEMBERS)), status
    nodes = cluster.get("/_cat/nodes?format=json&h=name,node.role", 0)
    assert isinstance(nodes, list)
    roles = {row["name"]: row["node.role"] for row in nodes}
    assert roles == {**{f"node-{k}": "dm" for k in range(NODES)}, f"node-{TIEBREAKER}": "m"}, roles
    state = cluster.get("/_cluster/state/metadata?filter_path=metadata.cluster_coordination", 0)
    assert isinstance(state, dict)
    voters = state["metadata"]["cluster_coordination"]["last_committed_config"]
    assert len(voters) == MEMBERS and not any("placeholder" in v for v in voters), voters

    # Every Jaeger index: 1 replica, each shard's primary and replica started on different data
    # nodes, and both data nodes hold shards.
    health = cluster.get("/_cluster/health?wait_for_status=green&timeout=60s", 0)
    assert isinstance(health, dict) and health["status"] == "green", health
    shards = cluster.get("/_cat/shards/*jaeger-*?format=json", 0)
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
    settings = cluster.get("/*jaeger-*/_settings/index.number_of_replicas", 0)
    assert isinstance(settings, dict)
    assert {v["settings"]["index"]["number_of_replicas"] for v in settings.values()} == {"1"}, settings

    # SIGKILL a data node's JVM: the elected cluster manager when that is a data node (the harder
    # loss: an election and the promotion of replicas at once), else node 0.
    managers = cluster.get("/_cat/cluster_manager?format=json", 0)
    assert isinstance(managers, list)
    manager = int(managers[0]["node"].removeprefix("node-"))
    victim = manager if manager < NODES else 0
    survivor = 1 - victim
    print(f"manager node-{manager}; killing node-{victim} (pid {pids[victim]})")
    os.kill(pids[victim], signal.SIGKILL)
    _wait_gone(pids[victim], timeout=10)
    assert set(stack.running()) == {f"opensearch_{k}" for k in range(MEMBERS) if k != victim} | {"jaeger"}

    # The two left elect a manager (if they must) and promote the replicas of the lost primaries:
    # yellow (each shard has one copy now), not red.
    health = cluster.get(f"/_cluster/health?wait_for_nodes={MEMBERS - 1}&wait_for_status=yellow&timeout=60s",
                         survivor)
    assert isinstance(health, dict) and not health["timed_out"] and health["status"] == "yellow", health

    # Reads: every trace, whole, through Jaeger, from the copies on the survivor.
    after = _read_all(query, ids, timeout=120)
    assert after == dict.fromkeys(ids, SPANS_PER_TRACE), f"after killing node-{victim}: {after}"
    code, body = http_get(f"{query}/api/services", timeout=30.0)
    assert code == 200 and SERVICE in json.loads(body)["data"], body

    # Writes: new traces go in through Jaeger and are read back, with one data node gone.
    later = _send_traces(stack.addr("jaeger_otlp_grpc"))
    got = _read_all(query, later, timeout=90)
    assert got == dict.fromkeys(later, SPANS_PER_TRACE), f"written without node-{victim}: {got}"
    assert not stack.status()[f"opensearch_{victim}"]["alive"]

    # The killed node back (as `stack restart` or `stack up` would start it): it rejoins with its
    # data, gets its replicas back (green), and writes still go in.
    stack.start(f"opensearch_{victim}")
    health = cluster.get(f"/_cluster/health?wait_for_nodes={MEMBERS}&wait_for_status=green&timeout=90s", victim)
    assert isinstance(health, dict) and not health["timed_out"] and health["status"] == "green", health
    last = _send_traces(stack.addr("jaeger_otlp_grpc"))
    got = _read_all(query, [*ids, *later, *last], timeout=90)
    assert got == dict.fromkeys([*ids, *later, *last], SPANS_PER_TRACE), f"after node-{victim} came back: {got}"


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
    assert [c.name for c in table] == [f"opensearch_{k}" for k in range(MEMBERS)] + badger
    jaeger = next(c for c in table if c.name == "jaeger")
    assert jaeger.title == "Jaeger (OpenSearch)"
    with pytest.raises(StackError, match="--fleet"):
        fleet.stack_components(1, trace_store="opensearch")


def test_each_member_is_its_own_jvm_that_seeds_from_the_others(tmp_path: Path) -> None:
    """The launcher's arguments per member: its own ports, the other members' transport addresses
    as seeds, every member named for the bootstrap, and the tie-breaker without the data role."""
    table = components.opensearch_components()
    assert [c.name for c in table] == [f"opensearch_{k}" for k in range(MEMBERS)]
    ports = free_ports([key for comp in table for key in comp.ports])
    names = ",".join(f"node-{k}" for k in range(MEMBERS))
    for k in range(MEMBERS):
        argv = components.opensearch_command(Path("/home"), tmp_path, k, ports)
        assert argv[0] == "java" and argv.count("ErnieOpenSearch") == 1
        args = argv[argv.index("ErnieOpenSearch") + 1:]
        base, cluster, node, http, transport, seeds, managers, roles = args
        assert Path(base) == components.opensearch_node_dir(tmp_path, k) and node == str(k)
        assert (int(http), int(transport)) == (ports[f"opensearch_http_{k}"], ports[f"opensearch_transport_{k}"])
        assert sorted(seeds.split(",")) == sorted(f"{HOST}:{ports[f'opensearch_transport_{j}']}"
                                                  for j in range(MEMBERS) if j != k)
        assert managers == names and cluster == components.OPENSEARCH_CLUSTER
        assert roles == ("cluster_manager" if k == TIEBREAKER else "cluster_manager,data")
        heap = components.OPENSEARCH_TIEBREAKER_HEAP if k == TIEBREAKER else components.OPENSEARCH_HEAP
        assert f"-Xmx{heap}" in argv
    # Jaeger reads and writes through the data nodes only (the tie-breaker holds no shard).
    env = components.jaeger_opensearch_env(ports)
    assert env == {f"JAEGER_OPENSEARCH_URL_{k}": f"http://{HOST}:{ports[f'opensearch_http_{k}']}"
                   for k in range(NODES)}
