"""Resident memory of ernie-serve: idle, under load, and idle again afterwards.

    .venv/bin/python benchmarks/memory.py [--model tiny] [--variants off,prom,full] [--requests 256]
        [--concurrency 8] [--json PATH]

RSS is VmRSS from /proc/<pid>/status (VmHWM is the kernel's peak). For each telemetry variant an
ernie-serve is started on its own (memory is not sensitive to background load, so no alternation),
sampled idle after the model loaded, every 50 ms during a bench run, and idle again after it --
a later idle figure far above the first would point at a leak. ``full`` exports OTLP to a Collector
when one is built (see overhead.py), else to a closed port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from overhead import find_pipeline_bin, machine, start_collector, start_ernie_serve, status_kib

from ernie_otel.bench import BenchConfig, BenchResult, run_bench
from ernie_otel.stack.procs import Running, free_port, stopping


async def sample_during(pid: int, cfg: BenchConfig, interval: float = 0.05) -> tuple[BenchResult, list[int]]:
    samples: list[int] = []

    async def sampler() -> None:
        while True:
            samples.append(status_kib(pid, "VmRSS"))
            await asyncio.sleep(interval)

    task = asyncio.create_task(sampler())
    try:
        result = await run_bench(cfg)
    finally:
        task.cancel()
    return result, samples


def measure(name: str, server: Running, args: argparse.Namespace) -> dict[str, Any]:
    pid = server.proc.pid
    time.sleep(2)  # let start-up allocations settle
    idle = status_kib(pid, "VmRSS")
    cfg = BenchConfig(url=server.url, requests=args.requests, concurrency=args.concurrency, max_tokens=args.max_tokens,
                      prompt_tokens=args.prompt_tokens, ignore_eos=True)
    result, samples = asyncio.run(sample_during(pid, cfg))
    if result.requests_failed:
        raise RuntimeError(f"{name}: {result.errors}")
    time.sleep(2)
    after = status_kib(pid, "VmRSS")
    # A second run of the same size: memory that keeps growing per request shows up here.
    result2, samples2 = asyncio.run(sample_during(pid, cfg))
    time.sleep(2)
    after2 = status_kib(pid, "VmRSS")
    # Weights are mmapped from safetensors: file pages count in RSS only once a forward pass has
    # read them, which is why "idle" (before any request) can be far below the later figures.
    anon, file_ = status_kib(pid, "RssAnon"), status_kib(pid, "RssFile")
    mib = 1 / 1024
    return {
        "variant": name, "idle_mib": idle * mib,
        "load_median_mib": statistics.median(samples + samples2) * mib, "load_max_mib": max(samples + samples2) * mib,
        "idle_after_run1_mib": after * mib, "idle_after_run2_mib": after2 * mib,
        "peak_hwm_mib": status_kib(pid, "VmHWM") * mib, "rss_anon_mib": anon * mib,
        "rss_file_mib": file_ * mib, "samples": len(samples) + len(samples2),
        "tok_s": (result.output_tokens_per_s + result2.output_tokens_per_s) / 2,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--variants", default="off,prom,full")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="ernie-memory-"))
    print(f"machine: {machine()}\nlogs: {log_dir}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    procs: list[Running] = []
    with stopping(procs):
        otlp = f"http://127.0.0.1:{free_port()}"
        bin_dir = find_pipeline_bin()
        if "full" in args.variants and bin_dir is not None:
            collector, jaeger = start_collector(bin_dir, log_dir)
            procs += [p for p in (jaeger, collector) if p is not None]
            otlp = collector.url
        for v in [x for x in args.variants.split(",") if x]:
            env = {"OTEL_SDK_DISABLED": "true"} if v == "off" else {}
            extra = ["--otlp-endpoint", otlp] if v == "full" else []
            server = start_ernie_serve(f"mem-{v}", args.model, log_dir, env=env, extra_args=extra,
                                       metrics=v != "off")
            try:
                server.wait_http(server.url + "/health", timeout=600)
                rows.append(measure(v, server, args))
            finally:
                server.stop()
            r = rows[-1]
            print(f"{v}: idle {r['idle_mib']:.0f} MiB, load median {r['load_median_mib']:.0f} max "
                  f"{r['load_max_mib']:.0f} MiB", file=sys.stderr)
    print(f"ernie-serve RSS, model {args.model}: 2 runs x {args.requests} requests, concurrency {args.concurrency}, "
          f"max_tokens {args.max_tokens} (ignore_eos), RSS sampled every 50 ms\n")
    print("| telemetry | idle MiB | under load: median MiB | under load: max MiB | idle after run 1 | "
          "idle after run 2 (anon + file) | VmHWM MiB |\n|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['idle_mib']:.0f} | {r['load_median_mib']:.0f} | {r['load_max_mib']:.0f} | "
              f"{r['idle_after_run1_mib']:.0f} | {r['idle_after_run2_mib']:.0f} ({r['rss_anon_mib']:.0f} + "
              f"{r['rss_file_mib']:.0f}) | {r['peak_hwm_mib']:.0f} |")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"machine": machine(), "args": vars(args), "rows": rows},
                                                   indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
