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

The Thanos and shard command lines come from thanos.py, the one copy the tests use too.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

from ..kinds import EXEMPLARS_FOLLOW_SAMPLING_ENV
from ..ports import FLEET_PORTS, HOST, MAX_REPLICAS, fleet_port, replica_ports
from . import components as table
from . import render
from .components import Component, StackContext
from .procs import REPO_ROOT
from .records import StackError
from .thanos import (
    INGESTERS,
    LOCAL_RETENTION,
    RAW_RETENTION,
    SHARDS,
    THANOS_HEALTH_TIMEOUT_S,
    TIER_1M_RETENTION,
    ReceivePorts,
    build_thanos,
    compact_args,
    hashring_config,
    objstore_config,
    prometheus_shard_args,
    query_args,
    receive_args,
    rule_args,
    shard_config,
    store_args,
    wait_receive_start,
    write_targets,
)

FLEET_COLLECTOR_DIR = REPO_ROOT / "collector" / "fleet"
SAMPLERS = 2  # the local static resolver's list (lb.yaml's default names two)

# ----------------------------------------------------------------------- component entries
def replica_keys(index: int) -> tuple[str, str]:
    """The port keys (API, metrics) of replica `index`; replica 0 is the stack's usual ernie_serve."""
    return ("serve", "serve_metrics") if index == 0 else (f"serve_{index}", f"serve_metrics_{index}")


def _replica_env(base: Component) -> Component:
    """An ernie-serve of the fleet: the tail samplers drop most OK traces, so the recorder applies
    their rule (same OTELCOL_SAMPLING_* variables, inherited from the stack's environment) and
    attaches exemplars only to traces they keep."""
    def env(ctx: StackContext) -> dict[str, str]:
        return {**base.env(ctx), EXEMPLARS_FOLLOW_SAMPLING_ENV: "true"}

    return dataclasses.replace(base, env=env)


def replica(index: int) -> Component:
    """ernie-serve replica `index` (1..): API on ports.replica_ports(index), its own process and
    therefore its own service.instance.id (the SDK makes one per process)."""
    api_key, metrics_key = replica_keys(index)
    api, metrics = replica_ports(index)
    base = _replica_env(next(c for c in table.COMPONENTS if c.name == "ernie_serve"))

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
        wait_receive_start(say=ctx.say)  # runs just before the start: see receive_start_delay
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


TRACE_STORES = ("badger", "opensearch")


def stack_components(replicas: int = 1, *, fleet: bool = False, trace_store: str = "badger") -> tuple[Component, ...]:
    """The stack's table for `replicas` ernie-serve replicas. More than one replica (or ``fleet``)
    adds the Collector tiers and the fleet metrics topology, and the single Prometheus then scrapes the Collector only
    (each replica is scraped by exactly one shard). replicas=1 without ``fleet`` is
    components.COMPONENTS itself: the default stack is unchanged."""
    if not 1 <= replicas <= MAX_REPLICAS:
        raise StackError(f"--replicas must be 1..{MAX_REPLICAS} (replica ports are numbered up to that); "
                         f"got {replicas}")
    if trace_store not in TRACE_STORES:
        raise StackError(f"--trace-store must be one of {', '.join(TRACE_STORES)}; got {trace_store!r}")
    if replicas == 1 and not fleet:
        if trace_store != "badger":
            raise StackError(f"--trace-store {trace_store} is part of the fleet profile: add --fleet")
        return table.COMPONENTS
    changed = {"prometheus": lambda c: dataclasses.replace(c, command=_prometheus_collector_only),
               "collector": _agent, "ernie_serve": _replica_env}
    store: tuple[Component, ...] = ()
    if trace_store == "opensearch":
        # Jaeger keeps its ports and only stores into (and reads from) the cluster: one JVM per node.
        changed["jaeger"] = table.with_opensearch
        store = table.opensearch_components()
    base = [changed[c.name](c) if c.name in changed else c for c in table.COMPONENTS]
    return (*store, *base, *(replica(i) for i in range(1, replicas)), *traces_components(),
            *metrics_components(replicas))
