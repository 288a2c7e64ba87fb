"""The viewers a user opens, in a real browser: the Jaeger UI (search, trace view, comparison,
service graph, Monitor tab) and the ERNIE console dashboard that Prometheus serves, both against the
whole stack (real ernie-serve with the tiny ERNIE model, Collector, Jaeger, Prometheus).

Headless Chromium from Debian's `chromium` package, driven by selenium through Debian's
`chromedriver` (scripts/setup.sh installs both; a missing one is a failure, not a skip). Every page
is checked through its DOM and the browser's console log; screenshots go to the test's artefact
folder, and with ERNIE_OTEL_UPDATE_SCREENSHOTS=1 also to docs/ui/ (the pictures docs/ui.md shows).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboard_queries import ENGINE_PANELS, load_dashboard
from e2e_client import COLLECTOR_JOB, E2EStack, _request, wait_for
from test_dashboards import query_drift

from ernie_otel import jaeger_ui, names
from ernie_otel.consoles import dashboard_url

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_SCREENSHOTS = REPO_ROOT / "docs" / "ui"
UPDATE_SCREENSHOTS_ENV = "ERNIE_OTEL_UPDATE_SCREENSHOTS"
CHAT_SERVER_SPAN = "POST /v1/chat/completions"
# The test's own traced client: its CLIENT span is the parent of ernie-serve's SERVER span, which
# is what gives Jaeger's service graph an edge to draw. Sorted after ernie-serve on purpose: the
# Monitor tab opens on the first service.
CLIENT_SERVICE = "ui-test-client"
# Jaeger's placeholder page (a Jaeger built without UI assets) says this.
PLACEHOLDER_TEXT = "This is not the Jaeger UI you are looking for"
# The dashboard page must be complete (every panel drawn) within this many seconds.
DASHBOARD_LOAD_S = 3.0
WINDOW = (1400, 1000)


# ------------------------------------------------------------------------------------ browser
class Browser:
    """One headless Chromium; ``console_errors()`` returns (and forgets) the SEVERE log lines."""

    def __init__(self, artefacts: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
        assert chromium and driver, "chromium/chromedriver not found: Debian packages chromium and " \
                                    "chromium-driver (scripts/setup.sh)"
        self.profile = tempfile.mkdtemp(prefix="ernie-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        # A fresh profile and every background fetch off: nothing may try the network.
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(driver), options=options)
        self.driver.set_page_load_timeout(30)
        self.artefacts = artefacts

    def get(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def text(self) -> str:
        return self.js("return document.body ? document.body.innerText : ''")

    def wait(self, script: str, timeout: float, what: str) -> Any:
        from selenium.common.exceptions import JavascriptException

        def check() -> Any:
            try:
                return self.js(script)
            except JavascriptException as exc:  # the page is still being built
                raise ValueError(exc.msg) from None

        return wait_for(check, timeout, what, interval=0.2)

    def console_errors(self, ignore: tuple[str, ...] = ()) -> list[str]:
        lines = [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]
        return [line for line in lines if not any(pattern in line for pattern in ignore)]

    def screenshot(self, name: str, height: int | None = None) -> Path:
        if height:
            self.driver.set_window_size(WINDOW[0], height)
        path = self.artefacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        if height:
            self.driver.set_window_size(*WINDOW)
        if os.environ.get(UPDATE_SCREENSHOTS_ENV) == "1":
            DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS_SCREENSHOTS / path.name)
        return path

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(tmp_path_factory.mktemp("screenshots"))
    try:
        yield b
    finally:
        b.close()


# --------------------------------------------------------------------------------- traffic
class TracedClient:
    """A client that traces its own calls (service ui-test-client) into the stack's Collector."""

    def __init__(self, e: E2EStack) -> None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        # Injected provider, no globals: the test process must not change anyone's OTel set-up.
        self.provider = TracerProvider(resource=Resource.create({"service.name": CLIENT_SERVICE}))
        self.provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=e.stack.url("otlp_grpc"), insecure=True)))
        self.tracer = self.provider.get_tracer("ernie-otel-ui-test")
        self.e = e

    def chat(self, content: str) -> tuple[int, str]:
        from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

        with self.tracer.start_as_current_span(CHAT_SERVER_SPAN, kind=SpanKind.CLIENT) as span:
            ctx = span.get_span_context()
            parent = f"00-{format_trace_id(ctx.trace_id)}-{format_span_id(ctx.span_id)}-01"
            result = self.e.chat(content, headers={"traceparent": parent})
        return result.status, format_trace_id(ctx.trace_id)

    def close(self) -> None:
        self.provider.shutdown()


