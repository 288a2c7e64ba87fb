"""Generate the ERNIE dashboard twice from one specification: the Grafana dashboard
``dashboards/ernie-inference.json`` (uid ``ernie-monitor``) and the Prometheus console page
``dashboards/consoles/ernie.html`` (served by Prometheus itself at ``/consoles/ernie.html``).

Every metric name in a query comes from ``ernie_otel/names.py``, as do the model/status/error_type
labels. Edit this file (or names.py), never the outputs, then regenerate from the repository root:

    python dashboards/generate.py            # rewrite both files
    python dashboards/generate.py --check    # exit 1 if either is not what this file builds

``tests/test_dashboards.py`` fails when the files and :func:`build_dashboard` /
:func:`render_console` disagree, and when a panel query of one is missing from the other. The
output is deterministic: panels, targets and keys keep the order they are built in (not sorted, so
the JSON reads like a Grafana export), ``indent=2``, one trailing newline.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = REPO_ROOT / "dashboards" / "ernie-inference.json"
CONSOLE_PATH = REPO_ROOT / "dashboards" / "consoles" / "ernie.html"

if __name__ == "__main__" and str(REPO_ROOT) not in sys.path:
    # Run as a script (`python dashboards/generate.py`): make ernie_otel importable without an install.
    sys.path.insert(0, str(REPO_ROOT))

from ernie_otel import names as n  # noqa: E402
from ernie_otel.ports import DEFAULT_PORTS, HOST  # noqa: E402

DS = {"type": "prometheus", "uid": "${datasource}"}
JI = 'job=~"$job", instance=~"$instance"'
ERNIE = JI + ', model=~"$model"'
GENAI = JI + ', gen_ai_request_model=~"$model"'
RI = "[$__rate_interval]"
# The engine's own series (gateway mode, collector/engine-metrics.yaml) carry neither our job nor a
# `model` label: they have variables of their own.
ENGINE_JI = 'job=~"$engine_job", instance=~"$engine_instance"'

ENGINE_ROW = "Engine (native metrics)"
INTERNALS_ROW = "Engine internals (ernie-serve)"
# Rows from the engine internals down: the internals row, then the upstream engines' row (last).
INTERNALS_Y = 98
ENGINE_Y = INTERNALS_Y + 17
JAEGER_URL = f"http://{HOST}:{DEFAULT_PORTS['jaeger_query']}"

# ------------------------------------------------------------------------------- building blocks
def sel(metric: str, matchers: str, extra: str = "") -> str:
    inner = matchers + (", " + extra if extra else "")
    return f"{metric}{{{inner}}}"


def tgt(expr: str, legend: str = "__auto", ref: str = "A", *, instant: bool = False, fmt: str | None = None,
        exemplar: bool = False) -> dict:
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend, "refId": ref,
         "range": not instant, "instant": instant}
    if fmt:
        t["format"] = fmt
    if exemplar:
        t["exemplar"] = True
    return t


def panel(kind: str, title: str, desc: str, unit: str, targets: list[dict], grid: tuple[int, int, int, int],
          *, options: dict | None = None, defaults: dict | None = None, overrides: list | None = None) -> dict:
    x, y, w, h = grid
    d = {"unit": unit}
    d.update(defaults or {})
    return {
        "id": 0,  # numbered in dashboard order by build_dashboard()
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": d, "overrides": overrides or []},
        "options": options or {},
        "targets": targets,
    }


def row(title: str, y: int) -> dict:
    return {"id": 0, "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}}


TS_OPTS = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
           "tooltip": {"mode": "multi", "sort": "desc"}}
TS_CUSTOM = {"custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                        "spanNulls": False, "axisSoftMin": 0}}
STAT_OPTS = {"colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
             "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "textMode": "auto"}
GAUGE_OPTS = {"orientation": "auto", "showThresholdLabels": False, "showThresholdMarkers": True,
              "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
# A second target drawn as a dashed limit line.
DASHED_B = [{"matcher": {"id": "byFrameRefID", "options": "B"},
             "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                            {"id": "custom.fillOpacity", "value": 0}]}]


def ts(title, desc, unit, targets, grid, **kw):
    defaults = dict(TS_CUSTOM)
    defaults.update(kw.pop("defaults", {}))
    return panel("timeseries", title, desc, unit, targets, grid, options=TS_OPTS, defaults=defaults, **kw)


def thresholds(*steps):
    return {"thresholds": {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}}


def quantile_targets(bucket_selector: str, qs: tuple[str, ...] = ("0.5", "0.95", "0.99"), by: str = "le",
                     exemplar_ref: str = "C", legend_prefix: str = "") -> list[dict]:
    out = []
    for ref, q in zip("ABCDEFGH"[: len(qs)], qs, strict=True):
        expr = f"histogram_quantile({q}, sum by ({by}) (rate({bucket_selector}{RI})))"
        label = f"p{q[2:].ljust(2, '0') if q != '0.5' else '50'}"
        out.append(tgt(expr, legend_prefix + label, ref, exemplar=(ref == exemplar_ref)))
    return out


def quantiles(metric_bucket: str, matchers: str, extra: str = "", by: str = "le", exemplar_ref: str = "C",
              legend_prefix: str = "") -> list[dict]:
    return quantile_targets(sel(metric_bucket, matchers, extra), by=by, exemplar_ref=exemplar_ref,
                            legend_prefix=legend_prefix)


def rate(metric: str, matchers: str, extra: str = "", window: str = RI) -> str:
    return f"rate({sel(metric, matchers, extra)}{window})"


LAT_B = n.LATENCY.prom_name + "_bucket"
LAT_S = n.LATENCY.prom_name + "_sum"
LAT_C = n.LATENCY.prom_name + "_count"
OK = f'{n.ATTR_STATUS}="{n.Status.OK.value}"'
REJ = f'{n.ATTR_STATUS}="{n.Status.REJECTED.value}"'
ERR_T = n.ATTR_ERROR_TYPE.replace(".", "_")
TT = n.GEN_AI_TOKEN_TYPE.replace(".", "_")
SPAN_ERR = 'status_code="STATUS_CODE_ERROR"'

SPAN_NOTE = (
    " Spanmetrics come only through the Collector (spanmetrics connector); with the direct scrape's job "
    "(ernie-serve-direct in deploy/prometheus.yml) selected this panel is empty. Matchers: job/instance "
    "only. The Collector's prometheus exporter derives job from service.name (ernie-serve) and instance "
    "from service.instance.id, the same labels the ernie_* series carry on that path, so the job/instance "
    "variables select the same process. Spanmetrics carry no model label (the GenAI span name embeds it), "
    "so the model variable does not apply here."
)
GPU_NOTE = (" NVML gauge, one series per GPU; absent (panel empty, not an error) on a machine without an NVIDIA "
            "GPU. No model label: filtered by job/instance only.")
PROC_NOTE = " Process metric: no model label, filtered by job/instance only."
ENGINE_NOTE = (
    " The engine's own figure, not ernie-serve's: it exists only in gateway mode (ernie-serve --upstream in "
    "front of vLLM, SGLang, FastDeploy or TGI) when the Collector runs with collector/engine-metrics.yaml, "
    f"which scrapes the engine's native /metrics as job {n.ENGINE_JOB} (instance = the engine's host:port), "
    "and Prometheus loads alerts/ernie-engines.yml, whose recording rules turn every spelling of the "
    "versioned alias table (ernie_otel/engines.py) into one engine-neutral series labelled with the engine "
    "family. A figure the engine does not expose stays empty, not an error. Filtered by the engine_job/"
    "engine_instance variables only: the engine's job is not ernie-serve's."
)


# ------------------------------------------------------------------------------------- rows
def _service_overview() -> list[dict]:
    return [
        row("Service overview", 0),
        panel(
            "stat", "Request rate", "Finished inference requests per second (all statuses, including rejected), "
            "summed over the selected job's instances and models.", "reqps",
            [tgt(f"sum({rate(n.REQUESTS.prom_name, ERNIE)})", "QPS")], (0, 1, 4, 5), options=STAT_OPTS),
        panel(
            "stat", "Requests (last 24h)", "Inference requests finished in the last 24 hours (all statuses). "
            "Fixed 24h window, independent of the dashboard time range.", "short",
            [tgt(f"sum(increase({sel(n.REQUESTS.prom_name, ERNIE)}[24h]))", "requests", instant=True)],
            (4, 1, 4, 5), options=STAT_OPTS),
        panel(
            "stat", "Average latency (5m)", "Mean end-to-end latency of successful requests (status=ok) over the "
            "last 5 minutes: rate of the histogram sum over rate of its count.", "s",
            [tgt(f"sum({rate(LAT_S, ERNIE, OK, '[5m]')}) / sum({rate(LAT_C, ERNIE, OK, '[5m]')})", "avg")],
            (8, 1, 4, 5), options=STAT_OPTS,
            defaults=thresholds(("green", None), ("orange", 3), ("red", 10))),
        panel(
            "stat", "Error rate", "Share of finished requests that failed or were rejected: rate of "
            "ernie_inference_errors_total over rate of ernie_inference_requests_total. Empty while there is no "
            "traffic; 0 while there are requests but no error has been counted yet.", "percentunit",
            [tgt(f"(sum({rate(n.ERRORS.prom_name, ERNIE)}) or vector(0)) "
                 f"/ (sum({rate(n.REQUESTS.prom_name, ERNIE)}) > 0)", "error rate")],
            (12, 1, 4, 5), options=STAT_OPTS,
            defaults=thresholds(("green", None), ("orange", 0.01), ("red", 0.05)) | {"min": 0, "max": 1}),
        panel(
            "piechart", "Errors by type", "Errors over the dashboard time range by error_type (fixed set, see "
            "docs/metrics.md), from ernie_inference_errors_total.", "short",
            [tgt(f"sum by ({ERR_T}) (increase({sel(n.ERRORS.prom_name, ERNIE)}[$__range]))", f"{{{{{ERR_T}}}}}",
                 instant=True)],
            (16, 1, 8, 13),
            options={"pieType": "pie", "displayLabels": ["name", "percent"],
                     "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                                "values": ["value"]},
                     "tooltip": {"mode": "single", "sort": "none"},
                     "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}),
        ts(
            "Requests by status", "Finished requests per second by model and final status "
            "(ok, error, cancelled, rejected).", "reqps",
            [tgt(f"sum by ({n.ATTR_MODEL}, {n.ATTR_STATUS}) ({rate(n.REQUESTS.prom_name, ERNIE)})",
                 "{{model}} {{status}}")],
            (0, 6, 16, 8)),
    ]


def _performance() -> list[dict]:
    tu = n.GENAI_TOKEN_USAGE.prom_name
    return [
        row("Performance", 14),
        ts(
            "End-to-end latency", "p50/p95/p99 of arrival-to-last-byte latency of successful requests (status=ok), "
            "from ernie_inference_latency_seconds_bucket. Exemplars (on p99) link to the trace in Jaeger; they "
            "exist only on the Collector path (the Python Prometheus exporter emits none).", "s",
            quantiles(LAT_B, ERNIE, OK), (0, 15, 12, 8)),
        ts(
            "Time to first token", "p50/p95/p99 of arrival-to-first-token time (GenAI semconv "
            "gen_ai.server.time_to_first_token). Exemplars (on p99) link to Jaeger (Collector path only).", "s",
            quantiles(n.GENAI_TTFT.prom_name + "_bucket", GENAI), (12, 15, 12, 8)),
        ts(
            "Time per output token", "p50/p95/p99 of the per-request mean decode time per output token after the "
            "first (GenAI semconv gen_ai.server.time_per_output_token).", "s",
            quantiles(n.GENAI_TPOT.prom_name + "_bucket", GENAI, exemplar_ref=""), (0, 23, 12, 8)),
        ts(
            "Queue time", "p50/p95/p99 of the time from arrival until the request is scheduled into the running "
            "batch (ernie_queue_time_seconds).", "s",
            quantiles(n.QUEUE_TIME.prom_name + "_bucket", ERNIE, exemplar_ref=""), (12, 23, 12, 8)),
        panel(
            "heatmap", "Latency distribution", "Successful requests per latency bucket and interval (increase of "
            "ernie_inference_latency_seconds_bucket, summed by le). Colour = requests in the interval.", "short",
            [tgt(f"sum by (le) (increase({sel(LAT_B, ERNIE, OK)}{RI}))", "{{le}}", fmt="heatmap")],
            (0, 31, 24, 8),
            options={"calculate": False, "cellGap": 1,
                     "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential", "exponent": 0.5,
                               "steps": 64, "reverse": False, "fill": "dark-orange"},
                     "filterValues": {"le": 1e-9}, "legend": {"show": True}, "rowsFrame": {"layout": "auto"},
                     "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
                     "yAxis": {"axisPlacement": "left", "reverse": False, "unit": "s"},
                     "cellValues": {"unit": "short"}, "exemplars": {"color": "rgba(255,0,255,0.7)"}},
            defaults={"custom": {"scaleDistribution": {"type": "linear"},
                                 "hideFrom": {"legend": False, "tooltip": False, "viz": False}}}),
        ts(
            "Token throughput", "Output tokens per second: rate of ernie_generation_tokens_total (counted) and the "
            "ernie_token_throughput gauge (the server's sliding-window estimate); input = rate of "
            "ernie_prompt_tokens_total (prefill).", "suffix:tok/s",
            [tgt(f"sum by ({n.ATTR_MODEL}) ({rate(n.GENERATION_TOKENS.prom_name, ERNIE)})",
                 "{{model}} output (rate)", "A"),
             tgt(f"sum by ({n.ATTR_MODEL}) ({sel(n.TOKEN_THROUGHPUT.prom_name, ERNIE)})",
                 "{{model}} output (gauge)", "B"),
             tgt(f"sum by ({n.ATTR_MODEL}) ({rate(n.PROMPT_TOKENS.prom_name, ERNIE)})",
                 "{{model}} input (rate)", "C")],
            (0, 39, 12, 8)),
        ts(
            "Tokens per request", "Mean input and output tokens per request over the interval, by "
            "gen_ai_token_type: rate of gen_ai_client_token_usage_sum over rate of its _count.", "short",
            [tgt(f"sum by ({TT}) ({rate(tu + '_sum', GENAI)}) / sum by ({TT}) ({rate(tu + '_count', GENAI)})",
                 f"{{{{{TT}}}}}")],
            (12, 39, 12, 8)),
    ]


def _capacity() -> list[dict]:
    return [
        row("Capacity", 47),
        panel(
            "gauge", "Running batch fill", "Requests in the running batch as a share of its limit "
            "(--max-num-seqs): ernie_requests_running / ernie_requests_running_capacity, summed over the "
            "selection.", "percentunit",
            [tgt(f"sum({sel(n.RUNNING.prom_name, ERNIE)}) / (sum({sel(n.RUNNING_CAPACITY.prom_name, ERNIE)}) > 0)",
                 "fill")],
            (0, 48, 4, 8), options=GAUGE_OPTS,
            defaults={"min": 0, "max": 1} | thresholds(("green", None), ("orange", 0.8), ("red", 0.95))),
        ts(
            "Running requests", "Requests in the running batch against the batch limit (--max-num-seqs), per "
            "model.", "short",
            [tgt(f"sum by ({n.ATTR_MODEL}) ({sel(n.RUNNING.prom_name, ERNIE)})", "{{model}} running", "A"),
             tgt(f"sum by ({n.ATTR_MODEL}) ({sel(n.RUNNING_CAPACITY.prom_name, ERNIE)})", "{{model}} capacity", "B")],
            (4, 48, 8, 8), overrides=DASHED_B),
        panel(
            "gauge", "Waiting queue fill", "Waiting requests as a share of the queue limit (--max-queue-len); at "
            "100% new requests are rejected with 429: ernie_queue_length / ernie_queue_capacity.", "percentunit",
            [tgt(f"sum({sel(n.QUEUE_LENGTH.prom_name, ERNIE)}) / (sum({sel(n.QUEUE_CAPACITY.prom_name, ERNIE)}) > 0)",
                 "fill")],
            (12, 48, 4, 8), options=GAUGE_OPTS,
            defaults={"min": 0, "max": 1} | thresholds(("green", None), ("orange", 0.5), ("red", 0.9))),
        ts(
            "Waiting queue", "Requests waiting to be scheduled against the queue limit (--max-queue-len), per "
            "model.", "short",
            [tgt(f"sum by ({n.ATTR_MODEL}) ({sel(n.QUEUE_LENGTH.prom_name, ERNIE)})", "{{model}} waiting", "A"),
             tgt(f"sum by ({n.ATTR_MODEL}) ({sel(n.QUEUE_CAPACITY.prom_name, ERNIE)})", "{{model}} limit", "B")],
            (16, 48, 8, 8), overrides=DASHED_B),
        ts(
            "Rejected requests", "Requests rejected at once because the waiting queue was full (status=rejected, "
            "HTTP 429), per second and model.", "reqps",
            [tgt(f"sum by ({n.ATTR_MODEL}) ({rate(n.REQUESTS.prom_name, ERNIE, REJ)})", "{{model}} rejected")],
            (0, 56, 24, 7)),
    ]


def _resources() -> list[dict]:
    gpu_legend = "{{instance}} GPU {{gpu_index}}"
    return [
        row("Resources", 63),
        ts("GPU memory used", "GPU memory in use as a percentage of installed memory." + GPU_NOTE, "percent",
           [tgt(sel(n.GPU_MEMORY_USAGE.prom_name, JI), gpu_legend)], (0, 64, 6, 8),
           defaults={"min": 0, "max": 100}),
        ts("GPU utilization", "Percent of the last sample period in which a kernel ran on the GPU." + GPU_NOTE,
           "percent", [tgt(sel(n.GPU_UTILIZATION.prom_name, JI), gpu_legend)], (6, 64, 6, 8),
           defaults={"min": 0, "max": 100}),
        ts("GPU temperature", "GPU core temperature." + GPU_NOTE, "celsius",
           [tgt(sel(n.GPU_TEMPERATURE.prom_name, JI), gpu_legend)], (12, 64, 6, 8)),
        ts("GPU power", "GPU power draw." + GPU_NOTE, "watt",
           [tgt(sel(n.GPU_POWER.prom_name, JI), gpu_legend)], (18, 64, 6, 8)),
        ts("Process CPU", "CPU used by the ernie-serve process (user + system), in cores: 100% = one fully busy "
           "core." + PROC_NOTE, "percentunit",
           [tgt(f"sum by (job, instance) ({rate(n.PROCESS_CPU.prom_name, JI)})", "{{job}} {{instance}}")],
           (0, 72, 12, 8)),
        ts("Process memory", "Resident memory of the ernie-serve process." + PROC_NOTE, "bytes",
           [tgt(f"sum by (job, instance) ({sel(n.PROCESS_MEMORY.prom_name, JI)})", "{{job}} {{instance}}")],
           (12, 72, 12, 8)),
    ]


def _traces() -> list[dict]:
    calls = n.SPANMETRICS_CALLS_PROM
    dur_b = n.SPANMETRICS_DURATION_PROM + "_bucket"
    return [
        row("Traces (spanmetrics)", 80),
        ts("Span rate", "Spans per second by span name (RED: rate), from " + calls + "." + SPAN_NOTE, "ops",
           [tgt(f"sum by (span_name) ({rate(calls, JI)})", "{{span_name}}")], (0, 81, 8, 8)),
        ts("Span errors", "Spans per second ending with status ERROR, by span name (RED: errors)." + SPAN_NOTE,
           "ops", [tgt(f"sum by (span_name) ({rate(calls, JI, SPAN_ERR)})", "{{span_name}}")], (8, 81, 8, 8)),
        ts("Span duration p95", "95th percentile span duration by span name (RED: duration), from "
           + dur_b + ". Exemplars link to the trace in Jaeger." + SPAN_NOTE, "s",
           [tgt(f"histogram_quantile(0.95, sum by (le, span_name) ({rate(dur_b, JI)}))", "{{span_name}}",
                exemplar=True)], (16, 81, 8, 8)),
    ]


def _engine_quantiles(bucket_rate: str) -> list[dict]:
    """p50/p95 per engine instance from a recorded per-bucket rate: engines bucket differently, so
    buckets are summed within one instance only."""
    out = []
    for ref, q, label in (("A", "0.5", "p50"), ("B", "0.95", "p95")):
        expr = f"histogram_quantile({q}, sum by (instance, {n.ENGINE_LABEL}, le) ({sel(bucket_rate, ENGINE_JI)}))"
        out.append(tgt(expr, f"{{{{instance}}}} {{{{{n.ENGINE_LABEL}}}}} {label}", ref))
    return out


def _engine() -> list[dict]:
    by = f"(instance, {n.ENGINE_LABEL})"
    legend = f"{{{{instance}}}} {{{{{n.ENGINE_LABEL}}}}}"
    return [
        row(ENGINE_ROW, ENGINE_Y),
        ts("Engine running vs waiting", "Requests in the engine's running batch and in its own waiting queue, "
           f"as the engine counts them ({n.ENGINE_RUNNING}; {n.ENGINE_WAITING}), per engine instance. In gateway "
           "mode ernie-serve queues nothing itself (its Running requests are the requests in flight to the "
           "engine): this is where the requests actually wait." + ENGINE_NOTE, "short",
           [tgt(f"sum by {by} ({sel(n.ENGINE_RUNNING, ENGINE_JI)})", legend + " running", "A"),
            tgt(f"sum by {by} ({sel(n.ENGINE_WAITING, ENGINE_JI)})", legend + " waiting", "B")],
           (0, ENGINE_Y + 1, 8, 8)),
        ts("Engine KV-cache usage", "Share of the engine's KV cache in use, 0..1 (1 = full: new requests wait "
           f"and running ones may be preempted), from {n.ENGINE_KV_CACHE_USAGE}; the highest value per engine "
           "instance." + ENGINE_NOTE, "percentunit",
           [tgt(f"max by {by} ({sel(n.ENGINE_KV_CACHE_USAGE, ENGINE_JI)})", legend)],
           (8, ENGINE_Y + 1, 8, 8),
           defaults={"min": 0, "max": 1} | thresholds(("green", None), ("orange", 0.8), ("red", 0.95))),
        ts("Engine time to first token", "p50/p95 of the time to first token measured inside the engine, from "
           f"{n.ENGINE_TTFT_BUCKET_RATE} (per-bucket rates of the engine's histogram), per engine instance. The "
           "Performance row's Time to first token is ernie-serve's view of the same requests; the gap between "
           "the two is the gateway hop." + ENGINE_NOTE, "s",
           _engine_quantiles(n.ENGINE_TTFT_BUCKET_RATE), (16, ENGINE_Y + 1, 8, 8)),
        ts("Engine inter-token latency", "p50/p95 of the time between output tokens inside the engine (vLLM's "
           "inter-token latency, time per output token elsewhere), from "
           f"{n.ENGINE_ITL_BUCKET_RATE}, per engine instance." + ENGINE_NOTE, "s",
           _engine_quantiles(n.ENGINE_ITL_BUCKET_RATE), (0, ENGINE_Y + 9, 8, 8)),
        ts("Engine prefix-cache hit ratio", "Share of prompt tokens (requests, for engines that count those) "
           f"found in the engine's prefix cache, from {n.ENGINE_PREFIX_CACHE_HIT}: hits / queries over the "
           "recorded window where the engine counts both, else its own hit-rate gauge." + ENGINE_NOTE,
           "percentunit", [tgt(f"avg by {by} ({sel(n.ENGINE_PREFIX_CACHE_HIT, ENGINE_JI)})", legend)],
           (8, ENGINE_Y + 9, 8, 8), defaults={"min": 0, "max": 1}),
        ts("Engine preemptions", "Requests the engine preempted (vLLM, FastDeploy) or retracted (SGLang) per "
           f"second, from {n.ENGINE_PREEMPTIONS_RATE}: each one gives back its KV cache and redoes its prefill "
           "later; sustained, the KV cache is too small for the batch the engine admits." + ENGINE_NOTE, "ops",
           [tgt(f"sum by {by} ({sel(n.ENGINE_PREEMPTIONS_RATE, ENGINE_JI)})", legend)],
           (16, ENGINE_Y + 9, 8, 8)),
    ]


INTERNALS_NOTE = (
    " ernie-serve's own engine (the local transformers engine); absent, not zero, in gateway mode "
    "(--upstream), where the row below shows the upstream engine's own figures. The engine records plain "
    "numbers at step boundaries; the telemetry side turns them into these series, off the request path."
)


def _internal_quantiles(specs: tuple[tuple[n.MetricSpec, str], ...], qs: tuple[str, ...]) -> list[dict]:
    """p-quantile targets of several histograms on one panel, refIds A, B, C... in order."""
    refs = iter("ABCDEFGH")
    out = []
    for spec, prefix in specs:
        for q in qs:
            expr = f"histogram_quantile({q}, sum by (le) (rate({sel(spec.prom_name + '_bucket', ERNIE)}{RI})))"
            label = f"p{q[2:].ljust(2, '0') if q != '0.5' else '50'}"
            out.append(tgt(expr, f"{prefix}{label}", next(refs)))
    return out


def _engine_internals() -> list[dict]:
    y = INTERNALS_Y
    steps = f"sum({rate(n.ENGINE_STEPS.prom_name, ERNIE)})"
    return [
        row(INTERNALS_ROW, y),
        ts("KV cache used vs budget", "Bytes of KV cache the running batch holds (rows x width of its left-padded "
           "cache, padding included) against its budget (--max-num-seqs x --max-model-len tokens), per instance. "
           "At the budget new requests wait in the queue." + INTERNALS_NOTE, "bytes",
           [tgt(f"sum by (instance) ({sel(n.KV_CACHE_USED.prom_name, ERNIE)})", "{{instance}} used", "A"),
            tgt(f"sum by (instance) ({sel(n.KV_CACHE_BUDGET.prom_name, ERNIE)})", "{{instance}} budget", "B")],
           (0, y + 1, 8, 8), overrides=DASHED_B),
        ts("KV cache usage and padding", "Share of the KV budget in use (the KVCacheNearBudget alert fires above "
           "0.9 for 10 minutes) and share of the batch's KV positions that are left padding: high padding means "
           "short and long sequences share a batch and the short ones pay for the long ones' width."
           + INTERNALS_NOTE, "percentunit",
           [tgt(f"max by (instance) ({sel(n.KV_CACHE_USAGE.prom_name, ERNIE)})", "{{instance}} used", "A"),
            tgt(f"max by (instance) ({sel(n.KV_CACHE_PADDING.prom_name, ERNIE)})", "{{instance}} padding", "B")],
           (8, y + 1, 8, 8),
           defaults={"min": 0, "max": 1} | thresholds(("green", None), ("orange", 0.8), ("red", 0.9))),
        ts("Batch size per iteration", "p50/p95/p99 of the sequences each engine iteration ran (newly admitted "
           "rows included), from ernie_batch_size." + INTERNALS_NOTE, "short",
           _internal_quantiles(((n.BATCH_SIZE, ""),), ("0.5", "0.95", "0.99")), (16, y + 1, 8, 8)),
        ts("Tokens per iteration", "p50/p95/p99 of the tokens each iteration ran through the model: prompt tokens "
           "prefilled plus one per decoded row, padding not counted." + INTERNALS_NOTE, "short",
           _internal_quantiles(((n.ITERATION_TOKENS, ""),), ("0.5", "0.95", "0.99")), (0, y + 9, 5, 8)),
        ts("Prefill and decode time", "p50/p95 per finished request of prefill (scheduled to first token) and "
           "decode (first to last token), as vLLM's request_prefill/decode_time_seconds." + INTERNALS_NOTE, "s",
           _internal_quantiles(((n.PREFILL_TIME, "prefill "), (n.DECODE_TIME, "decode ")), ("0.5", "0.95")),
           (5, y + 9, 6, 8)),
        ts("Inter-token latency", "p50/p95/p99 of the gap between a sequence's consecutive tokens, per token "
           "(ernie_inter_token_latency_seconds), next to the p95 of time per output token, which averages the "
           "gaps per request: a wide gap between the two is a stall inside some requests." + INTERNALS_NOTE, "s",
           [*_internal_quantiles(((n.INTER_TOKEN_LATENCY, "ITL "),), ("0.5", "0.95", "0.99")),
            tgt(f"histogram_quantile(0.95, sum by (le) (rate({sel(n.GENAI_TPOT.prom_name + '_bucket', GENAI)}{RI})))",
                "TPOT p95 (per request)", "D")],
           (11, y + 9, 5, 8)),
        ts("Admissions and evictions per step", "Sequences admitted from the waiting queue, and sequences that "
           "left the running batch before finishing (reason: cancelled = client gone or shutdown, error = a "
           "failed step), per engine step." + INTERNALS_NOTE, "short",
           [tgt(f"sum({rate(n.ENGINE_ADMISSIONS.prom_name, ERNIE)}) / {steps}", "admitted", "A"),
            tgt(f"sum by ({n.ATTR_REASON}) ({rate(n.ENGINE_EVICTIONS.prom_name, ERNIE)}) / scalar({steps})",
                "{{reason}}", "B")],
           (16, y + 9, 5, 8)),
        panel("stat", "Model load time", "How long loading the model took at start-up, per instance (the "
              f"{n.SPAN_MODEL_LOAD} span in Jaeger has the same interval)." + INTERNALS_NOTE, "s",
              [tgt(f"max by (instance) ({sel(n.MODEL_LOAD_TIME.prom_name, ERNIE)})", "{{instance}}")],
              (21, y + 9, 3, 8), options=STAT_OPTS),
    ]


SLO_ROW = "SLO"
_SLO = n.SLO_REQUESTS.prom_name
_ALL = f'{n.ATTR_SLO}="all"'
_MISSED = f'{n.ATTR_RESULT}="missed"'
_MET = f'{n.ATTR_RESULT}="met"'
SLO_NOTE = (" Only servers started with SLO targets (--slo-ttft/--slo-tpot/--slo-e2e or ERNIE_SLO_TARGETS) "
            "judge requests; without targets the panel is empty. Tenants are summed.")


def _budget(window: str) -> str:
    """Burn rate of slo="all" over a window: error ratio / error budget (1 - --slo-objective)."""
    return (f"(sum by ({n.ATTR_MODEL}) (rate({sel(_SLO, ERNIE, _ALL + ', ' + _MISSED)}[{window}]))"
            f" / sum by ({n.ATTR_MODEL}) (rate({sel(_SLO, ERNIE, _ALL)}[{window}])))"
            f" / on ({n.ATTR_MODEL}) (1 - max by ({n.ATTR_MODEL}) ({sel(n.SLO_OBJECTIVE.prom_name, ERNIE)}))")


def _slo() -> list[dict]:
    return [
        row(SLO_ROW, 89),
        ts("SLO attainment", "Share of judged requests that met their target, per objective (ttft, tpot, e2e, "
           "all = every target the request had): exact counts from ernie_slo_requests_total, so targets need not "
           "be bucket edges. Failed and refused requests count as missed; cancels and client errors are not "
           "judged." + SLO_NOTE, "percentunit",
           [tgt(f"sum by ({n.ATTR_MODEL}, {n.ATTR_SLO}) ({rate(_SLO, ERNIE, _MET)})"
                f" / sum by ({n.ATTR_MODEL}, {n.ATTR_SLO}) ({rate(_SLO, ERNIE)})", "{{model}} {{slo}}")],
           (0, 90, 8, 8), defaults={"min": 0, "max": 1}),
        panel("stat", "Error budget left (30d)", "Share of the 30-day error budget (1 - --slo-objective) not yet "
              "spent by requests that missed a target (slo=all): 1 = untouched, 0 = spent, below 0 = overspent."
              + SLO_NOTE, "percentunit",
              [tgt(f"1 - {_budget('30d')}", "{{model}}", instant=True)], (8, 90, 4, 8), options=STAT_OPTS,
              defaults=thresholds(("red", None), ("orange", 0.25), ("green", 0.5))),
        ts("SLO burn rate", "How many times faster than the budget allows the error budget burns (slo=all), over "
           "1h and 5m: the fast-burn page (SLOErrorBudgetFastBurn) needs both above 14.4 (or 6h and 30m above 6). "
           "1 spends exactly the budget over the SLO period." + SLO_NOTE, "short",
           [tgt(_budget("1h"), "{{model}} 1h", "A"), tgt(_budget("5m"), "{{model}} 5m", "B")],
           (12, 90, 6, 8)),
        ts("Goodput", "Output tokens per second of requests that met all their targets (goodput), against all "
           "output tokens per second." + SLO_NOTE, "short",
           [tgt(f"sum by ({n.ATTR_MODEL}) ({rate(n.GOODPUT_TOKENS.prom_name, ERNIE)})", "{{model}} goodput", "A"),
            tgt(f"sum by ({n.ATTR_MODEL}) ({rate(n.GENERATION_TOKENS.prom_name, ERNIE)})", "{{model}} all", "B")],
           (18, 90, 6, 8), overrides=DASHED_B),
    ]


# -------------------------------------------------------------------------------- variables
def qvar(name: str, label: str, query: str, multi: bool = True) -> dict:
    """A query variable: multi-value with *All* (= .*) by default; ``multi=False`` gives a
    single-value one without *All*, whose empty ``current`` lets Grafana pick the first value."""
    choice: dict = ({"current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                     "multi": True, "includeAll": True, "allValue": ".*"} if multi else
                    {"current": {}, "multi": False, "includeAll": False})
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        **choice,
        "refresh": 2, "regex": "", "sort": 1, "hide": 0, "options": [], "skipUrlSync": False,
    }


def _templating() -> dict:
    r = n.REQUESTS.prom_name
    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
         "regex": "", "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
         "skipUrlSync": False},
        # One job at a time: deploy/prometheus.yml scrapes one process as two jobs (ernie-serve
        # through the Collector, ernie-serve-direct directly), and a sum over both counts every
        # request twice. Replicas of one job share it, so instance and model stay multi with All.
        qvar("job", "Job", f"label_values({r}, job)", multi=False),
        qvar("instance", "Instance", f'label_values({r}{{job=~"$job"}}, instance)'),
        qvar("model", "Model", f'label_values({r}{{job=~"$job", instance=~"$instance"}}, {n.ATTR_MODEL})'),
        # Engine series (gateway mode): the jobs/instances with the neutral running-requests series.
        qvar("engine_job", "Engine job", f"label_values({n.ENGINE_RUNNING}, job)"),
        qvar("engine_instance", "Engine instance",
             f'label_values({n.ENGINE_RUNNING}{{job=~"$engine_job"}}, instance)'),
    ]}


# -------------------------------------------------------------------------------- dashboard
def build_dashboard() -> dict:
    """The dashboard as Grafana's JSON model, built afresh (panel ids 1.. in dashboard order)."""
    panels = [*_service_overview(), *_performance(), *_capacity(), *_resources(), *_traces(), *_slo(),
              *_engine_internals(), *_engine()]
    for number, p in enumerate(panels, start=1):
        p["id"] = number
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": "ERNIE-4.5 inference service (ernie-serve): traffic, latency, tokens, capacity, GPU and "
                       "process resources, and RED metrics from traces. Works with Prometheus scraping "
                       "ernie-serve directly or the OTel Collector. In gateway mode the last row shows the "
                       "inference engine's own metrics (vLLM, SGLang, FastDeploy, TGI: "
                       "collector/engine-metrics.yaml and the alias rules of alerts/ernie-engines.yml).",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"title": "Jaeger (traces)", "type": "link",
                   "url": f"{JAEGER_URL}/search?service={n.SERVICE_NAME}", "targetBlank": True,
                   "icon": "external link", "tooltip": "Search ernie-serve traces in Jaeger", "asDropdown": False,
                   "includeVars": False, "keepTime": False, "tags": []}],
        "liveNow": False,
        "panels": panels,
        "refresh": "10s",
        "schemaVersion": 39,
        "tags": ["ERNIE", "LLM", "Inference"],
        "templating": _templating(),
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": "ERNIE-4.5 Inference",
        "uid": "ernie-monitor",
        "version": 1,
        "weekStart": "",
    }


