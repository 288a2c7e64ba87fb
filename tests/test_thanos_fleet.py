"""Fleet metrics path with the real binaries: two Prometheus 2.42 shards (deploy/prometheus-shard.yml)
scraping fake ernie-serve targets split by hashmod, remote-writing to a routing Thanos receiver in
front of three ingesting receivers (replication factor 2), read back through Thanos Query with
replica deduplication. Everything on 127.0.0.1 and free ports; every process is stopped at the end.

Takes about a minute once the Thanos binary is cached (deploy/thanos/build.sh).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboard_queries import iter_queries, load_dashboard
from helpers import REPO_ROOT, RunningProcess, free_port, http_get, run_process, wait_http
from thanos_fleet import (
    HOST,
    REPLICA_LABEL,
    CounterTarget,
    Load,
    ReceivePorts,
    api,
    build_thanos,
    delivered,
    hashmod,
    hashring_config,
    instant,
    metric_value,
    prometheus_args,
    query_args,
    receive_args,
    rule_args,
    scalar_or_none,
    shard_config,
    targets_and_alerting,
    wait_for,
    wait_receive_start,
)

from ernie_otel import names

SHARDS = 2
INGESTERS = 3
TARGETS = 4
REQUESTS = names.REQUESTS.prom_name


@dataclass
class Fleet:
    tmp: Path
    thanos: Path
    targets: list[CounterTarget]
    load: Load
    ingester_ports: list[ReceivePorts]
    ingesters: list[RunningProcess]
    router_ports: ReceivePorts
    shard_ports: list[int]
    query_http: int
    rule_http: int
    alertmanager_port: int
    notifications: Path
    stack: contextlib.ExitStack
    shards: list[RunningProcess] = field(default_factory=list)

    @property
    def query(self) -> str:
        return f"http://{HOST}:{self.query_http}"

    def delivered(self, alertname: str) -> list[dict[str, Any]]:
        """Every alert named `alertname` in every webhook POST Alertmanager made so far."""
        return delivered(self.notifications, alertname)

    def shard(self, index: int) -> str:
        return f"http://{HOST}:{self.shard_ports[index]}"

    def expected_total(self) -> int:
        return sum(t.total() for t in self.targets)

    def query_total(self) -> float | None:
        return scalar_or_none(self.query, f"sum({REQUESTS})")

    def wait_query_equals_targets(self, timeout: float = 90) -> float:
        """Query's deduplicated sum catches up with the targets' own counters (load paused)."""
        expected = self.expected_total()

        def caught_up() -> float | None:
            total = self.query_total()
            return total if total == expected else None
        return wait_for(caught_up, timeout, f"sum({REQUESTS}) through Thanos Query == {expected}")

    def start_ingester(self, index: int) -> RunningProcess:
        wait_receive_start()
        args = receive_args(self.thanos, self.ingester_ports[index], self.tmp / f"receive-{index}",
                            replica=f"r{index}")
        running = self.stack.enter_context(run_process(args, self.tmp / f"receive-{index}.log"))
        wait_http(f"http://{HOST}:{self.ingester_ports[index].http}/-/ready", timeout=60, proc=running)
        return running


def _short_hold_copy(tmp: Path) -> Path:
    """alerts/fleet-global.yml with every alert's `for:` at 2 s (nothing else changed), so the
    fleet alerts fire within the test."""
    shipped = (REPO_ROOT / "alerts" / "fleet-global.yml").read_text()
    copy = re.sub(r"^(\s+for:\s*)\S+$", r"\g<1>2s", shipped, flags=re.M)
    assert copy.count("for: 2s") == shipped.count("for:") == 2
    path = tmp / "fleet-global.yml"
    path.write_text(copy)
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    thanos = build_thanos()
    tmp = tmp_path_factory.mktemp("thanos-fleet")
    with contextlib.ExitStack() as stack:
        targets, load, notifications, am_port = targets_and_alerting(stack, tmp, TARGETS)

        ingester_ports = [ReceivePorts() for _ in range(INGESTERS)]
        router_ports = ReceivePorts()
        shard_ports = [free_port() for _ in range(SHARDS)]
        fleet = Fleet(tmp, thanos, targets, load, ingester_ports, [], router_ports, shard_ports,
                      free_port(), free_port(), am_port, notifications, stack)
        fleet.ingesters = [fleet.start_ingester(i) for i in range(INGESTERS)]

        router = stack.enter_context(run_process(
            receive_args(thanos, router_ports, tmp / "router", hashring=hashring_config(tmp, ingester_ports)),
            tmp / "router.log"))
        wait_http(f"http://{HOST}:{router_ports.http}/-/ready", timeout=60, proc=router)

        # The ruler reads through Query and Query reads the ruler's recorded series back.
        rule_grpc = free_port()
        query = stack.enter_context(run_process(
            query_args(thanos, fleet.query_http, free_port(), [*(p.grpc for p in ingester_ports), rule_grpc]),
            tmp / "query.log"))
        wait_http(f"{fleet.query}/-/ready", timeout=60, proc=query)
        rule = stack.enter_context(run_process(
            rule_args(thanos, tmp, http=fleet.rule_http, grpc=rule_grpc, query_http=fleet.query_http,
                      alertmanager_port=am_port, rule_file=_short_hold_copy(tmp)), tmp / "rule.log"))
        wait_http(f"http://{HOST}:{fleet.rule_http}/-/ready", timeout=60, proc=rule)

        meta = {
            "prometheus-shard": [f"{HOST}:{p}" for p in shard_ports],
            "thanos": [f"{HOST}:{p.http}" for p in [*ingester_ports, router_ports]],
        }
        for index, port in enumerate(shard_ports):
            config = shard_config(tmp, index, remote_write_port=router_ports.remote_write,
                                  alertmanager_port=am_port, targets=[t.address for t in targets],
                                  meta_targets=meta)
            shard = stack.enter_context(run_process(
                prometheus_args(config, port, tmp / f"shard-{index}"), tmp / f"shard-{index}.log"))
            wait_http(f"http://{HOST}:{port}/-/ready", timeout=60, proc=shard)
            fleet.shards.append(shard)
        yield fleet


def test_each_target_scraped_by_exactly_one_shard_and_query_sums_them(fleet: Fleet) -> None:
    fleet.load.resume()
    time.sleep(8)
    fleet.load.pause()
    total = fleet.wait_query_equals_targets()
    assert total == fleet.expected_total() > 0

    # Each shard's own TSDB holds `up` for its hashmod share of the targets, and only that.
    expected_shard = {t.address: hashmod(t.address, SHARDS) for t in fleet.targets}
    for index in range(SHARDS):
        local = instant(fleet.shard(index), 'up{job="ernie-serve-direct"}')
        scraped = {s["metric"]["instance"] for s in local}
        assert scraped == {a for a, k in expected_shard.items() if k == index}, (index, local)
        assert all(s["value"][1] == "1" for s in local), local

    # Through Query: one `up` series per target (after dedup), labelled with the shard that
    # scraped it -- every target exactly once, none twice.
    up = instant(fleet.query, 'up{job="ernie-serve-direct"}')
    seen = sorted((s["metric"]["instance"], s["metric"]["prometheus_shard"]) for s in up)
    assert seen == sorted((a, str(k)) for a, k in expected_shard.items()), up

    # Each target's own counter, through Query, equals what it serves.
    for target in fleet.targets:
        got = scalar_or_none(fleet.query, f'sum({REQUESTS}{{instance="{target.address}"}})')
        assert got == target.total(), (target.address, got)

    # Replication factor 2: without deduplication every series is there twice, from two
    # different ingesting receivers.
    raw = instant(fleet.query, f"{REQUESTS}", dedup="false")
    deduped = instant(fleet.query, f"{REQUESTS}")
    assert len(raw) == 2 * len(deduped) == 2 * len(CounterTarget.STATUSES) * len(fleet.targets)
    for series in deduped:
        copies = [s for s in raw if {k: v for k, v in s["metric"].items() if k != REPLICA_LABEL} == series["metric"]]
        assert len({c["metric"][REPLICA_LABEL] for c in copies}) == 2, copies

    # The shards evaluate the per-instance recording rules on their own targets and ship the
    # results too: one recorded rate per target, through Query.
    def recorded() -> list[dict[str, Any]] | None:
        result = instant(fleet.query, "job_instance_model:ernie_inference_requests:rate5m")
        return result if len(result) == len(fleet.targets) else None
    rates = wait_for(recorded, 60, "per-instance recording rule via Query")
    assert {s["metric"]["instance"] for s in rates} == set(expected_shard)


def test_ruler_evaluates_the_global_rules_once_over_query(fleet: Fleet) -> None:
    """alerts/fleet-global.yml on the Thanos ruler: every rule healthy against Query, and the
    fleet-wide request rate it records (read back through Query) covers every target."""
    fleet.load.resume()
    try:
        def fleet_rate() -> list[dict[str, Any]] | None:
            return instant(fleet.query, 'model:ernie_inference_requests:rate5m{tier="1m"}') or None
        (recorded,) = wait_for(fleet_rate, 60, "the ruler's fleet-wide rate through Query")
        per_target = scalar_or_none(fleet.query, f'sum(rate({REQUESTS}[5m]))')
        assert per_target is not None and float(recorded["value"][1]) > 0
        rules = api(f"http://{HOST}:{fleet.rule_http}", "/api/v1/rules")
        evaluated = [r for g in rules["groups"] for r in g["rules"]]
        assert len(evaluated) == 10
        wait_for(lambda: all(r["health"] == "ok" for g in api(f"http://{HOST}:{fleet.rule_http}", "/api/v1/rules")
                             ["groups"] for r in g["rules"] if g["name"] != "fleet-1m-tier") or None,
                 30, "every fleet-global rule evaluated without error")
    finally:
        fleet.load.pause()


def test_fleet_alert_reaches_alertmanager_exactly_once(fleet: Fleet) -> None:
    """An error burst (two of the four targets fail 1 request in 3-5): FleetHighErrorRate, evaluated
    once by the ruler over the global view, reaches Alertmanager and is notified exactly once,
    without the ruler's tier label and without any shard label."""
    fleet.load.resume()
    try:
        wait_for(lambda: fleet.delivered("FleetHighErrorRate") or None, 90,
                 "FleetHighErrorRate at the webhook sink")
        time.sleep(6)  # several more ruler evaluations and Alertmanager group intervals
    finally:
        fleet.load.pause()
    delivered = fleet.delivered("FleetHighErrorRate")
    assert len(delivered) == 1, delivered
    (alert,) = delivered
    assert alert["status"] == "firing"
    assert alert["labels"]["severity"] == "warning" and alert["labels"]["model"] == "ernie-4.5-0.3b"
    assert "tier" not in alert["labels"] and "prometheus_shard" not in alert["labels"], alert["labels"]


