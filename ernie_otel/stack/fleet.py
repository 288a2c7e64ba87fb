"""The fleet profile of the local stack: N ernie-serve replicas, two Prometheus shards and Thanos.

``ernie-otel stack up --replicas N`` (N > 1, or ``--fleet``) runs, besides the single-server
components: replicas 1..N-1 of ernie-serve (replica 0 is the stack's usual ``ernie_serve`` entry,
so ``--replicas 1`` without ``--fleet`` is exactly the default stack), two Prometheus shards
(deploy/prometheus-shard.yml, rendered per shard into the state dir) that split the replicas'
metrics endpoints by hashmod of the address and remote-write to a routing Thanos receiver, three
ingesting receivers behind it (replication factor 2), Thanos Query on 127.0.0.1:10902, a store
gateway, the two compactors of the storage tiers and the Thanos ruler (alerts/fleet-global.yml,
to the stack's Alertmanager). The single Prometheus keeps scraping the Collector (span metrics,
the Jaeger Monitor tab) but no longer the replicas: each replica is scraped by exactly one shard.

Traces take the fleet path too: the stack's Collector becomes the agent (collector/otelcol.yaml
plus the collector/fleet/agent.yaml overlay: span metrics from every span, traces on to the
load-balancing tier), one load-balancing Collector (collector/fleet/lb.yaml, routing by trace id)
and two sampling Collectors (collector/fleet/sampler.yaml, tail sampling, then Jaeger). Every
persistent queue lives under <state-dir>/queue/.

The argument lists here are the only copy: the stack's component entries and the tests
(tests/thanos_fleet.py) both call them. Every Thanos listener is set to 127.0.0.1 explicitly,
because Thanos defaults each one (the receivers' capnproto port included) to 0.0.0.0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..ports import FLEET_PORTS, HOST, MAX_REPLICAS, fleet_port, replica_ports
from . import components as table
from . import render
from .components import Component, StackContext
from .procs import REPO_ROOT
from .records import StackError

THANOS_DIR = REPO_ROOT / "deploy" / "thanos"
THANOS_BUILD = THANOS_DIR / "build.sh"
SHARD_CONFIG = REPO_ROOT / "deploy" / "prometheus-shard.yml"
ALERTS_DIR = REPO_ROOT / "alerts"
FLEET_GLOBAL_RULES = ALERTS_DIR / "fleet-global.yml"

FLEET_COLLECTOR_DIR = REPO_ROOT / "collector" / "fleet"
SAMPLERS = 2  # the local static resolver's list (lb.yaml's default names two)
SHARDS = 2  # the modulus of deploy/prometheus-shard.yml's hashmod rule
INGESTERS = 3  # the endpoints of deploy/thanos/hashring.json
REPLICATION_FACTOR = 2
# The label each ingesting receiver puts on its data; Thanos Query deduplicates on it.
REPLICA_LABEL = "receive_replica"
# The storage tiers of docs/pipeline.md: raw 3 d (hot), the ruler's 1 min blocks 7 d (warm),
# 5 min (and 1 h) downsamples 15 d (cold); 2-day blocks at most, so retention bites in time.
RAW_RETENTION = "3d"
TIER_1M_RETENTION = "7d"
DOWNSAMPLED_RETENTION = "15d"
MAX_COMPACTION_LEVEL = 3
# The shards and receivers keep 1 day locally: Thanos' object store holds the history.
LOCAL_RETENTION = "1d"
THANOS_HEALTH_TIMEOUT_S = 60.0


# ------------------------------------------------------------------------------ the binary
def build_thanos(timeout: float | None = None) -> Path:
    """The cached `thanos` binary of deploy/thanos/build.sh (built on first use, ~3 min cold)."""
    if not THANOS_BUILD.exists():
        raise StackError(f"{THANOS_BUILD} is missing: the fleet profile runs from a checkout of ernie-otel")
    try:
        result = subprocess.run(["bash", str(THANOS_BUILD)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise StackError(f"deploy/thanos/build.sh did not finish within {timeout:.0f}s") from None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise StackError(f"deploy/thanos/build.sh failed (exit {result.returncode}):\n{result.stderr[-6000:]}")
    binary = Path(lines[-1])
    if not binary.is_file():
        raise StackError(f"deploy/thanos/build.sh reported {binary}, which is not there")
    return binary


# ------------------------------------------------------------------------------ Thanos args
@dataclass(frozen=True)
class ReceivePorts:
    """The four listeners of one `thanos receive`."""

    grpc: int
    http: int
    remote_write: int
    capnproto: int


def objstore_config(conf_dir: Path, bucket: Path) -> Path:
    """deploy/thanos/objstore.yml with the bucket directory made absolute."""
    source = THANOS_DIR / "objstore.yml"
    text = render.substitute(source.read_text(), r"^(\s*directory:\s*)\S+$", rf"\g<1>{bucket}",
                             "bucket directory", source)
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "objstore.yml"
    path.write_text(text)
    return path


def hashring_config(conf_dir: Path, ingesters: Sequence[ReceivePorts]) -> Path:
    """deploy/thanos/hashring.json with these ingesting receivers' gRPC addresses."""
    config = json.loads((THANOS_DIR / "hashring.json").read_text())
    if len(config[0]["endpoints"]) != len(ingesters):
        raise StackError(f"deploy/thanos/hashring.json lists {len(config[0]['endpoints'])} receivers, "
                         f"the fleet runs {len(ingesters)}")
    config[0]["endpoints"] = [f"{HOST}:{p.grpc}" for p in ingesters]
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "hashring.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def receive_args(thanos: Path, ports: ReceivePorts, data: Path, *, replica: str | None = None,
                 hashring: Path | None = None, replication_factor: int = REPLICATION_FACTOR,
                 objstore: Path | None = None, retention: str | None = None) -> list[str]:
    """An ingesting receiver (replica set, no hashring) or the routing one (hashring, no TSDB use)."""
    args = [
        str(thanos), "receive",
        f"--grpc-address={HOST}:{ports.grpc}",
        f"--http-address={HOST}:{ports.http}",
        f"--remote-write.address={HOST}:{ports.remote_write}",
        f"--receive.capnproto-address={HOST}:{ports.capnproto}",
        f"--tsdb.path={data}",
        "--log.level=warn",
    ]
    # Receive refuses to start without an external label, even routing-only (it stores nothing).
    args.append(f'--label={REPLICA_LABEL}="{replica or "router"}"')
    if hashring is not None:
        args += [
            f"--receive.hashrings-file={hashring}",
            "--receive.hashrings-algorithm=ketama",
            f"--receive.replication-factor={replication_factor}",
        ]
    if retention is not None:
        args.append(f"--tsdb.retention={retention}")
    if objstore is not None:  # ship the 2 h blocks to the object store
        args.append(f"--objstore.config-file={objstore}")
    return args