class Load:
    """Steady chat requests from two threads for as long as the module runs (the dashboard's
    rates and quantiles need traffic inside their windows)."""

    def __init__(self, e: E2EStack) -> None:
        self.e, self.stop = e, threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(2)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                self.e.chat(f"load {i} {n}", max_tokens=8 + (n % 3) * 8)
            except OSError:
                time.sleep(0.5)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


@pytest.fixture(scope="module")
def traffic(e2e_stack: E2EStack) -> Iterator[dict[str, Any]]:
    """Load running, plus two traced requests whose trace ids the Jaeger tests open."""
    assert jaeger_ui.installed_assets(), jaeger_ui.HOW_TO_GET
    client = TracedClient(e2e_stack)
    load = Load(e2e_stack)
    try:
        traced = [client.chat(f"traced request {i}") for i in range(2)]
        assert all(status == 200 for status, _ in traced), traced
        ids = [trace_id for _, trace_id in traced]
        for trace_id in ids:
            # SERVER, GenAI, queue, prefill, decode (ernie-serve) + the client's own span.
            e2e_stack.wait_trace(trace_id, min_spans=6)
        yield {"trace_ids": ids, "client": client}
    finally:
        load.close()
        client.close()


# ------------------------------------------------------------------------------- Jaeger UI
def _jaeger_page(browser: Browser, url: str, ready_script: str, what: str, timeout: float = 20) -> str:
    browser.get(url)
    browser.wait(ready_script, timeout, what)
    text = browser.text()
    assert PLACEHOLDER_TEXT not in text, f"Jaeger serves its placeholder page, not the UI: {url}"
    return text


@pytest.mark.integration
def test_jaeger_search_lists_ernie_serve(e2e_stack: E2EStack, traffic: dict[str, Any], browser: Browser) -> None:
    jaeger = e2e_stack.jaeger
    url = f"{jaeger}/search?" + urllib.parse.urlencode(
        {"service": names.SERVICE_NAME, "operation": CHAT_SERVER_SPAN, "lookback": "1h", "limit": "20"})
    _jaeger_page(browser, url, "return document.querySelectorAll('.ResultItemTitle--title').length > 0",
                 "search results")
    # The form's service field holds ernie-serve (one of /api/services), and the results are its
    # traces: titled by their root span, ernie-serve's own or the traced client's.
    form = browser.js("const f = document.querySelector('.SearchTracePage--find'); return f ? f.innerText : ''")
    assert names.SERVICE_NAME in form and re.search(r"Service\s*\((\d+)\)", form), form
    titles = browser.js("return Array.from(document.querySelectorAll('.ResultItemTitle--title'))"
                        ".map(e => e.innerText)")
    assert any(title.startswith(f"{names.SERVICE_NAME}: {CHAT_SERVER_SPAN}") for title in titles), titles
    assert all(title.startswith((f"{names.SERVICE_NAME}: ", f"{CLIENT_SERVICE}: ")) for title in titles), titles
    browser.screenshot("jaeger-search")
    assert browser.console_errors() == []


