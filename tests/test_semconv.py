"""The GenAI semantic-convention switch: OTEL_SEMCONV_STABILITY_OPT_IN chooses the old names only
(default), both (gen_ai_latest_experimental/dup) or the latest only (gen_ai_latest_experimental),
read through TelemetrySettings and checked on a real recorder through an in-memory reader."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from serve_helpers import run_server

from ernie_otel import names
from ernie_otel.stats import EngineStats
from ernie_otel.telemetry.recorder import Recorder
from ernie_otel.telemetry.settings import SEMCONV_ENV, TelemetrySettings, publish_semconv_opt_in

MODEL = "ernie-4.5-tiny"
PROMPT, OUTPUT = 7, 3  # tokens of the one request each test records
OLD, BOTH, LATEST = names.GenAiSemconv.OLD, names.GenAiSemconv.BOTH, names.GenAiSemconv.LATEST


@pytest.mark.parametrize(("value", "mode", "published"), [
    (None, OLD, "http"),
    ("", OLD, "http"),
    ("gen_ai_latest_experimental", LATEST, "http,gen_ai_latest_experimental"),
    ("gen_ai_latest_experimental/dup", BOTH, "http,gen_ai_latest_experimental/dup"),
    ("http, gen_ai_latest_experimental", LATEST, "http,gen_ai_latest_experimental"),
    # /dup wins over the plain value, as http/dup does for HTTP
    ("gen_ai_latest_experimental,gen_ai_latest_experimental/dup", BOTH,
     "http,gen_ai_latest_experimental,gen_ai_latest_experimental/dup"),
    ("http/dup,database", OLD, "http/dup,database"),
])
def test_mode_comes_from_the_opt_in_list_and_http_stays(value: str | None, mode: names.GenAiSemconv,
                                                        published: str) -> None:
    settings = TelemetrySettings.from_env({} if value is None else {SEMCONV_ENV: value})
    assert settings.genai_semconv is mode
    env: dict[str, str] = {}
    publish_semconv_opt_in(settings, env)
    # What the FastAPI instrumentation then reads: still the stable HTTP conventions (seconds).
    assert env[SEMCONV_ENV] == published


def _record_one(mode: names.GenAiSemconv) -> dict[str, Any]:
    reader = InMemoryMetricReader()
    stats = EngineStats(max_num_seqs=1, max_queue_len=1)
    recorder = Recorder(MeterProvider(metric_readers=[reader]), TracerProvider(), MODEL, lambda: stats,
                        genai_semconv=mode)
    rt = recorder.start(names.Operation.CHAT.value, "chatcmpl-1")
    st = rt.stats
    st.scheduled, st.first_token = st.arrival + 0.01, st.arrival + 0.02
    st.prompt_tokens, st.output_tokens = PROMPT, OUTPUT
    recorder.finish(rt, names.Status.OK.value)
    recorder.flush()
    data = reader.get_metrics_data()
    recorder.close()
    return {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def _point(metric: Any) -> Any:
    (point,) = metric.data.data_points
    return point


GENAI = {names.GEN_AI_OPERATION_NAME: "chat", names.GEN_AI_PROVIDER_NAME: names.PROVIDER_NAME,
         names.GEN_AI_REQUEST_MODEL: MODEL}


@pytest.mark.parametrize("mode", [OLD, BOTH, LATEST])
def test_each_mode_emits_its_names(mode: names.GenAiSemconv) -> None:
    metrics = _record_one(mode)
    old_present = names.GENAI_TOKEN_USAGE.otel_name in metrics
    latest_present = {spec.otel_name for spec in names.GENAI_LATEST_METRICS} & set(metrics)
    assert old_present is (mode is not LATEST)
    assert latest_present == ({spec.otel_name for spec in names.GENAI_LATEST_METRICS} if mode is not OLD else set())
    if old_present:
        by_type = {p.attributes[names.GEN_AI_TOKEN_TYPE]: p.sum
                   for p in metrics[names.GENAI_TOKEN_USAGE.otel_name].data.data_points}
        assert by_type == {"input": PROMPT, "output": OUTPUT}
    if latest_present:
        for spec, value in ((names.GENAI_USAGE_INPUT, PROMPT), (names.GENAI_USAGE_OUTPUT, OUTPUT)):
            metric = metrics[spec.otel_name]
            point = _point(metric)
            assert metric.unit == spec.unit and metric.data.is_monotonic
            assert point.value == value
            assert dict(point.attributes) == {**GENAI, names.GEN_AI_TOKEN_MODALITY: names.TOKEN_MODALITY_TEXT}
        for spec, value in ((names.GENAI_OPERATION_INPUT, PROMPT), (names.GENAI_OPERATION_OUTPUT, OUTPUT)):
            point = _point(metrics[spec.otel_name])
            assert (point.count, point.sum) == (1, value)
            assert tuple(point.explicit_bounds) == spec.buckets
            assert dict(point.attributes) == GENAI  # no modality on histograms: percentiles would not add up
    # Never switched: the server metrics and the ernie_* names.
    for spec in (names.GENAI_DURATION, names.GENAI_TTFT, names.LATENCY, names.PROMPT_TOKENS):
        assert spec.otel_name in metrics, spec.otel_name


def test_latest_names_follow_the_prometheus_rule_and_pass_the_keep_filter() -> None:
    keep = re.compile(names.PROMETHEUS_KEEP_REGEX)
    for spec in names.GENAI_LATEST_METRICS:
        expected = spec.otel_name.replace(".", "_") + ("_total" if spec.kind is names.Kind.COUNTER else "")
        assert spec.prom_name == expected
        assert keep.fullmatch(spec.prom_name + ("_bucket" if spec.kind is names.Kind.HISTOGRAM else ""))
        assert spec not in names.CATALOGUE  # a default server does not emit them
    table = names.catalogue_markdown()
    for old, new, _ in names.GENAI_MIGRATION:
        assert f"| `{old.prom_name}` | `{new.prom_name}` |" in table


def test_ernie_serve_with_the_latest_names_keeps_stable_http(tmp_path: Path) -> None:
    """The real server, opted in to the latest GenAI names only: they are on /metrics, the old
    client histogram is not, the FastAPI instrumentation still emits the stable HTTP histogram
    (seconds) although the user's opt-in list did not name http, and promtool accepts it all."""
    with run_server(tmp_path, env={SEMCONV_ENV: names.SEMCONV_GENAI_LATEST}) as served:
        r = httpx.post(served.base + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "ignore_eos": True})
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        text = served.metrics_text()
    assert f"{names.GENAI_OPERATION_INPUT.prom_name}_bucket" in text
    assert served_value(text, names.GENAI_USAGE_INPUT.prom_name) == usage["prompt_tokens"]
    assert served_value(text, names.GENAI_USAGE_OUTPUT.prom_name) == usage["completion_tokens"]
    assert names.GENAI_TOKEN_USAGE.prom_name not in text
    assert f"{names.HTTP_SERVER_DURATION_PROM}_bucket" in text
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_ernie_serve_exports_the_event_where_its_log_records_go(tmp_path: Path) -> None:
    """The real server's wiring (serve.py -> Recorder -> its LoggerProvider): with the latest names and
    the console log exporter, each request's event is on stdout with the request's trace id, its
    token usage, and no content (no opt-in)."""
    env = {SEMCONV_ENV: names.SEMCONV_GENAI_LATEST, "OTEL_LOGS_EXPORTER": "console",
           "OTEL_BLRP_SCHEDULE_DELAY": "100", names.CAPTURE_CONTENT_ENV: None}
    with run_server(tmp_path, env=env) as served:
        r = httpx.post(served.base + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "secret-hi"}], "max_tokens": 3,
                             "ignore_eos": True})
        assert r.status_code == 200, r.text
        trace_id = r.headers[names.TRACE_ID_HEADER]

        def events() -> list[dict[str, Any]]:
            return [e for e in _json_objects(served.log())
                    if e.get("event_name") == names.GENAI_EVENT_OPERATION_DETAILS
                    and e.get("trace_id") == "0x" + trace_id]

        deadline = time.monotonic() + 15
        while not events() and time.monotonic() < deadline:
            time.sleep(0.2)
        found = events()
        assert len(found) == 1, served.log()[-3000:]
    attrs = found[0]["attributes"]
    assert attrs[names.GEN_AI_RESPONSE_ID] == r.json()["id"]
    assert attrs[names.GEN_AI_USAGE_OUTPUT_TOKENS] == r.json()["usage"]["completion_tokens"] == 3
    assert attrs[names.GEN_AI_OPERATION_NAME] == names.Operation.CHAT.value
    assert names.GEN_AI_INPUT_MESSAGES not in attrs and "secret-hi" not in json.dumps(found[0])


