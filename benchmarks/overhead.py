"""Telemetry overhead of ernie-serve: off vs standalone Prometheus vs full OTLP (metrics + traces).

    .venv/bin/python benchmarks/overhead.py [--model tiny] [--rounds 5] [--requests 64]
        [--concurrency 8] [--max-tokens 32] [--slo-ttft MS --slo-tpot MS --slo-e2e MS [--slo-headers]]
        [--json PATH]

Three ernie-serve processes serve the same model, one per telemetry mode:

- off:  ``OTEL_SDK_DISABLED=true``
- prom: the default standalone mode (Prometheus reader on --metrics-port)
- full: ``--otlp-endpoint`` to a real Collector (which forwards spans to a real Jaeger), plus the
  Prometheus reader: every metric, span and log record is exported (and the JSON request line
  written to the server's log); ``full-nologs`` is the same without the log pipeline

The same fixed workload (ignore_eos, so every request yields max_tokens tokens) runs against
them alternately -- off, prom, full, then prom, full, off, ... (rotated) -- so that the background load of a
shared machine hits every variant alike; the report gives per-variant medians and the medians
of the per-round ratios to off (runs next to each other in time are the fairest comparison).

Every round starts fresh server processes (``--restart-every``): one process can run a few
percent faster or slower than another of the same variant for its whole life (memory layout,
which core it lands on), and alternating rounds does not average that out; new processes per
round do. The ``off-again`` variant (a second telemetry-off server) is the A/A control: its
distance from ``off`` is the noise floor of the figures.

``--old REV`` with the ``prom-old``/``full-old`` variants serves those from REV's code (checked out
into a temporary git worktree, run with this virtual environment), in the same rounds as this
tree's ``prom``/``full``: what a change bought, measured side by side.

``--slo-ttft/--slo-tpot/--slo-e2e`` give every server those SLO targets (so ``prom`` and ``full``
pay for SLO accounting and its span attributes); ``--slo-headers`` also sends the TTFT/TPOT
targets with every request as the gateway headers, so the per-request header path runs too.

This module also holds the ernie-serve/Collector starters the other benchmark scripts import.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ernie_otel.bench import BenchConfig, BenchResult, run_bench
from ernie_otel.ports import HOST
from ernie_otel.stack import components
from ernie_otel.stack.procs import Running, free_port, free_ports, http_get, spawn, stopping

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("ERNIE_OTEL_CACHE", Path.home() / ".cache" / "ernie-otel"))


# ------------------------------------------------------------------------ process helpers
# Spawning, waiting for health and stopping are ernie_otel.stack.procs' (the stack and the tests
# run on the same ones); what is here is only what the benchmarks add.
def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def spawn_in(log_dir: Path, name: str, args: Sequence[str | os.PathLike[str]],
             env: Mapping[str, str] | None = None) -> Running:
    """spawn() with its log at <log_dir>/<name>.log."""
    return spawn(name, args, log_dir / f"{name}.log", env)


# ernie-serve from another checkout (a git worktree), with this virtual environment. Older
# checkouts have the entry point in ernie_otel.server, newer ones in ernie_otel.serve.
_SERVE_FROM_TREE = ("import sys; sys.path.insert(0, {path!r}); from importlib import import_module; "
                    "from importlib.util import find_spec; "
                    "entry = 'ernie_otel.serve' if find_spec('ernie_otel.serve') else 'ernie_otel.server'; "
                    "sys.exit(import_module(entry).main())")


def start_ernie_serve(name: str, model: str, log_dir: Path, *, env: Mapping[str, str] | None = None,
                      extra_args: Sequence[str] = (), metrics: bool = True, tree: Path | None = None) -> Running:
    """``tree``: run the ernie_otel of that checkout instead of the installed one."""
    port = free_port()
    metrics_port = free_port() if metrics else 0
    command: list[str | Path] = [BIN / "ernie-serve"] if tree is None else [
        sys.executable, "-c", _SERVE_FROM_TREE.format(path=str(tree))]
    p = spawn_in(log_dir, name, [*command, "--model", model, "--port", str(port), "--metrics-port", str(metrics_port),
                     "--log-level", "warning", *extra_args], env)
    p.url = f"http://127.0.0.1:{port}"
    p.ports = {"api": port, "metrics": metrics_port}
    return p


def find_pipeline_bin() -> Path | None:
    """The directory of an already built otelcol-ernie (and jaeger); building takes tens of minutes,
    so a benchmark never starts one itself."""
    for d in sorted(glob.glob(str(CACHE / "bin" / "*" / "otelcol-ernie")), key=os.path.getmtime, reverse=True):
        return Path(d).parent
    return None


def start_collector(bin_dir: Path, log_dir: Path, gomaxprocs: int = 0,
                    log_store: list[Running] | None = None) -> tuple[Running, Running | None]:
    """Collector on free ports, exporting spans to a Jaeger on free ports (if jaeger is built) and logs
    to a VictoriaLogs (only when ``log_store`` is given: the list its process is appended to, for the
    caller to stop), so that the full variant pays for a real export rather than a failing, retrying one.
    ``gomaxprocs``: GOMAXPROCS for both (0: Go's default, every core)."""
    ports = free_ports()
    quiet = {"GOMAXPROCS": str(gomaxprocs)} if gomaxprocs else {}
    jaeger: Running | None = None
    if os.access(bin_dir / "jaeger", os.X_OK):
        env = components.jaeger_env(ports, log_dir / "jaeger-data")
        jaeger = spawn_in(log_dir, "jaeger", components.jaeger_command(bin_dir),
                          {**env, **quiet, "JAEGER_LOG_LEVEL": "warn"})
        jaeger.url = f"http://{HOST}:{ports['jaeger_query']}"
    if log_store is not None:  # the log store the Collector's logs pipeline writes to (built and cached)
        store = spawn_in(log_dir, "victorialogs",
                         components.victorialogs_command(components.victorialogs_binary(), log_dir / "victorialogs",
                                                         f"{HOST}:{ports['log_store']}"), quiet)
        log_store.append(store)
        store.wait_http(components.victorialogs_health_url(ports), timeout=60)
    # Without a Jaeger nothing listens on the Collector's Jaeger target: spans are dropped.
    col = spawn_in(log_dir, "otelcol", components.collector_command(bin_dir),
                   {**components.collector_env(ports), **quiet, "OTELCOL_LOG_LEVEL": "warn"})
    col.url = f"http://{HOST}:{ports['otlp_grpc']}"
    col.ports = {"prometheus": ports["collector_prometheus"]}
    col.wait_http(components.collector_health_url(ports), timeout=60)
    if jaeger is not None:
        jaeger.wait_http(components.jaeger_health_url(ports), timeout=60)
    return col, jaeger


def workload(url: str, args: argparse.Namespace, requests: int | None = None,
             concurrency: int | None = None) -> BenchConfig:
    slo = {f"slo_{k}": ms / 1000.0 for k in ("ttft", "tpot", "e2e") if (ms := getattr(args, f"slo_{k}", None))}
    return BenchConfig(url=url, requests=requests or args.requests, concurrency=concurrency or args.concurrency,
                       max_tokens=args.max_tokens, prompt_tokens=args.prompt_tokens, stream=True, ignore_eos=True,
                       slo_headers=bool(slo) and getattr(args, "slo_headers", False), **slo)


def slo_args(args: argparse.Namespace) -> list[str]:
    """The ernie-serve flags for --slo-ttft/--slo-tpot/--slo-e2e (milliseconds), as given."""
    return [a for k in ("ttft", "tpot", "e2e") if (ms := getattr(args, f"slo_{k}", None))
            for a in (f"--slo-{k}", f"{ms:g}")]


def bench(cfg: BenchConfig) -> BenchResult:
    r = asyncio.run(run_bench(cfg))
    if r.requests_failed:
        raise RuntimeError(f"{cfg.url}: {r.requests_failed} requests failed: {r.errors}")
    return r


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return f"{os.cpu_count()} CPUs ({model}), {mem_gib:.0f} GiB RAM, load average {os.getloadavg()[0]:.2f} at start"


# ------------------------------------------------------------------------ the benchmark
VARIANTS = ("off", "prom", "full")
# Diagnostic variants: prom/full without the FastAPI instrumentation on the inference routes,
# which isolates the HTTP SERVER span and http.server.* metrics from the GenAI recorder's cost.
NO_ASGI = {"OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "health,metrics,v1/chat/completions,v1/completions"}
# full-nologs: full without the log pipeline (no OTLP log records, no JSON request line), so
# full vs full-nologs side by side is what the access log costs a serving process.
NO_LOGS = {"OTEL_LOGS_EXPORTER": "none", "ERNIE_REQUEST_LOG": "off"}
# prom-old/full-old: the same as prom/full, served by the code of --old REV (a git worktree).
OLD_VARIANTS = ("prom-old", "full-old")
ALL_VARIANTS = (*VARIANTS, "off-again", "prom-noasgi", "full-noasgi", "full-nologs", *OLD_VARIANTS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="ernie-serve --model (default: tiny)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="ernie-serve --torch-threads and OMP_NUM_THREADS for every server "
                    "(default: ernie-serve's own choice by model size)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, from {', '.join(ALL_VARIANTS)}; 'off' is always run (the reference)")
    ap.add_argument("--collector-cpus", type=int, default=0,
                    help="GOMAXPROCS for the Collector and Jaeger, as a CPU limit would set it (0: every core)")
    ap.add_argument("--restart-every", type=int, default=1,
                    help="start fresh server processes every N rounds (0: one set for the whole run)")
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"],
                    help="ernie-serve --device for every server (default: ernie-serve's auto)")
    ap.add_argument("--old", default=None, metavar="REV",
                    help="git revision that serves the prom-old/full-old variants, side by side with this tree")
    for kind in ("ttft", "tpot", "e2e"):
        ap.add_argument(f"--slo-{kind}", type=float, default=None, metavar="MS",
                        help=f"ernie-serve --slo-{kind} for every server (and the load generator's goodput)")
    ap.add_argument("--slo-headers", action="store_true",
                    help="send the TTFT/TPOT targets with each request as x-slo-ttft-ms / x-slo-tpot-ms")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    variants = ["off", *[v for v in args.variants.split(",") if v and v != "off"]]
    unknown = set(variants) - set(ALL_VARIANTS)
    if unknown:
        ap.error(f"unknown variants: {sorted(unknown)}")
    if bool(args.old) != bool(set(variants) & set(OLD_VARIANTS)):
        ap.error(f"--old and the variants {', '.join(OLD_VARIANTS)} go together")
    t_start = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="ernie-overhead-"))
    print(f"machine: {machine()}\nlogs: {log_dir}", file=sys.stderr)
    old_tree: Path | None = None
    if args.old:
        old_tree = log_dir / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old_tree), args.old],
                       check=True)
        print(f"old: {args.old} in {old_tree}", file=sys.stderr)
    try:
        return run(args, variants, log_dir, old_tree, t_start)
    finally:
        if old_tree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], check=False)


