"""What each trace tier of the fleet costs: CPU seconds per 1,000 requests, and Collector memory
under a steady load.

    .venv/bin/python benchmarks/fleet_tiers.py [--requests 1000] [--concurrency 8]
        [--rss-duration 300] [--rss-interval 5] [--json PATH]

The fleet's trace path with the real binaries on free 127.0.0.1 ports, configured the way
`ernie-otel stack up --replicas N` configures it (collector/otelcol.yaml + fleet/agent.yaml,
fleet/lb.yaml, two fleet/sampler.yaml, Jaeger with badger), the shipped sampling defaults
(baseline 10 %, decision_wait 10 s) unless OTELCOL_SAMPLING_* are set in the environment. Load:
two ernie-serve replicas of the tiny model and a gateway (`--upstream`) in front of replica 0, all
exporting OTLP (traces and metrics) to the agent; half of the requests go through the gateway (10
spans each: gateway and engine), half straight to replica 1 (5 spans).

1. CPU: utime + stime of each tier's process (/proc/PID/stat) over an idle window first (the
   tiers' own housekeeping: health, memory_limiter, self-metrics), then over --requests requests
   plus one decision_wait and a margin (so every decision and every write of those requests is
   in). Reported per 1,000 requests, raw and net of the idle rate over the same wall time.
2. Memory: RSS (VmRSS) of every tier, sampled every --rss-interval seconds over --rss-duration
   seconds of continuous load: at the start, the maximum, at the end.

The ernie-serve processes' own CPU is not a tier's and is not reported here (benchmarks/overhead.py
measures what telemetry costs a server). Needs the built otelcol-ernie and jaeger (make setup).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from overhead import find_pipeline_bin, machine, proc_cpu_s, spawn_in, start_ernie_serve, status_kib

from ernie_otel.bench import BenchConfig, BenchResult, run_bench
from ernie_otel.ports import HOST
from ernie_otel.stack import components
from ernie_otel.stack.procs import Running, free_port, free_ports, http_get, stopping

REPO = Path(__file__).resolve().parent.parent
FLEET = REPO / "collector" / "fleet"
SAMPLERS = 2
TIERS = ("agent", "lb", *(f"sampler{k}" for k in range(SAMPLERS)), "jaeger")
GATEWAY_SERVICE = "ernie-gateway"


def _addr() -> str:
    return f"{HOST}:{free_port()}"


def _collector_env(queue: Path) -> dict[str, str]:
    return {"OTELCOL_HEALTH_ENDPOINT": _addr(), "OTELCOL_TELEMETRY_HOST": HOST,
            "OTELCOL_TELEMETRY_PORT": str(free_port()), "OTELCOL_QUEUE_DIR": str(queue),
            "OTELCOL_LOG_LEVEL": "warn"}


def start_tiers(bin_dir: Path, work: Path, procs: list[Running]) -> dict[str, Running]:
    """Jaeger, the samplers, the lb and the agent, each waited for; returns them by tier name."""
    otelcol = str(bin_dir / "otelcol-ernie")
    ports = free_ports()
    tiers: dict[str, Running] = {}

    def start(name: str, args: list[str], env: dict[str, str], health: str) -> None:
        proc = spawn_in(work, name, args, env)
        procs.append(proc)
        proc.wait_http(health, timeout=90)
        tiers[name] = proc
        if "OTELCOL_TELEMETRY_PORT" in env:
            proc.ports = {"telemetry": int(env["OTELCOL_TELEMETRY_PORT"])}

    jaeger = components.jaeger_env(ports, work / "jaeger-data")
    start("jaeger", components.jaeger_command(bin_dir), {**jaeger, "JAEGER_LOG_LEVEL": "warn"},
          components.jaeger_health_url(ports))
    sampler_grpc = []
    for k in range(SAMPLERS):
        env = {**_collector_env(work / f"queue-sampler{k}"), "OTELCOL_OTLP_GRPC_ENDPOINT": _addr(),
               "OTELCOL_JAEGER_ENDPOINT": jaeger["JAEGER_OTLP_GRPC_ENDPOINT"]}
        sampler_grpc.append(env["OTELCOL_OTLP_GRPC_ENDPOINT"])
        start(f"sampler{k}", [otelcol, "--config", str(FLEET / "sampler.yaml")], env,
              f"http://{env['OTELCOL_HEALTH_ENDPOINT']}/")
    lb = {**_collector_env(work / "queue-lb"), "OTELCOL_OTLP_GRPC_ENDPOINT": _addr(),
          "OTELCOL_SAMPLER_ENDPOINTS": f"[{', '.join(sampler_grpc)}]"}
    start("lb", [otelcol, "--config", str(FLEET / "lb.yaml")], lb, f"http://{lb['OTELCOL_HEALTH_ENDPOINT']}/")
    agent = {**components.collector_env(ports), "OTELCOL_LB_ENDPOINT": lb["OTELCOL_OTLP_GRPC_ENDPOINT"],
             "OTELCOL_QUEUE_DIR": str(work / "queue-agent"), "OTELCOL_LOG_LEVEL": "warn"}
    start("agent", [*components.collector_command(bin_dir), "--config", str(FLEET / "agent.yaml")], agent,
          components.collector_health_url(ports))
    tiers["agent"].url = f"http://{agent['OTELCOL_OTLP_GRPC_ENDPOINT']}"
    return tiers


def start_servers(agent_url: str, work: Path, procs: list[Running]) -> tuple[Running, Running]:
    """Replicas 0 and 1 (loading in parallel) and the gateway in front of replica 0; returns
    (gateway, replica 1): the two targets of the load."""
    # The model list (the bench and the gateway ask for it) is no request of the load: untraced.
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "health,metrics,v1/models"}
    replicas = []
    for i in range(2):
        proc = start_ernie_serve(f"replica{i}", "tiny", work, env=env, extra_args=["--otlp-endpoint", agent_url])
        procs.append(proc)
        replicas.append(proc)
    for proc in replicas:
        proc.wait_http(f"{proc.url}/health", timeout=300)
    gateway = start_ernie_serve("gateway", "tiny", work, env={**env, "OTEL_SERVICE_NAME": GATEWAY_SERVICE},
                                extra_args=["--otlp-endpoint", agent_url, "--upstream", replicas[0].url])
    procs.append(gateway)
    gateway.wait_http(f"{gateway.url}/health", timeout=120)
    return gateway, replicas[1]


def load(targets: tuple[Running, Running], args: argparse.Namespace, requests: int | None,
         duration: float | None = None) -> list[BenchResult]:
    """The same closed-loop load against both targets at once; `requests` in all."""
    def cfg(url: str) -> BenchConfig:
        return BenchConfig(url=url, requests=None if requests is None else requests // 2, duration=duration,
                           concurrency=max(1, args.concurrency // 2), max_tokens=args.max_tokens,
                           prompt_tokens=args.prompt_tokens, stream=True, ignore_eos=True)

    async def both() -> list[BenchResult]:
        return list(await asyncio.gather(*(run_bench(cfg(t.url)) for t in targets)))

    results = asyncio.run(both())
    for r in results:
        if r.requests_failed:
            raise RuntimeError(f"{r.url}: {r.requests_failed} requests failed: {r.errors}")
    return results


def cpu(tiers: dict[str, Running]) -> dict[str, float]:
    return {name: proc_cpu_s(tiers[name].proc.pid) for name in TIERS}


def collector_counter(proc: Running, name: str, labels: str = "") -> float:
    """The sum of a Collector's own counter (with or without _total) over its series whose labels
    contain `labels`."""
    code, body = http_get(f"http://{HOST}:{proc.ports['telemetry']}/metrics")
    if code != 200:
        raise RuntimeError(f"{proc.name} /metrics: HTTP {code}")
    pattern = rf"^{name}(?:_total)?(\{{[^}}]*\}})?\s+(\S+)"
    return sum(float(m.group(2)) for m in re.finditer(pattern, body, re.M) if labels in (m.group(1) or ""))


def span_counts(tiers: dict[str, Running]) -> dict[str, float]:
    """Spans into the lb (every span of the traces) and out of the samplers (the kept ones)."""
    samplers = [tiers[f"sampler{k}"] for k in range(SAMPLERS)]
    return {"lb_in": collector_counter(tiers["lb"], "otelcol_receiver_accepted_spans"),
            "samplers_out": sum(collector_counter(p, "otelcol_exporter_sent_spans") for p in samplers),
            "traces_kept": sum(collector_counter(p, "otelcol_processor_tail_sampling_global_count_traces_sampled",
                                                 'sampled="true"') for p in samplers),
            "traces_in": sum(collector_counter(p, "otelcol_processor_tail_sampling_new_trace_id_received")
                             for p in samplers)}


def decision_wait_s() -> float:
    """The samplers' decision_wait (the env override, else sampler.yaml's 10 s default)."""
    return float(os.environ.get("OTELCOL_SAMPLING_DECISION_WAIT", "10s").rstrip("s"))


def measure_cpu(tiers: dict[str, Running], targets: tuple[Running, Running], args: argparse.Namespace) -> dict:
    settle = decision_wait_s() + 5
    time.sleep(settle)  # the warm-up's decisions and writes are done
    t0, idle0 = time.monotonic(), cpu(tiers)
    time.sleep(args.idle)
    idle_wall, idle1 = time.monotonic() - t0, cpu(tiers)
    idle_rate = {n: (idle1[n] - idle0[n]) / idle_wall for n in TIERS}

    t0, before, spans0 = time.monotonic(), cpu(tiers), span_counts(tiers)
    results = load(targets, args, args.requests)
    time.sleep(settle)
    wall, after, spans1 = time.monotonic() - t0, cpu(tiers), span_counts(tiers)
    sent = sum(r.requests_ok for r in results)
    per_k = 1000 / sent
    return {
        "requests": sent, "wall_s": wall, "load_s": max(r.wall_s for r in results),
        "per_1k": {k: (spans1[k] - spans0[k]) * per_k for k in spans0},
        "requests_per_s": sum(r.requests_per_s for r in results),
        "idle_cpu_s_per_s": idle_rate,
        "cpu_s_per_1k": {n: (after[n] - before[n]) * per_k for n in TIERS},
        "net_cpu_s_per_1k": {n: (after[n] - before[n] - idle_rate[n] * wall) * per_k for n in TIERS},
    }


def measure_rss(tiers: dict[str, Running], targets: tuple[Running, Running], args: argparse.Namespace) -> dict:
    samples: dict[str, list[int]] = {n: [] for n in TIERS}

    async def sample() -> None:
        while True:
            for n in TIERS:
                samples[n].append(status_kib(tiers[n].proc.pid, "VmRSS"))
            await asyncio.sleep(args.rss_interval)

    async def run() -> list[BenchResult]:
        task = asyncio.create_task(sample())
        try:
            def cfg(url: str) -> BenchConfig:
                return BenchConfig(url=url, requests=None, duration=args.rss_duration,
                                   concurrency=max(1, args.concurrency // 2), max_tokens=args.max_tokens,
                                   prompt_tokens=args.prompt_tokens, stream=True, ignore_eos=True)
            return list(await asyncio.gather(*(run_bench(cfg(t.url)) for t in targets)))
        finally:
            task.cancel()

    results = asyncio.run(run())
    for n in TIERS:
        samples[n].append(status_kib(tiers[n].proc.pid, "VmRSS"))
    mib = 1 / 1024
    return {
        "duration_s": args.rss_duration, "interval_s": args.rss_interval,
        "requests": sum(r.requests_ok for r in results), "failed": sum(r.requests_failed for r in results),
        "requests_per_s": sum(r.requests_per_s for r in results),
        "rss_mib": {n: {"start": s[0] * mib, "max": max(s) * mib, "end": s[-1] * mib, "samples": len(s)}
                    for n, s in samples.items()},
    }


def format_report(out: dict[str, Any]) -> str:
    c, m = out["cpu"], out["rss"]
    lines = [f"machine: {out['machine']}",
             f"CPU: {c['requests']} requests in {c['load_s']:.1f} s ({c['requests_per_s']:.1f} req/s), measured over "
             f"{c['wall_s']:.1f} s (load + decision_wait + 5 s)",
             "per 1,000 requests: " + ", ".join(f"{k} {v:.0f}" for k, v in c["per_1k"].items()),
             f"{'tier':10} {'CPU s / 1k req':>15} {'net of idle':>12} {'idle CPU ms/s':>14}"]
    for n in TIERS:
        lines.append(f"{n:10} {c['cpu_s_per_1k'][n]:15.2f} {c['net_cpu_s_per_1k'][n]:12.2f} "
                     f"{c['idle_cpu_s_per_s'][n] * 1000:14.1f}")
    lines += [f"RSS over {m['duration_s']:.0f} s of load ({m['requests']} requests, {m['requests_per_s']:.1f} req/s, "
              f"sampled every {m['interval_s']:.0f} s)",
              f"{'tier':10} {'start MiB':>10} {'max MiB':>10} {'end MiB':>10}"]
    for n in TIERS:
        r = m["rss_mib"][n]
        lines.append(f"{n:10} {r['start']:10.1f} {r['max']:10.1f} {r['end']:10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="requests of the CPU phase (default 1000)")
    ap.add_argument("--concurrency", type=int, default=8, help="in flight, split over the two targets")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of the idle window (default 30)")
    ap.add_argument("--rss-duration", type=float, default=300.0, help="seconds of the memory phase (default 300)")
    ap.add_argument("--rss-interval", type=float, default=5.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    bin_dir = find_pipeline_bin()
    if bin_dir is None:
        print("otelcol-ernie is not built: run make setup (collector/build.sh)", file=sys.stderr)
        return 2
    out: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="fleet-tiers-") as tmp, stopping([]) as procs:
        work = Path(tmp)
        tiers = start_tiers(bin_dir, work, procs)
        targets = start_servers(tiers["agent"].url, work, procs)
        load(targets, args, 40)  # warm-up: first requests, JIT-free but cache-cold
        out["cpu"] = measure_cpu(tiers, targets, args)
        out["rss"] = measure_rss(tiers, targets, args)
        for name, proc in tiers.items():
            if proc.proc.poll() is not None:
                raise RuntimeError(f"{name} exited during the run: see {work / (name + '.log')}")
    print(format_report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