@pytest.mark.integration
def test_jaeger_trace_page_shows_server_genai_and_phase_spans(
        e2e_stack: E2EStack, traffic: dict[str, Any], browser: Browser) -> None:
    e = e2e_stack
    result = e.chat("a trace to look at", max_tokens=12)
    assert result.status == 200, result.body
    trace_id = result.trace_id
    assert trace_id and re.fullmatch(r"[0-9a-f]{32}", trace_id), result.headers
    e.wait_trace(trace_id, min_spans=5)
    expected = [CHAT_SERVER_SPAN, names.genai_span_name("chat", e.model), names.SPAN_QUEUE, names.SPAN_PREFILL,
                names.SPAN_DECODE]
    text = _jaeger_page(browser, f"{e.jaeger}/trace/{trace_id}",
                        "return document.querySelectorAll('.span-name').length >= 5", "the trace's span rows")
    ops = browser.js("return Array.from(document.querySelectorAll('.span-name .endpoint-name'))"
                     ".map(e => e.innerText)")
    for name in expected:
        assert name in ops, (name, ops)
    assert trace_id[:7] in text  # the header shows the short trace id
    browser.screenshot("jaeger-trace")
    assert browser.console_errors() == []


@pytest.mark.integration
def test_jaeger_compare_and_service_graph(e2e_stack: E2EStack, traffic: dict[str, Any], browser: Browser) -> None:
    a, b = traffic["trace_ids"]
    jaeger = e2e_stack.jaeger
    compare = f"{jaeger}/trace/{a}...{b}?" + urllib.parse.urlencode({"cohort": [a, b]}, doseq=True)
    _jaeger_page(browser, compare,
                 "const g = document.querySelector('.TraceDiffGraph--graphWrapper');"
                 "return g !== null && g.innerText.length > 0", "the trace comparison graph")
    diff_text = browser.js("return document.querySelector('.TraceDiffGraph--graphWrapper').innerText")
    assert CHAT_SERVER_SPAN in diff_text and names.SPAN_DECODE in diff_text, diff_text
    browser.screenshot("jaeger-compare")
    # The service graph: the traced client calls ernie-serve. Jaeger's badger store builds it from
    # the newest 100 traces of the window, and the module's load adds traces all the time: so a
    # traced request goes in right before each look.
    edge = (CLIENT_SERVICE, names.SERVICE_NAME)

    def graph_has_edge() -> dict[str, Any] | None:
        status, trace_id = traffic["client"].chat("traced request for the service graph")
        assert status == 200
        e2e_stack.wait_trace(trace_id, min_spans=6)
        deps: dict[str, Any] = json.loads(_request(
            f"{jaeger}/api/dependencies?endTs={int(time.time() * 1000)}&lookback=3600000")[2])
        return deps if edge in {(d["parent"], d["child"]) for d in deps["data"]} else None

    wait_for(graph_has_edge, 60, f"the service graph edge {edge}", interval=0.1)
    _jaeger_page(browser, f"{jaeger}/dependencies",
                 "return document.querySelectorAll('.DAG--nodeLabel').length >= 2", "the service graph's nodes")
    labels = browser.js("return Array.from(document.querySelectorAll('.DAG--nodeLabel')).map(e => e.textContent)")
    assert {CLIENT_SERVICE, names.SERVICE_NAME} <= set(labels), labels
    browser.screenshot("jaeger-service-graph")
    assert browser.console_errors() == []


