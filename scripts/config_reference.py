"""Print docs/configuration.md from the config classes (a test checks the file is current):

    .venv/bin/python scripts/config_reference.py > docs/configuration.md
"""

from __future__ import annotations

from ernie_otel.bench import BenchConfig
from ernie_otel.config import markdown_table
from ernie_otel.serve import ServeConfig
from ernie_otel.telemetry.settings import TelemetrySettings

HEADER = """# Configuration

Every setting of `ernie-serve`, `ernie-otel bench` and the telemetry, generated from the config
classes (`python scripts/config_reference.py > docs/configuration.md`). Each program parses and
checks its settings once at start-up: a bad value stops it with one line naming the flag or
variable, exit status 2. A flag wins over its environment variable; an empty variable is unset.
"""

SECTIONS = (
    ("`ernie-serve` (`ernie_otel.serve.ServeConfig`)", ServeConfig, ""),
    ("`ernie-otel bench` (`ernie_otel.bench.BenchConfig`)", BenchConfig,
     "On the command line `--duration` alone sets no request limit, `--rate` alone no in-flight cap, and "
     "`--duration 0` runs until Ctrl-C. `--json PATH` writes the result, `--quiet` drops the progress line.\n\n"),
    ("Telemetry (`ernie_otel.telemetry.settings.TelemetrySettings`)", TelemetrySettings,
     "Read by `ernie-serve` and by the `opentelemetry-instrument` distro/configurator. Unset exporters: "
     "OTLP under `opentelemetry-instrument`; standalone, OTLP only with `--otlp-endpoint` or "
     "`OTEL_EXPORTER_OTLP_ENDPOINT`. The OTLP exporters read their other standard variables (headers, "
     "per-signal endpoints, TLS) themselves.\n\n"),
)


def render() -> str:
    parts = [HEADER]
    for title, cls, intro in SECTIONS:
        parts.append(f"\n## {title}\n\n{intro}{markdown_table(cls)}")
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