def query_args(thanos: Path, http: int, grpc: int, endpoints: Sequence[int]) -> list[str]:
    return [
        str(thanos), "query",
        f"--http-address={HOST}:{http}",
        f"--grpc-address={HOST}:{grpc}",
        f"--query.replica-label={REPLICA_LABEL}",
        # Re-check the endpoints often, so a receiver that comes back is queried within seconds.
        "--store.sd-interval=2s",
        "--log.level=warn",
        *[f"--endpoint={HOST}:{port}" for port in endpoints],
    ]


def rule_args(thanos: Path, conf_dir: Path, *, http: int, grpc: int, query_http: int, alertmanager_port: int,
              rule_file: Path = FLEET_GLOBAL_RULES, objstore: Path | None = None,
              eval_interval: str | None = None) -> list[str]:
    """The Thanos ruler of the fleet: alerts/fleet-global.yml over Query, to Alertmanager, its
    blocks labelled tier="1m" (the 1 min tier) -- deploy/thanos/rule-*.yml with these ports,
    written into conf_dir (its data goes to conf_dir/rule). ``eval_interval``: None keeps
    Thanos' default (1 min: the warm tier's resolution)."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    query_src = THANOS_DIR / "rule-query.yml"
    query = render.substitute(query_src.read_text(), re.escape(f"{HOST}:{FLEET_PORTS['thanos_query_http']}"),
                              f"{HOST}:{query_http}", "Thanos Query address", query_src)
    (conf_dir / "rule-query.yml").write_text(query)
    am_src = THANOS_DIR / "rule-alertmanagers.yml"
    am = render.substitute(am_src.read_text(), render.default_addr("alertmanager"), f"{HOST}:{alertmanager_port}",
                           "Alertmanager address", am_src)
    (conf_dir / "rule-alertmanagers.yml").write_text(am)
    args = [
        str(thanos), "rule",
        f"--http-address={HOST}:{http}",
        f"--grpc-address={HOST}:{grpc}",
        f"--data-dir={conf_dir / 'rule'}",
        f"--rule-file={rule_file}",
        f"--query.config-file={conf_dir / 'rule-query.yml'}",
        f"--alertmanagers.config-file={conf_dir / 'rule-alertmanagers.yml'}",
        '--label=tier="1m"',
        "--alert.label-drop=tier",
        "--log.level=warn",
    ]
    if eval_interval is not None:
        args.append(f"--eval-interval={eval_interval}")
    if objstore is not None:
        args.append(f"--objstore.config-file={objstore}")
    return args


def store_args(thanos: Path, data: Path, objstore: Path, *, http: int, grpc: int) -> list[str]:
    """The store gateway: serves the object store's blocks to Query."""
    return [str(thanos), "store", f"--data-dir={data}", f"--objstore.config-file={objstore}",
            f"--http-address={HOST}:{http}", f"--grpc-address={HOST}:{grpc}", "--log.level=warn"]