# ----------------------------------------------------------------------------- Monitor tab
def test_monitor_reads_the_millisecond_span_metrics() -> None:
    """Jaeger's metrics backend names the family the Collector's Jaeger-only connector makes, in the
    unit the Jaeger UI assumes (ms); the dashboards' connector stays in seconds."""
    otelcol = yaml.safe_load((REPO_ROOT / "collector" / "otelcol.yaml").read_text())
    jaeger = yaml.safe_load((REPO_ROOT / "collector" / "jaeger.yaml").read_text())
    spm = otelcol["connectors"]["span_metrics/jaeger_spm"]
    assert otelcol["connectors"]["span_metrics"]["histogram"]["unit"] == "s"
    assert names.SPANMETRICS_DURATION_PROM.endswith("_seconds")
    backend_name = jaeger["extensions"]["jaeger_query"]["storage"]["metrics"]
    backend = jaeger["extensions"]["jaeger_storage"]["metric_backends"][backend_name]["prometheus"]
    assert spm["histogram"]["unit"] == backend["latency_unit"] == "ms"
    assert backend["metric_namespace"] == spm["namespace"].replace(".", "_")
    # The Prometheus exporter appends _total and _milliseconds: Jaeger must expect both.
    assert backend["normalize_calls"] is True and backend["normalize_duration"] is True
    pipelines = otelcol["service"]["pipelines"]
    assert "span_metrics/jaeger_spm" in pipelines["traces"]["exporters"]
    assert "span_metrics/jaeger_spm" in pipelines["metrics"]["receivers"]
    # deploy/prometheus.yml keeps the family (its keep-list matches traces_span_metrics_.*).
    assert re.fullmatch(names.PROMETHEUS_KEEP_REGEX, backend["metric_namespace"] + "_calls_total")
    assert jaeger["extensions"]["jaeger_query"]["ui"]["assets_path"] == "${env:JAEGER_UI_ASSETS:-}"


def _spm_buckets_s() -> list[float]:
    """The Jaeger span-metrics connector's bucket bounds (collector/otelcol.yaml), in seconds."""
    config = yaml.safe_load((REPO_ROOT / "collector" / "otelcol.yaml").read_text())
    spm = config["connectors"]["span_metrics/jaeger_spm"]
    assert spm["histogram"]["unit"] == "ms"
    units = {"ms": 0.001, "s": 1.0}
    return [float(m.group(1)) * units[m.group(2)]
            for m in (re.fullmatch(r"([\d.]+)(ms|s)", str(b)) for b in spm["histogram"]["explicit"]["buckets"])
            if m]


def _bucket(value: float, bounds: list[float]) -> tuple[float, float]:
    lo = 0.0
    for hi in sorted(bounds):
        if value <= hi:
            return lo, hi
        lo = hi
    return lo, math.inf


def _monitor_p95_s(e: E2EStack, window_ms: int) -> float | None:
    """The p95 of POST /v1/chat/completions that the Monitor tab shows, from the same API it calls."""
    params = {"service": names.SERVICE_NAME, "quantile": "0.95", "groupByOperation": "true", "spanKind": "server",
              "endTs": str(int(time.time() * 1000)), "lookback": str(window_ms), "step": "5000",
              "ratePer": str(window_ms)}
    status, _, body = _request(f"{e.jaeger}/api/metrics/latencies?" + urllib.parse.urlencode(params))
    assert status == 200, body
    for metric in json.loads(body)["metrics"]:
        labels = {lb["name"]: lb["value"] for lb in metric["labels"]}
        if labels.get("operation") == CHAT_SERVER_SPAN:
            points = [p["gaugeValue"]["doubleValue"] for p in metric["metricPoints"]
                      if isinstance(p.get("gaugeValue", {}).get("doubleValue"), (int, float))]
            points = [v for v in points if math.isfinite(v)]
            if points:
                return points[-1] / 1000.0  # the Monitor tab's unit: milliseconds
    return None


