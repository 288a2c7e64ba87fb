"""The shipped alert rules and Alertmanager routing, end to end through real processes:
ernie-serve (tiny model, scraped directly on its --metrics-port) -> Prometheus 2.42 evaluating
copies of alerts/ernie-*.yml -> Alertmanager 0.25 running alerts/alertmanager.yml -> a webhook
receiver inside this test that records what each channel (/pager, /email-slack, /slack) gets and
checks each channel's bearer token.

What a test may change, and nothing else (each asserted below):
- rule files: the `for:` hold times (and a group `interval:`, of which none ships) -> seconds;
  every other byte, expressions included, is the shipped text. Windows such as [5m] stay:
  rate() needs two samples, which a 1s scrape has after a second.
- deploy/prometheus.yml: scrape/evaluation interval, scrape targets, the Alertmanager target.
- alerts/alertmanager.yml: through test_alerts.alertmanager_config_for_test (webhook host/port,
  credentials_file paths, group_wait / group_interval / repeat_interval).

One stack serves the module and the tests run in file order: the error-rate alert first, then
ernie-serve is stopped for the down alert and the inhibition check, then a new one with an SLO
target no request can meet takes its metrics port for the fast-burn page. Each test waits for what
it needs itself, so each one also passes run alone. A missing binary fails, never skips.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from e2e_client import direct_scrape_job
from helpers import free_port, http_get, run_process, wait_http
from serve_helpers import Served, run_server
from test_alerts import (
    ALERT_RULES,
    ALERTMANAGER_CONFIG,
    PRIORITY_OF_SEVERITY,
    RECEIVER_OF_SEVERITY,
    RULE_FILES,
    _diff_paths,
    alertmanager_config_for_test,
)

from ernie_otel import names

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus.yml"

HOLD = "2s"  # every alert's `for:` in the copies
INTERVAL = "1s"  # Prometheus scrape and evaluation interval
REPEAT_S = 2.0
AM_TIMING = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": f"{REPEAT_S:g}s"}
ALERT_TIMEOUT_S = 60.0

ERROR_RATE = "HighErrorRate"
SERVE_DOWN = "ErnieServeDown"
METRICS_ABSENT = "ErnieMetricsAbsent"
FAST_BURN = "SLOErrorBudgetFastBurn"
# The job deploy/prometheus.yml scrapes --metrics-port under (ernie-serve-direct), read from the
# file: the test server takes that job's target.
SERVE_JOB = direct_scrape_job()

T = TypeVar("T")


# ------------------------------------------------------------------------- rule file copies
# A `for:` of an alert rule, or an `interval:` of a group: the only lines a test may rewrite.
_HOLD_LINE = re.compile(r"^(?P<key>[ \t]+(?:- )?(?:for|interval):[ \t]*)(?P<value>\S+)(?P<rest>[ \t]*)$", re.M)


def shorten_hold_times(text: str, hold: str = HOLD, interval: str = INTERVAL) -> str:
    """The rule file text with each `for:` set to `hold` and each group `interval:` to
    `interval`; every other character is left as it is (comments and expressions included)."""

    def repl(match: re.Match[str]) -> str:
        value = hold if match.group("key").strip().removeprefix("- ").startswith("for") else interval
        return match.group("key") + value + match.group("rest")

    return _HOLD_LINE.sub(repl, text)


def _without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def assert_only_hold_times_changed(shipped: str, copy: str) -> None:
    """Byte for byte, the copy differs from the shipped file only in the values of `for:` and
    group `interval:` lines; parsed, every expression is the identical string."""
    old_lines, new_lines = shipped.splitlines(keepends=True), copy.splitlines(keepends=True)
    assert len(old_lines) == len(new_lines)
    for old, new in zip(old_lines, new_lines, strict=True):
        if old != new:
            old_match, new_match = _HOLD_LINE.match(old), _HOLD_LINE.match(new)
            assert old_match and new_match, f"rewritten line is not a hold time: {old!r} -> {new!r}"
            assert old_match.group("key") == new_match.group("key")
    old_doc, new_doc = yaml.safe_load(shipped), yaml.safe_load(copy)
    assert len(old_doc["groups"]) == len(new_doc["groups"])
    for old_group, new_group in zip(old_doc["groups"], new_doc["groups"], strict=True):
        assert _without(old_group, "interval") | {"rules": None} == _without(new_group, "interval") | {"rules": None}
        assert len(old_group["rules"]) == len(new_group["rules"])
        for old_rule, new_rule in zip(old_group["rules"], new_group["rules"], strict=True):
            assert new_rule["expr"] == old_rule["expr"]  # the same str, byte for byte
            assert _without(new_rule, "for") == _without(old_rule, "for")
            if "alert" in old_rule:
                assert new_rule["for"] == HOLD


def write_rule_copies(alerts_dir: Path) -> list[Path]:
    alerts_dir.mkdir(parents=True)
    copies = []
    for shipped in RULE_FILES:
        text = shipped.read_text()
        copy = shorten_hold_times(text)
        assert_only_hold_times_changed(text, copy)
        path = alerts_dir / shipped.name
        path.write_text(copy)
        copies.append(path)
    return copies


def test_rule_copies_change_only_hold_times(tmp_path: Path) -> None:
    """The rewrite itself: every alert gets the short hold, nothing else moves, and the check
    catches a rewrite that touches an expression."""
    copies = write_rule_copies(tmp_path / "alerts")
    alerts = [r for g in yaml.safe_load((tmp_path / "alerts" / ALERT_RULES.name).read_text())["groups"]
              for r in g["rules"]]
    assert alerts and all(r["for"] == HOLD for r in alerts)
    assert [p.name for p in copies] == [p.name for p in RULE_FILES]
    shipped = ALERT_RULES.read_text()
    tampered = shorten_hold_times(shipped).replace("> 0.05", "> 0.5", 1)
    with pytest.raises(AssertionError):
        assert_only_hold_times_changed(shipped, tampered)
    assert shorten_hold_times("  - name: g\n    interval: 1m\n") == "  - name: g\n    interval: 1s\n"


# -------------------------------------------------------------------------- Prometheus config
def prometheus_config_for_test(serve_target: str, alertmanager_target: str) -> dict[str, Any]:
    """deploy/prometheus.yml with 1s intervals, ernie-serve's target set to the test server,
    every other scrape target on a port nothing listens on, and the test's Alertmanager.
    rule_files stays as shipped (../alerts/ernie-*.yml): the copy sits in the same layout."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = INTERVAL
    config["global"]["evaluation_interval"] = INTERVAL
    for am in config["alerting"]["alertmanagers"]:
        for static in am["static_configs"]:
            static["targets"] = [alertmanager_target]
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            if job["job_name"] == SERVE_JOB:
                static["targets"] = [serve_target]
            else:
                static["targets"] = [f"127.0.0.1:{free_port()}" for _ in static["targets"]]
    changed = set(_diff_paths(yaml.safe_load(PROMETHEUS_CONFIG.read_text()), config))
    assert changed <= {
        "/global/scrape_interval", "/global/evaluation_interval",
        "/alerting/alertmanagers/*/static_configs/*/targets/*", "/scrape_configs/*/static_configs/*/targets/*",
    }, changed
    assert any(job["job_name"] == SERVE_JOB for job in config["scrape_configs"])
    return config