def compact_args(thanos: Path, data: Path, objstore: Path, *, http: int, selector: str, raw_retention: str,
                 wait: bool = True) -> list[str]:
    """One of the two compactors of docs/pipeline.md (selector: compact-raw-selector.yml or
    compact-1m-selector.yml of deploy/thanos/), with the tiers' per-resolution retention.
    ``wait``: keep running and compact every few minutes (the stack) rather than once."""
    args = [
        str(thanos), "compact", f"--data-dir={data}", f"--objstore.config-file={objstore}",
        f"--http-address={HOST}:{http}",
        f"--selector.relabel-config-file={THANOS_DIR / selector}",
        f"--retention.resolution-raw={raw_retention}",
        f"--retention.resolution-5m={DOWNSAMPLED_RETENTION}",
        f"--retention.resolution-1h={DOWNSAMPLED_RETENTION}",
        f"--debug.max-compaction-level={MAX_COMPACTION_LEVEL}",
        "--log.level=warn",
    ]
    if wait:
        args.append("--wait")
    return args


# ---------------------------------------------------------------------- Prometheus shards
def hashmod(value: str, modulus: int) -> int:
    """Prometheus' `hashmod` relabel action: the low 8 bytes of the MD5 sum, big-endian, mod."""
    digest = hashlib.md5(value.encode()).digest()  # Prometheus hashes with MD5; not a security use
    return int.from_bytes(digest[8:], "big") % modulus


def shard_config(conf_dir: Path, index: int, *, remote_write: str, alertmanager: str,
                 interval: str | None = None) -> Path:
    """deploy/prometheus-shard.yml as shard `index` in conf_dir: the two `shard-index` fields
    changed, rule files absolute, remote write and Alertmanager at these host:port addresses.
    Its targets are conf_dir/fleet-targets/*.json (write_targets)."""
    src = SHARD_CONFIG
    text = src.read_text()
    text = render.substitute(text, r'^(\s*prometheus_shard:\s*)"0"(\s*# shard-index)$', rf'\g<1>"{index}"\g<2>',
                             "shard label", src)
    text = render.substitute(text, r'^(\s*regex:\s*)"0"(\s*# shard-index)$', rf'\g<1>"{index}"\g<2>',
                             "hashmod keep regex", src)
    text = render.substitute(text, r"^(\s*-\s*)\.\./alerts/", rf"\g<1>{ALERTS_DIR}/", "rule_files entry", src)
    text = render.substitute(text, r"(url:\s*http://)[0-9.]+:\d+(/api/v1/receive)", rf"\g<1>{remote_write}\g<2>",
                             "remote_write url", src)
    text = render.substitute(text, f'"{render.default_addr("alertmanager")}"', f'"{alertmanager}"',
                             "Alertmanager target", src)
    if interval is not None:
        text = render.substitute(text, r"^(\s*(?:scrape|evaluation)_interval:\s*)\S+$", rf"\g<1>{interval}",
                                 "global intervals", src)
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / f"prometheus-shard-{index}.yml"
    path.write_text(f"# Generated by ernie-otel from {src} (shard {index} of {SHARDS}); edit that file.\n{text}")
    return path


def write_targets(conf_dir: Path, name: str, addresses: Sequence[str]) -> Path:
    """conf_dir/fleet-targets/<name>.json, a file_sd file the shards read. ``name`` must match one
    of deploy/prometheus-shard.yml's globs: ernie-serve-*, prometheus-shard-*, thanos-*."""
    sd_dir = conf_dir / "fleet-targets"
    sd_dir.mkdir(parents=True, exist_ok=True)
    path = sd_dir / f"{name}.json"
    tmp = path.with_suffix(".tmp")  # Prometheus re-reads the file: never let it see half of one
    tmp.write_text(json.dumps([{"targets": list(addresses)}]))
    tmp.replace(path)
    return path