@pytest.mark.integration
def test_monitor_tab_shows_ernie_serve_in_the_right_unit(
        e2e_stack: E2EStack, traffic: dict[str, Any], browser: Browser) -> None:
    e = e2e_stack
    window_ms = 10 * 60 * 1000
    jaeger_p95 = wait_for(lambda: _monitor_p95_s(e, window_ms), 60, "a Monitor p95 for " + CHAT_SERVER_SPAN)
    ours = e.finite(f"histogram_quantile(0.95, sum by (le) (rate({names.LATENCY.prom_name}_bucket"
                    f'{{job="{COLLECTOR_JOB}"}}[{window_ms // 1000}s])))')
    assert ours is not None
    # Within a bucket: both are interpolated inside their own histogram's buckets, so they may sit
    # in neighbouring buckets (one at 0.49 s, the other at 0.52 s across a 0.5 s edge), but never
    # further apart than the wider of the two buckets holding them (a unit slip is 1000x off).
    ours_bucket = _bucket(ours, list(names.LATENCY.buckets))
    spm_bucket = _bucket(jaeger_p95, _spm_buckets_s())
    print(f"p95 of {CHAT_SERVER_SPAN}: Monitor {jaeger_p95 * 1000:.1f} ms (bucket {spm_bucket}), "
          f"ours {ours * 1000:.1f} ms (bucket {ours_bucket})")
    width = max(spm_bucket[1] - spm_bucket[0], ours_bucket[1] - ours_bucket[0])
    assert abs(jaeger_p95 - ours) <= width, (
        f"Monitor p95 {jaeger_p95:.4f}s in {spm_bucket}, ours {ours:.4f}s in {ours_bucket}")

    browser.get(f"{e.jaeger}/search")
    browser.js("localStorage.setItem('lastAtmSearchService', JSON.stringify(arguments[0]))", names.SERVICE_NAME)
    # The operations table's row of the chat endpoint: its p95 and request-rate cells, once filled.
    op = json.dumps(CHAT_SERVER_SPAN)
    row_cells = (f"const r = Array.from(document.querySelectorAll('tr')).find(r => r.innerText.includes({op}));"
                 "const c = r ? Array.from(r.querySelectorAll('.table-graph-avg')).map(e => e.innerText.trim()) : [];"
                 "return c.length >= 2 && c[0] && c[1] ? c : null")
    _jaeger_page(browser, f"{e.jaeger}/monitor", row_cells, "the Monitor tab's operations table", timeout=40)
    cells = browser.js(row_cells)
    latency, rate = cells[0], cells[1]
    m = re.fullmatch(r"([\d.]+)\s*(μs|ms|s)", latency)
    assert m, cells
    shown_s = float(m.group(1)) * {"μs": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]
    print(f"Monitor tab row: p95 {latency}, {rate}")
    # The table shows the p95 averaged over its range; the unit is right when it is near ours
    # (the bug this guards against is a factor of 1000).
    assert ours / 5 < shown_s < ours * 5, (cells, ours)
    # A rate under 0.1 req/s (the table averages over its whole range) shows as "< 0.1 req/s":
    # still a positive rate; "0 req/s" would mean the calls were not counted.
    m = re.fullmatch(r"(<\s*)?([\d.]+)\s*req/s", rate)
    assert m and float(m.group(2)) > 0, cells
    assert names.SERVICE_NAME in browser.text()
    browser.screenshot("jaeger-monitor")
    assert browser.console_errors() == []


# ------------------------------------------------------------------------ console dashboard
def _burst_of_rejections(e: E2EStack) -> int:
    """More concurrent requests than the running batch and the waiting queue hold: the rest get
    429 (status=rejected), which the Rejected requests panel shows."""
    results: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        status = e.chat(f"burst {i}", max_tokens=48).status
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(110)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results.count(429)


def _has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidiactl").exists()


