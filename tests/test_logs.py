"""The access log and trace ids on log lines, through SDK objects and a real ernie-serve process.

In process: a tiny-model ernie-serve app (uvicorn in a thread) whose recorder writes its access log
to a JSON handler and, through our OTel bridge, to an SDK LoggerProvider with an in-memory exporter;
the spans go to an InMemorySpanExporter, so a log line's ids can be checked against the real span.
The pipeline into the log store (Collector -> VictoriaLogs) is tests/test_logs_e2e.py.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import app_in_thread
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from serve_helpers import run_server

from ernie_otel import names
from ernie_otel.serve import ServeConfig
from ernie_otel.server import ErnieServer
from ernie_otel.telemetry.logs import JsonFormatter, OtelLogHandler, TextFormatter
from ernie_otel.telemetry.recorder import Recorder
from ernie_otel.telemetry.setup import Telemetry

MODEL = "ernie-4.5-tiny"
GENAI_SPAN = names.genai_span_name(names.Operation.CHAT.value, MODEL)


@dataclass
class Env:
    base: str
    server: ErnieServer
    spans: InMemorySpanExporter
    otlp_logs: InMemoryLogRecordExporter
    stream: io.StringIO

    def lines(self) -> list[dict[str, Any]]:
        self.server.recorder.flush()  # the access log is written by the telemetry thread
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def line_of(self, trace_id: str) -> dict[str, Any]:
        found = [line for line in self.lines() if line[names.LOG_TRACE_ID] == trace_id]
        assert len(found) == 1, (trace_id, self.stream.getvalue()[-2000:])
        return found[0]

    def chat(self, content: str, **extra: Any) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 5,
                "ignore_eos": True, **extra}
        return httpx.post(self.base + "/v1/chat/completions", json=body, timeout=60)


def _access_logger(stream: io.StringIO, provider: LoggerProvider) -> logging.Logger:
    logger = logging.getLogger(f"{names.ACCESS_LOGGER}.test-{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    local = logging.StreamHandler(stream)
    local.setFormatter(JsonFormatter())
    logger.addHandler(local)
    logger.addHandler(OtelLogHandler(provider))
    return logger


def _env(capture_content: bool, genai_semconv: names.GenAiSemconv = names.GenAiSemconv.OLD) -> Iterator[Env]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = MeterProvider()
    otlp_logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(otlp_logs))
    stream = io.StringIO()
    access = _access_logger(stream, logger_provider)
    telemetry = Telemetry(meter_provider, tracer_provider, None, "standalone", logger_provider=logger_provider)
    config = ServeConfig(model="tiny", max_num_seqs=2, max_queue_len=4, max_model_len=1024)
    server = ErnieServer(config, lambda model, stats: Recorder(meter_provider, tracer_provider, model, stats,
                                                               capture_content=capture_content,
                                                               access_logger=access, genai_semconv=genai_semconv,
                                                               logger_provider=logger_provider))
    with app_in_thread(server.create_app(telemetry)) as base:
        yield Env(base, server, spans, otlp_logs, stream)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    yield from _env(capture_content=False)


def test_one_json_line_per_request_with_the_genai_span_ids(env: Env) -> None:
    r = env.chat("a short question")
    assert r.status_code == 200, r.text
    trace_id = r.headers[names.TRACE_ID_HEADER]
    line = env.line_of(trace_id)
    genai = [s for s in env.spans.get_finished_spans()
             if s.name == GENAI_SPAN and format(s.context.trace_id, "032x") == trace_id]
    assert len(genai) == 1
    assert line[names.LOG_SPAN_ID] == format(genai[0].context.span_id, "016x")
    usage = r.json()["usage"]
    assert line[names.LOG_MODEL] == MODEL
    assert line[names.LOG_OPERATION] == names.Operation.CHAT.value
    assert line[names.LOG_STATUS] == names.Status.OK.value
    assert names.LOG_ERROR_TYPE not in line
    assert line[names.LOG_FINISH_REASON] == names.FinishReason.LENGTH.value
    assert line[names.LOG_INPUT_TOKENS] == usage["prompt_tokens"] > 0
    assert line[names.LOG_OUTPUT_TOKENS] == usage["completion_tokens"] == 5
    assert line[names.LOG_REQUEST_ID] == r.json()["id"]
    assert line[names.LOG_TENANT] == "default"
    assert line["logger"].startswith(names.ACCESS_LOGGER) and line["level"] == "INFO"
    # The phases in order, and the same instants as the span: TTFT within end-to-end.
    assert 0 <= line[names.LOG_QUEUE_MS] <= line[names.LOG_TTFT_MS] <= line[names.LOG_E2E_MS]
    span_ms = (genai[0].end_time - genai[0].start_time) / 1e6
    assert abs(span_ms - line[names.LOG_E2E_MS]) < 1.0, (span_ms, line)
    assert line[names.LOG_TPOT_MS] > 0


def test_an_error_line_has_its_status_and_error_type(env: Env) -> None:
    r = env.chat("hello", max_tokens=-3)
    assert r.status_code == 400, r.text
    line = env.line_of(r.headers[names.TRACE_ID_HEADER])
    assert line[names.LOG_STATUS] == names.Status.ERROR.value
    assert line[names.LOG_ERROR_TYPE] == names.ErrorType.INVALID_REQUEST.value
    assert line[names.LOG_OUTPUT_TOKENS] == 0


def test_the_otlp_record_carries_the_request_context_and_fields(env: Env) -> None:
    r = env.chat("another question")
    assert r.status_code == 200, r.text
    trace_id = r.headers[names.TRACE_ID_HEADER]
    line = env.line_of(trace_id)
    records = [d.log_record for d in env.otlp_logs.get_finished_logs()
               if d.log_record.trace_id is not None and format(d.log_record.trace_id, "032x") == trace_id]
    assert len(records) == 1
    rec = records[0]
    assert format(rec.span_id or 0, "016x") == line[names.LOG_SPAN_ID]
    attrs = dict(rec.attributes or {})
    assert attrs[names.LOG_MODEL] == MODEL and attrs[names.LOG_OUTPUT_TOKENS] == 5
    assert names.LOG_TRACE_ID not in attrs, "the ids are the record's own fields, not attributes"
    assert rec.severity_text == "INFO" and rec.body == line["message"]
    # The request's finish, not the moment the telemetry thread wrote it.
    assert rec.timestamp is not None
    genai = next(s for s in env.spans.get_finished_spans()
                 if s.name == GENAI_SPAN and format(s.context.trace_id, "032x") == trace_id)
    assert abs(rec.timestamp - (genai.end_time or 0)) < 5_000_000  # 5 ms


def test_content_never_appears_in_logs_by_default(env: Env) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    r = env.chat(f"please repeat {secret}")
    assert r.status_code == 200, r.text
    env.line_of(r.headers[names.TRACE_ID_HEADER])
    completion = r.json()["choices"][0]["message"]["content"]
    assert secret not in env.stream.getvalue()
    for data in env.otlp_logs.get_finished_logs():
        text = json.dumps({"body": data.log_record.body, "attrs": dict(data.log_record.attributes or {})})
        assert secret not in text
        assert names.LOG_INPUT_MESSAGES not in text and names.LOG_OUTPUT_TEXT not in text
    if completion.strip():
        assert completion not in env.stream.getvalue()


def test_content_is_logged_with_the_opt_in() -> None:
    for captured in _env(capture_content=True):
        secret = f"secret-{uuid.uuid4().hex}"
        r = captured.chat(f"please repeat {secret}")
        assert r.status_code == 200, r.text
        line = captured.line_of(r.headers[names.TRACE_ID_HEADER])
        assert json.loads(line[names.LOG_INPUT_MESSAGES]) == [
            {"role": "user", "parts": [{"type": "text", "content": f"please repeat {secret}"}]}]
        assert line[names.LOG_OUTPUT_TEXT] == r.json()["choices"][0]["message"]["content"]
        record = next(d.log_record for d in captured.otlp_logs.get_finished_logs()
                      if format(d.log_record.trace_id or 0, "032x") == r.headers[names.TRACE_ID_HEADER])
        assert secret in str((record.attributes or {})[names.LOG_INPUT_MESSAGES])


def test_the_latest_conventions_add_the_operation_details_event_beside_the_access_record() -> None:
    """A served request with the latest GenAI names and the content opt-in: one access record and one
    gen_ai.client.inference.operation.details event, both in the GenAI span's context; the event's
    content is structured (role + parts), the access line is unchanged."""
    for served in _env(capture_content=True, genai_semconv=names.GenAiSemconv.LATEST):
        secret = f"secret-{uuid.uuid4().hex}"
        r = served.chat(f"please repeat {secret}")
        assert r.status_code == 200, r.text
        trace_id = r.headers[names.TRACE_ID_HEADER]
        line = served.line_of(trace_id)
        mine = [d.log_record for d in served.otlp_logs.get_finished_logs()
                if format(d.log_record.trace_id or 0, "032x") == trace_id]
        events = [rec for rec in mine if rec.event_name == names.GENAI_EVENT_OPERATION_DETAILS]
        assert len(mine) == 2 and len(events) == 1, [rec.event_name for rec in mine]
        event = events[0]
        assert format(event.span_id or 0, "016x") == line[names.LOG_SPAN_ID]
        attrs = dict(event.attributes or {})
        usage = r.json()["usage"]
        assert attrs[names.GEN_AI_RESPONSE_ID] == r.json()["id"]
        assert attrs[names.GEN_AI_USAGE_INPUT_TOKENS] == usage["prompt_tokens"]
        assert attrs[names.GEN_AI_USAGE_OUTPUT_TOKENS] == usage["completion_tokens"] == 5
        assert tuple(attrs[names.GEN_AI_RESPONSE_FINISH_REASONS]) == (names.FinishReason.LENGTH.value,)
        (message,) = attrs[names.GEN_AI_INPUT_MESSAGES]
        assert message["role"] == "user" and message["parts"][0]["content"] == f"please repeat {secret}"
        (choice,) = attrs[names.GEN_AI_OUTPUT_MESSAGES]
        assert choice["parts"][0]["content"] == r.json()["choices"][0]["message"]["content"]
        assert choice["finish_reason"] == names.FinishReason.LENGTH.value


def test_every_line_carries_the_active_span_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    json_stream = io.StringIO()
    json_handler = logging.StreamHandler(json_stream)
    json_handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"ernie_otel.test-{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    for h in (handler, json_handler):
        logger.addHandler(h)
    logger.warning("outside a span")
    with tracer.start_as_current_span("work") as span:
        ctx = span.get_span_context()
        logger.warning("inside a span")
    trace_id, span_id = format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    outside, inside = stream.getvalue().splitlines()
    assert "[trace_id= span_id=]" in outside
    assert f"[trace_id={trace_id} span_id={span_id}]" in inside
    j_outside, j_inside = (json.loads(line) for line in json_stream.getvalue().splitlines())
    assert (j_outside[names.LOG_TRACE_ID], j_outside[names.LOG_SPAN_ID]) == ("", "")
    assert (j_inside[names.LOG_TRACE_ID], j_inside[names.LOG_SPAN_ID]) == (trace_id, span_id)


def test_ernie_serve_writes_its_request_log_where_told(tmp_path: Path) -> None:
    """A real process: JSON lines on stderr by default, in a file with --request-log PATH."""
    path = tmp_path / "requests.jsonl"
    with run_server(tmp_path, "--request-log", str(path)) as served:
        r = httpx.post(served.base + "/v1/chat/completions", timeout=60,
                       json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200, r.text
        trace_id = r.headers[names.TRACE_ID_HEADER]

        def written() -> list[dict[str, Any]]:
            return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

        import time

        deadline = time.monotonic() + 10
        while not any(line[names.LOG_TRACE_ID] == trace_id for line in written()) and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = [line for line in written() if line[names.LOG_TRACE_ID] == trace_id]
        assert len(lines) == 1, path.read_text() if path.exists() else "no file"
        assert lines[0][names.LOG_OUTPUT_TOKENS] > 0
        assert trace_id not in served.log(), "the request line goes to the file, not also to stderr"


def test_an_unwritable_request_log_fails_at_start_up(tmp_path: Path) -> None:
    import subprocess

    from serve_helpers import BIN_DIR

    bad = tmp_path / "missing-dir" / "requests.jsonl"
    result = subprocess.run([str(BIN_DIR / "ernie-serve"), "--model", "tiny", "--request-log", str(bad)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"ernie-serve: --request-log {bad}: No such file or directory"], result.stderr[-2000:]


@pytest.mark.parametrize(("env", "exported"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, ["OTLPLogExporter"]),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_LOGS_EXPORTER": "none"}, []),
    ({"OTEL_LOGS_EXPORTER": "console"}, ["ConsoleLogRecordExporter"]),
    ({}, []),
], ids=["otlp-like-spans", "none", "console", "standalone-default"])
def test_logs_are_exported_where_spans_are_unless_told_otherwise(env: dict[str, str], exported: list[str]) -> None:
    """Standalone ernie-serve's SDK (its own process: the global LoggerProvider is set once)."""
    import os
    import subprocess
    import sys

    script = ("from ernie_otel.telemetry.settings import TelemetrySettings\n"
              "from ernie_otel.telemetry.setup import configure\n"
              "t = configure(TelemetrySettings.from_env(), prometheus=False)\n"
              "lp = t.logger_provider\n"
              "procs = lp._multi_log_record_processor._log_record_processors if lp is not None else ()\n"
              "print([type(p._batch_processor._exporter).__name__ for p in procs])\n"
              "t.shutdown()\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    from helpers import REPO_ROOT

    # The SDK offers no public way to list a provider's processors: the test reads its private fields.
    result = subprocess.run([sys.executable, "-c", script], env={**clean, **env, "PYTHONPATH": str(REPO_ROOT)},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == repr(exported)


def test_a_bad_logs_exporter_is_a_configuration_error() -> None:
    from ernie_otel.config import ConfigError
    from ernie_otel.telemetry.settings import TelemetrySettings

    with pytest.raises(ConfigError, match="OTEL_LOGS_EXPORTER"):
        TelemetrySettings.from_env({"OTEL_LOGS_EXPORTER": "zipkin"})