def run(args: argparse.Namespace, variants: list[str], log_dir: Path, old_tree: Path | None, t_start: float) -> int:

    bin_dir = find_pipeline_bin()
    procs: list[Running] = []
    with stopping(procs):
        collector: Running | None = None
        jaeger: Running | None = None
        if bin_dir is not None:
            collector, jaeger = start_collector(bin_dir, log_dir, args.collector_cpus, log_store=procs)
            procs += [p for p in (jaeger, collector) if p is not None]
            otlp = collector.url
            note = f"Collector {bin_dir / 'otelcol-ernie'}" + (" -> Jaeger" if jaeger else " (no Jaeger)")
        else:
            # No receiver: exports fail (silently, by design) -- still the app's cost, noted in the output.
            otlp = f"http://127.0.0.1:{free_port()}"
            note = "NO Collector built (collector/build.sh): OTLP exports went to a closed port"
        print(f"full variant exports to: {note}", file=sys.stderr)
        # With all cores, torch's OpenMP workers spin-wait and lose their core to any other
        # process on a small box: --torch-threads 1 gives steadier figures for small models.
        threads = {"OMP_NUM_THREADS": str(args.torch_threads)} if args.torch_threads else {}
        recipes: dict[str, tuple[dict[str, str], list[str], bool]] = {  # env, extra args, metrics port
            "off": ({**threads, "OTEL_SDK_DISABLED": "true"}, [], False),
            "off-again": ({**threads, "OTEL_SDK_DISABLED": "true"}, [], False),
            "prom": (threads, [], True),
            "full": (threads, ["--otlp-endpoint", otlp], True),
            "prom-noasgi": ({**threads, **NO_ASGI}, [], True),
            "full-noasgi": ({**threads, **NO_ASGI}, ["--otlp-endpoint", otlp], True),
            "full-nologs": ({**threads, **NO_LOGS}, ["--otlp-endpoint", otlp], True),
            "prom-old": (threads, [], True),
            "full-old": (threads, ["--otlp-endpoint", otlp], True),
        }
        device = ["--device", args.device] if args.device else []
        device += slo_args(args)
        if args.torch_threads:  # ernie-serve sets torch's thread count itself; OMP_NUM_THREADS alone is overridden
            device += ["--torch-threads", str(args.torch_threads)]
        servers: dict[str, Running] = {}

        def start_servers(generation: int) -> None:
            for p in servers.values():
                p.stop()
                procs.remove(p)
            for v in variants:
                servers[v] = start_ernie_serve(f"{v}-{generation}", args.model, log_dir, env=recipes[v][0],
                                               extra_args=[*recipes[v][1], *device], metrics=recipes[v][2],
                                               tree=old_tree if v in OLD_VARIANTS else None)
                procs.append(servers[v])
            for srv in servers.values():
                srv.wait_http(srv.url + "/health", timeout=600)
            for srv in servers.values():  # first requests pay one-off costs (allocator, lazy imports)
                bench(workload(srv.url, args, requests=max(8, args.concurrency)))

        runs: dict[str, list[BenchResult]] = {v: [] for v in variants}
        # Server CPU per request: unlike throughput, hardly moved by what else runs on the machine.
        cpu_ms: dict[str, list[float]] = {v: [] for v in variants}
        for rnd in range(args.rounds):
            if not servers or (args.restart_every and rnd % args.restart_every == 0):
                start_servers(rnd)
            # Rotate the order every round: a fixed order favoured whichever variant ran first
            # (side-by-side runs showed off ahead by ~0.8 ms CPU/request in one order and behind
            # by as much in the reverse order).
            shift = rnd % len(variants)
            for v in variants[shift:] + variants[:shift]:
                c0 = proc_cpu_s(servers[v].proc.pid)
                r = bench(workload(servers[v].url, args))
                cpu_ms[v].append((proc_cpu_s(servers[v].proc.pid) - c0) / r.requests_ok * 1e3)
                runs[v].append(r)
                print(f"round {rnd + 1}/{args.rounds} {v:<4}: {r.output_tokens_per_s:8.1f} tok/s  "
                      f"TTFT p50 {r.ttft_ms.p50:7.1f} ms  TPOT p50 {r.tpot_ms.p50:6.2f} ms  "
                      f"server CPU {cpu_ms[v][-1]:6.2f} ms/request  load {os.getloadavg()[0]:.1f}", file=sys.stderr)

        full_like = [v for v in variants if v.startswith("full")]
        exported = verify_export(servers[full_like[0]], collector, jaeger) if collector and full_like else {}

    elapsed = time.monotonic() - t_start
    summary = summarize(runs, cpu_ms)
    print(format_table(summary, args, note, elapsed))
    if exported:
        print("\nexport check: " + ", ".join(f"{k}: {v}" for k, v in exported.items()))
    if args.json_path:
        out = {"machine": machine(), "workload": vars(args), "export": note, "export_check": exported,
               "elapsed_s": elapsed, "summary": summary,
               "runs": {v: [r.to_dict() for r in rs] for v, rs in runs.items()}}
        Path(args.json_path).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def verify_export(full: Running, collector: Running, jaeger: Running | None) -> dict[str, Any]:
    """Evidence that the full variant really exported: its series at the Collector's Prometheus
    endpoint and its service in Jaeger (the OTLP metric interval is 5 s, so poll a little)."""
    found: dict[str, Any] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, text = http_get(f"http://127.0.0.1:{collector.ports['prometheus']}/metrics")
            found["collector ernie_* series"] = sum(1 for line in text.splitlines() if line.startswith("ernie_"))
        if jaeger is not None:
            with contextlib.suppress(OSError, ValueError):
                _, body = http_get(f"{jaeger.url}/api/services")
                found["jaeger services"] = json.loads(body).get("data") or []
        if found.get("collector ernie_* series") and (jaeger is None or found.get("jaeger services")):
            break
        time.sleep(1)
    return found


