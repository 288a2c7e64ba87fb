"""GPU telemetry check: ernie-serve's NVML gauges against nvidia-smi, idle and under load.

    .venv/bin/python benchmarks/gpu_check.py [--model 0.3b|tiny|PATH] [--device cuda|cpu]
        [--requests 64] [--concurrency 8] [--max-tokens 128] [--interval 1.0]
        [--json PATH] [--markdown PATH]

One ernie-serve (``--device cuda``; standalone telemetry, Prometheus reader on --metrics-port)
serves the model -- by default the real ERNIE-4.5-0.3B configuration with random weights, built
once by ``ernie-otel tiny-model --size 0.3b`` (see serving.py). After a warm-up, a streamed
ignore_eos load runs in a background thread while this script scrapes ``/metrics`` and reads
``nvidia-smi --query-gpu=...`` right after each scrape: once idle, every --interval seconds under
load, and once after it. Checks, per GPU that nvidia-smi lists:

- each of the six GPU families (``ernie_otel.names.GPU_METRICS``) has exactly one series per GPU
  in every scrape, with gpu_index/gpu_uuid/gpu_name equal to nvidia-smi's index/uuid/name;
- memory total equals nvidia-smi's (MiB rounding); memory used is within a tolerance of
  nvidia-smi's reading taken just after the scrape (NVML's v1 "used", which ernie-serve reads,
  counts the driver's reserved memory that nvidia-smi's "used" leaves out: either may match);
  memory usage percent = used / total;
- memory used > the model's weights in the serving dtype; utilization > 0 in at least one scrape
  under load (these two only with ``--device cuda``);
- temperature and power in plausible ranges;
- plumbing, in every mode: every scrape answers, ernie_inference_requests_total{status="ok"} grows
  by exactly the load's requests, and the load itself has no failed request.

Exit status: 0 when every check passed, 1 when one failed, 2 when ``--device cuda`` finds no GPU
(nvidia-smi missing or listing none) -- decided before any model is built or server started.

``--device cpu`` runs the same scraping and parsing against a CPU server. On a machine without a
GPU the GPU series must then be absent (never a fake 0); the verdict says CPU-ONLY, which is not a
GPU pass: no GPU figure was checked.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from overhead import bench, machine, start_ernie_serve
from prometheus_client.parser import text_string_to_metric_families

from ernie_otel import names
from ernie_otel.bench import BenchConfig, BenchResult
from ernie_otel.stack.procs import Running, http_get, stopping

SMI_FIELDS = ("index", "uuid", "name", "memory.used", "memory.total", "utilization.gpu", "temperature.gpu",
              "power.draw")
MIB = 2**20
TEMP_RANGE_C = (5.0, 100.0)
POWER_MIN_W = 5.0
MD_SAMPLES = 10
# Prometheus label names of the GPU attributes (gpu.index -> gpu_index, ...).
L_INDEX, L_UUID, L_NAME = (key.replace(".", "_") for key in (names.GPU_INDEX, names.GPU_UUID, names.GPU_NAME))


# ------------------------------------------------------------------------ nvidia-smi
def _num(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None
    return value if math.isfinite(value) else None


def nvidia_smi(fields: tuple[str, ...] = SMI_FIELDS) -> list[dict[str, Any]] | None:
    """One row per GPU, numbers as floats (None where nvidia-smi has none); None if nvidia-smi
    is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    rows = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != len(fields):
            continue
        row: dict[str, Any] = {}
        for key, value in zip(fields, parts, strict=True):
            row[key] = value if key in ("uuid", "name", "driver_version") else _num(value)
        if row.get("index") is not None:
            row["index"] = int(row["index"])
        rows.append(row)
    return rows


def smi_static() -> dict[int, dict[str, Any]]:
    """Figures that do not change under load (reserved memory, power limit, driver), best effort:
    older drivers reject memory.reserved, so each field is asked for on its own."""
    info: dict[int, dict[str, Any]] = {}
    for fld in ("memory.reserved", "power.limit", "driver_version"):
        for row in nvidia_smi(("index", fld)) or []:
            info.setdefault(row["index"], {})[fld] = row[fld]
    return info