# ---------------------------------------------------------------------------- console page
# The same panels as a Prometheus console template (Prometheus serves it at /consoles/ernie.html with
# --web.console.templates=dashboards/consoles and --web.console.libraries=<the package's console
# libraries>). The page carries the panels as JSON (exactly the Grafana targets' PromQL, variables
# still in) and a small script that fills the variables from the URL and the same label_values
# look-ups Grafana makes, then draws each panel with the console library's PromConsole.Graph, or as
# numbers for stat/gauge/pie panels. No Go template action touches the PromQL, so nothing is escaped
# or rewritten between the Grafana JSON and what the browser sends to Prometheus.

# What Grafana's $__rate_interval becomes on the console page: 4x the 5 s scrape interval of
# deploy/prometheus.yml would be 20 s; 1m keeps the lines as smooth as Grafana's at its default range.
CONSOLE_RATE_INTERVAL = "1m"
# The SERVER span of the chat endpoint (FastAPI instrumentation: method and route template).
CHAT_SERVER_SPAN = "POST /v1/chat/completions"
# Latency panels link to the slow traces behind them: the Jaeger search of the panel's span, from
# the panel's current p95 up. Values: (Jaeger operation or None for all, refId of the p95 target).
TRACE_LINKS: dict[str, tuple[str | None, str]] = {
    "End-to-end latency": (CHAT_SERVER_SPAN, "B"),
    "Time to first token": (None, "B"),
    "Time per output token": (n.SPAN_DECODE, "B"),
    "Queue time": (n.SPAN_QUEUE, "B"),
    "Span duration p95": (None, "A"),
}
# Panels that stay empty on a healthy local stack because the hardware or add-on that feeds them is
# not there: the page says why instead of drawing an empty graph.
ABSENT_NOTES = {
    "gpu": "No GPU series for this selection: NVML reports none on a host without an NVIDIA GPU.",
    "engine": "No engine series: they exist only in gateway mode with collector/engine-metrics.yaml and the "
              "rules of alerts/ernie-engines.yml, and only for figures the engine exposes.",
    "spanmetrics": "No span metrics for this job: they come only through the Collector (job ernie-serve).",
}
_LEGEND_VAR_RE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _absent_note(row_title: str, panel: dict) -> str | None:
    exprs = " ".join(t["expr"] for t in panel["targets"])
    if row_title == ENGINE_ROW:
        return ABSENT_NOTES["engine"]
    if any(spec.prom_name in exprs for spec in n.GPU_METRICS):
        return ABSENT_NOTES["gpu"]
    if n.SPANMETRICS_CALLS_PROM in exprs or n.SPANMETRICS_DURATION_PROM in exprs:
        return ABSENT_NOTES["spanmetrics"]
    return None