# ---------------------------------------------------------------------------- webhook receiver
@dataclass
class Delivery:
    path: str
    at: float  # time.monotonic() on arrival
    payload: dict[str, Any]

    def alerts(self, alertname: str, status: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.payload.get("alerts", [])
                if a["labels"].get("alertname") == alertname and (status is None or a["status"] == status)]


@dataclass
class WebhookReceiver:
    """Stands in for the notification relay: records each channel's POSTs and refuses (401) a
    request whose bearer token is not the one in that channel's credentials_file."""

    tokens: dict[str, str]  # URL path -> expected bearer token
    deliveries: list[Delivery] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                expected = receiver.tokens.get(self.path)
                got = self.headers.get("Authorization")
                if expected is None or got != f"Bearer {expected}":
                    with receiver.lock:
                        receiver.refused.append(f"{self.path}: Authorization {got!r}")
                    self.send_response(401 if expected is not None else 404)
                else:
                    delivery = Delivery(self.path, time.monotonic(), json.loads(body))
                    with receiver.lock:
                        receiver.deliveries.append(delivery)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="webhook", daemon=True).start()
        return server

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def find(self, alertname: str, *, status: str = "firing", after: float = 0.0) -> list[tuple[Delivery, dict]]:
        return [(d, a) for d in self.snapshot() if d.at > after for a in d.alerts(alertname, status)]

    def summary(self) -> str:
        lines = [f"{d.path} {d.payload.get('status')} "
                 f"{[(a['labels'].get('alertname'), a['status']) for a in d.payload.get('alerts', [])]}"
                 for d in self.snapshot()]
        return "\n".join(lines + [f"refused: {r}" for r in self.refused]) or "<nothing delivered>"