# ------------------------------------------------------------------------ samples
@dataclass
class Sample:
    t: float  # seconds since the load started (negative: before it)
    phase: str  # idle | load | after
    scrape_ok: bool
    gpu: dict[str, dict[str, dict[str, Any]]]  # prom family -> gpu_index -> {"labels": ..., "value": ...}
    requests_ok: float  # sum of ernie_inference_requests_total{status="ok"}
    smi: list[dict[str, Any]]
    smi_delay_s: float  # nvidia-smi answered this long after the scrape


def parse_metrics(text: str) -> tuple[dict[str, dict[str, dict[str, Any]]], float]:
    """(GPU series by family and gpu_index, sum of ok requests) from a Prometheus exposition."""
    gpu_names = {spec.prom_name for spec in names.GPU_METRICS}
    gpu: dict[str, dict[str, dict[str, Any]]] = {}
    requests_ok = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in gpu_names:
                index = s.labels.get(L_INDEX, "?")
                series = gpu.setdefault(s.name, {})
                # A repeated gpu_index is kept under a distinct key so that the count check sees it.
                key = index if index not in series else f"{index}#dup{len(series)}"
                series[key] = {"labels": dict(s.labels), "value": s.value}
            elif s.name == names.REQUESTS.prom_name and s.labels.get(names.ATTR_STATUS) == names.Status.OK.value:
                requests_ok += s.value
    return gpu, requests_ok


def take_sample(metrics_url: str, t: float, phase: str) -> Sample:
    ok, text = False, ""
    with contextlib.suppress(OSError):
        code, text = http_get(metrics_url, timeout=10)
        ok = code == 200
    t_scraped = time.monotonic()
    smi = nvidia_smi() or []
    gpu, requests_ok = parse_metrics(text) if ok else ({}, 0.0)
    return Sample(t, phase, ok, gpu, requests_ok, smi, time.monotonic() - t_scraped)


# ------------------------------------------------------------------------ model size
def model_params(path: Path) -> int | None:
    """Parameter count from the safetensors headers (no torch, no loading)."""
    total = 0
    files = sorted(path.glob("*.safetensors"))
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total if files else None


def resolve_model(spec: str) -> Path:
    if spec in ("tiny", "0.3b"):
        from serving import model_dir

        return Path(model_dir(spec))
    path = Path(spec)
    if not (path / "config.json").exists():
        raise SystemExit(f"--model {spec}: not a model directory (no config.json); use tiny, 0.3b or a path")
    return path


# ------------------------------------------------------------------------ checks
@dataclass
class Check:
    name: str
    expected: str
    observed: str
    ok: bool | None  # None: not applicable in this mode


@dataclass
class Report:
    mode: str
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, expected: str, observed: str, ok: bool | None) -> None:
        self.checks.append(Check(name, expected, observed, ok))

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    @property
    def verdict(self) -> str:
        if self.failed:
            return "FAIL"
        return "PASS" if self.mode == "gpu" else "CPU-ONLY"


