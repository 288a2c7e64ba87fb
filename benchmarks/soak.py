"""Soak: many requests through the full pipeline; no failure, nothing uncounted, no memory creep.

    .venv/bin/python benchmarks/soak.py [--duration 1800 | --requests N] [--concurrency 32]
        [--max-tokens 4] [--segments 8] [--json PATH]
        [--url URL --prometheus URL --pid PID]   # an already running stack; else one on free ports

The load (ernie_otel.bench, streamed chat) runs in ``--segments`` equal parts; ernie-serve's RSS
(VmRSS of its pid) is sampled every half second. At the end it reports: requests sent / ok /
failed, the increase of the request counter in Prometheus through the Collector (which must equal
what the client sent), and the median RSS of the first and the last quarter of the segments (the
growth between them is the memory creep). Exit code 1 when a request failed, the counts differ,
or RSS grew by more than ``--max-rss-growth`` percent. tests/test_soak.py runs a bounded version.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ernie_otel import names
from ernie_otel.bench import BenchConfig, run_bench
from ernie_otel.stack import Stack, StackError
from ernie_otel.stack.procs import free_ports, http_get

COLLECTOR_JOB = names.SERVICE_NAME  # the Collector path's job (service.name, kept by honor_labels)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def prom_count(prometheus: str) -> float:
    expr = f'sum({names.REQUESTS.prom_name}{{job="{COLLECTOR_JOB}"}})'
    status, body = http_get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=15)
    data = json.loads(body)
    if status != 200 or data.get("status") != "success":
        raise RuntimeError(f"Prometheus query failed: HTTP {status} {body[:300]}")
    result = data["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


async def _segment(cfg: BenchConfig, pid: int, samples: list[int]) -> Any:
    async def sampler() -> None:
        while True:
            samples.append(rss_kib(pid))
            await asyncio.sleep(0.5)

    task = asyncio.create_task(sampler())
    try:
        return await run_bench(cfg)
    finally:
        task.cancel()


def soak(url: str, prometheus: str, pid: int, *, requests: int | None, duration: float | None, concurrency: int,
         max_tokens: int, segments: int, count_timeout: float = 90.0,
         say: Any = lambda line: print(line, file=sys.stderr, flush=True)) -> dict[str, Any]:
    before = prom_count(prometheus)
    sent = ok = failed = 0
    errors: dict[str, int] = {}
    seg_rss: list[int] = []
    t0 = time.monotonic()
    for i in range(segments):
        cfg = BenchConfig(url=url, concurrency=concurrency, max_tokens=max_tokens, prompt_tokens=16,
                          requests=None if requests is None else requests // segments,
                          duration=None if duration is None else duration / segments)
        samples: list[int] = []
        result = asyncio.run(_segment(cfg, pid, samples))
        sent, ok, failed = sent + result.requests_sent, ok + result.requests_ok, failed + result.requests_failed
        for key, n in result.errors.items():
            errors[key] = errors.get(key, 0) + n
        seg_rss.append(int(statistics.median(samples or [rss_kib(pid)])))
        say(f"segment {i + 1}/{segments}: {result.requests_sent} requests, {result.requests_failed} failed, "
            f"{result.requests_per_s:.1f} req/s, RSS {seg_rss[-1] / 1024:.1f} MiB")
    wall = time.monotonic() - t0
    # Prometheus scrapes the Collector every few seconds, and the SDK exports every few seconds.
    deadline = time.monotonic() + count_timeout
    counted = prom_count(prometheus) - before
    while counted != sent and time.monotonic() < deadline:
        time.sleep(2)
        counted = prom_count(prometheus) - before
    quarter = max(1, segments // 4)
    first, last = statistics.median(seg_rss[:quarter]), statistics.median(seg_rss[-quarter:])
    return {
        "requests_sent": sent, "requests_ok": ok, "requests_failed": failed, "errors": errors,
        "prometheus_counted": counted, "wall_s": round(wall, 1), "requests_per_s": round(sent / wall, 1),
        "concurrency": concurrency, "max_tokens": max_tokens, "segments_rss_mib": [round(r / 1024, 1) for r in seg_rss],
        "rss_first_quarter_mib": round(first / 1024, 1), "rss_last_quarter_mib": round(last / 1024, 1),
        "rss_growth_pct": round(100 * (last - first) / first, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--duration", type=float, help="seconds of load (default 1800)")
    amount.add_argument("--requests", type=int, help="number of requests")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--max-rss-growth", type=float, default=10.0, help="percent, first to last quarter")
    p.add_argument("--url", help="ernie-serve of a running stack (with --prometheus and --pid)")
    p.add_argument("--prometheus")
    p.add_argument("--pid", type=int)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    duration = args.duration if args.duration is not None or args.requests is not None else 1800.0
    stack: Stack | None = None
    if args.url is None:
        # The stack's progress goes to stderr: stdout is the result's JSON.
        stack = Stack(Path(tempfile.mkdtemp(prefix="ernie-soak-")), ports=free_ports(),
                      say=lambda line: print(f"[stack] {line}", file=sys.stderr, flush=True))
        try:
            stack.up()
        except StackError as exc:
            stack.down()
            print(f"soak: the stack did not come up: {exc}", file=sys.stderr)
            return 2
        args.url, args.prometheus = stack.url("serve"), stack.url("prometheus")
        args.pid = stack.read_records()["ernie_serve"].pid
    try:
        result = soak(args.url, args.prometheus, args.pid, requests=args.requests, duration=duration,
                      concurrency=args.concurrency, max_tokens=args.max_tokens, segments=args.segments)
    finally:
        if stack is not None:
            stack.down()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    good = (result["requests_failed"] == 0 and result["prometheus_counted"] == result["requests_sent"]
            and result["rss_growth_pct"] < args.max_rss_growth)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
