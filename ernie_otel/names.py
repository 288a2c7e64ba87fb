"""Every telemetry name of ernie-otel: metrics, units, buckets, attribute keys, span names.

This is the one place a metric name is written. Dashboards, alerts, docs/metrics.md and the
tests all derive from (or are checked against) the catalogue below. The Prometheus names are
the contract: the OTel names and units are chosen so that both the Python Prometheus exporter
(direct scrape of ``--metrics-port``) and the Collector's prometheus exporter produce exactly
these names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import Enum

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _gen_ai
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as _gen_ai_metrics
from opentelemetry.semconv.attributes import error_attributes as _error
from opentelemetry.semconv.attributes import server_attributes as _server

from . import engines as _engines

# The label-value vocabularies live in ``kinds`` (no OpenTelemetry there, so the engine and the
# protocol layer can use them); re-exported here for everything that builds telemetry.
from .kinds import ERROR_TYPE_MEANING as ERROR_TYPE_MEANING
from .kinds import ErrorType as ErrorType
from .kinds import FinishReason as FinishReason
from .kinds import Operation as Operation
from .kinds import Status as Status
from .kinds import TokenType as TokenType

METER_NAME = "ernie_otel"
TRACER_NAME = "ernie_otel"
SERVICE_NAME = "ernie-serve"

# ---------------------------------------------------------------- attribute keys (metric labels)
# ernie_* metrics use short keys (the monitoring design's labels); error.type is the semconv key,
# which Prometheus spells error_type -- the label the design asks for.
ATTR_MODEL = "model"
ATTR_OPERATION = "operation"
ATTR_STATUS = "status"
ATTR_ERROR_TYPE = _error.ERROR_TYPE  # "error.type"
ATTR_FINISH_REASON = "finish_reason"
# SLO and attribution labels (request, token, SLO and cost counters only; never on histograms).
ATTR_TENANT = "tenant"
ATTR_SLO = "slo"
ATTR_RESULT = "result"
ATTR_TOKEN_TYPE = "token_type"
ATTR_REASON = "reason"
ATTR_HEADER = "header"

# GenAI semantic-convention keys.
GEN_AI_OPERATION_NAME = _gen_ai.GEN_AI_OPERATION_NAME
GEN_AI_PROVIDER_NAME = _gen_ai.GEN_AI_PROVIDER_NAME
GEN_AI_REQUEST_MODEL = _gen_ai.GEN_AI_REQUEST_MODEL
GEN_AI_RESPONSE_MODEL = _gen_ai.GEN_AI_RESPONSE_MODEL
GEN_AI_TOKEN_TYPE = _gen_ai.GEN_AI_TOKEN_TYPE
GEN_AI_REQUEST_MAX_TOKENS = _gen_ai.GEN_AI_REQUEST_MAX_TOKENS
GEN_AI_REQUEST_TEMPERATURE = _gen_ai.GEN_AI_REQUEST_TEMPERATURE
GEN_AI_REQUEST_TOP_P = _gen_ai.GEN_AI_REQUEST_TOP_P
GEN_AI_REQUEST_SEED = _gen_ai.GEN_AI_REQUEST_SEED
GEN_AI_REQUEST_STREAM = _gen_ai.GEN_AI_REQUEST_STREAM
GEN_AI_RESPONSE_ID = _gen_ai.GEN_AI_RESPONSE_ID
GEN_AI_RESPONSE_FINISH_REASONS = _gen_ai.GEN_AI_RESPONSE_FINISH_REASONS
GEN_AI_USAGE_INPUT_TOKENS = _gen_ai.GEN_AI_USAGE_INPUT_TOKENS
GEN_AI_USAGE_OUTPUT_TOKENS = _gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS
GEN_AI_INPUT_MESSAGES = _gen_ai.GEN_AI_INPUT_MESSAGES
GEN_AI_OUTPUT_MESSAGES = _gen_ai.GEN_AI_OUTPUT_MESSAGES
SERVER_ADDRESS = _server.SERVER_ADDRESS
SERVER_PORT = _server.SERVER_PORT

# No registered gen_ai.provider.name value exists for Baidu/ERNIE: a fixed custom value.
PROVIDER_NAME = "ernie_otel"

GPU_INDEX = "gpu.index"
GPU_UUID = "gpu.uuid"
GPU_NAME = "gpu.name"

# Span attributes that are ours (not semconv).
SPAN_ATTR_QUEUE_POSITION = "ernie.queue.length_at_arrival"
SPAN_ATTR_BATCH_SIZE = "ernie.batch.max_size"
SPAN_ATTR_DECODE_STEPS = "ernie.decode.steps"
SPAN_ATTR_TENANT = "ernie.tenant"
SPAN_ATTR_SLO_MET = "ernie.slo.met"  # bool: met every judged objective
SPAN_ATTR_SLO_MISSED = "ernie.slo.missed"  # the objectives missed, e.g. ["ttft"]
SPAN_ATTR_COST = "ernie.cost"
# Arrival to first token, seconds (float), on the GenAI span whenever a first token came: the
# same quantity and unit as the semconv server metric gen_ai.server.time_to_first_token, hence
# its name. (semconv's span attribute gen_ai.response.time_to_first_chunk is a client's view of a
# stream, request issued to first chunk received: not what a server measures.) The fleet's tail
# sampler keeps a trace on it (collector/fleet/sampler.yaml, slow-first-token), exactly.
SPAN_ATTR_TTFT = _gen_ai_metrics.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN


def span_attr_slo_target(slo: str) -> str:
    """The request's own target for one objective, milliseconds (after header overrides)."""
    return f"ernie.slo.{slo}.target_ms"


# Opt-in for prompt/completion content on spans (off by default: content is sensitive).
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