def test_dashboards_and_alerts_answer_through_query(fleet: Fleet) -> None:
    """Every dashboard panel query (with the dashboard tests' own reader) and every alert and
    recording expression of alerts/ returns data or an empty result through Thanos Query -- never
    an error: dashboards and rules work unchanged against it."""
    fleet.load.resume()
    time.sleep(3)
    fleet.load.pause()
    exprs: list[tuple[str, str]] = [(f"{title}/{ref}", expr)
                                    for title, ref, expr in iter_queries(load_dashboard())]
    for rules in sorted((REPO_ROOT / "alerts").glob("*.yml")):
        doc = yaml.safe_load(rules.read_text())
        for group in (doc or {}).get("groups", []):
            exprs += [(f"{rules.name}/{r.get('alert') or r.get('record')}", r["expr"]) for r in group["rules"]]
    assert len(exprs) > 40
    now = time.time()
    range_params = {"start": now - 300, "end": now, "step": 15}
    for what, expr in exprs:
        for path, params in (("/api/v1/query", {}), ("/api/v1/query_range", range_params)):
            try:
                api(fleet.query, path, query=expr, **params)  # HTTP 200 and status "success"
            except AssertionError as err:
                pytest.fail(f"{what} through Thanos Query {path}: {err}")
    # Not all empty: the request panels see the fleet's counters.
    assert instant(fleet.query, f"sum by (instance) (rate({REQUESTS}[1m]))")


