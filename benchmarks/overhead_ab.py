"""Telemetry overhead of two versions of ernie-serve side by side: a git revision against the tree.

    .venv/bin/python benchmarks/overhead_ab.py --old REV [--rounds 12] [--requests 128] [--json PATH]

Checks REV out into a temporary git worktree and serves the tiny model from both versions at once,
in the same rounds as ``overhead.py`` (fresh processes every round, rotated order, the same bench
client): ``off`` and ``off-again`` (this tree, telemetry off: the reference and its A/A control),
``prom-old``/``prom-new`` (standalone Prometheus) and ``full-old``/``full-new`` (OTLP to one real
Collector that forwards spans to a real Jaeger). The old version runs from the worktree by putting
it first on ``sys.path``, with this tree's virtual environment. Figures per variant: median
throughput, the median per-round ratio to ``off``, the median per-round TTFT difference, and
server CPU per request (``/proc/<pid>/stat``), as in overhead.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overhead import (
    REPO,
    Proc,
    bench,
    find_pipeline_bin,
    free_port,
    machine,
    proc_cpu_s,
    spawn,
    start_collector,
    stopping,
    workload,
)

LAUNCH = "import sys; sys.path.insert(0, {path!r}); from ernie_otel.server import main; sys.exit(main())"


def start(name: str, tree: Path, log_dir: Path, telemetry: bool, extra: list[str]) -> Proc:
    port = free_port()
    env = {"OMP_NUM_THREADS": "1"} if telemetry else {"OMP_NUM_THREADS": "1", "OTEL_SDK_DISABLED": "true"}
    p = spawn(name, [sys.executable, "-c", LAUNCH.format(path=str(tree)), "--model", "tiny", "--port", str(port),
                     "--metrics-port", str(free_port() if telemetry else 0), "--log-level", "warning",
                     "--torch-threads", "1", *extra], log_dir, env)
    p.url = f"http://127.0.0.1:{port}"
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git revision to compare this tree against")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    bin_dir = find_pipeline_bin()
    if bin_dir is None:
        raise SystemExit("no Collector built: run collector/build.sh first")
    t0 = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="ernie-overhead-ab-"))
    old_tree = log_dir / "old"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old_tree), args.old], check=True)
    print(f"machine: {machine()}\nlogs: {log_dir}\nold: {args.old} in {old_tree}", file=sys.stderr)
    procs: list[Proc] = []
    try:
        with stopping(procs):
            collector, jaeger = start_collector(bin_dir, log_dir)
            procs += [p for p in (jaeger, collector) if p is not None]
            full = ["--otlp-endpoint", collector.url]
            recipes: dict[str, tuple[Path, bool, list[str]]] = {
                "off": (REPO, False, []), "off-again": (REPO, False, []),
                "prom-old": (old_tree, True, []), "prom-new": (REPO, True, []),
                "full-old": (old_tree, True, full), "full-new": (REPO, True, full),
            }
            variants = list(recipes)
            cpu: dict[str, list[float]] = {v: [] for v in variants}
            tps: dict[str, list[float]] = {v: [] for v in variants}
            ttft: dict[str, list[float]] = {v: [] for v in variants}
            servers: dict[str, Proc] = {}
            for rnd in range(args.rounds):
                for p in servers.values():
                    p.stop()
                    procs.remove(p)
                servers = {v: start(f"{v}-{rnd}", recipes[v][0], log_dir, recipes[v][1], recipes[v][2])
                           for v in variants}
                procs += servers.values()
                for s in servers.values():
                    s.wait_http(s.url + "/health", timeout=300)
                for s in servers.values():
                    bench(workload(s.url, args, requests=max(8, args.concurrency)))
                shift = rnd % len(variants)
                for v in variants[shift:] + variants[:shift]:
                    c0 = proc_cpu_s(servers[v].proc.pid)
                    r = bench(workload(servers[v].url, args))
                    cpu[v].append((proc_cpu_s(servers[v].proc.pid) - c0) / r.requests_ok * 1e3)
                    tps[v].append(r.output_tokens_per_s)
                    ttft[v].append(r.ttft_ms.p50 or 0.0)
                print(f"round {rnd + 1}/{args.rounds} server CPU ms/request: "
                      + "  ".join(f"{v} {cpu[v][-1]:.2f}" for v in variants), file=sys.stderr)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], check=False)
    off_cpu = statistics.median(cpu["off"])
    print(f"Telemetry overhead, {args.old} (old) vs this tree (new): tiny model, {args.rounds} rounds x "
          f"{args.requests} streamed requests, concurrency {args.concurrency}, max_tokens {args.max_tokens}, "
          f"one torch thread; {time.monotonic() - t0:.0f} s.\n")
    print("| variant | tok/s (median) | vs off (median per-round ratio) | TTFT p50 vs off (median per-round Δ) "
          "| server CPU ms/request (median) | CPU vs off |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in variants:
        ratio = statistics.median(a / b for a, b in zip(tps[v], tps["off"], strict=True))
        delta = statistics.median(a - b for a, b in zip(ttft[v], ttft["off"], strict=True))
        print(f"| {v} | {statistics.median(tps[v]):.1f} | {ratio * 100:.1f}% | {delta:+.1f} ms | "
              f"{statistics.median(cpu[v]):.2f} | {statistics.median(cpu[v]) - off_cpu:+.2f} ms |")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"old": args.old, "cpu_ms": cpu, "tok_s": tps, "ttft_ms": ttft},
                                                   indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
