"""Logs through the real pipeline: ernie-serve under opentelemetry-instrument -> OTLP -> the Collector
-> VictoriaLogs, read back through VictoriaLogs' own LogsQL API; and the Jaeger UI's link from a trace
to those logs, as the stack's Jaeger serves it (the whole stack on free ports: the e2e_stack fixture),
followed in headless Chromium from the trace page to vmui showing the request's record."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_client import E2EStack, wait_for
from helpers import http_get
from serve_helpers import run_server
from test_ui_browser import PLACEHOLDER_TEXT, Browser
from test_ui_browser import browser as browser  # the fixture: one headless Chromium per module

from ernie_otel import jaeger_ui, names
from ernie_otel.ports import HOST
from ernie_otel.stack import components
from ernie_otel.telemetry.settings import SEMCONV_ENV

LOG_WAIT_S = 30  # the SDK's batch (1 s) + the Collector's batch (1 s) + VictoriaLogs' indexing (~1 s)


def _logsql(e: E2EStack, query: str) -> list[dict[str, Any]]:
    """Every record a LogsQL query matches, through VictoriaLogs' query API (JSON lines)."""
    url = f"{components.log_store_url(e.stack.ports)}/select/logsql/query?{urllib.parse.urlencode({'query': query})}"
    status, body = http_get(url, timeout=10)
    assert status == 200, f"{url}: HTTP {status}: {body[:300]}"
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def _access_record(e: E2EStack, trace_id: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        records = [r for r in _logsql(e, f"trace_id:{trace_id}") if r.get("scope.name") == names.ACCESS_LOGGER]
        assert len(records) <= 1, records
        return records[0] if records else None

    return wait_for(found, LOG_WAIT_S, f"the access record of trace {trace_id} in VictoriaLogs")


def test_a_responses_trace_id_finds_its_log_line_in_the_log_store(e2e_stack: E2EStack) -> None:
    result = e2e_stack.chat("what is in the log store?", max_tokens=6)
    assert result.status == 200, result.body
    trace_id = result.trace_id
    assert trace_id
    record = _access_record(e2e_stack, trace_id)
    usage = result.body["usage"]
    # VictoriaLogs keeps every OTLP attribute as a string field.
    assert record[names.LOG_MODEL] == e2e_stack.model
    assert record[names.LOG_STATUS] == names.Status.OK.value
    assert record[names.LOG_INPUT_TOKENS] == str(usage["prompt_tokens"])
    assert record[names.LOG_OUTPUT_TOKENS] == str(usage["completion_tokens"])
    assert record[names.LOG_REQUEST_ID] == result.body["id"]
    for key in (names.LOG_E2E_MS, names.LOG_TTFT_MS, names.LOG_QUEUE_MS):
        assert float(record[key]) >= 0, key
    assert record["service.name"] == names.SERVICE_NAME
    assert record["severity_text"] == "INFO"
    # The span id is the GenAI span's: the log line sits on the right span of the trace in Jaeger.
    trace = e2e_stack.wait_trace(trace_id, min_spans=2)
    genai = [s for s in trace["spans"] if s["spanID"] == record["span_id"]]
    assert len(genai) == 1 and genai[0]["operationName"] == names.genai_span_name("chat", e2e_stack.model)
    # ... and ernie-serve wrote the same request as a JSON line on its stderr (the stack's log).
    local = [json.loads(line) for line in e2e_stack.stack.log_path("ernie_serve").read_text().splitlines()
             if line.startswith("{") and trace_id in line]
    assert len(local) == 1 and local[0][names.LOG_SPAN_ID] == record["span_id"], local


def test_an_error_is_in_the_log_store_with_its_error_type(e2e_stack: E2EStack) -> None:
    result = e2e_stack.chat(max_tokens=-3)
    assert result.status == 400 and result.trace_id
    record = _access_record(e2e_stack, result.trace_id)
    assert record[names.LOG_STATUS] == names.Status.ERROR.value
    assert record[names.LOG_ERROR_TYPE] == names.ErrorType.INVALID_REQUEST.value
    hits = _logsql(e2e_stack, f'{names.LOG_ERROR_TYPE}:"{names.ErrorType.INVALID_REQUEST.value}"')
    assert any(r["trace_id"] == result.trace_id for r in hits)


def test_prompt_and_completion_never_reach_the_log_store_by_default(e2e_stack: E2EStack) -> None:
    secret = f"secret{uuid.uuid4().hex}"
    result = e2e_stack.chat(f"please repeat {secret}", max_tokens=6)
    assert result.status == 200 and result.trace_id
    record = _access_record(e2e_stack, result.trace_id)
    assert secret not in json.dumps(record)
    assert names.LOG_INPUT_MESSAGES not in record and names.LOG_OUTPUT_TEXT not in record
    # Nowhere in the store: no field of any record of the last hour (this stack's whole life) holds it.
    everything = _logsql(e2e_stack, "_time:1h")
    assert any(r.get("trace_id") == result.trace_id for r in everything)
    assert not [r for r in everything if secret in json.dumps(r)]
    assert secret not in e2e_stack.stack.log_path("ernie_serve").read_text()


def test_the_latest_conventions_event_reaches_the_log_store(e2e_stack: E2EStack, tmp_path: Path) -> None:
    """A second ernie-serve, opted in to the latest GenAI names and exporting to the stack's Collector:
    its gen_ai.client.inference.operation.details event reaches VictoriaLogs as an event (the OTLP
    event name kept through the Collector) in the request's trace, with its details and no content."""
    endpoint = f"http://{HOST}:{e2e_stack.stack.ports['otlp_grpc']}"
    secret = f"secret{uuid.uuid4().hex}"
    with run_server(tmp_path, "--otlp-endpoint", endpoint, env={SEMCONV_ENV: names.SEMCONV_GENAI_LATEST},
                    name="latest") as served:
        r = httpx.post(served.base + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": f"repeat {secret}"}], "max_tokens": 4,
                             "ignore_eos": True})
        assert r.status_code == 200, r.text
        trace_id = r.headers[names.TRACE_ID_HEADER]
        query = f'trace_id:{trace_id} event_name:"{names.GENAI_EVENT_OPERATION_DETAILS}"'
        record = wait_for(lambda: _logsql(e2e_stack, query), LOG_WAIT_S, f"the event of trace {trace_id}")
    assert len(record) == 1, record
    event = record[0]
    # VictoriaLogs keeps every OTLP attribute as a string field.
    assert event[names.GEN_AI_RESPONSE_ID] == r.json()["id"]
    assert event[names.GEN_AI_USAGE_OUTPUT_TOKENS] == "4"
    assert event[names.GEN_AI_OPERATION_NAME] == names.Operation.CHAT.value
    assert event["span_id"] == _access_record(e2e_stack, trace_id)["span_id"], "both sit on the GenAI span"
    assert secret not in json.dumps(event) and names.GEN_AI_INPUT_MESSAGES not in event