def prometheus_shard_args(binary: str, config: Path, port: int, data: Path) -> list[str]:
    return [
        binary, f"--config.file={config}", f"--web.listen-address={HOST}:{port}",
        f"--storage.tsdb.path={data}", f"--storage.tsdb.retention.time={LOCAL_RETENTION}",
        "--enable-feature=exemplar-storage", "--log.level=warn",
    ]


# ----------------------------------------------------------------------- component entries
def replica_keys(index: int) -> tuple[str, str]:
    """The port keys (API, metrics) of replica `index`; replica 0 is the stack's usual ernie_serve."""
    return ("serve", "serve_metrics") if index == 0 else (f"serve_{index}", f"serve_metrics_{index}")


def replica(index: int) -> Component:
    """ernie-serve replica `index` (1..): API on ports.replica_ports(index), its own process and
    therefore its own service.instance.id (the SDK makes one per process)."""
    api_key, metrics_key = replica_keys(index)
    api, metrics = replica_ports(index)
    base = next(c for c in table.COMPONENTS if c.name == "ernie_serve")

    def command(ctx: StackContext) -> list[str]:
        return table.ernie_serve_command(ctx, api_key, metrics_key)

    return dataclasses.replace(base, name=f"ernie_serve_{index}", title=f"ernie-serve {index}",
                               order=base.order + index, command=command, ports={api_key: api, metrics_key: metrics},
                               health=lambda c: f"{c.url(api_key)}/health")


def _conf_dir(ctx: StackContext) -> Path:
    return ctx.state_dir / "thanos"


def _receive_ports(ctx: StackContext, k: int | None) -> ReceivePorts:
    """Ingesting receiver k's ports, or (None) the router's."""
    if k is None:
        return ReceivePorts(*(ctx.ports[f"thanos_router_{kind}"] for kind in ("grpc", "http", "remote_write",
                                                                              "capnproto")))
    return ReceivePorts(*(ctx.ports[f"thanos_receive_{kind}_{k}"] for kind in ("grpc", "http", "remote_write",
                                                                               "capnproto")))


def _objstore(ctx: StackContext) -> Path:
    return objstore_config(_conf_dir(ctx), _conf_dir(ctx) / "bucket")


def _ready(key: str) -> Callable[[StackContext], str]:
    return lambda c: f"{c.url(key)}/-/ready"


def _thanos(name: str, title: str, order: int, command: table.Builder, ports: dict[str, int],
            health_key: str) -> Component:
    return Component(name, title, order, command, ports, health=_ready(health_key),
                     health_timeout=THANOS_HEALTH_TIMEOUT_S)


def _ingester(k: int) -> Component:
    keys = {f"thanos_receive_{kind}_{k}": fleet_port(f"thanos_receive_{kind}", k)
            for kind in ("grpc", "http", "remote_write", "capnproto")}

    def command(ctx: StackContext) -> list[str]:
        return receive_args(build_thanos(), _receive_ports(ctx, k), _conf_dir(ctx) / f"receive-{k}",
                            replica=f"r{k}", objstore=_objstore(ctx), retention=LOCAL_RETENTION)

    return _thanos(f"thanos_receive_{k}", f"Thanos receive {k}", 41 + k, command, keys, f"thanos_receive_http_{k}")


def _router(ctx: StackContext) -> list[str]:
    ring = hashring_config(_conf_dir(ctx), [_receive_ports(ctx, k) for k in range(INGESTERS)])
    return receive_args(build_thanos(), _receive_ports(ctx, None), _conf_dir(ctx) / "router", hashring=ring)


def _query(ctx: StackContext) -> list[str]:
    endpoints = [*(ctx.ports[f"thanos_receive_grpc_{k}"] for k in range(INGESTERS)),
                 ctx.ports["thanos_store_grpc"], ctx.ports["thanos_rule_grpc"]]
    return query_args(build_thanos(), ctx.ports["thanos_query_http"], ctx.ports["thanos_query_grpc"], endpoints)


def _store(ctx: StackContext) -> list[str]:
    return store_args(build_thanos(), _conf_dir(ctx) / "store", _objstore(ctx), http=ctx.ports["thanos_store_http"],
                      grpc=ctx.ports["thanos_store_grpc"])