def _json_objects(text: str) -> Iterator[dict[str, Any]]:
    """Every JSON object that starts a line of a process log (the console exporter's are indented)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^\{", text, re.MULTILINE):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def served_value(text: str, family: str) -> float:
    """The one sample of a family on a /metrics page."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(family + "{") or line.startswith(family + " ")]
    assert len(values) == 1, (family, values)
    return values[0]


# ------------------------------------------------ the gen_ai.client.inference.operation.details event
PROMPT_MESSAGES = [{"role": "system", "content": "be brief"},
                   {"role": "user", "content": [{"type": "text", "text": "secret-prompt"}]}]
COMPLETION = "secret-completion"


def _event_run(mode: names.GenAiSemconv, *, capture_content: bool = False,
               error_type: str | None = None) -> tuple[list[ReadableLogRecord], ReadableSpan]:
    """One request through a real recorder with SDK providers and in-memory exporters: the log
    records it exported and its GenAI span."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    stats = EngineStats(max_num_seqs=1, max_queue_len=1)
    recorder = Recorder(MeterProvider(), tracer_provider, MODEL, lambda: stats, genai_semconv=mode,
                        capture_content=capture_content, logger_provider=logger_provider)
    rt = recorder.start(names.Operation.CHAT.value, "chatcmpl-7")
    st = rt.stats
    st.stream, st.max_tokens, st.temperature, st.seed = True, OUTPUT, 0.5, 11
    recorder.set_request_params(rt, PROMPT_MESSAGES)
    st.scheduled = st.arrival + 0.01
    st.prompt_tokens = PROMPT
    if error_type is None:
        st.first_token, st.finished = st.arrival + 0.02, st.arrival + 0.05
        st.output_tokens, st.finish_reason = OUTPUT, names.FinishReason.LENGTH.value
        recorder.finish(rt, names.Status.OK.value, response_id="chatcmpl-7", output_text=COMPLETION)
    else:
        recorder.finish(rt, names.Status.ERROR.value, error_type=error_type)
    recorder.close()
    (genai,) = [s for s in spans.get_finished_spans() if s.name == names.genai_span_name("chat", MODEL)]
    return list(logs.get_finished_logs()), genai


def _events(records: list[ReadableLogRecord]) -> list[ReadableLogRecord]:
    return [r for r in records if r.log_record.event_name == names.GENAI_EVENT_OPERATION_DETAILS]


def test_the_event_is_emitted_only_with_the_latest_names() -> None:
    for mode in (OLD, BOTH, LATEST):
        records, _ = _event_run(mode)
        assert len(_events(records)) == (0 if mode is OLD else 1), mode
        assert len(records) == len(_events(records)), "the recorder writes no other log record"


@pytest.mark.parametrize("mode", [BOTH, LATEST])
def test_the_event_carries_the_operation_details_in_the_genai_span_context(mode: names.GenAiSemconv) -> None:
    records, genai = _event_run(mode)
    (event,) = _events(records)
    rec = event.log_record
    # Linked to the GenAI span: the record's own ids, and the instant the request ended.
    assert genai.context is not None
    assert (rec.trace_id, rec.span_id) == (genai.context.trace_id, genai.context.span_id)
    assert rec.timestamp == genai.end_time
    assert rec.body is None, "the convention puts the details on attributes"
    attrs = dict(rec.attributes or {})
    assert attrs == {
        names.GEN_AI_OPERATION_NAME: "chat", names.GEN_AI_PROVIDER_NAME: names.PROVIDER_NAME,
        names.GEN_AI_REQUEST_MODEL: MODEL, names.GEN_AI_RESPONSE_MODEL: MODEL,
        names.SERVER_ADDRESS: genai.attributes[names.SERVER_ADDRESS],
        names.SERVER_PORT: genai.attributes[names.SERVER_PORT],
        names.GEN_AI_REQUEST_STREAM: True, names.GEN_AI_REQUEST_MAX_TOKENS: OUTPUT,
        names.GEN_AI_REQUEST_TEMPERATURE: 0.5, names.GEN_AI_REQUEST_SEED: 11,
        names.GEN_AI_RESPONSE_ID: "chatcmpl-7", names.GEN_AI_RESPONSE_FINISH_REASONS: ("length",),
        names.GEN_AI_USAGE_INPUT_TOKENS: PROMPT, names.GEN_AI_USAGE_OUTPUT_TOKENS: OUTPUT,
    }
    assert set(attrs) <= set(names.GENAI_EVENT_ATTRIBUTES)
    # The span carries the same details: the event and the trace never disagree.
    for key in (names.GEN_AI_RESPONSE_ID, names.GEN_AI_USAGE_INPUT_TOKENS, names.GEN_AI_USAGE_OUTPUT_TOKENS,
                names.GEN_AI_RESPONSE_FINISH_REASONS, names.GEN_AI_REQUEST_SEED):
        span_value, event_value = genai.attributes[key], attrs[key]
        assert _plain(span_value) == _plain(event_value), key
    assert "secret" not in repr(attrs), "content is off by default"


def test_the_event_carries_structured_content_only_with_the_opt_in() -> None:
    records, genai = _event_run(LATEST, capture_content=True)
    (event,) = _events(records)
    attrs = dict(event.log_record.attributes or {})
    expected_input = [{"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
                      {"role": "user", "parts": [{"type": "text", "content": "secret-prompt"}]}]
    expected_output = [{"role": "assistant", "parts": [{"type": "text", "content": COMPLETION}],
                        "finish_reason": "length"}]
    # Structured on the event (the SDK keeps nested values as tuples), the same schema as JSON on the span.
    assert _plain(attrs[names.GEN_AI_INPUT_MESSAGES]) == expected_input
    assert _plain(attrs[names.GEN_AI_OUTPUT_MESSAGES]) == expected_output
    assert json.loads(genai.attributes[names.GEN_AI_INPUT_MESSAGES]) == expected_input
    assert json.loads(genai.attributes[names.GEN_AI_OUTPUT_MESSAGES]) == expected_output
    # What the OTLP exporter sends: the event name and the nested content survive encoding.
    (encoded,) = [lr for rl in encode_logs([event]).resource_logs for sl in rl.scope_logs for lr in sl.log_records]
    assert encoded.event_name == names.GENAI_EVENT_OPERATION_DETAILS
    assert "secret-prompt" in str(encoded) and encoded.trace_id == genai.context.trace_id.to_bytes(16, "big")


def test_a_failed_request_has_error_type_and_no_finish_reason() -> None:
    records, _ = _event_run(BOTH, capture_content=True, error_type=names.ErrorType.INVALID_REQUEST.value)
    (event,) = _events(records)
    attrs = dict(event.log_record.attributes or {})
    assert attrs[names.ATTR_ERROR_TYPE] == names.ErrorType.INVALID_REQUEST.value
    assert names.GEN_AI_RESPONSE_FINISH_REASONS not in attrs and names.GEN_AI_RESPONSE_ID not in attrs
    assert names.GEN_AI_OUTPUT_MESSAGES not in attrs  # no completion was produced
    assert _plain(attrs[names.GEN_AI_INPUT_MESSAGES])[1]["parts"][0]["content"] == "secret-prompt"


def test_no_logger_provider_no_event() -> None:
    recorder = Recorder(MeterProvider(), TracerProvider(), MODEL, lambda: None, genai_semconv=LATEST)
    assert recorder.genai_event is None and recorder.batch.genai_event is None
    recorder.close()


def _plain(value: Any) -> Any:
    """The SDK's immutable attribute values (tuples, mapping proxies) as plain lists and dicts."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    return value