def console_panels(dashboard: dict | None = None) -> list[dict]:
    """The dashboard's panels as the console page draws them, in dashboard order, each with its
    row, its Grafana targets (expr unchanged; the legend in the console library's [[label]] form)."""
    dashboard = build_dashboard() if dashboard is None else dashboard
    out: list[dict] = []
    row_title = ""
    for p in dashboard["panels"]:
        if p["type"] == "row":
            row_title = p["title"]
            continue
        targets = [{"ref": t["refId"], "expr": t["expr"],
                    "legend": "" if t["legendFormat"] == "__auto" else _LEGEND_VAR_RE.sub(r"[[\1]]", t["legendFormat"]),
                    "instant": bool(t["instant"])} for t in p["targets"]]
        link = TRACE_LINKS.get(p["title"])
        out.append({
            "id": f"panel-{p['id']}", "row": row_title, "title": p["title"], "description": p["description"],
            "type": p["type"], "unit": p["fieldConfig"]["defaults"]["unit"], "targets": targets,
            "absent": _absent_note(row_title, p),
            "jaeger": None if link is None else {"operation": link[0], "quantileRef": link[1]},
        })
    return out


def console_variables(dashboard: dict | None = None) -> list[dict]:
    """Grafana's query variables as (name, label, metric selector, label name): the page asks
    Prometheus for ``/api/v1/label/<label>/values?match[]=<selector>``, which is label_values()."""
    dashboard = build_dashboard() if dashboard is None else dashboard
    out = []
    for v in dashboard["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["definition"])
        assert m, v["definition"]
        out.append({"name": v["name"], "label": v["label"], "match": m.group(1), "labelName": m.group(2),
                    "multi": v["multi"]})
    return out


_CONSOLE_CSS = """
.ernie-vars { margin: 0.5em 0 1em; }
.ernie-vars label { margin-right: 1.2em; }
.ernie-vars select { max-width: 22em; }
.ernie-row { clear: both; padding-top: 0.6em; border-top: 1px solid #ddd; }
.ernie-panel { display: inline-block; vertical-align: top; width: 48%; min-width: 28em; margin: 0 1% 1.2em 0; }
.ernie-panel h4 { font-size: 1.05em; margin: 0.4em 0 0.1em; }
.ernie-panel .ernie-desc { font-size: 0.8em; color: #666; margin: 0 0 0.3em; overflow: hidden;
  display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; }
.ernie-number { font-size: 1.6em; font-weight: 600; }
.ernie-many .ernie-number { display: inline-block; font-size: 1.1em; margin-right: 1.2em; }
.ernie-number small { font-size: 0.55em; font-weight: normal; color: #666; margin-right: 0.4em; }
.ernie-absent { color: #666; font-style: italic; padding: 1em 0; }
.ernie-error { color: #b00; }
"""

# Plain ES5 (the console library's own level); no "{{" anywhere, so Go's template parser leaves it be.
_CONSOLE_JS = r"""
(function () {
  var PANELS = JSON.parse(document.getElementById('ernie-panels').textContent);
  var VARIABLES = JSON.parse(document.getElementById('ernie-variables').textContent);
  var DEFAULTS = JSON.parse(document.getElementById('ernie-defaults').textContent);
  var params = new URLSearchParams(window.location.search);
  var values = {};

  function api(path, args, done) {
    var q = [];
    for (var k in args) { q.push(encodeURIComponent(k) + '=' + encodeURIComponent(args[k])); }
    var xhr = new XMLHttpRequest();
    xhr.open('GET', PATH_PREFIX + path + '?' + q.join('&'));
    xhr.responseType = 'json';
    xhr.onload = function () { done(xhr.response || {status: 'error', error: 'HTTP ' + xhr.status}); };
    xhr.onerror = function () { done({status: 'error', error: 'network error'}); };
    xhr.send();
  }

  // Grafana's variable syntax: $name and ${name}.
  function fill(text) {
    return text.replace(/\$\{?(\w+)\}?/g, function (all, name) {
      return name in values ? values[name] : all;
    });
  }

  function regexQuote(s) { return s.replace(/[.*+?^$()|[\]\\]/g, '\\$&'); }

  function loadVariable(i, done) {
    if (i >= VARIABLES.length) { done(); return; }
    var v = VARIABLES[i];
    api('/api/v1/label/' + v.labelName + '/values', {'match[]': fill(v.match)}, function (body) {
      var options = body.status === 'success' ? body.data.slice().sort() : [];
      var chosen = params.get(v.name);
      if (chosen === null) { chosen = v.multi ? '' : (options[0] || ''); }
      // Like Grafana: a regex (the queries use =~), its backslashes doubled inside the PromQL string.
      values[v.name] = chosen === '' ? '.*' : regexQuote(chosen).replace(/\\/g, '\\\\');
      var select = document.createElement('select');
      select.name = v.name;
      var all = v.multi ? ['', 'All'] : null;
      if (all) { select.appendChild(new Option('All', '')); }
      options.forEach(function (o) { select.appendChild(new Option(o, o)); });
      if (chosen !== '' && options.indexOf(chosen) < 0) { select.appendChild(new Option(chosen, chosen)); }
      select.value = chosen;
      select.onchange = function () { document.getElementById('ernie-vars').submit(); };
      var label = document.createElement('label');
      label.appendChild(document.createTextNode(v.label + ' '));
      label.appendChild(select);
      document.getElementById('ernie-vars').appendChild(label);
      loadVariable(i + 1, done);
    });
  }

  var FORMATS = {
    'reqps': [PromConsole.NumberFormatter.humanizeNoSmallPrefix, ' req/s'],
    'ops': [PromConsole.NumberFormatter.humanizeNoSmallPrefix, ' /s'],
    's': [PromConsole.NumberFormatter.humanize, 's'],
    'percentunit': [function (v) { return (v * 100).toFixed(1); }, '%'],
    'percent': [function (v) { return v.toFixed(1); }, '%'],
    'bytes': [PromConsole.NumberFormatter.humanize1024, 'B'],
    'celsius': [function (v) { return v.toFixed(0); }, ' \u00b0C'],
    'watt': [PromConsole.NumberFormatter.humanizeNoSmallPrefix, ' W'],
    'short': [PromConsole.NumberFormatter.humanizeNoSmallPrefix, '']
  };
  function format(unit) {
    if (unit.indexOf('suffix:') === 0) {
      return [PromConsole.NumberFormatter.humanizeNoSmallPrefix, ' ' + unit.slice(7)];
    }
    return FORMATS[unit] || FORMATS.short;
  }

  function legendOf(target, metric) {
    if (!target.legend) { return target.ref; }
    return target.legend.replace(/\[\[\s*(\w+)\s*\]\]/g, function (all, name) { return metric[name] || ''; });
  }

  function setState(el, state, detail) {
    el.setAttribute('data-state', state);
    if (detail) { el.setAttribute('data-detail', detail); }
  }

  function instantAll(panel, done) {
    var results = new Array(panel.targets.length), pending = panel.targets.length, failed = null;
    panel.targets.forEach(function (t, i) {
      api('/api/v1/query', {query: fill(t.expr)}, function (body) {
        if (body.status !== 'success') {
          failed = failed || (t.ref + ': ' + body.error);
        } else {
          results[i] = body.data.result;
        }
        pending -= 1;
        if (pending === 0) { done(failed, results); }
      });
    });
  }

  function drawNumbers(panel, el, body) {
    instantAll(panel, function (failed, results) {
      if (failed) {
        body.appendChild(text('div', 'ernie-error', failed));
        setState(el, 'error', failed);
        return;
      }
      var f = format(panel.unit), shown = 0;
      results.forEach(function (series, i) {
        series.forEach(function (s) {
          var v = parseFloat(s.value[1]);
          var line = text('div', 'ernie-number', '');
          line.appendChild(text('small', '', legendOf(panel.targets[i], s.metric)));
          line.appendChild(document.createTextNode(isFinite(v) ? f[0](v) + f[1] : String(v)));
          body.appendChild(line);
          shown += 1;
        });
      });
      if (!shown) { body.appendChild(text('div', 'prom_graph_error', 'No data')); setState(el, 'empty'); return; }
      if (shown > 2) { body.className = 'ernie-many'; }
      setState(el, 'number');
    });
  }

  function drawGraph(panel, el, body) {
    var f = format(panel.unit);
    var graph = new PromConsole.Graph({
      node: body,
      expr: panel.targets.map(function (t) { return fill(t.expr); }),
      // Our own interpolation: the library's drops whatever follows the last [[label]].
      name: panel.targets.map(function (t) { return function (metric) { return legendOf(t, metric); }; }),
      yAxisFormatter: f[0],
      yHoverFormatter: f[0],
      yUnits: f[1],
      min: 0
    });
    // PromConsole.Graph draws an <svg> or says why not; the state is what the tests wait for.
    var waited = 0;
    (function watch() {
      if (body.querySelector('svg')) { setState(el, 'graph'); return; }
      var err = body.querySelector('.prom_graph_error');
      if (err) { setState(el, 'empty', err.textContent); return; }
      waited += 100;
      if (waited < 30000) { setTimeout(watch, 100); } else { setState(el, 'timeout'); }
    })();
    return graph;
  }

  function addTraceLink(panel, el) {
    var target = panel.targets.filter(function (t) { return t.ref === panel.jaeger.quantileRef; })[0];
    var a = text('a', 'ernie-trace-link', 'Traces in Jaeger');
    a.target = '_blank';
    el.querySelector('h4').appendChild(document.createTextNode(' '));
    el.querySelector('h4').appendChild(a);
    var base = (params.get('jaeger') || DEFAULTS.jaeger) + '/search?service=' +
      encodeURIComponent(DEFAULTS.service) + '&lookback=1h&limit=20' +
      (panel.jaeger.operation ? '&operation=' + encodeURIComponent(panel.jaeger.operation) : '');
    a.href = base;
    api('/api/v1/query', {query: fill(target.expr)}, function (body) {
      var vs = body.status === 'success' ? body.data.result.map(function (s) { return parseFloat(s.value[1]); }) : [];
      vs = vs.filter(function (v) { return isFinite(v); });
      if (vs.length) {
        var ms = Math.floor(Math.max.apply(null, vs) * 1000);
        a.href = base + '&minDuration=' + ms + 'ms';
        a.textContent = 'Traces \u2265 p95 (' + ms + ' ms) in Jaeger';
      }
    });
  }

  function text(tag, cls, content) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    e.textContent = content;
    return e;
  }

  function draw() {
    var root = document.getElementById('ernie-panels-root'), row = null;
    values.__rate_interval = DEFAULTS.rateInterval;
    values.__range = Math.round(PromConsole.TimeControl._initialValues.duration) + 's';
    values.__interval = DEFAULTS.rateInterval;
    PANELS.forEach(function (panel) {
      if (panel.row !== row) { row = panel.row; root.appendChild(text('h3', 'ernie-row', row)); }
      var el = document.createElement('div');
      el.className = 'ernie-panel';
      el.id = panel.id;
      el.setAttribute('data-title', panel.title);
      setState(el, 'loading');
      el.appendChild(text('h4', '', panel.title));
      el.appendChild(text('p', 'ernie-desc', panel.description));
      var body = document.createElement('div');
      el.appendChild(body);
      root.appendChild(el);
      if (panel.jaeger) { addTraceLink(panel, el); }
      var numbers = panel.type === 'stat' || panel.type === 'gauge' || panel.type === 'piechart';
      var drawIt = numbers ? drawNumbers : drawGraph;
      if (!panel.absent) { drawIt(panel, el, body); return; }
      instantAll(panel, function (failed, results) {
        var any = !failed && results.some(function (r) { return r.length > 0; });
        if (failed || any) { drawIt(panel, el, body); return; }
        body.appendChild(text('div', 'ernie-absent', panel.absent));
        setState(el, 'absent');
      });
    });
  }

  if (params.get('jaeger')) {
    // Kept across selector changes (the form submits only its own fields).
    var hidden = document.createElement('input');
    hidden.type = 'hidden';
    hidden.name = 'jaeger';
    hidden.value = params.get('jaeger');
    document.getElementById('ernie-vars').appendChild(hidden);
  }
  loadVariable(0, draw);
})();
"""


def render_console(dashboard: dict | None = None) -> str:
    """The console template's exact text (Go template + HTML), one trailing newline."""
    dashboard = build_dashboard() if dashboard is None else dashboard

    def data(obj: object) -> str:
        text = json.dumps(obj, indent=1, ensure_ascii=False)
        # Go's template parser must see no action, and the browser no end of the script element.
        assert "{{" not in text and "</" not in text, "console data would break the template"
        return text

    defaults = {"jaeger": JAEGER_URL, "service": n.SERVICE_NAME, "rateInterval": CONSOLE_RATE_INTERVAL}
    assert "{{" not in _CONSOLE_JS and "</" not in _CONSOLE_JS
    title = dashboard["title"]
    return "\n".join([
        "{{/* Generated by dashboards/generate.py from the panels of dashboards/ernie-inference.json: "
        "do not edit. */}}",
        '{{ template "head" . }}',
        f"<style>{_CONSOLE_CSS}</style>",
        '{{ template "prom_content_head" . }}',
        f"<h1>{title}</h1>",
        f"<p>{dashboard['description']} Same panels and PromQL as the Grafana dashboard "
        "<code>dashboards/ernie-inference.json</code>.</p>",
        '<form id="ernie-vars" class="ernie-vars" method="get"></form>',
        '<div id="ernie-panels-root"></div>',
        f'<script type="application/json" id="ernie-panels">{data(console_panels(dashboard))}</script>',
        f'<script type="application/json" id="ernie-variables">{data(console_variables(dashboard))}</script>',
        f'<script type="application/json" id="ernie-defaults">{data(defaults)}</script>',
        f"<script>{_CONSOLE_JS}</script>",
        '{{ template "prom_content_tail" . }}',
        '{{ template "tail" }}',
    ]) + "\n"


def render(dashboard: dict | None = None) -> str:
    """The file's exact text: build order kept, indent 2, one trailing newline."""
    return json.dumps(build_dashboard() if dashboard is None else dashboard, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--output", type=Path, default=DASHBOARD_PATH, help="the Grafana JSON (default: %(default)s)")
    parser.add_argument("--console-output", type=Path, default=CONSOLE_PATH,
                        help="the Prometheus console page (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    dashboard = build_dashboard()
    outputs = {args.output: render(dashboard), args.console_output: render_console(dashboard)}
    if args.check:
        stale = [path for path, text in outputs.items()
                 if not path.exists() or path.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path} is out of date: run python dashboards/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