def summarize(runs: dict[str, list[BenchResult]], cpu_ms: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    off = runs["off"]
    for v, rs in runs.items():
        tps = [r.output_tokens_per_s for r in rs]
        ttft = [r.ttft_ms.p50 or 0.0 for r in rs]
        tpot = [r.tpot_ms.p50 or 0.0 for r in rs]
        out[v] = {
            "tok_s_median": statistics.median(tps),
            "ttft_p50_ms_median": statistics.median(ttft),
            "tpot_p50_ms_median": statistics.median(tpot),
            "tok_s_ratio_of_medians": statistics.median(tps) / statistics.median(r.output_tokens_per_s for r in off),
            # Per-round: each run against the off run right before it in time.
            "tok_s_ratio_per_round_median": statistics.median(
                r.output_tokens_per_s / o.output_tokens_per_s for r, o in zip(rs, off, strict=True)),
            "ttft_delta_ms_per_round_median": statistics.median(
                (r.ttft_ms.p50 or 0.0) - (o.ttft_ms.p50 or 0.0) for r, o in zip(rs, off, strict=True)),
            "server_cpu_ms_per_request_median": statistics.median(cpu_ms[v]),
            "server_cpu_ms_per_request_delta_vs_off": statistics.median(cpu_ms[v]) - statistics.median(cpu_ms["off"]),
            "tok_s_min": min(tps),
            "tok_s_max": max(tps),
        }
        attained = [a for r in rs if (a := r.slo_attainment.get("all")) is not None]
        if attained:  # with --slo-*: the client's share of requests that met every target
            out[v]["slo_all_attainment_median"] = statistics.median(attained)
    return out


def slo_note(args: argparse.Namespace) -> str:
    flags = slo_args(args)
    if not flags:
        return ""
    sent = " (also sent as request headers)" if getattr(args, "slo_headers", False) else ""
    return f"SLO targets on every server: {' '.join(flags)}{sent}. "


def format_table(summary: dict[str, dict[str, float]], args: argparse.Namespace, note: str, elapsed: float) -> str:
    lines = [
        f"Telemetry overhead: model {args.model}, {args.rounds} rounds x ({', '.join(summary)}); each run "
        f"{args.requests} requests, concurrency {args.concurrency}, max_tokens {args.max_tokens} (ignore_eos), stream, "
        f"prompt ~{args.prompt_tokens} words, torch threads {args.torch_threads or 'default'}, "
        f"device {getattr(args, 'device', None) or 'auto'}. full -> {note}. "
        + slo_note(args) + f"{elapsed:.0f} s; load average {os.getloadavg()[0]:.2f} at the end.",
        "",
        "| variant | tok/s (median) | tok/s min-max | vs off (ratio of medians) | vs off (median per-round ratio) "
        "| TTFT p50 ms (median) | TTFT vs off (median per-round Δ) | TPOT p50 ms (median) "
        "| server CPU ms/request (median) | CPU vs off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v, s in summary.items():
        lines.append(
            f"| {v} | {s['tok_s_median']:.1f} | {s['tok_s_min']:.0f}-{s['tok_s_max']:.0f} | "
            f"{s['tok_s_ratio_of_medians'] * 100:.1f}% | {s['tok_s_ratio_per_round_median'] * 100:.1f}% | "
            f"{s['ttft_p50_ms_median']:.1f} | {s['ttft_delta_ms_per_round_median']:+.1f} ms | "
            f"{s['tpot_p50_ms_median']:.2f} | {s['server_cpu_ms_per_request_median']:.2f} | "
            f"{s['server_cpu_ms_per_request_delta_vs_off']:+.2f} ms |")
    attainment = {v: s["slo_all_attainment_median"] for v, s in summary.items() if "slo_all_attainment_median" in s}
    if attainment:
        lines.append("")
        lines.append("Client-side SLO attainment (all targets, median per run): "
                     + ", ".join(f"{v} {a * 100:.1f}%" for v, a in attainment.items()) + ".")
    full = summary.get("full")
    if full is not None:
        ok_tps = full["tok_s_ratio_per_round_median"] >= 0.98
        ok_ttft = full["ttft_delta_ms_per_round_median"] <= 1.0
        lines.append("")
        lines.append(f"Targets: full >= 98% of off throughput: {'met' if ok_tps else 'NOT met'}; "
                     f"TTFT +<=1 ms: {'met' if ok_ttft else 'NOT met'}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
