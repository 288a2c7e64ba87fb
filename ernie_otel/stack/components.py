"""The component table: every process the stack runs, one entry each.

An entry (:class:`Component`) says everything the supervisor needs: the port keys the component
owns (with their defaults), how to build its command line and environment from the stack's
ports, its health URL, its place in the start order and how long it may take to become healthy.
Adding a component is adding one entry to COMPONENTS. N instances of one kind come from a factory
that takes the instance index and returns an entry with that instance's port keys, e.g. replica i
of ernie-serve::

    def replica(i: int) -> Component:
        api, metrics = ports.replica_ports(i)
        return Component(f"ernie_serve_{i}", f"ernie-serve {i}", 60 + i, command=...,
                         ports={f"serve_{i}": api, f"serve_metrics_{i}": metrics},
                         health=lambda c: f"{c.url(f'serve_{i}')}/health", health_timeout=300.0)

(tests/test_stack.py runs such a factory through the real supervisor).

The Collector's and Jaeger's environment (collector/otelcol.yaml and collector/jaeger.yaml read
their listen addresses from it) is built here and nowhere else: collector_env() and jaeger_env()
take a port map, so the stack (default ports), the tests and the benchmarks (free ports) share them;
likewise each component's command line (collector_command(), prometheus_command(), ...).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .. import consoles, jaeger_ui
from ..ports import DEFAULT_PORTS, HOST, PORT_PURPOSE, fleet_port
from ..slo import SLO_ENV
from . import render
from .procs import REPO_ROOT
from .records import StackError

BUILD_SCRIPT = REPO_ROOT / "collector" / "build.sh"
DEFAULT_HEALTH_TIMEOUT_S = 30.0

# --load: modest, so the demo leaves CPU for the rest of the stack on a small machine: Poisson
# arrivals at a few requests/s (a closed loop would saturate ernie-serve), at most 2 in flight.
LOAD_RATE = 3.0
LOAD_CONCURRENCY = 2
LOAD_MAX_TOKENS = 32
# One bad request every 20 s against ~3 good ones a second is ~1.6% errors: the error panels
# get data while HighErrorRate (5%) stays quiet unless something is really wrong (every 7 s put
# the ratio near 4.5% and the alert flapped between pending and firing in the demo).
BAD_REQUEST_INTERVAL_S = 20.0
# `down` / `restart` let ernie-serve drain its requests in flight for this long: less than the
# stack's SIGKILL deadline (core.STOP_TIMEOUT_S, 10 s), so the drain ends on its own terms.
SERVE_SHUTDOWN_GRACE_S = 8.0


class StackContext(Protocol):
    """What a component's builders may ask of the stack they run in."""

    ports: dict[str, int]
    state_dir: Path
    model: str
    say: Callable[[str], None]  # a progress line for the user

    def addr(self, key: str) -> str: ...
    def url(self, key: str) -> str: ...
    def binaries(self) -> Path: ...  # the built otelcol-ernie and jaeger (built on first use)

    @property
    def served_model_name(self) -> str: ...

    @property
    def alerts_file(self) -> Path: ...


Builder = Callable[[StackContext], list[str]]
EnvBuilder = Callable[[StackContext], dict[str, str]]


def _no_env(ctx: StackContext) -> dict[str, str]:
    return {}


