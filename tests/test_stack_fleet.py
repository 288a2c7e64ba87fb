"""`ernie-otel stack up --replicas N`: the fleet profile of the local stack with the real binaries.

Three replicas of the tiny ERNIE model, the Collector tiers (agent -> load balancer -> 2 tail
samplers -> Jaeger), Alertmanager, the Collector's Prometheus, two Prometheus shards and the Thanos
topology (router, 3 receivers RF 2, Query, store, 2 compactors, ruler), all through the same Stack
the CLI drives, on free ports. After a little load: `sum(ernie_inference_requests_total)` through
Thanos Query equals the sum of the replicas' own /metrics counters, each replica is scraped by
exactly one shard (the one hashmod picks), every request's trace reached Jaeger through the tiers,
every listener of every process is on 127.0.0.1, `stack status` lists every process and
`stack down` leaves none running.

A few minutes on 2 cores: most of it is three Python processes loading transformers.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_ports, http_get
from thanos_fleet import instant, metric_value, scalar_or_none, wait_for

from ernie_otel import names
from ernie_otel.ports import DEFAULT_PORTS
from ernie_otel.stack import Stack, fleet, main, process_matches, thanos
from ernie_otel.stack.procs import port_free

REPLICAS = 3
REQUESTS_PER_REPLICA = (3, 2, 1)  # different counts, so a replica counted twice or missed shows
REQUESTS = names.REQUESTS.prom_name
# Keep every trace and decide fast, so each request's trace is in Jaeger within seconds (the
# shipped default keeps 10% of the unremarkable ones after 10 s).
SAMPLING_ENV = {"OTELCOL_SAMPLING_BASELINE_PERCENT": "100", "OTELCOL_SAMPLING_DECISION_WAIT": "2s"}
@pytest.fixture(scope="module")
def fleet_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("fleet-stack")
    keys = set(DEFAULT_PORTS) | {key for comp in fleet.stack_components(REPLICAS) for key in comp.ports}
    lines: list[str] = []
    stack = Stack(state, replicas=REPLICAS, ports=free_ports(sorted(keys)), env=SAMPLING_ENV, say=lines.append)
    try:
        try:
            stack.up()
        except Exception as err:
            pytest.fail(f"fleet stack did not come up: {err}\n" + "\n".join(lines[-30:]))
        yield stack
    finally:
        Stack.from_state(state, say=lambda _: None).down()


def _replica_metrics(stack: Stack, i: int) -> str:
    code, body = http_get(f"{stack.url(fleet.replica_keys(i)[1])}/metrics")
    assert code == 200, body[:300]
    return body


def _listening_inodes() -> dict[str, str]:
    """socket inode -> local address of every TCP socket in LISTEN state on this host."""
    out: dict[str, str] = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A":  # LISTEN
                continue
            hex_ip = local.split(":")[0]
            if width == 8:
                ip = ".".join(str(int(hex_ip[i:i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                ip = "::1" if hex_ip == "0" * 24 + "01000000" else f"v6:{hex_ip}"
            out[inode] = ip
    return out


def test_the_fleet_runs_every_process(fleet_stack: Stack) -> None:
    expected = {"victorialogs", "jaeger", "collector", "collector_lb",
                *(f"collector_sampler_{k}" for k in range(fleet.SAMPLERS)),
                "webhook_sink", "alertmanager", "prometheus",
                *(f"thanos_receive_{k}" for k in range(thanos.INGESTERS)), "thanos_router", "thanos_query",
                "thanos_store", "thanos_compact", "thanos_compact_1m", "thanos_rule",
                *(f"prometheus_shard_{k}" for k in range(thanos.SHARDS)),
                "ernie_serve", *(f"ernie_serve_{i}" for i in range(1, REPLICAS))}
    status = fleet_stack.status()
    assert set(status) == expected
    assert all(st["alive"] and st["healthy"] for st in status.values()), status
    # Thanos Query's API and UI where the brief says, relative to this stack's ports.
    assert fleet_stack.urls["thanos_query"] == f"http://127.0.0.1:{fleet_stack.ports['thanos_query_http']}"

    # Every listening socket of every process of the stack is on loopback (Thanos binds 0.0.0.0
    # by default on every port, capnproto included).
    listening = _listening_inodes()
    for name, rec in fleet_stack.read_records().items():
        addrs = set()
        for fd in Path(f"/proc/{rec.pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = target[len("socket:["):-1]
                if inode in listening:
                    addrs.add(listening[inode])
        assert addrs, f"{name} listens on nothing?"
        assert addrs <= {"127.0.0.1"}, (name, addrs)

    # Each replica is its own process and its own service.instance.id.
    instance_ids = set()
    for i in range(REPLICAS):
        text = _replica_metrics(fleet_stack, i)
        ids = set(re.findall(r'^target_info\{.*?service_instance_id="([^"]+)"', text, flags=re.M))
        assert len(ids) == 1, (i, ids)
        instance_ids |= ids
    assert len(instance_ids) == REPLICAS


def _chat(url: str, model: str, text: str) -> str:
    """One chat completion; the trace id ernie-serve answers with."""
    body = json.dumps({"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": text}]}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        trace_id = response.headers.get(names.TRACE_ID_HEADER)
    assert trace_id, f"no {names.TRACE_ID_HEADER} header"
    return str(trace_id)


def _sum_metric(url: str, name: str) -> float:
    """A Collector counter from its own /metrics, named with or without the _total suffix."""
    text = http_get(f"{url}/metrics")[1]
    return metric_value(text, name, required=False) + metric_value(text, f"{name}_total", required=False)


def test_thanos_query_sums_the_replicas_and_each_is_scraped_once(fleet_stack: Stack) -> None:
    model = fleet_stack.served_model_name
    trace_ids = [_chat(fleet_stack.url(fleet.replica_keys(i)[0]), model, f"hello replica {i}")
                 for i, count in enumerate(REQUESTS_PER_REPLICA) for _ in range(count)]
    own = [metric_value(_replica_metrics(fleet_stack, i), REQUESTS) for i in range(REPLICAS)]
    assert own == [float(c) for c in REQUESTS_PER_REPLICA], own
    query = fleet_stack.url("thanos_query_http")

    def caught_up() -> float | None:
        total = scalar_or_none(query, f"sum({REQUESTS})")
        return total if total == sum(own) else None
    wait_for(caught_up, 120, f"sum({REQUESTS}) through Thanos Query == {sum(own)}")
    for i in range(REPLICAS):
        address = fleet_stack.addr(fleet.replica_keys(i)[1])
        got = scalar_or_none(query, f'sum({REQUESTS}{{instance="{address}"}})')
        assert got == own[i], (address, got)

    # Each replica target is in exactly one shard's own TSDB: the one hashmod of its address picks.
    targets = {fleet_stack.addr(fleet.replica_keys(i)[1]) for i in range(REPLICAS)}
    scraped_by: dict[str, list[int]] = {t: [] for t in targets}
    for k in range(thanos.SHARDS):
        for series in instant(fleet_stack.url(f"prometheus_shard_{k}"), 'up{job="ernie-serve-direct"}'):
            assert series["value"][1] == "1", series
            scraped_by[series["metric"]["instance"]].append(k)
    assert scraped_by == {t: [thanos.hashmod(t, thanos.SHARDS)] for t in targets}
    # ... and not by the Collector's Prometheus, which in the fleet profile scrapes no replica.
    assert instant(fleet_stack.url("prometheus"), 'up{job="ernie-serve-direct"}') == []

    # Every request's trace went agent -> load balancer -> a sampler -> Jaeger.
    jaeger = fleet_stack.url("jaeger_query")
    for trace_id in trace_ids:
        wait_for(lambda t=trace_id: http_get(f"{jaeger}/api/traces/{t}")[0] == 200 or None, 60,
                 f"trace {trace_id} in Jaeger")
    accepted = "otelcol_receiver_accepted_spans"
    lb_in = _sum_metric(fleet_stack.url("lb_telemetry"), accepted)
    samplers_in = [_sum_metric(fleet_stack.url(f"sampler_telemetry_{k}"), accepted) for k in range(fleet.SAMPLERS)]
    assert lb_in > 0 and sum(samplers_in) > 0, (lb_in, samplers_in)


def test_status_lists_all_and_down_stops_all(fleet_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(fleet_stack.state_dir)
    assert main(["status", "--state-dir", state]) == 0
    out = capsys.readouterr().out
    records = fleet_stack.read_records()
    for name in records:
        assert f"  {fleet_stack.title(name)} " in out, (name, out)
    assert "thanos_query" in out
    assert main(["down", "--state-dir", state]) == 0
    assert not any(process_matches(rec) for rec in records.values())
    assert fleet_stack.read_records() == {}
    assert all(port_free(port) for port in fleet_stack.ports.values())