def test_receiver_killed_mid_load_loses_nothing(fleet: Fleet) -> None:
    victim = 1
    fleet.load.resume()
    time.sleep(3)
    fleet.ingesters[victim].proc.kill()  # SIGKILL: no flush, no goodbye
    fleet.ingesters[victim].proc.wait(timeout=10)
    time.sleep(10)

    # With one of three receivers dead, every series still has a live copy (RF 2): the query
    # result is complete, not just "partial".
    fleet.load.pause()
    during = fleet.wait_query_equals_targets()
    assert during == fleet.expected_total()

    fleet.load.resume()
    time.sleep(5)
    fleet.ingesters[victim] = fleet.start_ingester(victim)
    victim_metrics = f"http://{HOST}:{fleet.ingester_ports[victim].http}/metrics"
    time.sleep(8)
    fleet.load.pause()
    after = fleet.wait_query_equals_targets()
    assert after == fleet.expected_total()

    # The restarted receiver takes writes again (its head grows) and Query reads from it.
    def appended() -> float:
        return metric_value(http_get(victim_metrics)[1], "prometheus_tsdb_head_samples_appended_total",
                            required=False)
    first = appended()
    fleet.load.resume()
    wait_for(lambda: appended() > first or None, 30, "the restarted receiver to append samples")
    fleet.load.pause()
    stores = wait_for(
        lambda: [s for s in instant(fleet.query, f"count by ({REPLICA_LABEL}) ({REQUESTS})", dedup="false")
                 if s["metric"].get(REPLICA_LABEL) == f"r{victim}"] or None,
        30, "Query to read the restarted receiver")
    assert stores

    # Nothing was given up at the writers: 5xx while the hashring had a dead member would have
    # been retried, never dropped.
    for index in range(SHARDS):
        text = http_get(f"{fleet.shard(index)}/metrics")[1]
        assert metric_value(text, "prometheus_remote_storage_samples_failed_total") == 0, index
        assert metric_value(text, "prometheus_remote_storage_samples_total") > 0, index