def _ui_config(e: E2EStack) -> dict[str, Any]:
    status, page = http_get(e.jaeger + "/search", timeout=10)
    assert status == 200, page[:300]
    match = re.search(r"JAEGER_CONFIG = (\{.*?\});", page)
    assert match, "the Jaeger UI page carries no injected config (UI assets or jaeger_query.ui.config_file missing)"
    config: dict[str, Any] = json.loads(match.group(1))
    return config


def test_jaeger_ui_links_a_trace_to_its_logs(e2e_stack: E2EStack) -> None:
    result = e2e_stack.chat("a trace with logs", max_tokens=4)
    assert result.status == 200 and result.trace_id
    _access_record(e2e_stack, result.trace_id)
    patterns = [p for p in _ui_config(e2e_stack).get("linkPatterns", []) if p.get("type") == "traces"]
    assert len(patterns) == 2, patterns
    store = components.log_store_url(e2e_stack.stack.ports)
    for pattern in patterns:
        assert pattern["url"].startswith(store + "/select/"), pattern
        assert "#{traceID}" in pattern["url"]
        # What the UI opens: the template with the trace id (hex: URI-encoding leaves it unchanged).
        url = pattern["url"].replace("#{traceID}", result.trace_id)
        page_url, _, fragment = url.partition("#/")
        status, body = http_get(page_url, timeout=10)
        assert status == 200, f"{page_url}: HTTP {status}"
        if fragment:  # vmui: the query lives in the hash route, which the browser hands to the app
            assert "<html" in body.lower() and f"query=trace_id%3A{result.trace_id}" in fragment
        else:  # the LogsQL API: the trace's lines themselves
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            assert any(line.get("scope.name") == names.ACCESS_LOGGER for line in lines), body[:500]
            assert all(line["trace_id"] == result.trace_id for line in lines)