# ---------------------------------------------------------------------------------- load
class ErrorLoad:
    """Requests to ernie-serve in a background thread: mostly malformed JSON (400, counted
    as errors with error_type=invalid_json), every third one a valid short chat completion,
    so the error ratio is about 2/3, far above HighErrorRate's 5%."""

    def __init__(self, base: str, model: str) -> None:
        self.url = base + "/v1/chat/completions"
        self.good = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": 2}).encode()
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="error-load", daemon=True)

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        except OSError:
            status = 0  # the server is gone (the down test stops it)
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self._post(self.good if i % 3 == 2 else b'{"model": ')
            i += 1
            self._stop.wait(0.1)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


# --------------------------------------------------------------------------------- stack
@dataclass
class AlertStack:
    serve: Served
    load: ErrorLoad
    webhook: WebhookReceiver
    prometheus: str
    alertmanager: str
    model: str
    logs: dict[str, Callable[[], str]]

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.serve.metrics_port}"

    def get_json(self, url: str) -> Any:
        status, body = http_get(url)
        assert status == 200, f"{url}: HTTP {status} {body[:300]}"
        return json.loads(body)

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        return self.get_json(url)["data"]["result"]

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        return self.get_json(f"{self.prometheus}/api/v1/alerts")["data"]["alerts"]

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        return self.get_json(f"{self.alertmanager}/api/v2/alerts")

    def diagnostics(self) -> str:
        parts = [f"deliveries:\n{self.webhook.summary()}", f"load statuses: {self.load.statuses}"]
        for what, get in (("prometheus alerts", self.prometheus_alerts),
                          ("alertmanager alerts", self.alertmanager_alerts)):
            try:
                parts.append(f"{what}: {json.dumps(get(), indent=None)[:3000]}")
            except (OSError, AssertionError) as err:
                parts.append(f"{what}: {err!r}")
        parts += [f"--- {name} log ---\n{tail()}" for name, tail in self.logs.items()]
        return "\n".join(parts)

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = ALERT_TIMEOUT_S) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # A refused notification is a failure at once, not a reason to wait for a retry.
            assert not self.webhook.refused, f"webhook refused a notification\n{self.diagnostics()}"
            result = probe()
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.diagnostics()}")


def _binary(*candidates: str) -> str:
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"{' / '.join(candidates)} not installed: this test needs it "
                "(Debian packages prometheus and prometheus-alertmanager)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertStack]:
    prometheus_bin = _binary("prometheus")
    alertmanager_bin = _binary("alertmanager", "prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("alerts-e2e")

    # One token per credentials_file, so a receiver sending another channel's token is refused.
    shipped_am = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    secrets = tmp / "secrets"
    secrets.mkdir()
    tokens: dict[str, str] = {}
    for receiver in shipped_am["receivers"]:
        for webhook in receiver["webhook_configs"]:
            path = urllib.parse.urlsplit(webhook["url"]).path
            token_file = Path(webhook["http_config"]["authorization"]["credentials_file"]).name
            tokens[path] = f"token-{receiver['name']}-{free_port()}"
            (secrets / token_file).write_text(tokens[path] + "\n")
    assert set(tokens) == {f"/{r}" for r in RECEIVER_OF_SEVERITY.values()}

    with contextlib.ExitStack() as exits:
        webhook = WebhookReceiver(tokens)
        server = webhook.start()
        exits.callback(server.server_close)
        exits.callback(server.shutdown)
        webhook_url = f"http://127.0.0.1:{server.server_address[1]}"

        am_port = free_port()
        am_config = tmp / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(alertmanager_config_for_test(webhook_url, secrets, AM_TIMING)))
        alertmanager = exits.enter_context(run_process(
            [alertmanager_bin, f"--config.file={am_config}", f"--storage.path={tmp / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=", "--log.level=info"],
            tmp / "alertmanager.log"))
        am_url = f"http://127.0.0.1:{am_port}"

        serve = exits.enter_context(run_server(tmp, name="serve-alerts"))
        model = json.loads(http_get(serve.base + "/v1/models")[1])["data"][0]["id"]

        # Same layout as the repository, so rule_files (../alerts/ernie-*.yml) needs no change.
        write_rule_copies(tmp / "alerts")
        (tmp / "deploy").mkdir()
        prom_port = free_port()
        prom_config = tmp / "deploy" / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump(
            prometheus_config_for_test(f"127.0.0.1:{serve.metrics_port}", f"127.0.0.1:{am_port}")))
        prometheus = exits.enter_context(run_process(
            [prometheus_bin, f"--config.file={prom_config}", f"--storage.tsdb.path={tmp / 'prom-data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--enable-feature=exemplar-storage"],
            tmp / "prometheus.log"))
        prom_url = f"http://127.0.0.1:{prom_port}"

        wait_http(f"{am_url}/-/ready", timeout=30, proc=alertmanager)
        wait_http(f"{prom_url}/-/ready", timeout=30, proc=prometheus)

        load = ErrorLoad(serve.base, model)
        load.start()
        exits.callback(load.stop)
        yield AlertStack(serve, load, webhook, prom_url, am_url, model, {
            "prometheus": prometheus.log_tail, "alertmanager": alertmanager.log_tail,
            "ernie-serve": lambda: serve.log()[-3000:],
        })