def _compactor(key: str, selector: str, raw_retention: str, data: str) -> table.Builder:
    def command(ctx: StackContext) -> list[str]:
        return compact_args(build_thanos(), _conf_dir(ctx) / data, _objstore(ctx), http=ctx.ports[key],
                            selector=selector, raw_retention=raw_retention)
    return command


def _rule(ctx: StackContext) -> list[str]:
    return rule_args(build_thanos(), _conf_dir(ctx), http=ctx.ports["thanos_rule_http"],
                     grpc=ctx.ports["thanos_rule_grpc"], query_http=ctx.ports["thanos_query_http"],
                     alertmanager_port=ctx.ports["alertmanager"], objstore=_objstore(ctx))


def _shard(k: int, replicas: int) -> Component:
    key = f"prometheus_shard_{k}"

    def command(ctx: StackContext) -> list[str]:
        conf = _conf_dir(ctx)
        # Every shard reads the same target lists and keeps its own hashmod share of the replicas.
        write_targets(conf, "ernie-serve-replicas", [ctx.addr(replica_keys(i)[1]) for i in range(replicas)])
        write_targets(conf, "prometheus-shard-all", [ctx.addr(f"prometheus_shard_{j}") for j in range(SHARDS)])
        write_targets(conf, "thanos-all", [ctx.addr(meta) for meta in THANOS_META_KEYS])
        config = shard_config(conf, k, remote_write=ctx.addr("thanos_router_remote_write"),
                              alertmanager=ctx.addr("alertmanager"))
        binary = shutil.which("prometheus")
        if binary is None:
            raise StackError("prometheus not found (Debian package prometheus; make setup)")
        return prometheus_shard_args(binary, config, ctx.ports[key], ctx.state_dir / f"prometheus-shard-{k}")

    return Component(f"prometheus_shard_{k}", f"Prometheus shard {k}", 51 + k, command,
                     {key: fleet_port("prometheus_shard", k)}, health=_ready(key), health_timeout=60.0)


# The HTTP (metrics) listeners of every Thanos process: the shards' meta-monitoring targets.
THANOS_META_KEYS: tuple[str, ...] = (
    *(f"thanos_receive_http_{k}" for k in range(INGESTERS)), "thanos_router_http", "thanos_query_http",
    "thanos_store_http", "thanos_compact_http", "thanos_compact_1m_http", "thanos_rule_http",
)


