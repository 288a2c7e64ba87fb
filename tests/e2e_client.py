"""Thin clients for ernie-serve, Prometheus and Jaeger of a running local pipeline
(ernie_otel.stack.Stack), which the end-to-end tests share. The `e2e_stack` fixture (the plugin
tests/plugins/ernie_pipeline.py) gives one on free ports, so the tests never collide with a
developer's running `ernie-otel stack up` (default ports) or with another test session.

Facts the selectors below rely on (checked by the tests, see docs/pipeline.md):
- direct scrape:  job="ernie-serve-direct" (the job name in deploy/prometheus.yml),
  instance="127.0.0.1:<metrics port>";
- Collector path: job="ernie-serve" (service.name), instance="<service.instance.id>" (a UUID),
  kept as-is because the otel-collector job has honor_labels: true (no exported_job/exported_instance).
So `job` alone tells the two paths apart: a sum over one job counts each request once.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from ernie_otel import names
from ernie_otel.ports import DEFAULT_PORTS
from ernie_otel.stack import PROMETHEUS_CONFIG, Stack, log_tail
from ernie_otel.stack.procs import http_request

T = TypeVar("T")


def direct_scrape_job() -> str:
    """The job deploy/prometheus.yml scrapes ernie-serve's --metrics-port under (its default
    target), read from the file so a rename there cannot leave the tests behind."""
    target = f"127.0.0.1:{DEFAULT_PORTS['serve_metrics']}"
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = [job["job_name"] for job in config["scrape_configs"]
            for static in job.get("static_configs", []) if target in static.get("targets", [])]
    assert len(jobs) == 1, f"{PROMETHEUS_CONFIG}: jobs scraping {target}: {jobs}"
    return jobs[0]


COLLECTOR_JOB = names.SERVICE_NAME  # the Collector path's job: service.name, kept by honor_labels
DIRECT_JOB = direct_scrape_job()
assert DIRECT_JOB != COLLECTOR_JOB, "both paths under one job would count every request twice"


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (OSError, AssertionError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def _request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    return http_request(url, data, {"Content-Type": "application/json", **(headers or {})}, timeout)


@dataclass
class ChatResult:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    seconds: float

    @property
    def trace_id(self) -> str | None:
        return self.headers.get(names.TRACE_ID_HEADER.lower())


@dataclass
class E2EStack:
    stack: Stack
    sent: int = 0  # requests that reached ernie-serve's API (any status): what its counters count
    response_ids: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---------------------------------------------------------------- addresses and selectors
    @property
    def serve(self) -> str:
        return self.stack.url("serve")

    @property
    def prometheus(self) -> str:
        return self.stack.url("prometheus")

    @property
    def jaeger(self) -> str:
        return self.stack.url("jaeger_query")

    @property
    def model(self) -> str:
        return self.stack.served_model_name

    @property
    def direct_instance(self) -> str:
        return f"127.0.0.1:{self.stack.ports['serve_metrics']}"

    @property
    def direct(self) -> str:
        """Label matchers selecting the direct scrape of --metrics-port."""
        return f'job="{DIRECT_JOB}", instance="{self.direct_instance}"'

    @property
    def via_collector(self) -> str:
        """Label matchers selecting what came through the Collector (OTLP -> :8889). The job
        alone: it holds nothing of the direct scrape (the request counts compare it with what
        was sent, so a double count fails them)."""
        return f'job="{COLLECTOR_JOB}"'

    # ---------------------------------------------------------------- ernie-serve
    def chat(self, content: str = "hello", max_tokens: int = 8, headers: dict[str, str] | None = None,
             raw: bytes | None = None, model: str | None = None) -> ChatResult:
        body = raw if raw is not None else json.dumps({
            "model": model or self.model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}]}).encode()
        t0 = time.perf_counter()
        status, resp_headers, data = _request(f"{self.serve}/v1/chat/completions", body, headers)
        seconds = time.perf_counter() - t0
        try:
            parsed = json.loads(data)
        except json.JSONDecodeError:
            parsed = {"raw": data.decode(errors="replace")}
        with self._lock:
            self.sent += 1
            if status == 200:
                self.response_ids.add(parsed["id"])
        return ChatResult(status, resp_headers, parsed, seconds)

    def bad_requests(self) -> list[ChatResult]:
        """One request per common client mistake; each must be refused (and counted as an error)."""
        results = [
            self.chat(model=self.model + "-missing"),  # 404 model_not_found
            self.chat(raw=b'{"messages": ['),  # 400 invalid_json
            self.chat(max_tokens=-3),  # 400 invalid_request
        ]
        assert all(400 <= r.status < 500 for r in results), [(r.status, r.body) for r in results]
        return results

    # ---------------------------------------------------------------- Prometheus
    def prom(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        status, _, data = _request(f"{self.prometheus}{path}?{query}", timeout=15)
        body = json.loads(data)
        assert status == 200 and body.get("status") == "success", f"{path} {params}: HTTP {status} {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.prom("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def scalar(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has no series."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def finite(self, expr: str) -> float | None:
        value = self.scalar(expr)
        return value if value is not None and math.isfinite(value) else None

    def series(self, match: str, since_s: float = 600) -> list[dict[str, str]]:
        now = time.time()
        return self.prom("/api/v1/series", **{"match[]": match, "start": now - since_s, "end": now})

    def requests_total(self, selector: str) -> float | None:
        return self.scalar(f"sum({names.REQUESTS.prom_name}{{{selector}}})")

    def collector_instance(self) -> str:
        """The Collector path's instance label (ernie-serve's service.instance.id)."""
        found = wait_for(lambda: self.series(f"{names.REQUESTS.prom_name}{{{self.via_collector}}}"), 30,
                         "ernie-serve series through the Collector")
        instances = {s["instance"] for s in found}
        assert len(instances) == 1, instances
        return instances.pop()

    # ---------------------------------------------------------------- Jaeger
    def trace(self, trace_id: str) -> dict[str, Any] | None:
        status, _, data = _request(f"{self.jaeger}/api/traces/{trace_id}", timeout=10)
        if status != 200:
            return None
        traces = json.loads(data).get("data") or []
        return traces[0] if traces else None

    def wait_trace(self, trace_id: str, min_spans: int, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            t = self.trace(trace_id)
            return t if t is not None and len(t["spans"]) >= min_spans else None

        return wait_for(check, timeout, f"trace {trace_id} with >= {min_spans} spans in Jaeger")

    def logs(self, *components: str) -> str:
        parts = []
        for name in components or tuple(self.stack.read_records()):
            parts.append(f"--- {name} ---\n{log_tail(self.stack.log_path(name), 30)}")
        return "\n".join(parts)


def warm_up(e: E2EStack) -> None:
    """One request, then wait until its histogram series are in Prometheus on both paths.

    A histogram series is born with its first observation already counted, and rate() never
    counts a series' first sample as an increase; so the quantile queries of the tests need the
    series to exist *before* their own requests."""
    result = e.chat("warm-up")
    assert result.status == 200, result.body
    for selector in (e.direct, e.via_collector):
        for spec in (names.LATENCY, names.GENAI_TTFT):
            match = f"{spec.prom_name}_bucket{{{selector}}}"
            wait_for(lambda match=match: e.series(match), 40, f"{match} in Prometheus")