@pytest.mark.integration
def test_console_dashboard_under_load(e2e_stack: E2EStack, traffic: dict[str, Any], browser: Browser) -> None:
    e = e2e_stack
    e.bad_requests()
    assert _burst_of_rejections(e) > 0, "no request was rejected: the queue never filled"
    e.bad_requests()
    # Wait until what the panels read has reached Prometheus (scrape and span-metric flush: 5 s).
    wait_for(lambda: e.query(f'{names.REQUESTS.prom_name}{{job="{COLLECTOR_JOB}", status="rejected"}}'), 30,
             "rejected requests in Prometheus")
    wait_for(lambda: e.query(f'{names.SPANMETRICS_CALLS_PROM}{{job="{COLLECTOR_JOB}", '
                             'status_code="STATUS_CODE_ERROR"}'), 30, "error spans in Prometheus")
    time.sleep(10)  # two more scrapes, so every rate() window holds the increase

    url = dashboard_url(e.prometheus, e.jaeger)
    start = time.monotonic()
    # The console library's time control reads its range from the fragment: the last 10 minutes.
    browser.get(url + "#pctc" + urllib.parse.quote(json.dumps({"duration": 600, "endTime": 0})))
    states = browser.wait(
        "const p = Array.from(document.querySelectorAll('.ernie-panel'));"
        "return p.length > 0 && p.every(e => e.dataset.state !== 'loading') ?"
        " p.map(e => [e.dataset.title, e.dataset.state, e.dataset.detail || '']) : null",
        30, "every dashboard panel drawn")
    load_s = time.monotonic() - start
    by_title = {title: (state, detail) for title, state, detail in states}

    # The page Prometheus serves shows exactly the Grafana dashboard's panel queries.
    served = _request(url)[2].decode()
    assert query_drift(load_dashboard(), served) == []

    absent_ok = set(ENGINE_PANELS)
    if not _has_nvidia_gpu():
        absent_ok |= {"GPU memory used", "GPU utilization", "GPU temperature", "GPU power"}
    bad = {title: sd for title, sd in by_title.items()
           if not (sd[0] in ("graph", "number") or (sd[0] == "absent" and title in absent_ok))}
    assert not bad, f"panels without a graph or number: {bad}"
    assert "No data" not in browser.text() and "No timeseries returned" not in browser.text()
    assert "Error loading data" not in browser.text() and "parse error" not in browser.text()
    # The latency panels link to Jaeger searches on this stack's Jaeger, from their p95 up.
    links = browser.js("return Array.from(document.querySelectorAll('a.ernie-trace-link')).map(a => a.href)")
    assert len(links) >= 5 and all(link.startswith(f"{e.jaeger}/search?service={names.SERVICE_NAME}")
                                   for link in links), links
    assert any("minDuration=" in link for link in links), links
    print(f"console dashboard: {len(states)} panels drawn in {load_s:.2f}s")
    assert load_s < DASHBOARD_LOAD_S, f"dashboard took {load_s:.2f}s to draw every panel"
    browser.screenshot("console-dashboard", height=2000)
    # Debian's prometheus package leaves out two files its own console library loads
    # (rickshaw's d3.layout.min.js, popper.js): those errors are the package's, not the page's.
    assert browser.console_errors(ignore=("/classic/static/vendor/rickshaw/vendor/d3.layout.min.js",
                                          "/classic/static/popper.js", "/favicon.ico")) == []


def test_stack_prints_the_urls_to_open(tmp_path: Path) -> None:
    """What `make demo` prints once healthy: the four viewers first, on this stack's own ports."""
    from ernie_otel.stack import Stack

    lines: list[str] = []
    ports = {"jaeger_query": 40100, "prometheus": 40101, "alertmanager": 40102}
    Stack(tmp_path, ports=ports, bin_dir=tmp_path, say=lines.append).print_urls()
    text = "\n".join(lines)
    head = text.split("ernie-serve (OpenAI API)")[0]
    assert "http://127.0.0.1:40101/consoles/ernie.html?jaeger=http://127.0.0.1:40100" in head
    assert "http://127.0.0.1:40100/monitor" in head and "http://127.0.0.1:40102" in head
    assert "http://127.0.0.1:40101/alerts" in head
    ui_line = next(line for line in lines if "Jaeger UI" in line)
    if jaeger_ui.installed_assets():
        assert ui_line.endswith(f"http://127.0.0.1:40100/search?service={names.SERVICE_NAME}")
    else:
        assert jaeger_ui.HOW_TO_GET in ui_line