def _python_env(ctx: StackContext) -> dict[str, str]:
    return {"PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class Component:
    """One process of the stack. ``ports``: the port keys it owns and their defaults (checked
    free before it starts). ``health``: its health URL (None: alive for a second counts, as for a
    load generator); ``health_timeout``: how long it may take to answer 200 there. ``order``:
    start order (``down`` goes backwards). ``profile``: "core" components always run, "load"
    ones only with ``up --load``."""

    name: str
    title: str
    order: int
    command: Builder
    ports: Mapping[str, int] = field(default_factory=dict)
    env: EnvBuilder = _no_env
    health: Callable[[StackContext], str] | None = None
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT_S
    profile: str = "core"
    needs_binaries: bool = False  # runs a binary of collector/build.sh: build (or find) it before any start

    def purpose(self, key: str) -> str:
        return PORT_PURPOSE.get(key) or f"{self.title} ({key})"


def own(*keys: str) -> dict[str, int]:
    """Port keys of ernie_otel/ports.py's single-server table, with their defaults."""
    return {key: DEFAULT_PORTS[key] for key in keys}


# --------------------------------------------------------------- env builders (one copy each)
def _addr(ports: Mapping[str, int], key: str) -> str:
    return f"{HOST}:{ports[key]}"


def collector_env(ports: Mapping[str, int]) -> dict[str, str]:
    """collector/otelcol.yaml's listen addresses and its Jaeger exporter target, from a port map
    with the keys of the collector and jaeger entries. Nothing listens on jaeger_otlp_grpc unless
    a Jaeger is started on it too (spans are then dropped after retries)."""
    return {
        "OTELCOL_OTLP_GRPC_ENDPOINT": _addr(ports, "otlp_grpc"),
        "OTELCOL_OTLP_HTTP_ENDPOINT": _addr(ports, "otlp_http"),
        "OTELCOL_PROMETHEUS_ENDPOINT": _addr(ports, "collector_prometheus"),
        "OTELCOL_JAEGER_ENDPOINT": _addr(ports, "jaeger_otlp_grpc"),
        "OTELCOL_HEALTH_ENDPOINT": _addr(ports, "collector_health"),
        "OTELCOL_TELEMETRY_HOST": HOST,
        "OTELCOL_TELEMETRY_PORT": str(ports["collector_telemetry"]),
        # Logs out to the log store (nothing behind it unless a VictoriaLogs is started there too).
        "OTELCOL_LOG_STORE_URL": log_store_url(ports),
    }


def log_store_url(ports: Mapping[str, int]) -> str:
    return f"http://{_addr(ports, 'log_store')}"


def jaeger_env(ports: Mapping[str, int], data_dir: Path, ui_config: Path | None = None) -> dict[str, str]:
    """collector/jaeger.yaml's listen addresses, from a port map with the jaeger entry's keys, and
    its badger store in ``data_dir`` (one per Jaeger: badger locks its directory). ``ui_config``:
    the UI config JSON (render.jaeger_ui_config: the trace -> logs links)."""
    env = {
        "JAEGER_BADGER_DIR": str(data_dir),
        "JAEGER_OTLP_GRPC_ENDPOINT": _addr(ports, "jaeger_otlp_grpc"),
        "JAEGER_OTLP_HTTP_ENDPOINT": _addr(ports, "jaeger_otlp_http"),
        "JAEGER_QUERY_HTTP_ENDPOINT": _addr(ports, "jaeger_query"),
        "JAEGER_QUERY_GRPC_ENDPOINT": _addr(ports, "jaeger_query_grpc"),
        "JAEGER_HEALTH_ENDPOINT": _addr(ports, "jaeger_health"),
        "JAEGER_METRICS_HOST": HOST,
        "JAEGER_METRICS_PORT": str(ports["jaeger_metrics"]),
        # The real UI where scripts/setup.sh installed it (else Jaeger's placeholder page).
        "JAEGER_UI_ASSETS": str(jaeger_ui.installed_assets() or ""),
        "JAEGER_UI_CONFIG": str(ui_config or ""),
    }
    if "prometheus" in ports:  # the Prometheus the Monitor tab reads span metrics from
        env["JAEGER_PROMETHEUS_URL"] = f"http://{_addr(ports, 'prometheus')}"
    return env


def collector_command(bin_dir: Path) -> list[str]:
    return [str(bin_dir / "otelcol-ernie"), "--config", str(render.OTELCOL_CONFIG)]


def jaeger_command(bin_dir: Path) -> list[str]:
    return [str(bin_dir / "jaeger"), "--config", str(render.JAEGER_CONFIG)]


def collector_health_url(ports: Mapping[str, int]) -> str:
    return f"http://{_addr(ports, 'collector_health')}/"


def jaeger_health_url(ports: Mapping[str, int]) -> str:
    # The query API rather than the health port: "healthy" must mean "traces can be read".
    return f"http://{_addr(ports, 'jaeger_query')}/api/services"


# ------------------------------------------------------------------------------ binaries
def run_build_script(script: Path, *, capture: bool = True, timeout: float | None = None) -> Path:
    """Run one of the cache scripts (collector/build.sh, deploy/thanos/build.sh,
    deploy/opensearch/build.sh; scripts/build-cache.sh is their shared part): the last line it
    prints is its cache entry. Its progress goes into the error on failure, or with
    ``capture=False`` straight to our stderr (a first build takes minutes: the user sees it)."""
    name = script.relative_to(REPO_ROOT).as_posix()
    if not script.exists():
        raise StackError(f"{script} is missing: `ernie-otel stack` runs from a checkout of ernie-otel")
    try:
        result = subprocess.run(["bash", str(script)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture else None, text=True,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise StackError(f"{name} did not finish within {timeout:.0f}s") from None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        messages = f":\n{result.stderr[-6000:]}" if capture else "; its messages are above"
        raise StackError(f"{name} failed (exit {result.returncode}){messages}")
    entry = Path(lines[-1])
    if not entry.exists():
        raise StackError(f"{name} reported {entry}, which is not there")
    return entry


def build_binaries(say: Callable[[str], None], *, capture: bool = False, timeout: float | None = None) -> Path:
    """collector/build.sh: the directory of the Collector and Jaeger binaries."""
    say("Collector and Jaeger binaries: collector/build.sh (cached after the first build, which takes long)")
    bin_dir = run_build_script(BUILD_SCRIPT, capture=capture, timeout=timeout)
    for name in ("otelcol-ernie", "jaeger"):
        if not os.access(bin_dir / name, os.X_OK):
            raise StackError(f"collector/build.sh reported {bin_dir}, but {name} is not there")
    return bin_dir


# ------------------------------------------------------- OpenSearch trace store (fleet, opt-in)
OPENSEARCH_BUILD_SCRIPT = REPO_ROOT / "deploy" / "opensearch" / "build.sh"
JAEGER_OPENSEARCH_CONFIG = REPO_ROOT / "collector" / "jaeger-opensearch.yaml"
OPENSEARCH_NODES = 2  # data nodes; collector/jaeger-opensearch.yaml lists this many server URLs
# Plus one tie-breaker: cluster-manager-eligible, no data. Two eligible nodes cannot outvote the
# loss of one (the voting configuration then holds one of them, and losing that one stops every
# write); with three, any one JVM may die and the other two still elect a manager.
OPENSEARCH_TIEBREAKER = OPENSEARCH_NODES  # its index (node-2); its ports follow the same +10 per member rule
OPENSEARCH_MEMBERS = OPENSEARCH_NODES + 1
# One JVM per node: enough for a demo's traces, and three of them fit beside the rest of the stack.
OPENSEARCH_HEAP = "768m"
OPENSEARCH_TIEBREAKER_HEAP = "256m"  # it holds the cluster state only
# A node's start is mostly class loading and JIT work: C1 alone and the serial collector bring it
# from ~60 s to ~15 s on a small busy machine (2 cores), for a trace store that is never CPU-bound
# here. OpenSearch's own variable, read after these, overrides any of them (e.g. a bigger heap).
OPENSEARCH_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
OPENSEARCH_JAVA_OPTS_ENV = "OPENSEARCH_JAVA_OPTS"
OPENSEARCH_CLUSTER = "ernie-traces"
OPENSEARCH_DIR = "opensearch"  # under the stack's state dir: node-K/ per node


def opensearch_home(*, timeout: float | None = None) -> Path:
    """deploy/opensearch/build.sh (jars from Maven Central + the compiled launcher, cached)."""
    return run_build_script(OPENSEARCH_BUILD_SCRIPT, timeout=timeout)


def opensearch_keys(node: int) -> tuple[str, str]:
    """The port keys (HTTP, transport) of node ``node``."""
    return f"opensearch_http_{node}", f"opensearch_transport_{node}"


def opensearch_node_name(node: int) -> str:
    return f"node-{node}"  # ErnieOpenSearch.java names node K so


def opensearch_node_dir(state_dir: Path, node: int) -> Path:
    return state_dir / OPENSEARCH_DIR / opensearch_node_name(node)


def opensearch_command(home: Path, state_dir: Path, node: int, ports: Mapping[str, int]) -> list[str]:
    """The launcher (deploy/opensearch/ErnieOpenSearch.java) for cluster member ``node`` (a data
    node below OPENSEARCH_NODES, else the tie-breaker) in a JVM of its own, on its ports of
    ``ports``: it looks for the others on their transport ports, and a new cluster is bootstrapped
    by the eligible members (all of them)."""
    classpath = os.pathsep.join([str(home / "lib" / "*"), str(home / "classes")])
    http, transport = (ports[key] for key in opensearch_keys(node))
    members = range(OPENSEARCH_MEMBERS)
    seeds = ",".join(_addr(ports, opensearch_keys(k)[1]) for k in members if k != node)
    managers = ",".join(opensearch_node_name(k) for k in members)
    tiebreaker = node == OPENSEARCH_TIEBREAKER
    heap = OPENSEARCH_TIEBREAKER_HEAP if tiebreaker else OPENSEARCH_HEAP
    return ["java", f"-Xmx{heap}", *OPENSEARCH_JVM_OPTIONS, *os.environ.get(OPENSEARCH_JAVA_OPTS_ENV, "").split(),
            "-cp", classpath, "ErnieOpenSearch", str(opensearch_node_dir(state_dir, node)), OPENSEARCH_CLUSTER,
            str(node), str(http), str(transport), seeds, managers,
            "cluster_manager" if tiebreaker else "cluster_manager,data"]


def opensearch_url(ports: Mapping[str, int], node: int = 0) -> str:
    return f"http://{_addr(ports, opensearch_keys(node)[0])}"


def opensearch_health_url(ports: Mapping[str, int], node: int) -> str:
    """The members start in index order, and the first ones cannot form the cluster alone (a new
    cluster needs most of the eligible members to bootstrap): they are up when they answer. The
    last one is up when the whole cluster is green."""
    if node < OPENSEARCH_MEMBERS - 1:
        return f"{opensearch_url(ports, node)}/"
    return (f"{opensearch_url(ports, node)}/_cluster/health"
            f"?wait_for_status=green&wait_for_nodes={OPENSEARCH_MEMBERS}&timeout=1s")


def jaeger_opensearch_env(ports: Mapping[str, int]) -> dict[str, str]:
    """collector/jaeger-opensearch.yaml's server URLs: every node of the cluster."""
    return {f"JAEGER_OPENSEARCH_URL_{k}": opensearch_url(ports, k) for k in range(OPENSEARCH_NODES)}


def jaeger_opensearch_command(bin_dir: Path) -> list[str]:
    return [*jaeger_command(bin_dir), "--config", str(JAEGER_OPENSEARCH_CONFIG)]


def opensearch_component(node: int) -> Component:
    """Member ``node`` of the OpenSearch cluster of ``stack up --fleet --trace-store opensearch``
    (data node 0, 1 or the tie-breaker 2): one JVM, HTTP and transport ports of its own (default
    9200/9300 + 10*node)."""
    http_key, transport_key = opensearch_keys(node)
    keys = {http_key: fleet_port("opensearch_http", node), transport_key: fleet_port("opensearch_transport", node)}
    title = "OpenSearch tie-breaker (no data)" if node == OPENSEARCH_TIEBREAKER else f"OpenSearch node {node}"
    return Component(f"opensearch_{node}", title, 5 + node,
                     lambda c: opensearch_command(opensearch_home(), c.state_dir, node, c.ports), keys,
                     health=lambda c: opensearch_health_url(c.ports, node), health_timeout=240.0)


def opensearch_components() -> tuple[Component, ...]:
    """Every member of the cluster, data nodes first (the start order)."""
    return tuple(opensearch_component(k) for k in range(OPENSEARCH_MEMBERS))


def with_opensearch(jaeger: Component) -> Component:
    """Jaeger with collector/jaeger-opensearch.yaml over the cluster of opensearch_component()."""
    return dataclasses.replace(
        jaeger, title="Jaeger (OpenSearch)", command=lambda c: jaeger_opensearch_command(c.binaries()),
        env=lambda c: {**jaeger.env(c), **jaeger_opensearch_env(c.ports)})


# ------------------------------------------------------------------ VictoriaLogs (the log store)
VICTORIALOGS_BUILD_SCRIPT = REPO_ROOT / "deploy" / "victorialogs" / "build.sh"
VICTORIALOGS_DIR = "victorialogs"  # its storage, under the stack's state dir
# As long as Jaeger keeps traces (collector/jaeger.yaml JAEGER_TRACE_TTL), so a trace's "Logs" link
# finds its lines for as long as the trace exists.
VICTORIALOGS_RETENTION = "15d"


def victorialogs_binary(*, timeout: float | None = None) -> Path:
    """deploy/victorialogs/build.sh (built from Go modules once, cached); its last line is the binary."""
    return run_build_script(VICTORIALOGS_BUILD_SCRIPT, timeout=timeout)


def victorialogs_command(binary: Path, storage: Path, addr: str, retention: str = VICTORIALOGS_RETENTION) -> list[str]:
    return [str(binary), f"-httpListenAddr={addr}", f"-storageDataPath={storage}", f"-retentionPeriod={retention}",
            # Ingested records sit in memory until this flush: a crash (SIGKILL) loses at most this
            # much (the default is 5 s; 1 s is the smallest it takes).
            "-inmemoryDataFlushInterval=1s",
            "-loggerLevel=WARN"]


def victorialogs_health_url(ports: Mapping[str, int]) -> str:
    return f"{log_store_url(ports)}/health"


def victorialogs_ui_url(ports: Mapping[str, int]) -> str:
    """vmui, VictoriaLogs' query UI (what `make demo` prints and the Jaeger UI's log links open)."""
    return f"{log_store_url(ports)}/select/vmui/"


def _victorialogs(ctx: StackContext) -> list[str]:
    return victorialogs_command(victorialogs_binary(), ctx.state_dir / VICTORIALOGS_DIR, ctx.addr("log_store"))


def _jaeger_env(ctx: StackContext) -> dict[str, str]:
    return jaeger_env(ctx.ports, ctx.state_dir / "jaeger", render.jaeger_ui_config(ctx.state_dir, ctx.addr))


def find_alertmanager() -> str | None:
    # Debian installs it as prometheus-alertmanager; upstream tarballs as alertmanager.
    return shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")


def venv_script(name: str) -> str:
    """A console script of this environment (the venv's bin/ next to the running Python)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name} not found next to {sys.executable} or on PATH; install ernie-otel (make setup)")
    return found


def _required(binary: str | None, name: str, package: str) -> str:
    if binary is None:
        raise StackError(f"{name} not found (Debian package {package}; make setup)")
    return binary


# -------------------------------------------------------------------------- command builders
def alertmanager_command(binary: str, config: Path, storage: Path, addr: str) -> list[str]:
    return [binary, f"--config.file={config}", f"--storage.path={storage}", f"--web.listen-address={addr}",
            # A single local instance: no gossip port (9094) to bind or clash on.
            "--cluster.listen-address="]


def prometheus_command(binary: str, config: Path, storage: Path, addr: str) -> list[str]:
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={storage}", f"--web.listen-address={addr}",
            "--web.enable-lifecycle",
            # Histogram buckets -> trace ids, scraped from the Collector's OpenMetrics endpoint.
            "--enable-feature=exemplar-storage",
            # The ERNIE console dashboard at /consoles/ernie.html.
            *_console_flags()]


def _console_flags() -> list[str]:
    try:
        return consoles.prometheus_flags()
    except consoles.ConsoleLibrariesNotFoundError as exc:
        raise StackError(str(exc)) from None


def _alertmanager(ctx: StackContext) -> list[str]:
    return alertmanager_command(_required(find_alertmanager(), "alertmanager", "prometheus-alertmanager"),
                                render.alertmanager_config(ctx.state_dir, ctx.addr), ctx.state_dir / "alertmanager",
                                ctx.addr("alertmanager"))


def _prometheus(ctx: StackContext) -> list[str]:
    return prometheus_command(_required(shutil.which("prometheus"), "prometheus", "prometheus"),
                              render.prometheus_config(ctx.state_dir, ctx.addr), ctx.state_dir / "prometheus",
                              ctx.addr("prometheus"))


def ernie_serve_command(ctx: StackContext, api_key: str = "serve", metrics_key: str = "serve_metrics") -> list[str]:
    """ernie-serve under opentelemetry-instrument on the ports of these keys (the fleet's replica
    i has its own keys; replica 0 is this table's ernie_serve)."""
    return [venv_script("opentelemetry-instrument"), venv_script("ernie-serve"), "--model", ctx.model,
            "--host", HOST, "--port", str(ctx.ports[api_key]), "--metrics-port", str(ctx.ports[metrics_key]),
            "--shutdown-grace", str(SERVE_SHUTDOWN_GRACE_S)]


STACK_SLO_TARGETS = '{"ttft_ms": 2000, "tpot_ms": 500, "e2e_ms": 30000}'


def _ernie_serve_env(ctx: StackContext) -> dict[str, str]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": ctx.url("otlp_grpc"),
        # Ours even where the generic opentelemetry-distro is installed too.
        "OTEL_PYTHON_DISTRO": "ernie_otel",
        "OTEL_PYTHON_CONFIGURATOR": "ernie_otel",
        "PYTHONUNBUFFERED": "1",
    }
    if ctx.model == "tiny" and "OMP_NUM_THREADS" not in os.environ:
        # The tiny model gains nothing from torch's intra-op threads, and on a small busy
        # machine (this stack plus a load generator on 2 cores) their spin-waiting turns a
        # 20 ms request into ~350 ms whenever another process holds a core.
        env["OMP_NUM_THREADS"] = "1"
    if SLO_ENV not in os.environ:
        # The demo stack judges every request, so the dashboard's SLO row and the burn-rate rules
        # have data; targets loose enough that a healthy tiny model meets them.
        env[SLO_ENV] = STACK_SLO_TARGETS
    return env


def _load(ctx: StackContext) -> list[str]:
    # `ernie-otel bench --duration 0` runs until stopped; its progress line goes to the log.
    return [sys.executable, "-m", "ernie_otel.cli", "bench", "--url", ctx.url("serve"),
            "--model", ctx.served_model_name, "--rate", str(LOAD_RATE), "--concurrency", str(LOAD_CONCURRENCY),
            "--max-tokens", str(LOAD_MAX_TOKENS), "--duration", "0"]


def _bad_requests(ctx: StackContext) -> list[str]:
    return [sys.executable, "-m", "ernie_otel.stack", "bad-requests", "--url", ctx.url("serve"),
            "--model", ctx.served_model_name, "--interval", str(BAD_REQUEST_INTERVAL_S)]


def _webhook_sink(ctx: StackContext) -> list[str]:
    return [sys.executable, "-m", "ernie_otel.stack.webhook_sink", "--host", HOST,
            "--port", str(ctx.ports["webhook_sink"]), "--out", str(ctx.alerts_file)]


# ---------------------------------------------------------------------------------- the table
# Model loading dominates ernie-serve's start; the Go/Prometheus servers are up in a second or two.
COMPONENTS: tuple[Component, ...] = (
    Component("victorialogs", "VictoriaLogs", 8, _victorialogs, own("log_store"),
              health=lambda c: victorialogs_health_url(c.ports)),
    Component("jaeger", "Jaeger", 10, lambda c: jaeger_command(c.binaries()),
              own("jaeger_otlp_grpc", "jaeger_otlp_http", "jaeger_query", "jaeger_query_grpc", "jaeger_health",
                  "jaeger_metrics"),
              env=_jaeger_env,
              health=lambda c: jaeger_health_url(c.ports), needs_binaries=True),
    Component("collector", "Collector", 20, lambda c: collector_command(c.binaries()),
              own("otlp_grpc", "otlp_http", "collector_prometheus", "collector_health", "collector_telemetry"),
              env=lambda c: collector_env(c.ports), health=lambda c: collector_health_url(c.ports),
              needs_binaries=True),
    Component("webhook_sink", "webhook sink", 30, _webhook_sink, own("webhook_sink"), env=_python_env,
              health=lambda c: f"{c.url('webhook_sink')}/"),
    Component("alertmanager", "Alertmanager", 40, _alertmanager, own("alertmanager"),
              health=lambda c: f"{c.url('alertmanager')}/-/ready"),
    Component("prometheus", "Prometheus", 50, _prometheus, own("prometheus"),
              health=lambda c: f"{c.url('prometheus')}/-/ready", health_timeout=60.0),
    Component("ernie_serve", "ernie-serve", 60, ernie_serve_command, own("serve", "serve_metrics"),
              env=_ernie_serve_env, health=lambda c: f"{c.url('serve')}/health", health_timeout=300.0),
    Component("load", "load (bench)", 70, _load, env=_python_env, profile="load"),
    Component("bad_requests", "bad requests", 80, _bad_requests, env=_python_env, profile="load"),
)
