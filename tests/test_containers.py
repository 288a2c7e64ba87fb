"""Container smoke test: the chart's trace path (agent -> lb -> two samplers -> Jaeger) and log path
(agent -> VictoriaLogs) in containers, from images built FROM scratch with the project's static
Collector, Jaeger and VictoriaLogs.

What a cluster would run, minus the cluster (kind/k3s cannot run here): Debian's podman with
runc, each container hardened as the chart's pods are (uid 10001, read-only root filesystem, no
capabilities, no privilege escalation), the repository's own config files mounted read-only,
and every listener given through the env variables the configs document. Spans come over OTLP
from the Python SDK and must arrive whole in Jaeger's query API; a log record in a span's context
must be found by its trace id through VictoriaLogs' LogsQL API.

Network: host networking ONLY, on free 127.0.0.1 ports. podman's default bridge network sits in
a private range that must never be used on this machine, so podman runs with its own
containers.conf (netns "host", network configs in the test's directory) and every `run` and
`build` also says `--network host`. podman keeps all its state (images, containers, runtime
files) under the test's directory; the teardown removes it all and then checks that nothing is
left: no containers, no mounts, no new network interfaces, no changed iptables rules, no network
definitions.

runc needs lowered ulimits here (the default nofile/nproc hard limits cannot be set in this
sandbox); scripts/setup.sh installs podman and runc.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from helpers import REPO_ROOT, free_port, free_ports, http_get, wait_http
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context

from ernie_otel import names
from ernie_otel.stack import components

pytestmark = pytest.mark.integration

UID = "10001"  # the chart's runAsUser / runAsGroup
QUEUE = "/var/lib/otelcol/queue"  # where the chart mounts the Collectors' queue volume
SERVICE = "ernie-container-smoke"
TRACES = 3
PODMAN_TIMEOUT_S = 180


class Podman:
    """podman with every piece of state under `base` and host networking as the default."""

    def __init__(self, base: Path) -> None:
        self.base = base
        for sub in ("root", "run", "tmp", "net"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        conf = base / "containers.conf"
        conf.write_text(
            "[containers]\n"
            'netns = "host"\n'
            "[network]\n"
            f'network_config_dir = "{base / "net"}"\n'
            "[engine]\n"
            f'events_logfile_path = "{base / "events.log"}"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "TMPDIR": str(base / "tmp")}
        self.argv = ["podman", "--root", str(base / "root"), "--runroot", str(base / "run"),
                     "--tmpdir", str(base / "tmp"), "--storage-driver", "overlay", "--runtime", "runc",
                     "--cgroup-manager", "cgroupfs", "--events-backend", "file"]

    def __call__(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.argv, *map(str, args)], capture_output=True, text=True, env=self.env,
                                timeout=PODMAN_TIMEOUT_S)
        if check:
            assert result.returncode == 0, f"podman {' '.join(map(str, args))}:\n{result.stdout}{result.stderr}"
        return result

    def build(self, binary: Path, tag: str) -> str:
        """An image FROM scratch holding only the static binary, run as the chart's user."""
        context = self.base / "build" / binary.name
        context.mkdir(parents=True)
        shutil.copy2(binary, context / binary.name)
        (context / "Containerfile").write_text(
            "FROM scratch\n"
            f"COPY {binary.name} /{binary.name}\n"
            f"USER {UID}:{UID}\n"
            f'ENTRYPOINT ["/{binary.name}"]\n')
        image = f"localhost/ernie-otel-smoke/{binary.name}:{tag}"
        self("build", "--network", "host", "--pull=never", "-t", image, context)
        return image

    def run(self, name: str, image: str, args: list[str], env: Mapping[str, str], volumes: Mapping[Path, str]) -> None:
        """Detached, on the host network, hardened like the chart's containers."""
        flags = ["--detach", "--name", name, "--network", "host", "--read-only", "--user", f"{UID}:{UID}",
                 "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                 "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
        for key, value in env.items():
            flags += ["--env", f"{key}={value}"]
        for host, target in volumes.items():
            flags += ["--volume", f"{host}:{target}"]
        self("run", *flags, image, *args)

    def logs(self) -> str:
        names_ = self("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
        return "\n".join(f"--- {n} ---\n{self('logs', n, check=False).stderr[-2000:]}" for n in names_)


def _host_state(base: Path) -> dict[str, object]:
    """What a container run could leave behind on the host: interfaces, firewall rules, mounts,
    network definitions, processes."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    mounts = Path("/proc/mounts").read_text()
    procs = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended while we looked
        if str(base) in text and "pytest" not in text:
            procs.append(text)
    return {
        "links": sorted(line.split(":")[1].strip() for line in links.splitlines()),
        # Comment lines carry a timestamp.
        "iptables": [line for line in rules.splitlines() if not line.startswith("#")],
        "mounts": [line for line in mounts.splitlines() if str(base) in line],
        "networks": sorted(str(p.relative_to(base)) for p in (base / "net").rglob("*")
                           if p.suffix in (".json", ".conflist")) if (base / "net").exists() else [],
        "processes": procs,
    }


@pytest.fixture
def podman() -> Iterator[Podman]:
    for tool in ("podman", "runc", "ip", "iptables-save"):
        assert shutil.which(tool), f"{tool} missing: run scripts/setup.sh"
    # Not under pytest's tmp_path: podman refuses a runroot path longer than 50 characters.
    base = Path(tempfile.mkdtemp(prefix="ernie-podman-"))
    before = _host_state(base)
    pm = Podman(base)
    try:
        yield pm
    finally:
        pm("rm", "--all", "--force", "--time", "0", check=False)
        pm("rmi", "--all", "--force", check=False)
        reset = pm("system", "reset", "--force", check=False)
        after = _host_state(base)
        left = [key for key in ("root", "run") if (base / key).exists()]
        shutil.rmtree(base, ignore_errors=True)
    assert reset.returncode == 0, reset.stderr
    assert after == before, "podman left something behind"
    assert not left, f"podman system reset kept its storage: {left}"


def _queue_dir(base: Path, name: str) -> Path:
    # Written by uid 10001 inside the container, whoever runs the test.
    path = base / "volumes" / name
    path.mkdir(parents=True)
    path.chmod(0o777)
    return path


def _send_traces(endpoint: str) -> list[str]:
    """TRACES requests as ernie-serve shapes them: SERVER span, GenAI span below it."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE,
                                                        "service.instance.id": str(uuid.uuid4())}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True),
                                                   schedule_delay_millis=200))
    tracer = provider.get_tracer(names.TRACER_NAME)
    ids = []
    for _ in range(TRACES):
        root = tracer.start_span("POST /v1/chat/completions", kind=SpanKind.SERVER)
        child = tracer.start_span("chat ernie", context=set_span_in_context(root), kind=SpanKind.INTERNAL)
        child.end()
        root.end()
        ids.append(f"{root.get_span_context().trace_id:032x}")
    assert provider.force_flush(10_000), "the SDK could not export to the agent container"
    provider.shutdown()
    return ids


