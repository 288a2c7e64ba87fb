"""Every default port of ernie-otel, in one place.

The CLI defaults (`ernie-serve --port/--metrics-port`, `ernie-otel bench --url`), the local stack,
the tests and docs/pipeline.md all read these tables; no other module writes a port number.
Everything binds 127.0.0.1 unless told otherwise.

Single-server stack: the well-known ports of each component (OTLP 4317/4318, Prometheus 9090,
...), the log store included. Fleet profile (`ernie-otel stack up --replicas N` and the Collector
tiers / Thanos / trace-store components): replica i (from 0) serves its API on 8180+10*i and its
metrics on 8181+10*i; the other fleet listeners are in FLEET_PORTS, numbered so that none of them
collides with a single-server port or with the replicas' range (8180..8279 for up to 10 replicas).
"""

from __future__ import annotations

HOST = "127.0.0.1"

# The single-server stack. Keys are what `Stack(ports=...)` overrides; PORT_PURPOSE says what
# listens there (the "port taken" message and docs/pipeline.md print it).
DEFAULT_PORTS: dict[str, int] = {
    "jaeger_otlp_grpc": 14317,
    "jaeger_otlp_http": 14318,
    "jaeger_query": 16686,
    "jaeger_query_grpc": 16685,
    "jaeger_health": 13134,
    "jaeger_metrics": 14269,
    "otlp_grpc": 4317,
    "otlp_http": 4318,
    "collector_prometheus": 8889,
    "collector_health": 13133,
    "collector_telemetry": 8888,
    "webhook_sink": 9095,
    "alertmanager": 9093,
    "prometheus": 9090,
    # The log store (VictoriaLogs' well-known port): OTLP logs in, LogsQL API and vmui out.
    "log_store": 9428,
    "serve": 8180,
    "serve_metrics": 8181,
}
PORT_PURPOSE: dict[str, str] = {
    "jaeger_otlp_grpc": "Jaeger OTLP/gRPC receiver (spans from the Collector)",
    "jaeger_otlp_http": "Jaeger OTLP/HTTP receiver",
    "jaeger_query": "Jaeger query API and UI",
    "jaeger_query_grpc": "Jaeger query gRPC API",
    "jaeger_health": "Jaeger health check",
    "jaeger_metrics": "Jaeger's own metrics",
    "otlp_grpc": "Collector OTLP/gRPC receiver (ernie-serve exports here)",
    "otlp_http": "Collector OTLP/HTTP receiver",
    "collector_prometheus": "Collector Prometheus exporter (scraped as job otel-collector)",
    "collector_health": "Collector health check",
    "collector_telemetry": "Collector's own metrics (job otelcol-internal)",
    "webhook_sink": "local alert webhook sink (Alertmanager's receivers)",
    "alertmanager": "Alertmanager web/API",
    "prometheus": "Prometheus web/API",
    "log_store": "VictoriaLogs: OTLP logs from the Collector, LogsQL API and its UI (/select/vmui)",
    "serve": "ernie-serve OpenAI API",
    "serve_metrics": "ernie-serve Prometheus metrics (--metrics-port, job ernie-serve-direct)",
}

# Replica i of the fleet: API on REPLICA_BASE_PORT + REPLICA_STRIDE*i, metrics one above.
REPLICA_BASE_PORT = DEFAULT_PORTS["serve"]
REPLICA_STRIDE = 10
MAX_REPLICAS = 10

# The fleet profile's other listeners. Where a component runs several instances (samplers,
# Prometheus shards, Thanos receivers, OpenSearch nodes), the number here is instance 0's and
# instance k adds FLEET_STRIDE*k.
FLEET_STRIDE = 10
FLEET_PORTS: dict[str, int] = {
    # Load-balancing Collector tier (receives from the agent, routes by trace id).
    "lb_otlp_grpc": 4417,
    "lb_health": 13143,
    "lb_telemetry": 8898,
    # Sampling Collectors (tail_sampling), instance k adds 10*k.
    "sampler_otlp_grpc": 4517,
    "sampler_health": 13153,
    "sampler_telemetry": 8908,
    # Prometheus shards (hashmod on the target address), instance k adds 10*k: 9091, 9101, ...
    # (never Alertmanager's 9093 or the webhook sink's 9095).
    "prometheus_shard": 9091,
    # Thanos: Query's HTTP API and UI on 10902 (its well-known port), gRPC 10901.
    "thanos_query_http": 10902,
    "thanos_query_grpc": 10901,
    # Thanos receivers, instance k (0..2) adds 10*k: gRPC (StoreAPI), HTTP, remote-write, capnproto.
    "thanos_receive_grpc": 10911,
    "thanos_receive_http": 10912,
    "thanos_receive_remote_write": 19291,
    "thanos_receive_capnproto": 19391,
    # The routing-only receiver in front of them (no TSDB): the one remote-write URL the
    # Prometheus shards use, so that a dead ingesting receiver costs no failed writes.
    "thanos_router_remote_write": 19281,
    "thanos_router_grpc": 10981,
    "thanos_router_http": 10982,
    "thanos_router_capnproto": 19381,
    "thanos_store_grpc": 10941,
    "thanos_store_http": 10942,
    "thanos_compact_http": 10952,
    # The second compactor (the ruler's tier="1m" blocks); not 10952 + 10, which is the ruler's.
    "thanos_compact_1m_http": 10972,
    "thanos_rule_grpc": 10961,
    "thanos_rule_http": 10962,
    # Trace store of the fleet profile: OpenSearch node k HTTP / transport (node 0 on the
    # well-known 9200/9300; node k adds 10*k).
    "opensearch_http": 9200,
    "opensearch_transport": 9300,
}


def replica_ports(index: int) -> tuple[int, int]:
    """(API port, metrics port) of fleet replica `index` (from 0)."""
    if not 0 <= index < MAX_REPLICAS:
        raise ValueError(f"replica index {index} outside 0..{MAX_REPLICAS - 1}")
    api = REPLICA_BASE_PORT + REPLICA_STRIDE * index
    return api, api + 1


def fleet_port(key: str, instance: int = 0) -> int:
    """Port `key` of FLEET_PORTS for instance `instance` of a multi-instance component."""
    return FLEET_PORTS[key] + FLEET_STRIDE * instance