# --------------------------------------------------------------------------------- tests
def _rule_labels(alertname: str) -> dict[str, str]:
    for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alertname:
                return rule["labels"]
    raise AssertionError(f"{alertname} is not in {ALERT_RULES.name}")


def _assert_routed(stack: AlertStack, alertname: str, severity: str, priority: str) -> dict[str, Any]:
    """The first firing notification for alertname reached its severity's channel, only that
    channel, and carries the rule's levels and the ernie-serve target's job/instance."""
    assert _rule_labels(alertname) == {"severity": severity, "priority": priority}
    assert PRIORITY_OF_SEVERITY[severity] == priority
    path = "/" + RECEIVER_OF_SEVERITY[severity]
    found = stack.wait_for(f"{alertname} at {path}", lambda: stack.webhook.find(alertname))
    delivery, alert = found[0]
    assert delivery.path == path, stack.diagnostics()
    assert delivery.payload["receiver"] == RECEIVER_OF_SEVERITY[severity]
    assert {d.path for d, _ in stack.webhook.find(alertname)} == {path}
    labels = alert["labels"]
    assert labels["alertname"] == alertname
    assert labels["severity"] == severity
    assert labels["priority"] == priority
    assert labels["job"] == SERVE_JOB
    assert labels["instance"] == stack.instance
    assert not stack.webhook.refused, stack.webhook.refused
    return alert


@pytest.mark.integration
def test_prometheus_runs_the_shipped_rules_with_short_holds(stack: AlertStack) -> None:
    groups = stack.get_json(f"{stack.prometheus}/api/v1/rules")["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
    shipped = {r["alert"]: r for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]}
    assert set(loaded) == set(shipped)
    assert all(r["duration"] == 2 for r in loaded.values())
    stack.wait_for("ernie-serve scraped", lambda: stack.query(f'up{{job="{SERVE_JOB}"}} == 1'))


@pytest.mark.integration
def test_high_error_rate_pages_email_slack(stack: AlertStack) -> None:
    """Failing requests (bad JSON) -> HighErrorRate (P2) -> the email + Slack channel."""
    alert = _assert_routed(stack, ERROR_RATE, "warning", "P2")
    assert alert["labels"]["model"] == stack.model
    # The errors are the ones the load made, counted by the server under their fixed error_type.
    error_type = names.ATTR_ERROR_TYPE.replace(".", "_")  # as Prometheus spells it
    errors = stack.query(
        f'{names.ERRORS.prom_name}{{job="{SERVE_JOB}",{error_type}="{names.ErrorType.INVALID_JSON.value}"}}')
    assert errors and float(errors[0]["value"][1]) > 0, stack.diagnostics()
    assert stack.load.statuses.get(400, 0) > 0 and stack.load.statuses.get(200, 0) > 0, stack.load.statuses