def test_one_shard_down_loses_only_its_own_targets(fleet: Fleet) -> None:
    """Last (it stops a shard for good): with shard 1 dead, shard 0's targets keep arriving in
    Thanos, and shard 0 reports shard 1 down (the input of PrometheusShardDown)."""
    dead = 1
    fleet.shards[dead].proc.terminate()
    fleet.shards[dead].proc.wait(timeout=30)
    mine = [t for t in fleet.targets if hashmod(t.address, SHARDS) != dead]
    theirs = [t for t in fleet.targets if hashmod(t.address, SHARDS) == dead]
    assert mine and theirs
    before = {t.address: scalar_or_none(fleet.query, f'sum({REQUESTS}{{instance="{t.address}"}})') for t in theirs}
    fleet.load.resume()
    time.sleep(6)
    fleet.load.pause()
    for target in mine:
        expected = target.total()

        def caught_up(address: str = target.address, want: int = expected) -> bool | None:
            return scalar_or_none(fleet.query, f'sum({REQUESTS}{{instance="{address}"}})') == want or None
        wait_for(caught_up, 60, f"{target.address} (live shard) through Query")
    for target in theirs:  # frozen at what the dead shard last shipped
        assert scalar_or_none(fleet.query, f'sum({REQUESTS}{{instance="{target.address}"}})') == before[target.address]
        assert target.total() > (before[target.address] or 0)
    dead_address = f"{HOST}:{fleet.shard_ports[dead]}"
    wait_for(lambda: instant(fleet.shard(1 - dead), f'up{{job="prometheus-shard",instance="{dead_address}"}} == 0')
             or None, 30, "the live shard to see the dead one down")