def check_samples(samples: list[Sample], smi_ref: list[dict[str, Any]], static: dict[int, dict[str, Any]],
                  args: argparse.Namespace, weights_bytes: int | None, report: Report) -> None:
    gpu_expected = bool(smi_ref)
    families = [spec.prom_name for spec in names.GPU_METRICS]
    scraped = [s for s in samples if s.scrape_ok]
    report.add("/metrics answers", f"HTTP 200 in {len(samples)} scrapes", f"{len(scraped)}/{len(samples)}",
               len(scraped) == len(samples) and bool(samples))
    if not gpu_expected:
        present = sorted({f for s in scraped for f in s.gpu})
        report.add("GPU series absent (no GPU here)", "no gpu_* family", ", ".join(present) or "none", not present)
        return
    if importlib.util.find_spec("pynvml") is None:
        report.add("nvidia-ml-py importable", "pynvml importable (ernie-otel[gpu])", "missing", False)

    want_index = {str(r["index"]) for r in smi_ref}
    by_index = {str(r["index"]): r for r in smi_ref}
    for fam in families:
        counts = [len(s.gpu.get(fam, {})) for s in scraped]
        good = sum(1 for s in scraped if set(s.gpu.get(fam, {})) == want_index)
        report.add(f"{fam}: one series per GPU", f"{len(want_index)} series (gpu_index {sorted(want_index)}) "
                   f"in every scrape", f"{good}/{len(scraped)} scrapes; series counts {sorted(set(counts))}",
                   bool(scraped) and good == len(scraped))
    # Labels: uuid and name equal nvidia-smi's, per gpu_index, in every family and scrape.
    mismatches = []
    for s in scraped:
        for fam, series in s.gpu.items():
            for idx, ser in series.items():
                ref = by_index.get(idx)
                if ref is None:
                    mismatches.append(f"{fam} gpu_index={idx} not in nvidia-smi")
                    continue
                for label, key in ((L_UUID, "uuid"), (L_NAME, "name")):
                    if ser["labels"].get(label) != ref[key]:
                        mismatches.append(f"{fam}[{idx}] {label}={ser['labels'].get(label)!r} vs {ref[key]!r}")
    names_seen = "; ".join(f"{r['index']}: {r['name']} {r['uuid']}" for r in smi_ref)
    report.add("gpu_uuid / gpu_name = nvidia-smi", names_seen, "; ".join(sorted(set(mismatches))[:4]) or "equal",
               not mismatches and bool(scraped))

    used_f, total_f, pct_f = (names.GPU_MEMORY_USED.prom_name, names.GPU_MEMORY_TOTAL.prom_name,
                              names.GPU_MEMORY_USAGE.prom_name)
    util_f, temp_f, power_f = (names.GPU_UTILIZATION.prom_name, names.GPU_TEMPERATURE.prom_name,
                               names.GPU_POWER.prom_name)

    def values(fam: str, phases: tuple[str, ...] = ("idle", "load", "after")) -> list[tuple[Sample, str, float]]:
        return [(s, idx, ser["value"]) for s in scraped if s.phase in phases
                for idx, ser in s.gpu.get(fam, {}).items() if idx in by_index]

    def smi_of(s: Sample, idx: str) -> dict[str, Any] | None:
        return next((r for r in s.smi if str(r["index"]) == idx), None)

    # Memory total: equal up to nvidia-smi's MiB rounding.
    worst_total = 0.0
    for s, idx, v in values(total_f):
        r = smi_of(s, idx)
        if r is not None and r["memory.total"] is not None:
            worst_total = max(worst_total, abs(v / MIB - r["memory.total"]))
    n_total = len(values(total_f))
    report.add("memory total = nvidia-smi", "|metric - smi| < 1 MiB",
               f"max |Δ| {worst_total:.2f} MiB over {n_total} readings" if n_total else "no readings",
               bool(n_total) and worst_total < 1.0)

    # Memory used: within tolerance of nvidia-smi's "used" or "used + reserved" read just after.
    deltas: list[float] = []
    matched = {"used": 0, "used+reserved": 0}
    total_mib = max((r["memory.total"] or 0.0) for r in smi_ref)
    tol = max(args.mem_tolerance_mib, 0.005 * total_mib)
    for s, idx, v in values(used_f):
        r = smi_of(s, idx)
        if r is None or r["memory.used"] is None:
            continue
        reserved = static.get(int(idx), {}).get("memory.reserved") or 0.0
        d_used = v / MIB - r["memory.used"]
        d_res = v / MIB - (r["memory.used"] + reserved)
        closer = "used" if abs(d_used) <= abs(d_res) else "used+reserved"
        matched[closer] += 1
        deltas.append(d_used if closer == "used" else d_res)
    worst = max(deltas, key=abs) if deltas else float("nan")
    reserved_mib = sorted({info.get("memory.reserved") for info in static.values()} - {None})
    report.add("memory used ≈ nvidia-smi", f"|Δ| <= {tol:.0f} MiB (vs smi used, or used + reserved "
               f"{'/'.join(f'{r:.0f}' for r in reserved_mib) or '?'} MiB)",
               f"max |Δ| {abs(worst):.0f} MiB over {len(deltas)} readings (worst {worst:+.0f}); closer to "
               + ", ".join(f"{k} in {v}" for k, v in matched.items() if v) if deltas else "no readings",
               bool(deltas) and abs(worst) <= tol)

    # Usage percent consistent with used / total of the same scrape.
    worst_pct = 0.0
    n_pct = 0
    for s in scraped:
        for idx, ser in s.gpu.get(pct_f, {}).items():
            used = s.gpu.get(used_f, {}).get(idx)
            total = s.gpu.get(total_f, {}).get(idx)
            if used and total and total["value"]:
                n_pct += 1
                worst_pct = max(worst_pct, abs(ser["value"] - 100.0 * used["value"] / total["value"]))
    report.add("memory usage % = used / total", "|Δ| <= 0.5 points (same scrape)",
               f"max |Δ| {worst_pct:.3f} over {n_pct} readings", bool(n_pct) and worst_pct <= 0.5)

    cuda = args.device == "cuda"
    max_used = max((v for _, _, v in values(used_f, ("load", "after"))), default=0.0)
    if weights_bytes is None:
        report.add("memory used > model weights", "weights known", "no safetensors in the model dir", None)
    else:
        report.add("memory used > model weights", f"> {weights_bytes / MIB:.0f} MiB "
                   f"({'bf16' if cuda else 'fp32'} weights)", f"max {max_used / MIB:.0f} MiB",
                   (max_used > weights_bytes) if cuda else None)
    load_util = [v for _, _, v in values(util_f, ("load",))]
    smi_util = [r["utilization.gpu"] for s in scraped if s.phase == "load" for r in s.smi
                if r.get("utilization.gpu") is not None]
    report.add("utilization > 0 under load", "> 0 % in at least one scrape under load",
               f"metric max {max(load_util, default=0):.0f} % over {len(load_util)} scrapes "
               f"(nvidia-smi max {max(smi_util, default=0):.0f} %)",
               (bool(load_util) and max(load_util) > 0) if cuda else None)
    temps = [v for _, _, v in values(temp_f)]
    report.add("temperature plausible", f"{TEMP_RANGE_C[0]:.0f}-{TEMP_RANGE_C[1]:.0f} °C",
               f"{min(temps):.0f}-{max(temps):.0f} °C" if temps else "no readings",
               bool(temps) and all(TEMP_RANGE_C[0] <= t <= TEMP_RANGE_C[1] for t in temps))
    limit = max((info.get("power.limit") or 0.0) for info in static.values()) if static else 0.0
    power_max = max(1000.0, 1.2 * limit)
    watts = [v for _, _, v in values(power_f)]
    report.add("power plausible", f"{POWER_MIN_W:.0f}-{power_max:.0f} W" + (f" (limit {limit:.0f} W)" if limit else ""),
               f"{min(watts):.0f}-{max(watts):.0f} W" if watts else "no readings",
               bool(watts) and all(POWER_MIN_W <= w <= power_max for w in watts))