@pytest.mark.integration
def test_serve_down_pages_and_inhibits_its_warnings(stack: AlertStack) -> None:
    """ernie-serve stopped -> ErnieServeDown (P1) -> pager; from then on the same instance's
    HighErrorRate, still firing in Prometheus, no longer reaches email + Slack, while that
    channel keeps receiving alerts of other instances (ErnieMetricsAbsent has none)."""
    _assert_routed(stack, ERROR_RATE, "warning", "P2")
    # Baseline: while nothing inhibits it, the firing warning is re-sent every repeat_interval,
    # so silence later is the inhibition and not a quiet route.
    first = stack.webhook.find(ERROR_RATE)[0][0].at
    stack.wait_for(f"{ERROR_RATE} repeated", lambda: stack.webhook.find(ERROR_RATE, after=first),
                   timeout=REPEAT_S * 5)

    stack.load.stop()
    stack.serve.proc.terminate()
    stack.serve.proc.wait(timeout=30)

    _assert_routed(stack, SERVE_DOWN, "critical", "P1")

    def inhibited() -> list[dict[str, Any]]:
        return [a for a in stack.alertmanager_alerts()
                if a["labels"].get("alertname") == ERROR_RATE and a["labels"].get("instance") == stack.instance
                and a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"]]

    stack.wait_for(f"{ERROR_RATE} inhibited in Alertmanager", inhibited, timeout=10)
    cutoff = time.monotonic()

    def still_firing_in_prometheus() -> bool:
        return any(a["labels"].get("alertname") == ERROR_RATE and a["labels"].get("instance") == stack.instance
                   and a["state"] == "firing" for a in stack.prometheus_alerts())

    assert still_firing_in_prometheus(), stack.diagnostics()
    # Three repeat intervals of quiet for the inhibited alert, and a notification of an
    # un-inhibited alert on the same channel inside that window.
    stack.wait_for(f"{METRICS_ABSENT} at /email-slack after the page",
                   lambda: [d for d, _ in stack.webhook.find(METRICS_ABSENT, after=cutoff) if d.path == "/email-slack"],
                   timeout=REPEAT_S * 5)
    time.sleep(max(0.0, cutoff + 3 * REPEAT_S + 1 - time.monotonic()))
    assert still_firing_in_prometheus(), stack.diagnostics()
    assert inhibited(), stack.diagnostics()
    late = [d for d in stack.webhook.snapshot() if d.at > cutoff and d.alerts(ERROR_RATE)]
    assert not late, f"{ERROR_RATE} delivered while inhibited:\n{stack.diagnostics()}"
    assert not stack.webhook.refused, stack.webhook.refused


@pytest.mark.integration
def test_slo_fast_burn_pages(stack: AlertStack, tmp_path: Path) -> None:
    """Last, once the first ernie-serve is down: a new one on the same metrics port (the same scrape
    target and instance) with a TTFT target no request can meet (0.01 ms). Every judged request
    misses, the error budget burns at 100x over every window -> SLOErrorBudgetFastBurn (P1) -> pager."""
    stack.load.stop()
    if stack.serve.proc.poll() is None:  # run alone: the down test has not stopped it
        stack.serve.proc.terminate()
        stack.serve.proc.wait(timeout=30)
    started = time.monotonic()
    with run_server(tmp_path, "--metrics-port", str(stack.serve.metrics_port), "--slo-ttft", "0.01",
                    name="serve-slo") as slow:
        load = ErrorLoad(slow.base, stack.model)  # its valid third is judged; bad JSON is the caller's
        load.start()
        try:
            found = stack.wait_for(f"{FAST_BURN} at /pager",
                                   lambda: [(d, a) for d, a in stack.webhook.find(FAST_BURN, after=started)
                                            if d.path == "/pager"])
        finally:
            load.stop()
    _, alert = found[0]
    assert _rule_labels(FAST_BURN) == {"severity": "critical", "priority": "P1"}
    assert {d.path for d, _ in stack.webhook.find(FAST_BURN)} == {"/pager"}
    labels = alert["labels"]
    assert (labels["job"], labels["instance"], labels["model"], labels["slo"]) == (
        SERVE_JOB, stack.instance, stack.model, "all")
    assert load.statuses.get(200, 0) > 0, load.statuses
    # Over a window: the server has stopped by now, and its series go stale at the next failed scrape.
    missed = stack.query(f'max_over_time({names.SLO_REQUESTS.prom_name}{{job="{SERVE_JOB}",{names.ATTR_SLO}="ttft",'
                         f'{names.ATTR_RESULT}="missed"}}[10m]) > 0')
    assert missed, stack.diagnostics()
    assert not stack.webhook.refused, stack.webhook.refused
