"""A bad day for the fleet's read path: Thanos Query is SIGKILLed under load (real binaries, all on
127.0.0.1 and free ports). Query is the one read endpoint, but nothing upstream of it depends on
it: the Prometheus shards keep scraping their targets, keep evaluating the per-instance rules
and the store-health rules on their local data (and send what fires to Alertmanager), and keep
remote-writing to the receivers. Query restarted answers complete data, the outage included.

About 1.5 min here once the Thanos binary is cached (deploy/thanos/build.sh).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from thanos_fleet import (
    HOST,
    BadDayFleet,
    bad_day_fleet,
    delivered,
    hashmod,
    instant,
    metric_value,
    scalar_or_none,
    wait_for,
)

from ernie_otel import names
from ernie_otel.stack import thanos as launch

pytestmark = pytest.mark.integration

REQUESTS = names.REQUESTS.prom_name


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadDayFleet]:
    with bad_day_fleet(tmp_path_factory.mktemp("thanos-query-down")) as fleet:
        yield fleet


def _counters(fleet: BadDayFleet) -> dict[str, float]:
    """What must keep moving while Query is down, summed over the shards (or the receivers)."""
    shards = [fleet.metrics(port) for port in fleet.shard_ports]
    receivers = [fleet.metrics(p.http) for p in fleet.ingester_ports]

    def total(texts: list[str], name: str) -> float:
        return sum(metric_value(text, name, required=False) for text in texts)
    return {
        "scraped samples": total(shards, "prometheus_tsdb_head_samples_appended_total"),
        "rule evaluations": total(shards, "prometheus_rule_evaluations_total"),
        "rule evaluation failures": total(shards, "prometheus_rule_evaluation_failures_total"),
        "samples sent": total(shards, "prometheus_remote_storage_samples_total"),
        "samples failed": total(shards, "prometheus_remote_storage_samples_failed_total"),
        "alerts sent": total(shards, "prometheus_notifications_sent_total"),
        "received samples": total(receivers, "prometheus_tsdb_head_samples_appended_total"),
    }


def test_query_down_shards_keep_scraping_alerting_and_writing(fleet: BadDayFleet) -> None:
    fleet.load.resume()
    wait_for(lambda: (fleet.query_total() or 0) > 0, 60, "the targets' counters through Query")
    wait_for(lambda: all(instant(fleet.shard(i), "job_instance_model:ernie_inference_requests:rate5m")
                         for i in range(launch.SHARDS)) or None, 60, "both shards evaluating the per-instance rules")

    query_address = f"{HOST}:{fleet.query_http}"
    fleet.procs["query"].proc.kill()  # SIGKILL: the read path is gone at once
    fleet.procs["query"].proc.wait(timeout=10)
    down_at = time.time()
    before = _counters(fleet)

    # A replica dies while Query is down: the shard that scrapes it pages on its local data alone.
    victim = fleet.targets[0]
    owner = hashmod(victim.address, launch.SHARDS)
    fleet.load.targets = [t for t in fleet.targets if t is not victim]
    victim.close()

    def page(alertname: str, instance: str) -> list[dict[str, Any]]:
        return [a for a in delivered(fleet.notifications, alertname, "firing") if a["labels"]["instance"] == instance]
    # Query itself, seen down by both shards (job thanos), arrives once: the shards drop their
    # shard label from alerts, so Alertmanager gets one alert twice and notifies it once.
    wait_for(lambda: page("ThanosComponentDown", query_address) or None, 60,
             "ThanosComponentDown for Thanos Query at the webhook sink")
    wait_for(lambda: page("ErnieServeDown", victim.address) or None, 60,
             "ErnieServeDown for the dead replica at the webhook sink")
    firing = instant(fleet.shard(owner), f'ALERTS{{alertname="ErnieServeDown",alertstate="firing",'
                                         f'instance="{victim.address}"}}')
    assert firing, "the owning shard's local ALERTS series"
    assert not instant(fleet.shard(1 - owner), f'up{{instance="{victim.address}"}}'), \
        "the other shard never scraped the replica, so it cannot be where the alert came from"

    time.sleep(3)
    after = _counters(fleet)
    moved = {k: after[k] - before[k] for k in before}
    print(f"\nwhile Thanos Query was down ({time.time() - down_at:.0f} s): {moved}")
    for key in ("scraped samples", "rule evaluations", "samples sent", "alerts sent", "received samples"):
        assert moved[key] > 0, (key, moved)
    assert moved["rule evaluation failures"] == 0, moved
    assert after["samples failed"] == 0, after

    # Query back on the same port: complete data, the outage included.
    fleet.load.pause()
    up_at = time.time()
    fleet.start_query()
    fleet.wait_query_equals_targets()
    assert len(page("ThanosComponentDown", query_address)) == 1
    assert len(page("ErnieServeDown", victim.address)) == 1

    # Every scrape of the outage window reached the receivers: per target, as many samples of its
    # counter through Query (deduplicated) as in its shard's own TSDB, over the same window.
    window = int(up_at - down_at) - 1
    for target in fleet.load.targets:
        expr = f'sum(count_over_time({REQUESTS}{{instance="{target.address}"}}[{window}s]))'
        local = scalar_or_none(fleet.shard(hashmod(target.address, launch.SHARDS)), expr, time=up_at)
        assert local is not None and local >= window - 2, (target.address, local, window)
        # Remote write sends in batches, so the window's last scrapes may still be on their way.
        def same(expr: str = expr, local: float = local) -> bool:
            return scalar_or_none(fleet.query, expr, time=up_at) == local
        wait_for(same, 30, f"{target.address}: {local:.0f} samples of the window through Query, as in its shard")
    assert fleet.writers_failed() == 0