def _prometheus_collector_only(ctx: StackContext) -> list[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise StackError("prometheus not found (Debian package prometheus; make setup)")
    return table.prometheus_command(binary, render.prometheus_config(ctx.state_dir, ctx.addr, direct=False),
                                    ctx.state_dir / "prometheus", ctx.addr("prometheus"))


# ---------------------------------------------------------------------- Collector tiers
def _collector_config(name: str) -> str:
    return str(FLEET_COLLECTOR_DIR / f"{name}.yaml")


def _telemetry_env(ctx: StackContext, health: str, telemetry: str, queue: str) -> dict[str, str]:
    return {
        "OTELCOL_HEALTH_ENDPOINT": ctx.addr(health),
        "OTELCOL_TELEMETRY_HOST": HOST,
        "OTELCOL_TELEMETRY_PORT": str(ctx.ports[telemetry]),
        # One queue directory per process: two Collectors must never share a file_storage.
        "OTELCOL_QUEUE_DIR": str(ctx.state_dir / "queue" / queue),
    }


def _sampler(k: int) -> Component:
    grpc, health, telemetry = (f"sampler_{kind}_{k}" for kind in ("otlp_grpc", "health", "telemetry"))

    def env(ctx: StackContext) -> dict[str, str]:
        return {"OTELCOL_OTLP_GRPC_ENDPOINT": ctx.addr(grpc), "OTELCOL_JAEGER_ENDPOINT": ctx.addr("jaeger_otlp_grpc"),
                **_telemetry_env(ctx, health, telemetry, f"sampler-{k}")}

    return Component(f"collector_sampler_{k}", f"Collector sampler {k}", 12 + k,
                     lambda c: [str(c.binaries() / "otelcol-ernie"), "--config", _collector_config("sampler")],
                     {key: fleet_port(key.rsplit("_", 1)[0], k) for key in (grpc, health, telemetry)}, env=env,
                     health=lambda c: f"{c.url(health)}/", needs_binaries=True)


def _lb_env(ctx: StackContext) -> dict[str, str]:
    samplers = ", ".join(ctx.addr(f"sampler_otlp_grpc_{k}") for k in range(SAMPLERS))
    return {"OTELCOL_OTLP_GRPC_ENDPOINT": ctx.addr("lb_otlp_grpc"), "OTELCOL_SAMPLER_ENDPOINTS": f"[{samplers}]",
            **_telemetry_env(ctx, "lb_health", "lb_telemetry", "lb")}


def _agent_env(ctx: StackContext) -> dict[str, str]:
    return {**table.collector_env(ctx.ports), "OTELCOL_LB_ENDPOINT": ctx.addr("lb_otlp_grpc"),
            "OTELCOL_QUEUE_DIR": str(ctx.state_dir / "queue" / "agent")}


def traces_components() -> tuple[Component, ...]:
    """The trace tiers between the agent (the stack's Collector) and Jaeger: 2 samplers, 1 lb."""
    return (
        *(_sampler(k) for k in range(SAMPLERS)),
        Component("collector_lb", "Collector load balancer", 15,
                  lambda c: [str(c.binaries() / "otelcol-ernie"), "--config", _collector_config("lb")],
                  {key: FLEET_PORTS[key] for key in ("lb_otlp_grpc", "lb_health", "lb_telemetry")}, env=_lb_env,
                  health=lambda c: f"{c.url('lb_health')}/", needs_binaries=True),
    )


def _agent(base: Component) -> Component:
    """The stack's Collector as the fleet's agent: the single-server config plus agent.yaml."""
    return dataclasses.replace(
        base, title="Collector (agent)", env=_agent_env,
        command=lambda c: [*table.collector_command(c.binaries()), "--config", _collector_config("agent")])


def metrics_components(replicas: int) -> tuple[Component, ...]:
    """The fleet metrics topology: Thanos (3 ingesters, router, query, store, 2 compactors, ruler)
    and the two Prometheus shards over `replicas` replicas."""
    def own(*keys: str) -> dict[str, int]:
        return {key: FLEET_PORTS[key] for key in keys}

    return (
        *(_ingester(k) for k in range(INGESTERS)),
        _thanos("thanos_router", "Thanos receive (router)", 44, _router,
                own("thanos_router_grpc", "thanos_router_http", "thanos_router_remote_write",
                    "thanos_router_capnproto"), "thanos_router_http"),
        _thanos("thanos_query", "Thanos Query", 45, _query, own("thanos_query_http", "thanos_query_grpc"),
                "thanos_query_http"),
        _thanos("thanos_store", "Thanos store", 46, _store, own("thanos_store_grpc", "thanos_store_http"),
                "thanos_store_http"),
        _thanos("thanos_compact", "Thanos compact (raw)", 47,
                _compactor("thanos_compact_http", "compact-raw-selector.yml", RAW_RETENTION, "compact-raw"),
                own("thanos_compact_http"), "thanos_compact_http"),
        _thanos("thanos_compact_1m", "Thanos compact (1m)", 48,
                _compactor("thanos_compact_1m_http", "compact-1m-selector.yml", TIER_1M_RETENTION, "compact-1m"),
                own("thanos_compact_1m_http"), "thanos_compact_1m_http"),
        _thanos("thanos_rule", "Thanos rule", 49, _rule, own("thanos_rule_grpc", "thanos_rule_http"),
                "thanos_rule_http"),
        *(_shard(k, replicas) for k in range(SHARDS)),
    )


def stack_components(replicas: int = 1, *, fleet: bool = False) -> tuple[Component, ...]:
    """The stack's table for `replicas` ernie-serve replicas. More than one replica (or ``fleet``)
    adds the Collector tiers and the fleet metrics topology, and the single Prometheus then scrapes the Collector only
    (each replica is scraped by exactly one shard). replicas=1 without ``fleet`` is
    components.COMPONENTS itself: the default stack is unchanged."""
    if not 1 <= replicas <= MAX_REPLICAS:
        raise StackError(f"--replicas must be 1..{MAX_REPLICAS} (replica ports are numbered up to that); "
                         f"got {replicas}")
    if replicas == 1 and not fleet:
        return table.COMPONENTS
    changed = {"prometheus": lambda c: dataclasses.replace(c, command=_prometheus_collector_only),
               "collector": _agent}
    base = [changed[c.name](c) if c.name in changed else c for c in table.COMPONENTS]
    return (*base, *(replica(i) for i in range(1, replicas)), *traces_components(),
            *metrics_components(replicas))
