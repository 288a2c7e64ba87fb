# The two entry points of the README. Both do their own set-up (scripts/setup.sh).
.PHONY: setup demo test lint down

# The built Jaeger UI (scripts/setup.sh unpacks it; never committed): taken from the environment, or
# from the archive folder next to the checkout where CI and this project's machines keep it.
ERNIE_OTEL_JAEGER_UI ?= $(wildcard ../shared/vendor/jaeger-ui)
export ERNIE_OTEL_JAEGER_UI

setup:
	bash scripts/setup.sh

# The whole stack locally (ernie-serve with the tiny model under opentelemetry-instrument, the
# Collector, Jaeger, VictoriaLogs, Prometheus, Alertmanager) plus steady load; Ctrl-C stops it all.
demo: setup
	.venv/bin/ernie-otel stack up --load --foreground

down:
	.venv/bin/ernie-otel stack down

lint: setup
	.venv/bin/ruff check .

# mypy: --strict on ernie_otel/, as [tool.mypy] in pyproject.toml says.
test: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python -m pytest -q -ra --durations=15
