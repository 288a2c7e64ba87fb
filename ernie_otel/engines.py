"""The versioned alias table: how each inference engine behind gateway mode spells the figures the
dashboard's engine row and the engine alerts read, version by version.

Engines rename their metrics between releases (vLLM 0.9.2 renamed ``gpu_cache_usage_perc`` to
``kv_cache_usage_perc`` and 0.11 ``time_per_output_token_seconds`` to
``inter_token_latency_seconds``; SGLang dashboards moved from ``sglang:`` to ``sglang_``). A
dashboard that names one spelling goes blank on the next upgrade. This table is the one place the
spellings live; ``scripts/engine_aliases.py`` turns it into Prometheus recording rules
(``alerts/ernie-engines.yml``) that publish one engine-neutral set, ``engine:*``, labelled
``job``, ``instance``, ``model`` and ``engine`` (the family). The dashboard's engine row and the
engine alerts read only that set.

Every name below was read from the engine's own source or documentation, cited per version in
``source``; ``tests/data/engines/<key>.prom`` is the matching recorded exposition that the
contract test (``tests/test_engine_aliases.py``) serves through the real Collector and Prometheus.

Plain data, no imports beyond the standard library: the generator, the docs and the tests read it
without OpenTelemetry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

# The Collector job that scrapes the engines (collector/engine-metrics.yaml) and the label the
# neutral set carries the engine family in.
ENGINE_JOB = "inference-engine"
ENGINE_LABEL = "engine"
MODEL_LABEL = "model"
# Labels every neutral series keeps (histogram buckets add `le`).
NEUTRAL_LABELS = ("job", "instance", MODEL_LABEL, ENGINE_LABEL)
# The window of the recorded rates (counter rates, histogram bucket rates, hit ratios).
RATE_WINDOW = "5m"
RULE_GROUP = "ernie-engine-aliases"
ALERT_GROUP = "ernie-engine-alerts"


class Figure(Enum):
    """One engine-neutral figure; the value is its short name in docs and tests."""

    RUNNING = "running"
    WAITING = "waiting"
    KV_CACHE_USAGE = "kv_cache_usage"
    PREFIX_CACHE_HIT = "prefix_cache_hit"
    TTFT = "ttft"
    ITL = "itl"
    PREEMPTIONS = "preemptions"


class Shape(Enum):
    """How an engine exposes a figure, which decides the PromQL that normalises it."""

    GAUGE = "gauge"  # a current value (requests, or a 0..1 fraction)
    COUNTER = "counter"  # a monotonic count: recorded as a per-second rate
    HISTOGRAM = "histogram"  # a Prometheus histogram: recorded as per-`le` bucket rates
    HIT_COUNTERS = "hit counters"  # (hits, queries) counters: recorded as rate(hits) / rate(queries)


@dataclass(frozen=True)
class Source:
    """One engine spelling of one figure: the series names (a histogram's base name, without
    ``_bucket``; hits then queries for ``HIT_COUNTERS``) and their shape."""

    shape: Shape
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        want = 2 if self.shape is Shape.HIT_COUNTERS else 1
        assert len(self.names) == want, (self.shape, self.names)

    @property
    def series(self) -> tuple[str, ...]:
        """The exposed series the rules read (a histogram's ``_bucket``)."""
        return tuple(n + "_bucket" for n in self.names) if self.shape is Shape.HISTOGRAM else self.names


def gauge(name: str) -> Source:
    return Source(Shape.GAUGE, (name,))


def counter(name: str) -> Source:
    return Source(Shape.COUNTER, (name,))


def histogram(name: str) -> Source:
    return Source(Shape.HISTOGRAM, (name,))


def hit_counters(hits: str, queries: str) -> Source:
    return Source(Shape.HIT_COUNTERS, (hits, queries))


@dataclass(frozen=True)
class EngineVersion:
    """What one engine release exposes. ``figures`` maps each figure the release has to its
    spellings, preferred first: a release in a deprecation window exposes the old and the new
    name, and the rules take the new one where both are there. A figure missing here is one the
    release does not expose; its neutral series is absent for that engine, never zero."""

    engine: str
    version: str
    source: str
    model_label: str | None
    figures: Mapping[Figure, tuple[Source, ...]]

    @property
    def key(self) -> str:
        """File stem of the recorded exposition under tests/data/engines/."""
        return f"{self.engine}-{self.version}"

    @property
    def series(self) -> frozenset[str]:
        return frozenset(s for sources in self.figures.values() for src in sources for s in src.series)


@dataclass(frozen=True)
class Neutral:
    """One series of the engine-neutral set: its recording-rule name, unit and meaning."""

    figure: Figure
    record: str
    unit: str
    aggregation: str  # how replicas inside one engine process (vLLM's data-parallel engine cores) combine
    help: str


_VLLM = "https://github.com/vllm-project/vllm/blob/{}/vllm/v1/metrics/loggers.py"
_SGLANG = "https://github.com/sgl-project/sglang/blob/{}/python/sglang/srt/{}"
_FASTDEPLOY = "https://github.com/PaddlePaddle/FastDeploy/blob/{}/docs/online_serving/metrics.md"
_TGI = ("https://github.com/huggingface/text-generation-inference/blob/53fdbe6/docs/source/reference/"
        "metrics.md")

ALIAS_TABLE: tuple[EngineVersion, ...] = (
    EngineVersion(
        "vllm", "0.6",
        "vLLM V0 engine (v0.6.x, vllm/engine/metrics.py), listed as the v0 set in vLLM's "
        "docs/design/v1/metrics.md: gpu_cache_usage_perc, gpu_prefix_cache_hit_rate (gauge), "
        "time_per_output_token_seconds",
        "model_name",
        {
            Figure.RUNNING: (gauge("vllm:num_requests_running"),),
            Figure.WAITING: (gauge("vllm:num_requests_waiting"),),
            Figure.KV_CACHE_USAGE: (gauge("vllm:gpu_cache_usage_perc"),),
            Figure.PREFIX_CACHE_HIT: (gauge("vllm:gpu_prefix_cache_hit_rate"),),
            Figure.TTFT: (histogram("vllm:time_to_first_token_seconds"),),
            Figure.ITL: (histogram("vllm:time_per_output_token_seconds"),),
            Figure.PREEMPTIONS: (counter("vllm:num_preemptions_total"),),
        },
    ),
    EngineVersion(
        "vllm", "0.9.1",
        "vLLM V1 before the renames (" + _VLLM.format("v0.9.1") + "): prefix cache as "
        "gpu_prefix_cache_queries/hits counters, KV cache still gpu_cache_usage_perc",
        "model_name",
        {
            Figure.RUNNING: (gauge("vllm:num_requests_running"),),
            Figure.WAITING: (gauge("vllm:num_requests_waiting"),),
            Figure.KV_CACHE_USAGE: (gauge("vllm:gpu_cache_usage_perc"),),
            Figure.PREFIX_CACHE_HIT: (hit_counters("vllm:gpu_prefix_cache_hits_total",
                                                   "vllm:gpu_prefix_cache_queries_total"),),
            Figure.TTFT: (histogram("vllm:time_to_first_token_seconds"),),
            Figure.ITL: (histogram("vllm:time_per_output_token_seconds"),),
            Figure.PREEMPTIONS: (counter("vllm:num_preemptions_total"),),
        },
    ),
    EngineVersion(
        "vllm", "0.11",
        "vLLM in its deprecation window (" + _VLLM.format("v0.11.0") + "): kv_cache_usage_perc and "
        "prefix_cache_queries/hits (new in 0.9.2) next to the deprecated gpu_* names, "
        "inter_token_latency_seconds (0.10.2/0.11) next to the deprecated time_per_output_token_seconds",
        "model_name",
        {
            Figure.RUNNING: (gauge("vllm:num_requests_running"),),
            Figure.WAITING: (gauge("vllm:num_requests_waiting"),),
            Figure.KV_CACHE_USAGE: (gauge("vllm:kv_cache_usage_perc"), gauge("vllm:gpu_cache_usage_perc")),
            Figure.PREFIX_CACHE_HIT: (
                hit_counters("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
                hit_counters("vllm:gpu_prefix_cache_hits_total", "vllm:gpu_prefix_cache_queries_total"),
            ),
            Figure.TTFT: (histogram("vllm:time_to_first_token_seconds"),),
            Figure.ITL: (histogram("vllm:inter_token_latency_seconds"),
                         histogram("vllm:time_per_output_token_seconds")),
            Figure.PREEMPTIONS: (counter("vllm:num_preemptions_total"),),
        },
    ),
    EngineVersion(
        "vllm", "0.12",
        "vLLM after the removals (" + _VLLM.format("v0.12.0") + ", docs/design/metrics.md): only "
        "kv_cache_usage_perc, prefix_cache_queries/hits and inter_token_latency_seconds",
        "model_name",
        {
            Figure.RUNNING: (gauge("vllm:num_requests_running"),),
            Figure.WAITING: (gauge("vllm:num_requests_waiting"),),
            Figure.KV_CACHE_USAGE: (gauge("vllm:kv_cache_usage_perc"),),
            Figure.PREFIX_CACHE_HIT: (hit_counters("vllm:prefix_cache_hits_total",
                                                   "vllm:prefix_cache_queries_total"),),
            Figure.TTFT: (histogram("vllm:time_to_first_token_seconds"),),
            Figure.ITL: (histogram("vllm:inter_token_latency_seconds"),),
            Figure.PREEMPTIONS: (counter("vllm:num_preemptions_total"),),
        },
    ),
    EngineVersion(
        "sglang", "0.4",
        "SGLang 0.4 (" + _SGLANG.format("v0.4.5.post3", "metrics/collector.py") + "; the sample output of "
        "sgl-project/sglang PR #4444): sglang: prefix, token_usage and cache_hit_rate "
        "gauges (0..1), retractions only as a gauge (not a count, so no preemption figure)",
        "model_name",
        {
            Figure.RUNNING: (gauge("sglang:num_running_reqs"),),
            Figure.WAITING: (gauge("sglang:num_queue_reqs"),),
            Figure.KV_CACHE_USAGE: (gauge("sglang:token_usage"),),
            Figure.PREFIX_CACHE_HIT: (gauge("sglang:cache_hit_rate"),),
            Figure.TTFT: (histogram("sglang:time_to_first_token_seconds"),),
            Figure.ITL: (histogram("sglang:inter_token_latency_seconds"),),
        },
    ),
    EngineVersion(
        "sglang", "main",
        "SGLang main (" + _SGLANG.format("main", "observability/metrics_collector.py") + "): adds the "
        "num_retracted_requests_total counter (\"the name is requests instead of reqs\")",
        "model_name",
        {
            Figure.RUNNING: (gauge("sglang:num_running_reqs"),),
            Figure.WAITING: (gauge("sglang:num_queue_reqs"),),
            Figure.KV_CACHE_USAGE: (gauge("sglang:token_usage"),),
            Figure.PREFIX_CACHE_HIT: (gauge("sglang:cache_hit_rate"),),
            Figure.TTFT: (histogram("sglang:time_to_first_token_seconds"),),
            Figure.ITL: (histogram("sglang:inter_token_latency_seconds"),),
            Figure.PREEMPTIONS: (counter("sglang:num_retracted_requests_total"),),
        },
    ),
    EngineVersion(
        "sglang", "underscore",
        "SGLang spelled sglang_* (llm-d's dashboards after sgl-project/sglang PR #15758, llm-d PR "
        "#1970; SGLang's own example Grafana dashboard used the same spelling): the main set with "
        "the colon replaced",
        "model_name",
        {
            Figure.RUNNING: (gauge("sglang_num_running_reqs"),),
            Figure.WAITING: (gauge("sglang_num_queue_reqs"),),
            Figure.KV_CACHE_USAGE: (gauge("sglang_token_usage"),),
            Figure.PREFIX_CACHE_HIT: (gauge("sglang_cache_hit_rate"),),
            Figure.TTFT: (histogram("sglang_time_to_first_token_seconds"),),
            Figure.ITL: (histogram("sglang_inter_token_latency_seconds"),),
            Figure.PREEMPTIONS: (counter("sglang_num_retracted_requests_total"),),
        },
    ),
    EngineVersion(
        "fastdeploy", "2.x-766e58b",
        "FastDeploy 2.x metrics list (" + _FASTDEPLOY.format("766e58b") + ", fastdeploy/metrics/"
        "metrics.py): gpu_cache_usage_perc (\"1 means 100 percent usage\"), hit_token_rate (token-level "
        "prefix-cache hit rate; the docs give its unit as %, read here as 0..1 like gpu_cache_usage_perc, "
        "unverified against a live FastDeploy), time_per_output_token_seconds; no preemption counter, no "
        "model label",
        None,
        {
            Figure.RUNNING: (gauge("fastdeploy:num_requests_running"),),
            Figure.WAITING: (gauge("fastdeploy:num_requests_waiting"),),
            Figure.KV_CACHE_USAGE: (gauge("fastdeploy:gpu_cache_usage_perc"),),
            Figure.PREFIX_CACHE_HIT: (gauge("fastdeploy:hit_token_rate"),),
            Figure.TTFT: (histogram("fastdeploy:time_to_first_token_seconds"),),
            Figure.ITL: (histogram("fastdeploy:time_per_output_token_seconds"),),
        },
    ),
    EngineVersion(
        "fastdeploy", "2.x-19d8ac2",
        "FastDeploy's later metrics list (" + _FASTDEPLOY.format("19d8ac2") + "): adds "
        "request_preempted_total, num_requests_preempted, num_requests_enqueued",
        None,
        {
            Figure.RUNNING: (gauge("fastdeploy:num_requests_running"),),
            Figure.WAITING: (gauge("fastdeploy:num_requests_waiting"),),
            Figure.KV_CACHE_USAGE: (gauge("fastdeploy:gpu_cache_usage_perc"),),
            Figure.PREFIX_CACHE_HIT: (gauge("fastdeploy:hit_token_rate"),),
            Figure.TTFT: (histogram("fastdeploy:time_to_first_token_seconds"),),
            Figure.ITL: (histogram("fastdeploy:time_per_output_token_seconds"),),
            Figure.PREEMPTIONS: (counter("fastdeploy:request_preempted_total"),),
        },
    ),
    EngineVersion(
        "tgi", "3",
        "Text Generation Inference 2.x/3.x (" + _TGI + "): batch size and queue size gauges, "
        "mean time per token per request; no KV-cache, prefix-cache, TTFT or preemption metric",
        None,
        {
            Figure.RUNNING: (gauge("tgi_batch_current_size"),),
            Figure.WAITING: (gauge("tgi_queue_size"),),
            Figure.ITL: (histogram("tgi_request_mean_time_per_token_duration"),),
        },
    ),
)

NEUTRAL: dict[Figure, Neutral] = {
    Figure.RUNNING: Neutral(Figure.RUNNING, "engine:requests_running:sum", "requests", "sum",
                            "Requests in the engine's running batch."),
    Figure.WAITING: Neutral(Figure.WAITING, "engine:requests_waiting:sum", "requests", "sum",
                            "Requests in the engine's own waiting queue."),
    Figure.KV_CACHE_USAGE: Neutral(Figure.KV_CACHE_USAGE, "engine:kv_cache_usage:ratio", "ratio 0..1", "max",
                                   "Share of the engine's KV cache in use (1 = full)."),
    Figure.PREFIX_CACHE_HIT: Neutral(Figure.PREFIX_CACHE_HIT, "engine:prefix_cache_hit:ratio", "ratio 0..1", "avg",
                                     f"Prefix-cache hit ratio: hits / queries over {RATE_WINDOW} where the engine "
                                     "counts both, else the engine's own hit-rate gauge."),
    Figure.TTFT: Neutral(Figure.TTFT, f"engine:ttft_seconds_bucket:rate{RATE_WINDOW}", "1/s per le", "sum",
                         "Time to first token inside the engine: per-bucket rate of its histogram."),
    Figure.ITL: Neutral(Figure.ITL, f"engine:itl_seconds_bucket:rate{RATE_WINDOW}", "1/s per le", "sum",
                        "Inter-token latency (time per output token) inside the engine: per-bucket rate."),
    Figure.PREEMPTIONS: Neutral(Figure.PREEMPTIONS, f"engine:preemptions:rate{RATE_WINDOW}", "1/s", "sum",
                                "Requests preempted (vLLM, FastDeploy) or retracted (SGLang) per second."),
}

# Quantiles recorded from the bucket rates (what the alerts compare).
QUANTILES: dict[Figure, str] = {
    Figure.TTFT: "engine:ttft_seconds:p95",
    Figure.ITL: "engine:itl_seconds:p95",
}


@dataclass(frozen=True)
class EngineAlert:
    """An engine alert on the neutral set: ``expr`` fires; ``needs`` are the figures it reads
    (an engine without one of them cannot raise it)."""

    name: str
    expr: str
    duration: str
    severity: str
    summary: str
    description: str
    needs: tuple[Figure, ...]


KV_CACHE_NEAR_FULL = 0.9
TTFT_P95_LIMIT_S = 5.0
PREEMPTIONS_PER_S = 0.1

ENGINE_ALERTS: tuple[EngineAlert, ...] = (
    EngineAlert(
        "EngineKVCacheNearlyFull",
        f"{NEUTRAL[Figure.KV_CACHE_USAGE].record} > {KV_CACHE_NEAR_FULL}", "10m", "warning",
        "{{ $labels.engine }} at {{ $labels.instance }}: KV cache {{ $value | humanizePercentage }} full",
        "The engine's KV cache is {{ $value | humanizePercentage }} full and has been over 90% for 10 "
        "minutes: new requests wait and running ones are preempted. Add capacity or lower --max-num-seqs "
        "on the engine.",
        (Figure.KV_CACHE_USAGE,),
    ),
    EngineAlert(
        "EngineQueueBacklog",
        f"{NEUTRAL[Figure.WAITING].record} > on (job, instance, model, engine) {NEUTRAL[Figure.RUNNING].record}",
        "15m", "warning",
        "{{ $labels.engine }} at {{ $labels.instance }}: {{ $value }} requests waiting, more than running",
        "{{ $value }} requests wait in the engine's own queue, more than it runs, and have for 15 "
        "minutes: it admits them slower than they arrive.",
        (Figure.WAITING, Figure.RUNNING),
    ),
    EngineAlert(
        "EngineSlowFirstToken",
        f"{QUANTILES[Figure.TTFT]} > {TTFT_P95_LIMIT_S:g}", "10m", "warning",
        "{{ $labels.engine }} at {{ $labels.instance }}: p95 time to first token {{ $value | humanizeDuration }}",
        "The engine's own p95 time to first token is {{ $value | humanizeDuration }}, over 5 s for 10 "
        "minutes (prefill or queueing inside the engine, not the gateway hop).",
        (Figure.TTFT,),
    ),
    EngineAlert(
        "EnginePreempting",
        f"{NEUTRAL[Figure.PREEMPTIONS].record} > {PREEMPTIONS_PER_S:g}", "10m", "warning",
        "{{ $labels.engine }} at {{ $labels.instance }}: {{ $value | humanize }} preemptions/s",
        "The engine preempts (or retracts) {{ $value | humanize }} requests/s, more than one every 10 s "
        "for 10 minutes: its KV cache is too small for the batch it admits, and preempted requests redo "
        "their prefill.",
        (Figure.PREEMPTIONS,),
    ),
)


def families() -> tuple[str, ...]:
    """Engine families in table order."""
    return tuple(dict.fromkeys(v.engine for v in ALIAS_TABLE))


def family_prefixes() -> tuple[str, ...]:
    """The prefixes of every series the table names (what the Collector keeps and Prometheus
    keeps from the Collector), e.g. ``vllm:``, ``sglang_``."""
    out: dict[str, None] = {}
    for v in ALIAS_TABLE:
        for name in sorted(v.series):
            sep = min((i for i in (name.find(":"), name.find("_")) if i > 0), default=len(name))
            out[name[: sep + 1]] = None
    return tuple(out)


def all_series() -> frozenset[str]:
    return frozenset(s for v in ALIAS_TABLE for s in v.series)


def spellings(figure: Figure) -> tuple[str, ...]:
    """Every base name of one figure across the table (first appearance order)."""
    out: dict[str, None] = {}
    for v in ALIAS_TABLE:
        for src in v.figures.get(figure, ()):
            for name in src.names:
                out[name] = None
    return tuple(out)


def alias_markdown() -> str:
    """The alias-table section of docs/metrics.md."""
    lines = [
        "## Engine alias table (gateway mode)",
        "",
        "Generated from `ernie_otel/engines.py`. `collector/engine-metrics.yaml` scrapes the engine behind",
        f"`ernie-serve --upstream` as job `{ENGINE_JOB}`; the recording rules in `alerts/ernie-engines.yml`",
        "(written by `python scripts/engine_aliases.py`) publish one engine-neutral set from whichever",
        "spelling the engine exposes, preferring the newer name where a release exposes both. Labels:",
        "`job`, `instance`, `model` (from the engine's `model_name`, absent where the engine has none) and",
        "`engine` (the family). A figure an engine does not expose is absent for it, never zero.",
        "",
        "| neutral series | unit | per engine process | meaning |",
        "|---|---|---|---|",
    ]
    for nt in NEUTRAL.values():
        lines.append(f"| `{nt.record}` | {nt.unit} | {nt.aggregation} | {nt.help} |")
    for fig, rec in QUANTILES.items():
        lines.append(f"| `{rec}` | s | histogram_quantile | p95 of `{NEUTRAL[fig].record}` |")
    lines += ["", "| engine | version | " + " | ".join(f.value for f in Figure) + " | source |",
              "|---|---|" + "---|" * len(Figure) + "---|"]
    for v in ALIAS_TABLE:
        cells = []
        for fig in Figure:
            srcs = v.figures.get(fig, ())
            cells.append(" then ".join("/".join(f"`{n}`" for n in s.names) for s in srcs) or "--")
        lines.append(f"| {v.engine} | {v.version} | " + " | ".join(cells) + f" | {v.source} |")
    lines.append("")
    return "\n".join(lines)