# ------------------------------------------------------------------------ output
def sample_rows(samples: list[Sample]) -> list[dict[str, Any]]:
    """One row per (sample, GPU): metric vs nvidia-smi side by side."""
    rows = []
    for s in samples:
        indices = sorted({str(r["index"]) for r in s.smi} | {i for fam in s.gpu.values() for i in fam})
        for idx in indices or ["-"]:
            def metric(spec: names.MetricSpec, idx: str = idx, s: Sample = s) -> float | None:
                ser = s.gpu.get(spec.prom_name, {}).get(idx)
                return None if ser is None else ser["value"]

            smi = next((r for r in s.smi if str(r["index"]) == idx), {})
            used = metric(names.GPU_MEMORY_USED)
            rows.append({
                "t_s": round(s.t, 2), "phase": s.phase, "gpu_index": idx,
                "util_metric": metric(names.GPU_UTILIZATION), "util_smi": smi.get("utilization.gpu"),
                "mem_used_mib_metric": None if used is None else used / MIB, "mem_used_mib_smi": smi.get("memory.used"),
                "temp_metric": metric(names.GPU_TEMPERATURE), "temp_smi": smi.get("temperature.gpu"),
                "power_metric": metric(names.GPU_POWER), "power_smi": smi.get("power.draw"),
                "requests_ok": s.requests_ok, "smi_delay_ms": round(s.smi_delay_s * 1e3, 1),
            })
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _f(v: float | None, fmt: str = ".0f") -> str:
    return "-" if v is None else format(v, fmt)


