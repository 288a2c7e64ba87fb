"""``ernie-otel stack``: the whole pipeline as local processes, on the default ports of ernie_otel/ports.py.

``up`` starts, in this order and each only once the previous one is healthy: Jaeger, the
Collector, a local alert webhook sink, Alertmanager, Prometheus, and ``ernie-serve`` under
``opentelemetry-instrument`` (plus, with ``--load``, a steady load generator and a trickle of bad
requests so every dashboard panel has data). Everything binds 127.0.0.1.

One state directory (``--state-dir``, default ``$ERNIE_OTEL_STACK_DIR`` or ``<repo>/.stack``) holds
it all: ``stack.json`` (pid, start time and command line of every process), ``logs/<component>.log``,
the generated Prometheus/Alertmanager configs, Prometheus' TSDB, Alertmanager's storage, and
``alerts.jsonl`` (every notification Alertmanager sent to the webhook sink).

The processes run detached (own session, output to their log) so ``up`` can return; ``down``
stops exactly what ``up`` recorded, and only after checking that the pid still is that process
(same start time and command line): pids get reused. Linux only (reads /proc).

Modules, one concern each:

- procs.py: free ports, HTTP probes, wait-until-healthy, spawning and stopping a child process
  (also what the tests and benchmarks use);
- records.py: stack.json and the /proc checks behind ``status`` and ``down``;
- components.py: the component table (one entry per process: ports, command, environment, health
  URL, start order, health timeout) and the one builder of the Collector's and Jaeger's environment;
- fleet.py: the fleet profile (``up --replicas N`` / ``--fleet``): replicas 1..N-1, the Collector
  tiers, two Prometheus shards and Thanos; the one copy of their launch arguments;
- render.py: the Prometheus and Alertmanager configs, rendered from the repository's with the stack's ports;
- core.py: :class:`Stack`, which runs the table; cli.py: the command line.
"""

from __future__ import annotations

from .cli import main
from .components import COMPONENTS, Component, collector_env, jaeger_env
from .core import Stack, default_state_dir
from .procs import NotHealthyError, Running, free_port, free_ports, http_get, log_tail, wait_http
from .records import Record, StackError, process_gone, process_matches
from .render import PROMETHEUS_CONFIG

__all__ = [
    "COMPONENTS",
    "PROMETHEUS_CONFIG",
    "Component",
    "NotHealthyError",
    "Record",
    "Running",
    "Stack",
    "StackError",
    "collector_env",
    "default_state_dir",
    "free_port",
    "free_ports",
    "http_get",
    "jaeger_env",
    "log_tail",
    "main",
    "process_gone",
    "process_matches",
    "wait_http",
]
