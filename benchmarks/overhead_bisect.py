"""Where the telemetry overhead goes inside a running ernie-serve: server CPU per request with
parts of the telemetry switched off one at a time.

    .venv/bin/python benchmarks/overhead_bisect.py [--rounds 8] [--requests 128]

Variants (each its own ernie-serve process, tiny model, one torch thread):

- off: ``OTEL_SDK_DISABLED=true``
- prom: standalone default (Prometheus reader)
- prom-norecorder: prom, but ``Recorder.finish`` only marks the request done (no histograms,
  no spans)
- prom-noasgi: prom, with the inference routes excluded from the FastAPI instrumentation
- prom-neither: both of the above

Rounds rotate the variant order; the figure is the median of server CPU ms per request over the
rounds (``/proc/<pid>/stat``), which background load hardly moves. Each round: 128 streamed chat
requests, concurrency 8, 32 tokens each (ignore_eos).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from overhead import BIN, proc_cpu_s

from ernie_otel.stack.procs import free_port, wait_http

VARIANTS = ("off", "prom", "prom-norecorder", "prom-noasgi", "prom-neither")


def serve(variant: str, argv: list[str]) -> int:
    """Run ernie-serve in this process with the variant's parts switched off."""
    if variant in ("prom-norecorder", "prom-neither"):
        from ernie_otel.telemetry.recorder import Recorder

        def finish_nothing(self: Recorder, rt: object, status: str, **_: object) -> None:
            rt.done = True  # type: ignore[attr-defined]

        Recorder.finish = finish_nothing  # type: ignore[method-assign]
    if variant in ("prom-noasgi", "prom-neither"):
        os.environ["OTEL_PYTHON_FASTAPI_EXCLUDED_URLS"] = "health,metrics,v1"
    from ernie_otel.serve import main

    return main(argv)


def bench(port: int, requests: int) -> None:
    subprocess.run([str(BIN / "ernie-otel"), "bench", "--url", f"http://127.0.0.1:{port}", "--requests",
                    str(requests), "--concurrency", "8", "--max-tokens", "32", "--ignore-eos", "--quiet"],
                   capture_output=True, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.serve:
        return serve(args.serve, rest)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    try:
        for variant in VARIANTS:
            ports[variant] = port = free_port()
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            if variant == "off":
                env["OTEL_SDK_DISABLED"] = "true"
            procs[variant] = subprocess.Popen(
                [sys.executable, __file__, "--serve", variant, "--model", "tiny", "--port", str(port),
                 "--metrics-port", str(free_port()), "--torch-threads", "1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for variant, port in ports.items():
            wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=procs[variant])
            bench(port, 16)  # one-off costs (allocator, lazy imports) before measuring
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for rnd in range(args.rounds):
            shift = rnd % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                pid = procs[variant].pid
                c0 = proc_cpu_s(pid)
                bench(ports[variant], args.requests)
                cpu[variant].append((proc_cpu_s(pid) - c0) / args.requests * 1e3)
    finally:
        for proc in procs.values():
            proc.terminate()
    off = statistics.median(cpu["off"])
    print(f"server CPU per request, median of {args.rounds} rounds x {args.requests} requests\n")
    print("| variant | ms/request | vs off |\n|---|---:|---:|")
    for variant in VARIANTS:
        med = statistics.median(cpu[variant])
        print(f"| {variant} | {med:.2f} | {med - off:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