def format_markdown(report: Report, info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    b = info.get("bench") or {}
    lines = [
        f"GPU telemetry check ({report.mode} mode, server --device {info['device']}): {info['gpus']}; "
        f"model {info['model']} ({info['params_m']} M parameters); load {info['requests']} streamed requests, "
        f"concurrency {info['concurrency']}, max_tokens {info['max_tokens']} (ignore_eos): "
        f"{_f(b.get('output_tokens_per_s'), '.1f')} tok/s, TTFT p50 {_f((b.get('ttft_ms') or {}).get('p50'), '.1f')} "
        f"ms, TPOT p50 {_f((b.get('tpot_ms') or {}).get('p50'), '.2f')} ms. Verdict: **{report.verdict}**.",
        "",
        "| check | expected | observed | result |",
        "|---|---|---|---|",
    ]
    for c in report.checks:
        result = "n/a" if c.ok is None else ("pass" if c.ok else "**FAIL**")
        lines.append(f"| {_cell(c.name)} | {_cell(c.expected)} | {_cell(c.observed)} | {result} |")
    lines += [
        "",
        "| t (s) | phase | GPU | util % metric / smi | mem used MiB metric / smi | temp °C metric / smi "
        "| power W metric / smi | ok requests (counter) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    # Docs want a glance, not every scrape (the JSON has them all): at most MD_SAMPLES moments.
    times = sorted({r["t_s"] for r in rows})
    if len(times) > MD_SAMPLES:
        keep = {times[round(i * (len(times) - 1) / (MD_SAMPLES - 1))] for i in range(MD_SAMPLES)}
        rows = [r for r in rows if r["t_s"] in keep]
    for r in rows:
        lines.append(
            f"| {r['t_s']:.1f} | {r['phase']} | {r['gpu_index']} | {_f(r['util_metric'])} / {_f(r['util_smi'])} | "
            f"{_f(r['mem_used_mib_metric'])} / {_f(r['mem_used_mib_smi'])} | {_f(r['temp_metric'])} / "
            f"{_f(r['temp_smi'])} | {_f(r['power_metric'], '.1f')} / {_f(r['power_smi'], '.1f')} | "
            f"{r['requests_ok']:.0f} |")
    return "\n".join(lines) + "\n"


def format_table(report: Report) -> str:
    w = max(len(c.name) for c in report.checks) if report.checks else 10
    out = [f"{'check':<{w}}  result  expected -> observed"]
    for c in report.checks:
        result = "n/a" if c.ok is None else ("PASS" if c.ok else "FAIL")
        out.append(f"{c.name:<{w}}  {result:<6}  {c.expected} -> {c.observed}")
    passed = sum(1 for c in report.checks if c.ok)
    applicable = sum(1 for c in report.checks if c.ok is not None)
    verdict = report.verdict
    if verdict == "CPU-ONLY":
        verdict += (f": {passed}/{applicable} checks passed on a CPU server; the GPU figures were not checked "
                    "(this is not a GPU pass)")
    else:
        verdict += f": {passed}/{applicable} checks passed"
    out.append(f"\nRESULT: {verdict}")
    return "\n".join(out)


class InterruptedRunError(Exception):
    pass


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    result: BenchResult | None = None
    load_error: str | None = None
    server_error: str | None = None
    server_log: str = ""
    stats_before: Any = None
    stats_after: Any = None


def measure(args: argparse.Namespace, path: Path, log_dir: Path, t0: float, run: Run) -> None:
    """Start the server, warm it up, scrape idle / under load / after; fills ``run`` as it goes."""
    procs: list[Running] = []
    with stopping(procs):
        server = start_ernie_serve("ernie-serve-gpu", str(path), log_dir,
                                   extra_args=["--device", args.device, *args.extra_args.split()])
        procs.append(server)
        try:
            server.wait_http(server.url + "/health", timeout=600)
            metrics_url = f"http://127.0.0.1:{server.ports['metrics']}/metrics"
            print(f"server ready after {time.monotonic() - t0:.1f} s", file=sys.stderr)
            # Warm-up: first requests pay one-off costs (CUDA context, kernels, allocator).
            bench(BenchConfig(url=server.url, requests=max(4, args.concurrency), concurrency=args.concurrency,
                              max_tokens=8, prompt_tokens=args.prompt_tokens, ignore_eos=True))
            with contextlib.suppress(OSError, ValueError):
                run.stats_before = json.loads(http_get(server.url + "/stats")[1])
            time.sleep(args.interval)
            run.samples.append(take_sample(metrics_url, -args.interval, "idle"))

            cfg = BenchConfig(url=server.url, requests=args.requests, concurrency=args.concurrency,
                              max_tokens=args.max_tokens, prompt_tokens=args.prompt_tokens, stream=True,
                              ignore_eos=True)
            box: dict[str, Any] = {}

            def load() -> None:
                try:
                    box["result"] = bench(cfg)
                except Exception as exc:  # reported as a failed check, not a traceback
                    box["error"] = f"{type(exc).__name__}: {exc}"

            thread = threading.Thread(target=load, name="load", daemon=True)
            start = time.monotonic()
            thread.start()
            next_at = start + min(0.5, args.interval)
            while thread.is_alive():
                thread.join(timeout=max(0.0, next_at - time.monotonic()))
                if thread.is_alive():
                    run.samples.append(take_sample(metrics_url, time.monotonic() - start, "load"))
                    next_at = max(next_at + args.interval, time.monotonic() + 0.05)
            run.result, run.load_error = box.get("result"), box.get("error")
            # The recorder counts a request when it ends, which can trail the client's last byte a little.
            base = run.samples[0].requests_ok
            deadline = time.monotonic() + 10
            while True:
                time.sleep(max(0.5, args.interval))
                after = take_sample(metrics_url, time.monotonic() - start, "after")
                if after.requests_ok - base >= args.requests or time.monotonic() > deadline:
                    break
            run.samples.append(after)
            with contextlib.suppress(OSError, ValueError):
                run.stats_after = json.loads(http_get(server.url + "/stats")[1])
        finally:
            run.server_log = server.log_tail(2000)


# ------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="0.3b", help="tiny, 0.3b (random-weight real config, built once) or a "
                    "model directory (default: 0.3b)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="ernie-serve --device (default cuda)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes under load")
    ap.add_argument("--mem-tolerance-mib", type=float, default=512.0,
                    help="memory used vs nvidia-smi: allowed |Δ| in MiB (at least 0.5%% of the GPU's memory)")
    ap.add_argument("--extra-args", default="", help="more ernie-serve arguments, space-separated")
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--markdown", dest="markdown_path", default=None)
    args = ap.parse_args(argv)

    smi_ref = nvidia_smi() or []
    if args.device == "cuda" and not smi_ref:
        why = "nvidia-smi is not on the PATH" if shutil.which("nvidia-smi") is None else "nvidia-smi lists no GPU"
        print(f"gpu_check: no NVIDIA GPU on this machine ({why}); nothing to check. "
              "`--device cpu` exercises the scraping against a CPU server instead.", file=sys.stderr)
        return 2
    mode = "gpu" if args.device == "cuda" else "cpu"
    report = Report(mode)
    t0 = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="ernie-gpu-check-"))
    print(f"machine: {machine()}\nlogs: {log_dir}", file=sys.stderr)
    for r in smi_ref:
        print(f"GPU {r['index']}: {r['name']} {r['uuid']}, {r['memory.total']:.0f} MiB", file=sys.stderr)
    static = smi_static() if smi_ref else {}
    driver = next((i.get("driver_version") for i in static.values() if i.get("driver_version")), None)

    path = resolve_model(args.model)
    params = model_params(path)
    weights_bytes = None if params is None else params * (2 if args.device == "cuda" else 4)
    print(f"model: {path} ({'?' if params is None else f'{params / 1e6:.1f} M'} parameters)", file=sys.stderr)

    run = Run()

    def interrupted(signum: int, _frame: Any) -> None:
        raise InterruptedRunError(f"stopped by signal {signum} (a time limit?)")

    signal.signal(signal.SIGTERM, interrupted)  # e.g. `timeout`: still report what was measured
    try:
        measure(args, path, log_dir, t0, run)
    except InterruptedRunError as exc:
        run.load_error = run.load_error or str(exc)
        if not run.samples:
            run.server_error = str(exc)
    except RuntimeError as exc:  # the server did not start or died: reported, not a traceback
        run.server_error = str(exc)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    samples, result, load_error = run.samples, run.result, run.load_error
    if not samples:
        samples.append(Sample(0.0, "idle", False, {}, 0.0, [], 0.0))
    if run.server_error is not None:
        # Nothing downstream can be judged: one failed check, not a cascade of them.
        first = run.server_error.splitlines()[0] if run.server_error else "?"
        report.add("server starts and serves", "ernie-serve /health 200, warm-up ok", first[:300], False)
    else:
        if load_error is not None or result is None:
            report.add("load completes", f"{args.requests} ok requests", load_error or "no result", False)
        else:
            tokens_ok = result.output_tokens == args.requests * args.max_tokens
            report.add("load completes", f"{args.requests} ok requests, {args.requests * args.max_tokens} tokens",
                       f"{result.requests_ok} ok, {result.requests_failed} failed, {result.output_tokens} tokens",
                       result.requests_ok == args.requests and not result.requests_failed and tokens_ok)
        counted = samples[-1].requests_ok - samples[0].requests_ok
        report.add("requests counter = load", f'ernie_inference_requests_total{{status="ok"}} +{args.requests}',
                   f"+{counted:.0f}", counted == args.requests)
        check_samples(samples, smi_ref, static, args, weights_bytes, report)

    elapsed = time.monotonic() - t0
    rows = sample_rows(samples)
    gpus = "; ".join(f"{r['name']} ({r['memory.total']:.0f} MiB)" for r in smi_ref) or "no GPU"
    info: dict[str, Any] = {
        "device": args.device, "gpus": gpus + (f", driver {driver}" if driver else ""), "model": args.model,
        "model_path": str(path), "params_m": "?" if params is None else f"{params / 1e6:.1f}",
        "requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "bench": None if result is None else result.to_dict(),
    }
    print(format_table(report))
    if result is not None:
        print(f"\nload: {result.output_tokens_per_s:.1f} tok/s, TTFT p50 {result.ttft_ms.p50 or 0:.1f} ms, "
              f"TPOT p50 {result.tpot_ms.p50 or 0:.2f} ms, {result.wall_s:.1f} s; {len(samples)} scrapes; "
              f"{elapsed:.0f} s in all")
    if report.failed and run.server_log:
        print(f"\nserver log tail ({log_dir}):\n{run.server_log}", file=sys.stderr)
    if args.markdown_path:
        Path(args.markdown_path).write_text(format_markdown(report, info, rows))
    if args.json_path:
        out = {"verdict": report.verdict, "mode": mode, "machine": machine(), "args": vars(args), "info": info,
               "nvidia_smi": smi_ref, "nvidia_smi_static": {str(k): v for k, v in static.items()},
               "checks": [asdict(c) for c in report.checks], "samples": rows, "stats_before": run.stats_before,
               "stats_after": run.stats_after, "server_error": run.server_error, "elapsed_s": elapsed}
        Path(args.json_path).write_text(json.dumps(out, indent=2) + "\n")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