# ----------------------------------------------------------------------------------- spans
SPAN_QUEUE = "ernie.queue"
SPAN_PREFILL = "ernie.prefill"
SPAN_DECODE = "ernie.decode"
# The start-up span: loading the model (a root span of its own trace, written once it is loaded).
SPAN_MODEL_LOAD = "ernie.model.load"
SPAN_ATTR_MODEL_SOURCE = "ernie.model.source"  # what --model named: a path, a Hub id or "tiny"
SPAN_ATTR_MODEL_DEVICE = "ernie.model.device"
SPAN_ATTR_MODEL_DTYPE = "ernie.model.dtype"


def genai_span_name(operation: str, model: str) -> str:
    return f"{operation} {model}"


# HTTP headers
TRACE_ID_HEADER = "X-Trace-Id"
TRACE_RESPONSE_HEADER = "traceresponse"
# W3C Server-Timing: one entry per phase, milliseconds; the gateway appends its own after the
# upstream's under GATEWAY_TIMING_PREFIX.
SERVER_TIMING_HEADER = "Server-Timing"
SERVER_TIMING_PHASES = ("queue", "prefill", "decode", "total")
GATEWAY_TIMING_PREFIX = "gateway-"

# ------------------------------------------------------------------------------------ logs
# The structured access log: one JSON line per finished request on this logger (stderr by
# default, ernie-serve --request-log), and one OTLP log record per request when logs are exported.
ACCESS_LOGGER = "ernie_otel.access"
# Field names of a log line. trace_id/span_id are spelled as VictoriaLogs names the ids of an OTLP
# log record, so one LogsQL query (trace_id:<id>) finds a request in the store and in a shipped file.
LOG_TRACE_ID = "trace_id"
LOG_SPAN_ID = "span_id"
LOG_REQUEST_ID = "request_id"
LOG_OPERATION = ATTR_OPERATION
LOG_MODEL = ATTR_MODEL
LOG_STATUS = ATTR_STATUS
LOG_ERROR_TYPE = ATTR_ERROR_TYPE
LOG_FINISH_REASON = ATTR_FINISH_REASON
LOG_STREAM = "stream"
LOG_INPUT_TOKENS = "input_tokens"
LOG_OUTPUT_TOKENS = "output_tokens"
LOG_QUEUE_MS = "queue_ms"
LOG_TTFT_MS = "ttft_ms"
LOG_TPOT_MS = "tpot_ms"
LOG_E2E_MS = "e2e_ms"
LOG_TENANT = ATTR_TENANT
# Only with the content opt-in (CAPTURE_CONTENT_ENV), as on spans.
LOG_INPUT_MESSAGES = GEN_AI_INPUT_MESSAGES
LOG_OUTPUT_TEXT = "gen_ai.output.text"

