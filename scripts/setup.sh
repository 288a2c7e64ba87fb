#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent and fast when already done:
# Debian packages (Prometheus, Alertmanager, promtool, amtool, openssl), the Python venv with the package,
# and the Collector + Jaeger binaries (built from Go modules, cached outside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

need=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
# Debian names the binary prometheus-alertmanager.
{ command -v prometheus-alertmanager || command -v alertmanager; } >/dev/null 2>&1 \
  && command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
# The fleet TLS test makes a throwaway CA and certificate with the openssl CLI.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if ((${#need[@]})); then
  log "installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  # The packages' services must not start: the stack and the tests start their own processes.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  for svc in prometheus prometheus-alertmanager; do $SUDO service "$svc" stop >/dev/null 2>&1 || true; done
fi

PY=${PYTHON:-python3}
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  log "creating .venv and installing ernie-otel with its test extras (first run downloads torch: minutes)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test,gpu,bench]"
  rm -f .venv/.installed-*
  touch "$stamp"
else
  log "python environment up to date"
fi

log "building/reusing the Collector and Jaeger binaries"
bash collector/build.sh >/dev/null
log "done"
