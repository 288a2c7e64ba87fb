"""The seed's storage tiers on the real Thanos compactor, store gateway and Query:

  hot   raw 5 s samples                 kept 3 days   (compactor --retention.resolution-raw=3d)
  warm  1 min aggregates (ruler, tier=1m) kept 7 days (a second compactor, raw = 1 min, 7d)
  cold  5 min downsamples               kept 15 days  (--retention.resolution-5m=15d)

15 days of synthetic ERNIE series (raw every 15 s) are backfilled with `promtool tsdb create-blocks-from openmetrics`
into a FILESYSTEM bucket (`thanos tools bucket upload-blocks` with external labels), both
compactors run once with the flags docs/pipeline.md gives, and a store gateway + Query answer.
Also measures bytes per sample after compaction and query latency over 1 h and 15 d.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, run_process, wait_http
from thanos_fleet import HOST, api, build_thanos, instant, iter_blocks, objstore_config

from ernie_otel import names
from ernie_otel.stack import thanos as launch

DAY = 86_400
# Raw samples are backfilled every 15 s, not every 5 s as the stack scrapes: the same tier
# mechanics with a third of promtool's parsing (1 M lines take minutes on 2 shared cores).
RAW_STEP_S = 15
AGG_STEP_S = 60
SPAN_S = 15 * DAY
# Compaction stops at 2-day blocks (level 3 of 2h, 8h, 2d, 14d): retention deletes whole blocks,
# and a 14-day raw block would outlive a 3-day retention by 11 days.
BLOCK_S = 2 * DAY
REQUESTS = names.REQUESTS.prom_name
LATENCY_BUCKET = f"{names.LATENCY.prom_name}_bucket"
LE = ("0.5", "2", "+Inf")
AGG_NAME = "job_instance_model:ernie_inference_requests:rate1m"
LABELS = f'instance="a:8181",job="ernie-serve-direct",{names.ATTR_MODEL}="ernie-4.5-0.3b"'
# The heaviest panel query of the dashboard kind: a p95 from histogram buckets over rate windows
# (the window grows with the range, as Grafana's $__rate_interval does).
HEAVY = "histogram_quantile(0.95, sum by (le) (rate(" + LATENCY_BUCKET + "[{window}])))"


def _run(args: list[str], timeout: float = 600) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{args[:3]} failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def _write_raw(path: Path, start: int, end: int) -> int:
    """OpenMetrics text: a request counter (+1 every sample) and a 3-bucket latency histogram,
    one sample per RAW_STEP_S from start to end. Returns the number of samples."""
    n = 0
    with path.open("w") as out:
        out.write(f"# TYPE {REQUESTS.removesuffix('_total')} counter\n")
        for i, t in enumerate(range(start, end, RAW_STEP_S)):
            out.write(f"{REQUESTS}{{{LABELS}}} {i} {t}\n")
            n += 1
        out.write(f"# TYPE {names.LATENCY.prom_name} histogram\n")
        for le, share in zip(LE, (0.5, 0.96, 1.0), strict=True):
            for i, t in enumerate(range(start, end, RAW_STEP_S)):
                out.write(f'{LATENCY_BUCKET}{{{LABELS},le="{le}"}} {int(i * 10 * share)} {t}\n')
                n += 1
        out.write("# EOF\n")
    return n


def _write_agg(path: Path, start: int, end: int) -> None:
    """What the Thanos ruler records every minute (alerts/fleet-global.yml, tier 1m)."""
    with path.open("w") as out:
        out.write(f"# TYPE {AGG_NAME} gauge\n")
        for t in range(start, end, AGG_STEP_S):
            out.write(f"{AGG_NAME}{{{LABELS}}} 0.2 {t}\n")
        out.write("# EOF\n")


def _compact(thanos: Path, objstore: Path, data: Path, selector: str, raw: str) -> str:
    """One run of the stack's compactor (ernie_otel/stack/thanos.py), with the tiers' retention."""
    return _run([
        *launch.compact_args(thanos, data, objstore, http=free_port(), selector=selector, raw_retention=raw,
                            wait=False),
        # Backfilled blocks are "new" by upload time; a live compactor keeps the defaults (30m / 48h).
        "--consistency-delay=0s", "--delete-delay=0s",
    ])


class Tiers:
    def __init__(self, base: str, now: int, bucket: Path, raw_samples: int) -> None:
        self.base = base
        self.now = now
        self.bucket = bucket
        self.raw_samples = raw_samples

    def at(self, expr: str, days_ago: float, resolution: str) -> list[dict[str, Any]]:
        return instant(self.base, expr, time=self.now - days_ago * DAY, max_source_resolution=resolution)


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiers]:
    thanos = build_thanos()
    tmp = tmp_path_factory.mktemp("thanos-tiers")
    bucket = tmp / "bucket"
    bucket.mkdir()
    objstore = objstore_config(tmp, bucket)
    now = int(time.time()) // 60 * 60
    start = now - SPAN_S

    # Hot/cold data as the receivers would have shipped it, and the ruler's 1 min aggregates.
    raw_samples = _write_raw(tmp / "raw.om", start, now)
    _write_agg(tmp / "agg.om", start, now)
    for name, labels in (("raw", ['--label=receive_replica="r0"', '--label=tenant_id="default-tenant"']),
                         ("agg", ['--label=tier="1m"', '--label=ruler="global"'])):
        _run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(tmp / f"{name}.om"), str(tmp / name)])
        _run([str(thanos), "tools", "bucket", "upload-blocks", f"--objstore.config-file={objstore}",
              f"--path={tmp / name}", *labels])

    # The two compactors of docs/pipeline.md, disjoint by the tier label.
    _compact(thanos, objstore, tmp / "compact-raw", "compact-raw-selector.yml", raw="3d")
    _compact(thanos, objstore, tmp / "compact-1m", "compact-1m-selector.yml", raw="7d")

    store_grpc, store_http, query_http = free_port(), free_port(), free_port()
    with run_process([*launch.store_args(thanos, tmp / "store", objstore, http=store_http, grpc=store_grpc),
                      # A block the compactor marked for deletion is gone for this test at once
                      # (live: the store stops reading it after 24h, the compactor deletes it at 48h).
                      "--ignore-deletion-marks-delay=0s"], tmp / "store.log") as store, \
         run_process(launch.query_args(thanos, query_http, free_port(), [store_grpc]), tmp / "query.log") as query:
        wait_http(f"http://{HOST}:{store_http}/-/ready", timeout=120, proc=store)
        base = f"http://{HOST}:{query_http}"
        wait_http(f"{base}/-/ready", timeout=60, proc=query)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not instant(base, REQUESTS, time=now - DAY, max_source_resolution="5m"):
            time.sleep(1)
        yield Tiers(base, now, bucket, raw_samples)


def _blocks(tiers: Tiers, *, tier_1m: bool, resolution_ms: int) -> list[dict[str, Any]]:
    return [b for b in iter_blocks(tiers.bucket)
            if (b["thanos"]["labels"].get("tier") == "1m") == tier_1m
            and b["thanos"]["downsample"]["resolution"] == resolution_ms]


def test_raw_data_older_than_3_days_is_gone_while_5m_data_remains(tiers: Tiers) -> None:
    raw = _blocks(tiers, tier_1m=False, resolution_ms=0)
    fivem = _blocks(tiers, tier_1m=False, resolution_ms=300_000)
    assert raw and fivem, [b["_dir"].name for b in iter_blocks(tiers.bucket)]
    oldest_raw_s = min(b["minTime"] for b in raw) / 1000
    # Retention drops whole blocks whose end is past 3 d: raw data reaches back at most one
    # block range (2 d) beyond the 3 days.
    assert oldest_raw_s >= tiers.now - 3 * DAY - BLOCK_S, (tiers.now - oldest_raw_s) / DAY
    assert all(b["maxTime"] / 1000 >= tiers.now - 3 * DAY for b in raw)
    oldest_5m_s = min(b["minTime"] for b in fivem) / 1000
    # Blocks are cut at 2-day boundaries of wall-clock time, so the oldest (partial) block of the
    # 15 days may age out under the 15 d retention: allow one block range at the old end.
    assert oldest_5m_s <= tiers.now - 15 * DAY + BLOCK_S, (tiers.now - oldest_5m_s) / DAY

    # The same through the query path: 6 and 10 days ago, raw-only reads find nothing, 5 min
    # resolution answers -- with the counter's value of that time (+1 per raw step from the start).
    for days_ago in (6, 10):
        assert tiers.at(REQUESTS, days_ago, "0s") == [], days_ago
        got = tiers.at(REQUESTS, days_ago, "5m")
        assert len(got) == 1, got
        expected = (SPAN_S - days_ago * DAY) / RAW_STEP_S
        # A 5 min downsample answers with an aggregate of its window, not the sample of that
        # instant: within two windows' worth of increments.
        assert abs(float(got[0]["value"][1]) - expected) <= 2 * 300 / RAW_STEP_S, (days_ago, got)
    # And yesterday's raw samples are still there.
    assert len(tiers.at(REQUESTS, 1, "0s")) == 1


def test_1m_tier_is_kept_7_days(tiers: Tiers) -> None:
    agg_raw = _blocks(tiers, tier_1m=True, resolution_ms=0)
    assert agg_raw
    oldest_s = min(b["minTime"] for b in agg_raw) / 1000
    assert tiers.now - 7 * DAY - BLOCK_S <= oldest_s <= tiers.now - 7 * DAY + 1, (tiers.now - oldest_s) / DAY
    # 6 days ago: 1 min aggregates still there at full (1 min) resolution, raw samples gone.
    assert len(tiers.at(AGG_NAME, 6, "0s")) == 1
    assert tiers.at(REQUESTS, 6, "0s") == []
    # 10 days ago: only the 5 min downsample of the aggregates.
    assert tiers.at(AGG_NAME, 10, "0s") == []
    assert len(tiers.at(AGG_NAME, 10, "5m")) == 1


def test_15_day_query_answers_from_5m_resolution(tiers: Tiers, record_property: Any) -> None:
    step = 3600
    data = api(tiers.base, "/api/v1/query_range", query=f"sum({REQUESTS})", start=tiers.now - SPAN_S + step,
               end=tiers.now, step=step, max_source_resolution="5m")
    values = data["result"][0]["values"]
    # One point per hour over the 15 days (less at most the oldest block range, see above): no hole
    # where raw data was deleted.
    assert len(values) >= (SPAN_S - BLOCK_S) // step - 2, len(values)
    assert [float(v) for _, v in values] == sorted(float(v) for _, v in values)

    # Measured here: bytes per sample on disk after compaction, and query latency of a p95
    # panel over 1 h and 15 d (auto-downsampling as Grafana's step suggests).
    raw = _blocks(tiers, tier_1m=False, resolution_ms=0)
    size = sum(f.stat().st_size for b in raw for f in b["_dir"].rglob("*") if f.is_file())
    samples = sum(b["stats"]["numSamples"] for b in raw)
    record_property("raw_bytes_per_sample", round(size / samples, 3))
    latencies = {}
    for label, span, step_s, window in (("1h", 3600, 15, "1m"), ("15d", SPAN_S, 3600, "1h")):
        t0 = time.perf_counter()
        for _ in range(3):
            result = api(tiers.base, "/api/v1/query_range", query=HEAVY.format(window=window), start=tiers.now - span,
                         end=tiers.now, step=step_s, max_source_resolution="auto")
            assert result["result"], label
        latencies[label] = round((time.perf_counter() - t0) / 3 * 1000, 1)
    record_property("p95_panel_query_ms", latencies)
    print(f"\nraw bytes/sample after compaction: {size / samples:.3f} ({samples} samples, {size} bytes); "
          f"p95 panel query: {latencies} ms")
    assert size / samples < 4, size / samples