# --------------------------------------------------------------------------------- metrics
class Kind(str, Enum):
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    GAUGE = "gauge"


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: how it is created in OTel and how Prometheus spells it."""

    otel_name: str
    kind: Kind
    unit: str
    prom_name: str
    labels: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] | None = None

    @property
    def prom_labels(self) -> tuple[str, ...]:
        return tuple(label.replace(".", "_") for label in self.labels)


# The design asks for 0.1, 0.3, 0.5, 0.8, 1, 2, 3; the tail reaches long generations.
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0, 120.0, 300.0)
QUEUE_TIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Semantic-convention advisory buckets for the GenAI server metrics.
GENAI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
GENAI_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
GENAI_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
GENAI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)

_REQ = (ATTR_MODEL, ATTR_OPERATION)
# gen_ai.response.model (recommended) is on the spans but not on these metrics: here it always
# equals the request model, and each attribute costs ~1 us per record per metric reader.
_GENAI = (GEN_AI_OPERATION_NAME, GEN_AI_PROVIDER_NAME, GEN_AI_REQUEST_MODEL)
_GPU = (GPU_INDEX, GPU_UUID, GPU_NAME)

REQUESTS = MetricSpec(
    "ernie_inference_requests", Kind.COUNTER, "{request}", "ernie_inference_requests_total",
    (*_REQ, ATTR_STATUS), "Inference requests finished, by final status (ok, error, cancelled, rejected).")
LATENCY = MetricSpec(
    "ernie_inference_latency", Kind.HISTOGRAM, "s", "ernie_inference_latency_seconds",
    (*_REQ, ATTR_STATUS), "End-to-end request latency, arrival to last byte.", LATENCY_BUCKETS)
ERRORS = MetricSpec(
    "ernie_inference_errors", Kind.COUNTER, "{error}", "ernie_inference_errors_total",
    (*_REQ, ATTR_ERROR_TYPE), "Failed or rejected inference requests, by error_type (fixed set).")
# The annotation-only unit keeps the Prometheus name free of a "_per_second" suffix in both
# exporters; the value is output tokens per second.
TOKEN_THROUGHPUT = MetricSpec(
    "ernie_token_throughput", Kind.GAUGE, "{token_per_second}", "ernie_token_throughput",
    (ATTR_MODEL,), "Output tokens per second over a sliding window, across all requests.")
QUEUE_LENGTH = MetricSpec(
    "ernie_queue_length", Kind.GAUGE, "{request}", "ernie_queue_length",
    (ATTR_MODEL,), "Requests waiting to be scheduled.")
QUEUE_CAPACITY = MetricSpec(
    "ernie_queue_capacity", Kind.GAUGE, "{request}", "ernie_queue_capacity",
    (ATTR_MODEL,), "Waiting-queue limit (--max-queue-len); beyond it requests are rejected.")
RUNNING = MetricSpec(
    "ernie_requests_running", Kind.GAUGE, "{request}", "ernie_requests_running",
    (ATTR_MODEL,), "Requests in the running batch.")
RUNNING_CAPACITY = MetricSpec(
    "ernie_requests_running_capacity", Kind.GAUGE, "{request}", "ernie_requests_running_capacity",
    (ATTR_MODEL,), "Running-batch limit (--max-num-seqs).")
QUEUE_TIME = MetricSpec(
    "ernie_queue_time", Kind.HISTOGRAM, "s", "ernie_queue_time_seconds",
    _REQ, "Time from arrival to being scheduled into the running batch.", QUEUE_TIME_BUCKETS)
PROMPT_TOKENS = MetricSpec(
    "ernie_prompt_tokens", Kind.COUNTER, "{token}", "ernie_prompt_tokens_total",
    _REQ, "Prompt tokens processed (prefill).")
GENERATION_TOKENS = MetricSpec(
    "ernie_generation_tokens", Kind.COUNTER, "{token}", "ernie_generation_tokens_total",
    _REQ, "Output tokens generated.")
GENAI_DURATION = MetricSpec(
    _gen_ai_metrics.GEN_AI_SERVER_REQUEST_DURATION, Kind.HISTOGRAM, "s",
    "gen_ai_server_request_duration_seconds", (*_GENAI, ATTR_ERROR_TYPE),
    "GenAI server request duration (semconv); error.type set on failures.", GENAI_DURATION_BUCKETS)
GENAI_TTFT = MetricSpec(
    _gen_ai_metrics.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, Kind.HISTOGRAM, "s",
    "gen_ai_server_time_to_first_token_seconds", _GENAI,
    "Time to generate the first token, arrival to first token (semconv).", GENAI_TTFT_BUCKETS)
GENAI_TPOT = MetricSpec(
    _gen_ai_metrics.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN, Kind.HISTOGRAM, "s",
    "gen_ai_server_time_per_output_token_seconds", _GENAI,
    "Time per output token after the first (decode phase), per request (semconv).", GENAI_TPOT_BUCKETS)
GENAI_TOKEN_USAGE = MetricSpec(
    _gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE, Kind.HISTOGRAM, "{token}",
    "gen_ai_client_token_usage", (*_GENAI, GEN_AI_TOKEN_TYPE),
    "Tokens per request, by gen_ai.token.type input/output (semconv).", GENAI_TOKEN_BUCKETS)
GPU_UTILIZATION = MetricSpec(
    "gpu_utilization", Kind.GAUGE, "%", "gpu_utilization_percent", _GPU,
    "GPU utilization (NVML), percent of the last sample period a kernel ran.")
GPU_MEMORY_USED = MetricSpec(
    "gpu_memory_used", Kind.GAUGE, "By", "gpu_memory_used_bytes", _GPU, "GPU memory in use (NVML).")
GPU_MEMORY_TOTAL = MetricSpec(
    "gpu_memory_total", Kind.GAUGE, "By", "gpu_memory_total_bytes", _GPU, "GPU memory installed (NVML).")
GPU_MEMORY_USAGE = MetricSpec(
    "gpu_memory_usage", Kind.GAUGE, "%", "gpu_memory_usage_percent", _GPU,
    "GPU memory used / total, percent (NVML).")
GPU_TEMPERATURE = MetricSpec(
    "gpu_temperature", Kind.GAUGE, "Cel", "gpu_temperature_celsius", _GPU, "GPU core temperature (NVML).")
GPU_POWER = MetricSpec(
    "gpu_power_usage", Kind.GAUGE, "W", "gpu_power_usage_watts", _GPU, "GPU power draw (NVML).")
PROCESS_CPU = MetricSpec(
    "process.cpu.time", Kind.COUNTER, "s", "process_cpu_time_seconds_total", (),
    "CPU time used by the ernie-serve process (user + system).")
PROCESS_MEMORY = MetricSpec(
    "process.memory.usage", Kind.GAUGE, "By", "process_memory_usage_bytes", (),
    "Resident memory of the ernie-serve process.")

_TENANT = (ATTR_MODEL, ATTR_TENANT)
SLO_REQUESTS = MetricSpec(
    "ernie_slo_requests", Kind.COUNTER, "{request}", "ernie_slo_requests_total",
    (*_TENANT, ATTR_SLO, ATTR_RESULT), "Requests judged against an SLO target (slo: ttft, tpot, e2e, all; "
    "result: met, missed); exact counts, so targets need not be bucket edges.")
GOODPUT_TOKENS = MetricSpec(
    "ernie_goodput_tokens", Kind.COUNTER, "{token}", "ernie_goodput_tokens_total",
    _TENANT, "Output tokens of requests that met all their SLO targets.")
SLO_TARGET = MetricSpec(
    "ernie_slo_target", Kind.GAUGE, "s", "ernie_slo_target_seconds",
    (ATTR_MODEL, ATTR_SLO), "The server's SLO target per objective (per-request headers may override it).")
SLO_OBJECTIVE = MetricSpec(
    "ernie_slo_objective", Kind.GAUGE, "{ratio}", "ernie_slo_objective",
    (ATTR_MODEL,), "Share of judged requests that must meet their targets (--slo-objective); 1 - it is the "
    "error budget.")
SLO_HEADER_PROBLEMS = MetricSpec(
    "ernie_slo_header_problems", Kind.COUNTER, "{header}", "ernie_slo_header_problems_total",
    (ATTR_MODEL, ATTR_HEADER, ATTR_REASON), "x-slo-*-ms request headers ignored (invalid) or clamped.")
TENANT_REQUESTS = MetricSpec(
    "ernie_tenant_requests", Kind.COUNTER, "{request}", "ernie_tenant_requests_total",
    (*_TENANT, ATTR_STATUS), "Inference requests finished, by tenant and final status.")
TENANT_TOKENS = MetricSpec(
    "ernie_tenant_tokens", Kind.COUNTER, "{token}", "ernie_tenant_tokens_total",
    (*_TENANT, ATTR_TOKEN_TYPE), "Tokens by tenant and token_type (input, output).")
TENANT_OVERFLOW = MetricSpec(
    "ernie_tenant_overflow", Kind.COUNTER, "{request}", "ernie_tenant_overflow_total",
    (ATTR_MODEL, ATTR_REASON), "Requests counted under tenant=\"other\" (reason: unknown, cap).")
COST = MetricSpec(
    "ernie_request_cost", Kind.COUNTER, "{currency}", "ernie_request_cost_total",
    _TENANT, "Cost of finished requests from the pricing file (--pricing-file), in its currency.")
# The engine's insides (local engine only; absent in gateway mode). Filled by the engine at step
# boundaries as plain numbers (EngineStats), turned into instruments by the telemetry side.
ENGINE_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
ITERATION_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
KV_CACHE_USED = MetricSpec(
    "ernie_kv_cache_used", Kind.GAUGE, "By", "ernie_kv_cache_used_bytes", (ATTR_MODEL,),
    "KV cache held by the running batch: rows x width of its left-padded cache (padding included) x the bytes "
    "of one token's keys and values in every layer.")
KV_CACHE_BUDGET = MetricSpec(
    "ernie_kv_cache_budget", Kind.GAUGE, "By", "ernie_kv_cache_budget_bytes", (ATTR_MODEL,),
    "The largest KV cache the running batch can reach: --max-num-seqs rows of --max-model-len tokens.")
KV_CACHE_USAGE = MetricSpec(
    "ernie_kv_cache_usage_ratio", Kind.GAUGE, "{ratio}", "ernie_kv_cache_usage_ratio", (ATTR_MODEL,),
    "KV cache used / budget, 0..1 (vLLM's kv_cache_usage_perc for this engine).")
KV_CACHE_PADDING = MetricSpec(
    "ernie_kv_cache_padding_ratio", Kind.GAUGE, "{ratio}", "ernie_kv_cache_padding_ratio", (ATTR_MODEL,),
    "Share of the running batch's KV positions that are left padding, 0..1: what mixing short and long "
    "sequences in one batch costs.")
BATCH_SIZE = MetricSpec(
    "ernie_batch_size", Kind.HISTOGRAM, "{request}", "ernie_batch_size", (ATTR_MODEL,),
    "Sequences run per engine iteration (the decode batch, newly admitted rows included).", BATCH_SIZE_BUCKETS)
ITERATION_TOKENS = MetricSpec(
    "ernie_iteration_tokens", Kind.HISTOGRAM, "{token}", "ernie_iteration_tokens", (ATTR_MODEL,),
    "Tokens run through the model per engine iteration: prompt tokens prefilled plus one per decoded row "
    "(padding not counted).", ITERATION_TOKEN_BUCKETS)
PREFILL_TIME = MetricSpec(
    "ernie_request_prefill_time", Kind.HISTOGRAM, "s", "ernie_request_prefill_time_seconds", (ATTR_MODEL,),
    "Per finished request: scheduled into the batch to first token (vLLM request_prefill_time_seconds).",
    ENGINE_LATENCY_BUCKETS)
DECODE_TIME = MetricSpec(
    "ernie_request_decode_time", Kind.HISTOGRAM, "s", "ernie_request_decode_time_seconds", (ATTR_MODEL,),
    "Per finished request: first token to last token (vLLM request_decode_time_seconds).", LATENCY_BUCKETS)
INTER_TOKEN_LATENCY = MetricSpec(
    "ernie_inter_token_latency", Kind.HISTOGRAM, "s", "ernie_inter_token_latency_seconds", (ATTR_MODEL,),
    "Per token after a sequence's first: the gap since its previous token (vLLM inter_token_latency_seconds); "
    "gen_ai_server_time_per_output_token_seconds is the same per request, averaged.", ITL_BUCKETS)
MODEL_LOAD_TIME = MetricSpec(
    "ernie_model_load_time", Kind.GAUGE, "s", "ernie_model_load_time_seconds", (ATTR_MODEL,),
    "How long loading the model took at start-up (also the ernie.model.load span).")
ENGINE_ADMISSIONS = MetricSpec(
    "ernie_engine_admissions", Kind.COUNTER, "{request}", "ernie_engine_admissions_total", (ATTR_MODEL,),
    "Sequences admitted from the waiting queue into the running batch; per step: divide by ernie_engine_steps_total.")
ENGINE_EVICTIONS = MetricSpec(
    "ernie_engine_evictions", Kind.COUNTER, "{request}", "ernie_engine_evictions_total", (ATTR_MODEL, ATTR_REASON),
    "Sequences that left the running batch before finishing, by reason: cancelled (client gone or shutdown), "
    "error (a failed engine step).")
ENGINE_STEPS = MetricSpec(
    "ernie_engine_steps", Kind.COUNTER, "{step}", "ernie_engine_steps_total", (ATTR_MODEL,),
    "Engine iterations run: a decode step of the running batch, a chunk of newly admitted prompts "
    "(chunked prefill), or both.")
LOCAL_ENGINE_METRICS = (KV_CACHE_USED, KV_CACHE_BUDGET, KV_CACHE_USAGE, KV_CACHE_PADDING, BATCH_SIZE,
                        ITERATION_TOKENS, PREFILL_TIME, DECODE_TIME, INTER_TOKEN_LATENCY, MODEL_LOAD_TIME,
                        ENGINE_ADMISSIONS, ENGINE_EVICTIONS, ENGINE_STEPS)
# Values of ENGINE_EVICTIONS' reason label (FinishReason values: the engine counts by those).
EVICTION_REASONS = (FinishReason.CANCELLED.value, FinishReason.ERROR.value)

SLO_METRICS = (SLO_REQUESTS, GOODPUT_TOKENS, SLO_TARGET, SLO_OBJECTIVE, SLO_HEADER_PROBLEMS, TENANT_REQUESTS,
               TENANT_TOKENS, TENANT_OVERFLOW, COST)

CATALOGUE: tuple[MetricSpec, ...] = (
    REQUESTS, LATENCY, ERRORS, TOKEN_THROUGHPUT, QUEUE_LENGTH, QUEUE_CAPACITY, RUNNING,
    RUNNING_CAPACITY, QUEUE_TIME, PROMPT_TOKENS, GENERATION_TOKENS, GENAI_DURATION, GENAI_TTFT,
    GENAI_TPOT, GENAI_TOKEN_USAGE, GPU_UTILIZATION, GPU_MEMORY_USED, GPU_MEMORY_TOTAL,
    GPU_MEMORY_USAGE, GPU_TEMPERATURE, GPU_POWER, PROCESS_CPU, PROCESS_MEMORY, *SLO_METRICS, *LOCAL_ENGINE_METRICS,
)

# ------------------------------------------------ GenAI semantic conventions: old and latest names
# The GenAI conventions moved to open-telemetry/semantic-conventions-genai (no tagged release yet),
# which replaces the client metric gen_ai.client.token.usage (one histogram split by
# gen_ai.token.type) with gen_ai.client.inference.* counters (totals, by gen_ai.token.modality) and
# per-operation histograms (input and output apart). OTEL_SEMCONV_STABILITY_OPT_IN chooses, as the
# OTel instrumentations do: nothing -> the old names only; gen_ai_latest_experimental -> the latest
# only; gen_ai_latest_experimental/dup -> both (ours, after http/dup: a deprecation window in which
# dashboards move). The gen_ai.server.* metrics are current in both and always emitted.
SEMCONV_GENAI_LATEST = "gen_ai_latest_experimental"
SEMCONV_GENAI_DUP = "gen_ai_latest_experimental/dup"


class GenAiSemconv(str, Enum):
    OLD = "old"  # default: gen_ai.client.token.usage
    BOTH = "both"  # gen_ai_latest_experimental/dup
    LATEST = "latest"  # gen_ai_latest_experimental

    @property
    def old(self) -> bool:
        return self is not GenAiSemconv.LATEST

    @property
    def latest(self) -> bool:
        return self is not GenAiSemconv.OLD


GEN_AI_TOKEN_MODALITY = "gen_ai.token.modality"
TOKEN_MODALITY_TEXT = "text"  # ERNIE-4.5 here takes and gives text only
_GENAI_USAGE = (*_GENAI, GEN_AI_TOKEN_MODALITY)
GENAI_USAGE_INPUT = MetricSpec(
    "gen_ai.client.inference.usage.input_tokens", Kind.COUNTER, "{token}",
    "gen_ai_client_inference_usage_input_tokens_total", _GENAI_USAGE,
    "Input (prompt) tokens used, by gen_ai.token.modality (latest GenAI semconv; replaces the input _sum of "
    "gen_ai.client.token.usage).")
GENAI_USAGE_OUTPUT = MetricSpec(
    "gen_ai.client.inference.usage.output_tokens", Kind.COUNTER, "{token}",
    "gen_ai_client_inference_usage_output_tokens_total", _GENAI_USAGE,
    "Output (completion) tokens used, by gen_ai.token.modality (latest GenAI semconv).")
GENAI_OPERATION_INPUT = MetricSpec(
    "gen_ai.client.inference.operation.input_tokens", Kind.HISTOGRAM, "{token}",
    "gen_ai_client_inference_operation_input_tokens", _GENAI,
    "Input tokens per inference operation (latest GenAI semconv; replaces gen_ai.client.token.usage "
    "with gen_ai.token.type=input).", GENAI_TOKEN_BUCKETS)
GENAI_OPERATION_OUTPUT = MetricSpec(
    "gen_ai.client.inference.operation.output_tokens", Kind.HISTOGRAM, "{token}",
    "gen_ai_client_inference_operation_output_tokens", _GENAI,
    "Output tokens per inference operation (latest GenAI semconv).", GENAI_TOKEN_BUCKETS)
# Not in CATALOGUE (which is what every default-configured server emits): these need the opt-in.
GENAI_LATEST_METRICS = (GENAI_USAGE_INPUT, GENAI_USAGE_OUTPUT, GENAI_OPERATION_INPUT, GENAI_OPERATION_OUTPUT)
GENAI_OLD_METRICS = (GENAI_TOKEN_USAGE,)
# The one GenAI event of the latest conventions (replacing the deprecated per-message events
# gen_ai.system.message / gen_ai.user.message / gen_ai.assistant.message / gen_ai.tool.message /
# gen_ai.choice, none of which ernie-serve ever emitted): an OTel log record with this event name,
# one per finished request, in the GenAI span's context, with the attributes below and no body.
# Emitted with the latest names (latest and /dup) whenever log records are exported.
GENAI_EVENT_OPERATION_DETAILS = "gen_ai.client.inference.operation.details"
# Always on the event (each only when the request has a value: an absent key means "not known").
GENAI_EVENT_ATTRIBUTES = (
    GEN_AI_OPERATION_NAME, GEN_AI_PROVIDER_NAME, GEN_AI_REQUEST_MODEL, GEN_AI_RESPONSE_MODEL, SERVER_ADDRESS,
    SERVER_PORT, GEN_AI_REQUEST_STREAM, GEN_AI_REQUEST_MAX_TOKENS, GEN_AI_REQUEST_TEMPERATURE, GEN_AI_REQUEST_TOP_P,
    GEN_AI_REQUEST_SEED, GEN_AI_RESPONSE_ID, GEN_AI_RESPONSE_FINISH_REASONS, GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS, ATTR_ERROR_TYPE,
)
# Only with the content opt-in (CAPTURE_CONTENT_ENV), in structured form (lists of
# {"role", "parts": [{"type": "text", "content"}]}, outputs with "finish_reason"), as the
# convention requires on events; spans keep them as JSON strings (span attributes cannot nest).
GENAI_EVENT_CONTENT_ATTRIBUTES = (GEN_AI_INPUT_MESSAGES, GEN_AI_OUTPUT_MESSAGES)
# What an output message's finish_reason says when the request ended without one (an error).
GENAI_EVENT_NO_FINISH_REASON = FinishReason.ERROR.value

# old -> latest, with what the latest one needs (docs/metrics.md's migration table).
GENAI_MIGRATION = (
    (GENAI_TOKEN_USAGE, GENAI_USAGE_INPUT, f'`_sum` with `gen_ai_token_type="input"` -> counter, '
     f'`{GEN_AI_TOKEN_MODALITY}="{TOKEN_MODALITY_TEXT}"`'),
    (GENAI_TOKEN_USAGE, GENAI_USAGE_OUTPUT, '`_sum` with `gen_ai_token_type="output"` -> counter'),
    (GENAI_TOKEN_USAGE, GENAI_OPERATION_INPUT, '`gen_ai_token_type="input"` histogram -> its own histogram'),
    (GENAI_TOKEN_USAGE, GENAI_OPERATION_OUTPUT, '`gen_ai_token_type="output"` histogram -> its own histogram'),
)

GPU_METRICS = (GPU_UTILIZATION, GPU_MEMORY_USED, GPU_MEMORY_TOTAL, GPU_MEMORY_USAGE, GPU_TEMPERATURE, GPU_POWER)

# Engines behind gateway mode: their native families (every spelling, version by version) live in
# the alias table of ``engines``; the Collector's optional prometheus/engine receiver
# (collector/engine-metrics.yaml) passes them through unchanged, and the recording rules of
# alerts/ernie-engines.yml publish the engine-neutral set below, which the dashboard's engine row
# and the engine alerts read.
ENGINE_JOB = _engines.ENGINE_JOB
ENGINE_LABEL = _engines.ENGINE_LABEL
ENGINE_FAMILY_PREFIXES = _engines.family_prefixes()
ENGINE_RUNNING = _engines.NEUTRAL[_engines.Figure.RUNNING].record
ENGINE_WAITING = _engines.NEUTRAL[_engines.Figure.WAITING].record
ENGINE_KV_CACHE_USAGE = _engines.NEUTRAL[_engines.Figure.KV_CACHE_USAGE].record
ENGINE_PREFIX_CACHE_HIT = _engines.NEUTRAL[_engines.Figure.PREFIX_CACHE_HIT].record
ENGINE_TTFT_BUCKET_RATE = _engines.NEUTRAL[_engines.Figure.TTFT].record
ENGINE_ITL_BUCKET_RATE = _engines.NEUTRAL[_engines.Figure.ITL].record
ENGINE_PREEMPTIONS_RATE = _engines.NEUTRAL[_engines.Figure.PREEMPTIONS].record
ENGINE_NEUTRAL_PREFIX = "engine:"

# Prometheus keeps only these families from our targets (deploy/prometheus.yml's relabel filter).
PROMETHEUS_KEEP_REGEX = (
    "(ernie_.*|gen_ai_.*|gpu_.*|process_.*|traces_span_metrics_.*|http_server_request_duration_seconds.*"
    "|target_info|" + "|".join(prefix + ".*" for prefix in ENGINE_FAMILY_PREFIXES) + ")"
)
# The HTTP server metric of the FastAPI instrumentation (stable HTTP semconv), seconds.
HTTP_SERVER_DURATION_PROM = "http_server_request_duration_seconds"
# spanmetrics connector output in the Collector (RED from spans).
SPANMETRICS_CALLS_PROM = "traces_span_metrics_calls_total"
SPANMETRICS_DURATION_PROM = "traces_span_metrics_duration_seconds"

BUCKETS_ENV = "ERNIE_OTEL_HISTOGRAM_BUCKETS"


def histogram_buckets(spec: MetricSpec, overrides: dict[str, list[float]] | None = None) -> tuple[float, ...]:
    """Buckets for a histogram: configuration (``--histogram-buckets`` or the
    ``ERNIE_OTEL_HISTOGRAM_BUCKETS`` JSON object keyed by OTel or Prometheus name) wins."""
    assert spec.buckets is not None, spec.otel_name
    merged = dict(load_bucket_overrides())
    merged.update(overrides or {})
    for key in (spec.otel_name, spec.prom_name):
        if key in merged:
            return tuple(float(b) for b in merged[key])
    return spec.buckets


def load_bucket_overrides(raw: str | None = None) -> dict[str, list[float]]:
    """Parse and validate bucket overrides; a bad value fails loudly at start-up."""
    raw = os.environ.get(BUCKETS_ENV, "") if raw is None else raw
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{BUCKETS_ENV} is not valid JSON: {exc}") from exc
    known = {s.otel_name for s in CATALOGUE if s.buckets} | {s.prom_name for s in CATALOGUE if s.buckets}
    if not isinstance(data, dict):
        raise ValueError(f"{BUCKETS_ENV} must be a JSON object of name -> list of bounds")
    for key, bounds in data.items():
        if key not in known:
            raise ValueError(f"{BUCKETS_ENV}: {key!r} is not a histogram of the catalogue")
        if not isinstance(bounds, list) or not bounds or any(not isinstance(b, (int, float)) for b in bounds):
            raise ValueError(f"{BUCKETS_ENV}: {key!r} needs a non-empty list of numbers")
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{BUCKETS_ENV}: {key!r} bounds must be strictly increasing")
    return data


def catalogue_markdown() -> str:
    """docs/metrics.md, generated from the catalogue (a test keeps the file in step)."""
    lines = [
        "# Metric catalogue",
        "",
        "Generated from `ernie_otel/names.py` by `python -m ernie_otel.names > docs/metrics.md`;",
        "`tests/test_names.py` fails when this file and the module disagree.",
        "",
        "The Prometheus name is the same whether Prometheus scrapes `ernie-serve --metrics-port`",
        "directly or the Collector's prometheus exporter (`:8889`). Both add `otel_scope_*` labels;",
        "`job`/`instance` come from the scrape target (direct) or from `service.name` /",
        "`service.instance.id` (Collector). GPU series are absent, not zero, without NVML.",
        "",
        "| Prometheus name | OTel instrument | type | unit | labels | buckets | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in CATALOGUE:
        buckets = ", ".join(f"{b:g}" for b in s.buckets) if s.buckets else ""
        labels = ", ".join(f"`{label}`" for label in s.prom_labels) or "(none)"
        lines.append(
            f"| `{s.prom_name}` | `{s.otel_name}` | {s.kind.value} | `{s.unit}` | {labels} | {buckets} "
            f"| {s.description} |"
        )
    lines += ["", "## Label values", ""]
    lines.append(f"- `{ATTR_OPERATION}` / `gen_ai_operation_name`: " + ", ".join(f"`{o.value}`" for o in Operation))
    lines.append(f"- `{ATTR_STATUS}`: " + ", ".join(f"`{s.value}`" for s in Status))
    lines.append(f"- `{ATTR_MODEL}`, `gen_ai_request_model`: the served model name "
                 "(`--served-model-name`), never the client's string.")
    lines.append(f"- `gen_ai_provider_name`: `{PROVIDER_NAME}` (no registered value exists for Baidu/ERNIE).")
    lines.append("- `gen_ai_token_type`: " + ", ".join(f"`{t.value}`" for t in TokenType))
    lines.append("- `gpu_index`, `gpu_uuid`, `gpu_name`: from NVML, one series set per GPU.")
    lines.append(f"- `{ATTR_SLO}`: `ttft`, `tpot`, `e2e`, `all`; `{ATTR_RESULT}`: `met`, `missed` (definitions in "
                 "`ernie_otel/slo.py` and docs/runbooks.md).")
    lines.append(f"- `{ATTR_TENANT}`: an allow-listed value of the tenant header (`--tenants`), the API key's name, "
                 "`default` (none given) or `other` (unknown, or past `--max-tenants`); never on histograms.")
    lines.append(f"- `{ATTR_REASON}` of `ernie_tenant_overflow_total`: `unknown`, `cap`; of "
                 "`ernie_slo_header_problems_total`: `invalid` (ignored), `clamped`.")
    lines.append(f"- `{ATTR_REASON}` of `{ENGINE_EVICTIONS.prom_name}`: "
                 + ", ".join(f"`{r}`" for r in EVICTION_REASONS) + ".")
    lines += ["", "### error_type", "", "| value | meaning |", "|---|---|"]
    for err, meaning in ERROR_TYPE_MEANING.items():
        lines.append(f"| `{err.value}` | {meaning} |")
    lines += [
        "",
        "## The engine's insides",
        "",
        "The local engine fills plain numbers (`EngineStats`) at step boundaries; the telemetry side turns them",
        "into the `ernie_kv_cache_*`, `ernie_batch_size`, `ernie_iteration_tokens`, `ernie_request_*_time_seconds`,",
        "`ernie_inter_token_latency_seconds`, `ernie_engine_*` and `ernie_model_load_time_seconds` families above",
        "(histograms when a collection or the telemetry thread drains the samples, gauges and counters when read).",
        "Nothing of it runs on the request path. In gateway mode (`--upstream`) there is no local engine and",
        "these series are absent; the upstream engine's own families take their place on the dashboard.",
        "",
        "- KV cache: the running batch is one left-padded cache of `rows x width` token positions; one position",
        "  costs `2 x layers x kv_heads x head_dim x dtype bytes`. Used = rows x width x that (padding included,",
        "  it is allocated); budget = `--max-num-seqs x --max-model-len` positions; padding ratio = the padding",
        "  columns' share of the positions.",
        "",
        "## GenAI semantic conventions: old and latest names",
        "",
        "The GenAI conventions moved to `open-telemetry/semantic-conventions-genai` (no tagged release yet; names",
        "may still move). `OTEL_SEMCONV_STABILITY_OPT_IN` (a comma-separated list, as for the OTel",
        "instrumentations; `http` is always kept in it for the HTTP server metrics) chooses what is emitted:",
        "",
        "| `OTEL_SEMCONV_STABILITY_OPT_IN` contains | old names | latest names |",
        "|---|---|---|",
        "| neither value below (default) | yes | no |",
        f"| `{SEMCONV_GENAI_DUP}` | yes | yes |",
        f"| `{SEMCONV_GENAI_LATEST}` | no | yes |",
        "",
        "Latest names (emitted only with the opt-in):",
        "",
        "| Prometheus name | OTel instrument | type | unit | labels | buckets | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in GENAI_LATEST_METRICS:
        buckets = ", ".join(f"{b:g}" for b in s.buckets) if s.buckets else ""
        labels = ", ".join(f"`{label}`" for label in s.prom_labels)
        lines.append(f"| `{s.prom_name}` | `{s.otel_name}` | {s.kind.value} | `{s.unit}` | {labels} | {buckets} "
                     f"| {s.description} |")
    lines += [
        "",
        "Migration (old -> latest):",
        "",
        "| old (default, `/dup`) | latest (`/dup`, latest) | change |",
        "|---|---|---|",
    ]
    for old, new, change in GENAI_MIGRATION:
        lines.append(f"| `{old.prom_name}` | `{new.prom_name}` | {change} |")
    lines += [
        "",
        "- The dashboard's \"Tokens per request\" panel reads `gen_ai_client_token_usage`: with the latest names",
        "  only it is empty. Run `/dup` while dashboards and alerts move, then switch.",
        "- PromQL, input tokens spent: old",
        "  `sum(increase(gen_ai_client_token_usage_sum{gen_ai_token_type=\"input\"}[5m]))`,",
        "  latest `sum(increase(gen_ai_client_inference_usage_input_tokens_total[5m]))`.",
        "- Unchanged in every mode: `gen_ai_server_request_duration_seconds`,",
        "  `gen_ai_server_time_to_first_token_seconds`, `gen_ai_server_time_per_output_token_seconds` (server",
        "  metrics, current) and every `ernie_*` name.",
        "- `gen_ai.usage.cache_creation.input_tokens` is renamed `gen_ai.usage.cache_write.input_tokens`, and the",
        "  latest conventions add `..._usage_cache_read/cache_write...` counters: this engine has no prompt cache, so",
        "  neither the attributes nor those counters are emitted (a 0 would claim a cache that misses).",
        "",
        "Events (OTel log records with an event name, exported wherever log records go: see docs/pipeline.md):",
        "",
        "| old (default) | latest (`/dup`, latest) | change |",
        "|---|---|---|",
        "| none (per-message events `gen_ai.user.message`, `gen_ai.choice`, ... are deprecated and were never "
        f"emitted) | `{GENAI_EVENT_OPERATION_DETAILS}` | one event per finished request, in the GenAI span's "
        "context (its trace and span ids), no body |",
        "",
        f"- `{GENAI_EVENT_OPERATION_DETAILS}` carries "
        + ", ".join(f"`{key}`" for key in GENAI_EVENT_ATTRIBUTES)
        + " (each when the request has a value; `error.type` only on failure).",
        "- With the content opt-in only: " + ", ".join(f"`{key}`" for key in GENAI_EVENT_CONTENT_ATTRIBUTES)
        + ", structured (`[{\"role\": \"user\", \"parts\": [{\"type\": \"text\", \"content\": ...}]}]`, output",
        f"  messages with `finish_reason`, `{GENAI_EVENT_NO_FINISH_REASON}` when the request failed); on the GenAI",
        "  span the same keys hold the same messages as JSON strings (span attributes cannot nest), in every mode.",
        "- In the default mode no event is emitted: content stays on the span only.",
        "",
        "## Bucket overrides",
        "",
        f"Set `{BUCKETS_ENV}` to a JSON object keyed by OTel or Prometheus histogram name, e.g.",
        f"`{BUCKETS_ENV}='{{\"ernie_inference_latency_seconds\": [0.5, 1, 5, 30]}}'`.",
        "A malformed value stops ernie-serve at start-up.",
        "",
        "## Spans",
        "",
        "- `POST /v1/chat/completions` (SERVER, FastAPI instrumentation; `/health` and `/metrics` excluded)",
        "  - `{operation} {model}` (INTERNAL, GenAI attributes: request max tokens, temperature, top_p,",
        "    stream, response id and model, finish reasons, input/output token usage; `error.type` and",
        f"    status ERROR on failure; `{SPAN_ATTR_TTFT}`: arrival to first token, seconds)",
        f"    - `{SPAN_QUEUE}`: arrival to scheduled",
        f"    - `{SPAN_PREFILL}`: scheduled to first token",
        f"    - `{SPAN_DECODE}`: first token to last token",
        f"- `{SPAN_MODEL_LOAD}` (INTERNAL, a root span of its own trace): loading the model at start-up, with",
        f"  `{GEN_AI_REQUEST_MODEL}`, `{SPAN_ATTR_MODEL_SOURCE}`, `{SPAN_ATTR_MODEL_DEVICE}`,",
        f"  `{SPAN_ATTR_MODEL_DTYPE}`;",
        "  written by the telemetry side at the first collection (or flush) after the load.",
        "",
        f"The response header `{TRACE_ID_HEADER}` carries the trace id; `{TRACE_RESPONSE_HEADER}` the",
        "W3C trace-context-2 form. Message content is recorded only with",
        f"`{CAPTURE_CONTENT_ENV}=true`.",
        "",
        "## Per-request accountability",
        "",
        f"- The GenAI span carries `{SPAN_ATTR_TENANT}`, with SLO targets `{span_attr_slo_target('<slo>')}` (after",
        f"  `x-slo-ttft-ms` / `x-slo-tpot-ms` overrides), `{SPAN_ATTR_SLO_MET}` and `{SPAN_ATTR_SLO_MISSED}`, and with",
        f"  a pricing file `{SPAN_ATTR_COST}`.",
        f"- Every response carries `{SERVER_TIMING_HEADER}`: "
        + ", ".join(f"`{p};dur=<ms>`" for p in SERVER_TIMING_PHASES) + ", from the instants the spans",
        "  are built from. A stream's header holds what is known when it starts (`headers;dur=` for the time",
        "  until then). In gateway mode the upstream's entries pass through and ours follow, prefixed",
        f"  `{GATEWAY_TIMING_PREFIX}`.",
        "- With `--response-metrics`, a request with `\"return_metrics\": true` gets `metrics` (vLLM's field names:",
        "  `time_to_first_token_ms`, `generation_time_ms` = scheduled to last token, `queue_time_ms`, `mean_itl_ms`,",
        "  `tokens_per_second`) in the response body, or in the final chunk of a stream (the usage chunk if asked).",
        "- Tenants: `--tenant-header` (default `x-tenant-id`) names the tenant; only values on `--tenants` become",
        "  label values, at most `--max-tenants` of them; the rest count as `other` (`ernie_tenant_overflow_total`).",
        "- Cost: `--pricing-file prices.json`, e.g. `{\"currency\": \"USD\", \"models\": {\"ernie-4.5-0.3b\":",
        "  {\"input_per_1m\": 0.1, \"output_per_1m\": 0.4}}, \"default\": {\"gpu_hour\": 2.5}}`; a GPU-hour price",
        "  charges each request its wall time x price / 3600 / `--max-num-seqs`. A file that does not parse stops",
        "  ernie-serve at start-up (exit 2).",
        "",
    ]
    return "\n".join(lines) + "\n" + _engines.alias_markdown()


if __name__ == "__main__":
    print(catalogue_markdown(), end="")
