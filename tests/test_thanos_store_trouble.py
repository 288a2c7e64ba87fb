"""Bad days for the fleet's object store (real binaries, 127.0.0.1 only, free ports): the compactor
SIGKILLed in the middle of a run, the bucket's filesystem full, and the compactor halted by
overlapping blocks. None of them may stop ingestion: the shards write to the receivers, whose TSDB
is on their own disk; the bucket only receives finished blocks. Each time the test checks that
samples keep arriving (0 failed at the writers, Query's sums equal the targets' counters) and
that the metric the store-health alert reads moves on the real component, and the alert
(alerts/fleet-store.yml, `for:` shortened) reaches Alertmanager.

The bucket is a small tmpfs, so "full" is a real ENOSPC (mounting needs root or password-less
sudo; a chmod'ed directory does not stop root). The receivers cut a block every minute instead of
every 2 h, so they upload within the test. About 3-4 min here once Thanos is built.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from thanos_fleet import (
    HOST,
    BadDayFleet,
    bad_day_fleet,
    delivered,
    fill_up,
    instant,
    iter_blocks,
    metric_value,
    small_filesystem,
    wait_for,
)

from ernie_otel import names

pytestmark = pytest.mark.integration

REQUESTS = names.REQUESTS.prom_name
BACKFILL_LABELS = ['--label=receive_replica="backfill"', '--label=tenant_id="default-tenant"']
BACKFILL_INSTANCE = "backfill:8181"
BACKFILL_S = 3 * 86_400
BACKFILL_STEP_S = 60
# Compaction groups in the first test's backfill: one group is a run of ~0.3 s, over before a
# poll under CI load may see it start; eight make it ~2 s here.
BACKFILL_GROUPS = 8
HOUR = 3600


def _run(args: list[str | Path], timeout: float = 300) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{args[:3]} failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def backfill(fleet: BadDayFleet, name: str, end: int, groups: int = 1) -> None:
    """Three days of one request counter (+1 a minute) up to `end`, as 2 h blocks uploaded into the
    bucket with external labels of their own, `groups` times (each copy its own compaction group,
    backfill_group="0", "1", ...): work for the compactor (36 blocks to compact per group)."""
    source = fleet.tmp / f"{name}.om"
    with source.open("w") as out:
        out.write(f"# TYPE {REQUESTS.removesuffix('_total')} counter\n")
        for i, t in enumerate(range(end - BACKFILL_S, end, BACKFILL_STEP_S)):
            out.write(f'{REQUESTS}{{instance="{BACKFILL_INSTANCE}",job="ernie-serve-direct",'
                      f'{names.ATTR_MODEL}="ernie-4.5-0.3b"}} {i} {t}\n')
        out.write("# EOF\n")
    for group in range(groups):
        # One promtool run per group: each copy needs block ids of its own.
        blocks = fleet.tmp / f"{name}-{group}"
        _run(["promtool", "tsdb", "create-blocks-from", "openmetrics", source, blocks])
        _run([fleet.thanos, "tools", "bucket", "upload-blocks", f"--objstore.config-file={fleet.objstore()}",
              f"--path={blocks}", *BACKFILL_LABELS, f'--label=backfill_group="{group}"'])


def compactor(fleet: BadDayFleet, name: str) -> float:
    return metric_value(fleet.metrics(fleet.compactor_http), name, required=False)


def bucket_failures(fleet: BadDayFleet, port: int) -> float:
    return metric_value(fleet.metrics(port), "thanos_objstore_bucket_operation_failures_total", required=False)


def ingestion_goes_on(fleet: BadDayFleet) -> None:
    """Samples keep arriving: with the load paused, Query's sum equals the targets' own counters,
    and no shard gave up a sample."""
    fleet.load.pause()
    try:
        fleet.wait_query_equals_targets()
        assert fleet.writers_failed() == 0
    finally:
        fleet.load.resume()


def firing(fleet: BadDayFleet, alertname: str, instance: str) -> list[dict[str, Any]]:
    return [a for a in delivered(fleet.notifications, alertname, "firing") if a["labels"].get("instance") == instance]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadDayFleet]:
    tmp = tmp_path_factory.mktemp("thanos-store-trouble")
    # Unmounted last: every process using the bucket is stopped before.
    with small_filesystem(tmp / "bucket", "64m") as bucket, bad_day_fleet(tmp, bucket=bucket) as fleet:
        fleet.load.resume()
        yield fleet


def test_compactor_sigkilled_mid_run_restarts_and_finishes(fleet: BadDayFleet) -> None:
    """SIGKILL leaves whatever the compactor had half done (a downloaded group, a partial upload);
    restarted, it must finish from the bucket as it stands, with nothing overlapping."""
    now = int(time.time()) // HOUR * HOUR
    backfill(fleet, "backfill", now - HOUR, groups=BACKFILL_GROUPS)
    assert len(_backfill_blocks(fleet)) >= 30 * BACKFILL_GROUPS, len(_backfill_blocks(fleet))

    t0 = time.monotonic()
    compact = fleet.start_compactor()
    # Kill it as soon as it is busy: a compaction done, its first run (compaction of every group,
    # downsampling, retention; about 2 s here) not finished. Polled tightly, not with wait_for's 0.5 s.
    deadline = time.monotonic() + 120
    while compactor(fleet, "thanos_compact_group_compactions_total") == 0:
        assert time.monotonic() < deadline and compact.proc.poll() is None, compact.log_tail()
        time.sleep(0.02)
    runs_done = compactor(fleet, "thanos_compact_iterations_total")
    compact.proc.kill()
    compact.proc.wait(timeout=10)
    assert runs_done == 0, "the compactor finished its run before the kill: give it more to do (BACKFILL_GROUPS)"
    killed_after = time.monotonic() - t0

    # The compactor is not on the write path: nothing waits for it.
    ingestion_goes_on(fleet)
    compactor_address = f"{HOST}:{fleet.compactor_http}"
    wait_for(lambda: firing(fleet, "ThanosComponentDown", compactor_address) or None, 60,
             "ThanosComponentDown for the killed compactor at the webhook sink")

    # Restarted, it picks up where the bucket stands and completes a whole run.
    t1 = time.monotonic()
    fleet.start_compactor()
    wait_for(lambda: compactor(fleet, "thanos_compact_iterations_total") >= 1, 180,
             "a complete compaction run after the restart")
    print(f"\ncompactor SIGKILLed {killed_after:.1f} s into its first run; restarted, a full run took "
          f"{time.monotonic() - t1:.1f} s")
    assert compactor(fleet, "thanos_compact_halted") == 0
    live = [b for b in _backfill_blocks(fleet) if b["thanos"]["downsample"]["resolution"] == 0]
    for group in map(str, range(BACKFILL_GROUPS)):
        mine = [b for b in live if b["thanos"]["labels"]["backfill_group"] == group]
        assert max(b["compaction"]["level"] for b in mine) >= 2, (group, [b["compaction"]["level"] for b in mine])
        spans = sorted((b["minTime"], b["maxTime"]) for b in mine)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), (group, spans)  # no overlap left behind

    # Query reads the compacted history through the store gateway: the counter's value a day ago.
    day_ago = now - HOUR - 86_400
    expected = (BACKFILL_S - 86_400) / BACKFILL_STEP_S

    def backfilled() -> float | None:
        got = instant(fleet.query, f'{REQUESTS}{{instance="{BACKFILL_INSTANCE}"}}', time=day_ago)
        return float(got[0]["value"][1]) if got else None
    assert abs(wait_for(backfilled, 60, "the backfilled history through Query") - expected) <= 1


def test_overlapping_blocks_halt_the_compactor_not_ingestion(fleet: BadDayFleet) -> None:
    """The classic halt: a second copy of already-compacted data uploaded under the same labels
    (two writers with one replica label, a re-run backfill). The compactor stops and waits for a
    person; thanos_compact_halted = 1 raises ThanosCompactHalted; ingestion does not notice."""
    compact = fleet.procs.get("compact")
    if compact is None or compact.proc.poll() is not None:
        fleet.start_compactor()  # the test before may have failed with it stopped
    now = int(time.time()) // HOUR * HOUR
    backfill(fleet, "backfill-again", now - HOUR)  # the same labels as backfill_group="0"
    t0 = time.monotonic()
    wait_for(lambda: compactor(fleet, "thanos_compact_halted") == 1 or None, 120, "the compactor to halt")
    print(f"\ncompactor halted {time.monotonic() - t0:.1f} s after the overlapping upload")
    wait_for(lambda: firing(fleet, "ThanosCompactHalted", f"{HOST}:{fleet.compactor_http}") or None, 60,
             "ThanosCompactHalted at the webhook sink")
    assert "overlap" in fleet.procs["compact"].log_tail(20_000)
    ingestion_goes_on(fleet)
    # A halted compactor waits for a person and ignores SIGTERM; what its operator would do next
    # (move the duplicate away, restart it) is not this test's business.
    fleet.procs["compact"].proc.kill()


def test_full_bucket_stops_uploads_not_ingestion(fleet: BadDayFleet) -> None:
    """The bucket's filesystem full: uploads fail, ingestion does not; the blocks wait on the
    receivers' disks and are uploaded once there is space again."""
    bucket = fleet.bucket
    assert bucket is not None
    receivers = [p.http for p in fleet.ingester_ports]
    # Filled before (or soon after) the receivers' first block, ~2 min after they started: their
    # uploads fail until space is back; the successful uploads after it show the path itself works.
    before = {port: bucket_failures(fleet, port) for port in receivers}
    filler = fill_up(bucket)
    t0 = time.monotonic()
    try:
        # The receivers cut a block a minute; each upload into the full bucket fails (ENOSPC).
        failing = wait_for(lambda: [p for p in receivers if bucket_failures(fleet, p) > before[p]] or None, 180,
                           "a receiver's upload to fail on the full bucket")
        first_failure = time.monotonic() - t0
        appended = {p: metric_value(fleet.metrics(p), "prometheus_tsdb_head_samples_appended_total")
                    for p in receivers}
        ingestion_goes_on(fleet)
        wait_for(lambda: all(metric_value(fleet.metrics(p), "prometheus_tsdb_head_samples_appended_total")
                             > appended[p] for p in receivers) or None, 30, "every receiver to keep appending")
        address = f"{HOST}:{failing[0]}"
        wait_for(lambda: firing(fleet, "ThanosBucketOperationsFailing", address) or None, 90,
                 "ThanosBucketOperationsFailing for the receiver at the webhook sink")
        held = {p: _local_blocks(fleet, i) for i, p in enumerate(receivers)}
        assert any(b not in _bucket_blocks(bucket) for blocks in held.values() for b in blocks), held
        failures = {p: bucket_failures(fleet, p) - before[p] for p in receivers}
    finally:
        filler.unlink()
    t1 = time.monotonic()

    # Space again: the blocks that waited on the receivers' disks are uploaded at the next try.
    wait_for(lambda: all(set(blocks) <= _bucket_blocks(bucket) for blocks in held.values()) or None, 120,
             "the held-back blocks to reach the bucket")
    print(f"\nbucket full for {t1 - t0:.0f} s: first receiver upload failure after {first_failure:.0f} s; "
          f"failed bucket operations per receiver {failures}; "
          f"held-back blocks uploaded {time.monotonic() - t1:.0f} s after space came back")
    ingestion_goes_on(fleet)


def _backfill_blocks(fleet: BadDayFleet) -> list[dict[str, Any]]:
    assert fleet.bucket is not None
    return [b for b in iter_blocks(fleet.bucket) if b["thanos"]["labels"].get("receive_replica") == "backfill"]


def _local_blocks(fleet: BadDayFleet, index: int) -> list[str]:
    """The blocks receiver `index` has cut (its default tenant's TSDB)."""
    return [m.parent.name for m in (fleet.tmp / f"receive-{index}").glob("*/*/meta.json")]


def _bucket_blocks(bucket: Path) -> set[str]:
    """Blocks completely in the bucket (meta.json is uploaded last)."""
    names_: set[str] = set()
    for meta in bucket.glob("*/meta.json"):
        try:
            json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        names_.add(meta.parent.name)
    return names_