def _send_log(endpoint: str, trace_id: str) -> None:
    """One log record in the context of a trace's root span, as ernie-serve's access log is."""
    provider = LoggerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True),
                                                              schedule_delay_millis=200))
    span = SpanContext(int(trace_id, 16), 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    provider.get_logger(names.ACCESS_LOGGER).emit(
        timestamp=time.time_ns(), context=set_span_in_context(NonRecordingSpan(span)),
        severity_number=SeverityNumber.INFO, severity_text=logging.getLevelName(logging.INFO),
        body="container smoke", attributes={})
    assert provider.force_flush(10_000), "the SDK could not export logs to the agent container"
    provider.shutdown()


def test_chart_trace_path_runs_in_scratch_containers(podman: Podman, pipeline_bin: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    collector = podman.build(pipeline_bin / "otelcol-ernie", tag)
    jaeger = podman.build(pipeline_bin / "jaeger", tag)
    # The log store, with the flags the local stack gives it (the chart and compose give the same
    # ones: tests/test_k8s.py), its data on a volume as on the chart's claim.
    victorialogs = podman.build(components.victorialogs_binary(timeout=3600), tag)
    log_store = f"127.0.0.1:{free_port()}"
    victorialogs_args = components.victorialogs_command(Path("/x"), Path("/vlogs"), log_store)[1:]
    conf = f"{REPO_ROOT / 'collector'}"
    config_volume = {Path(conf): "/conf:ro"}

    jaeger_data = _queue_dir(podman.base, "jaeger")
    jaeger_env = {**components.jaeger_env(free_ports(), Path("/data")), "JAEGER_UI_ASSETS": ""}
    query = f"http://{jaeger_env['JAEGER_QUERY_HTTP_ENDPOINT']}"

    def collector_env() -> dict[str, str]:
        return {"OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}", "OTELCOL_QUEUE_DIR": QUEUE,
                "OTELCOL_HEALTH_ENDPOINT": f"127.0.0.1:{free_port()}", "OTELCOL_TELEMETRY_HOST": "127.0.0.1",
                "OTELCOL_TELEMETRY_PORT": str(free_port())}

    samplers = [{**collector_env(), "OTELCOL_JAEGER_ENDPOINT": jaeger_env["JAEGER_OTLP_GRPC_ENDPOINT"],
                 # Keep every trace, decide soon: the test checks the path, not the policies
                 # (tests/test_fleet_traces.py does).
                 "OTELCOL_SAMPLING_BASELINE_PERCENT": "100", "OTELCOL_SAMPLING_DECISION_WAIT": "2s"}
                for k in range(2)]
    lb = {**collector_env(),
          "OTELCOL_SAMPLER_ENDPOINTS": "[" + ", ".join(s["OTELCOL_OTLP_GRPC_ENDPOINT"] for s in samplers) + "]"}
    agent = {**components.collector_env(free_ports()), "OTELCOL_QUEUE_DIR": QUEUE,
             "OTELCOL_LB_ENDPOINT": lb["OTELCOL_OTLP_GRPC_ENDPOINT"], "OTELCOL_LOG_STORE_URL": f"http://{log_store}"}

    # (name, image, args, env, health URL), started in this order: each tier's target first.
    containers = [
        ("victorialogs", victorialogs, victorialogs_args, {}, f"http://{log_store}/health",
         {_queue_dir(podman.base, "victorialogs"): "/vlogs"}),
        ("jaeger", jaeger, ["--config", "/conf/jaeger.yaml"], jaeger_env, f"{query}/api/services",
         {jaeger_data: "/data"}),
        *[(f"sampler{k}", collector, ["--config", "/conf/fleet/sampler.yaml"], env,
           f"http://{env['OTELCOL_HEALTH_ENDPOINT']}/", {}) for k, env in enumerate(samplers)],
        ("lb", collector, ["--config", "/conf/fleet/lb.yaml"], lb, f"http://{lb['OTELCOL_HEALTH_ENDPOINT']}/", {}),
        ("agent", collector, ["--config", "/conf/otelcol.yaml", "--config", "/conf/fleet/agent.yaml"], agent,
         f"http://{agent['OTELCOL_HEALTH_ENDPOINT']}/", {}),
    ]
    for name, image, args, env, health, volumes in containers:
        if image == collector:
            volumes = {**volumes, _queue_dir(podman.base, name): QUEUE}
        podman.run(f"smoke-{tag}-{name}", image, args, env, {**config_volume, **volumes})
        try:
            wait_http(health, timeout=60)
        except AssertionError as err:
            raise AssertionError(f"{name} did not become healthy: {err}\n{podman.logs()}") from None

    # The root filesystem really is read-only for the process (the chart's readOnlyRootFilesystem).
    inspect = podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}", f"smoke-{tag}-agent")
    assert inspect.stdout.split() == ["true", f"{UID}:{UID}"]

    ids = _send_traces(agent["OTELCOL_OTLP_GRPC_ENDPOINT"])
    missing = set(ids)
    deadline = time.monotonic() + 90
    while missing and time.monotonic() < deadline:
        for trace_id in sorted(missing):
            status, body = http_get(f"{query}/api/traces/{trace_id}")
            if status == 200 and {len(t["spans"]) for t in json.loads(body)["data"]} == {2}:
                missing.discard(trace_id)
        time.sleep(1)
    assert not missing, f"traces never reached Jaeger through agent -> lb -> sampler: {missing}\n{podman.logs()}"

    # The log path: a record in the first trace's context, found by that trace id (the Jaeger UI's link).
    _send_log(agent["OTELCOL_OTLP_GRPC_ENDPOINT"], ids[0])
    logsql = urllib.parse.urlencode({"query": f"trace_id:{ids[0]}"})
    records: list[dict[str, str]] = []
    deadline = time.monotonic() + 60
    while not records and time.monotonic() < deadline:
        status, body = http_get(f"http://{log_store}/select/logsql/query?{logsql}")
        assert status == 200, body
        records = [json.loads(line) for line in body.splitlines() if line.strip()]
        time.sleep(1)
    assert [r.get("_msg") for r in records] == ["container smoke"], f"{records}\n{podman.logs()}"
    # Every container is still running: none crashed on its way.
    running = [f"smoke-{tag}-{c[0]}" for c in containers]
    states = podman("inspect", "--format", "{{.State.Status}}", *running).stdout.split()
    assert states == ["running"] * len(running), dict(zip(running, states, strict=False))