def test_the_stack_runs_and_reports_the_log_store(e2e_stack: E2EStack) -> None:
    status = e2e_stack.stack.status()
    assert status["victorialogs"]["alive"] and status["victorialogs"]["healthy"], status["victorialogs"]
    ui = e2e_stack.stack.urls["logs"]
    assert ui == components.victorialogs_ui_url(e2e_stack.stack.ports)
    code, body = http_get(ui, timeout=10)
    assert code == 200 and "<html" in body.lower()


@pytest.mark.integration
def test_from_a_trace_page_to_its_logs_in_a_browser(e2e_stack: E2EStack, browser: Browser) -> None:
    """The trace page's link menu (Jaeger UI) opens vmui, which shows the request's access record."""
    assert jaeger_ui.installed_assets(), jaeger_ui.HOW_TO_GET
    e = e2e_stack
    result = e.chat("follow me to my logs", max_tokens=5)
    assert result.status == 200 and result.trace_id
    trace_id = result.trace_id
    e.wait_trace(trace_id, min_spans=5)
    _access_record(e, trace_id)
    browser.get(f"{e.jaeger}/trace/{trace_id}")
    # The header's link menu (an antd dropdown; the release build drops its data-testid).
    menu = ".TracePageHeader--titleRow a.ant-dropdown-trigger.TracePageHeader--back"
    browser.wait(f"return document.querySelector('{menu}') !== null", 20, "the trace header's link menu")
    assert PLACEHOLDER_TEXT not in browser.text()
    browser.js(f"document.querySelector('{menu}').click()")
    links = browser.wait("const a = Array.from(document.querySelectorAll('.ant-dropdown a[title]'));"
                         "return a.length >= 2 ? a.map(x => [x.title, x.href]) : null", 10, "the link menu's items")
    by_title = dict(links)
    vmui = by_title["Logs of this trace (VictoriaLogs)"]
    store = components.log_store_url(e.stack.ports)
    assert vmui.startswith(f"{store}/select/vmui/#/") and f"trace_id%3A{trace_id}" in vmui, vmui
    assert by_title["Logs of this trace (JSON lines)"] == f"{store}/select/logsql/query?query=trace_id%3A{trace_id}"
    assert browser.console_errors() == []
    browser.get(vmui)
    message = f"chat {e.model} ok"
    browser.wait(f"return document.body.innerText.includes({json.dumps(message)})", 30,
                 "vmui showing the request's access record")
    # The link's time range, not vmui's default of 5 minutes: a trace from last week finds its logs too.
    assert "Last 30 days" in browser.text()
    browser.screenshot("victorialogs-trace-logs")


@pytest.mark.integration
def test_logs_written_while_the_store_is_down_arrive_after_it_heals(e2e_stack: E2EStack) -> None:
    """A killed VictoriaLogs loses nothing of a short outage: the Collector's queue retries (60 s),
    the stack restarts only the store, and its data on disk survives (last test: it kills a component)."""
    from test_stack_heal import _kill

    from ernie_otel.stack import Stack

    e = e2e_stack
    before = e.chat("logged before the outage", max_tokens=3)
    assert before.status == 200 and before.trace_id
    _access_record(e, before.trace_id)
    # Searchable is not yet on disk: the store flushes its in-memory part every second (the stack's
    # -inmemoryDataFlushInterval); a SIGKILL before that loses it.
    time.sleep(2.5)
    _kill(e.stack, "victorialogs")
    during = e.chat("logged during the outage", max_tokens=3)
    assert during.status == 200 and during.trace_id, "a dead log store must not fail requests"
    healed = Stack.from_state(e.stack.state_dir, bin_dir=e.stack.bin_dir, say=lambda _: None)
    assert healed.up() == ["victorialogs"]
    # Retried by the Collector into the new process (its retry interval grows to 10 s).
    _access_record(e, during.trace_id)
    _access_record(e, before.trace_id)  # still there: the store's data was on disk
