#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent and fast when already done:
# Debian packages (Prometheus, Alertmanager, promtool, amtool, openssl, Chromium and its WebDriver for
# the browser tests, podman and runc for the container smoke test), the Python venv with the package,
# the Go binaries (Collector, Jaeger, Thanos, Kubernetes tools; built from Go modules, cached outside
# the repo) and the Jaeger UI's built assets
# (unpacked from an archive given in ERNIE_OTEL_JAEGER_UI into the same cache).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

need=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
# Debian names the binary prometheus-alertmanager.
{ command -v prometheus-alertmanager || command -v alertmanager; } >/dev/null 2>&1 \
  && command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
# The browser tests (tests/test_ui_browser.py) drive Debian's Chromium through its chromedriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# ernie-serve compiles its bf16 CPU kernel (ernie_otel/backends/csrc/bf16_linear.c) with the C
# compiler; tests/test_cpu_kernel.py requires it on a CPU with AVX-512.
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || need+=(gcc libgomp1)
# The fleet TLS test makes a throwaway CA and certificate with the openssl CLI.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The fleet's OpenSearch trace store: Maven resolves it, javac compiles its launcher, java runs it.
command -v javac >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
# The container smoke test (tests/test_containers.py): Debian's podman with runc (crun does not
# run here), host networking only; it checks the host's interfaces and iptables rules afterwards.
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables-save >/dev/null 2>&1 || need+=(iptables)
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

# Jaeger UI: the Go module embeds none, so the built UI of the matching release is unpacked into the
# cache and served through jaeger_query.ui.assets_path (the stack sets JAEGER_UI_ASSETS). The archive
# comes from ERNIE_OTEL_JAEGER_UI (the archive itself, or a folder holding it); nothing is downloaded.
JAEGER_UI_VERSION="v1.76.0"  # = ernie_otel/jaeger_ui.py JAEGER_UI_VERSION
JAEGER_UI_ARCHIVE="jaeger-ui-${JAEGER_UI_VERSION}-assets.tar.gz"
# sha256 of the built v1.76.0 UI that CI is given; another build of the same release (e.g. the
# release's own assets.tar.gz) has another checksum: pass it in ERNIE_OTEL_JAEGER_UI_SHA256.
JAEGER_UI_SHA256="${ERNIE_OTEL_JAEGER_UI_SHA256:-c6a065f7b64f47935cd8aeebb3ecc978329b3624be6ab5f91af64e32ddc5f9fd}"
ui_dest="${ERNIE_OTEL_CACHE:-$HOME/.cache/ernie-otel}/jaeger-ui/${JAEGER_UI_VERSION}"
ui_src="${ERNIE_OTEL_JAEGER_UI:-}"
if [ -d "$ui_src" ]; then
  for candidate in "$ui_src/$JAEGER_UI_ARCHIVE" "$ui_src/assets.tar.gz"; do
    if [ -f "$candidate" ]; then ui_src="$candidate"; break; fi
  done
fi
ui_stamp="$ui_dest/.sha256"
if [ -f "$ui_dest/index.html" ] && [ "$(cat "$ui_stamp" 2>/dev/null)" = "$JAEGER_UI_SHA256" ]; then
  log "Jaeger UI ${JAEGER_UI_VERSION} up to date in $ui_dest"
elif [ -f "$ui_src" ]; then
  got="$(sha256sum "$ui_src" | cut -c1-64)"
  if [ "$got" != "$JAEGER_UI_SHA256" ]; then
    log "ERROR: $ui_src has sha256 $got, expected $JAEGER_UI_SHA256 (set ERNIE_OTEL_JAEGER_UI_SHA256 for another build)"
    exit 2
  fi
  # Unpacked next to the destination and moved into place whole: a killed set-up leaves no half UI.
  mkdir -p "${ui_dest%/*}"
  tmp="$(mktemp -d "${ui_dest%/*}/.tmp-XXXXXX")"
  tar -xzf "$ui_src" -C "$tmp"
  index="$(find "$tmp" -name index.html -not -path '*/node_modules/*' | awk '{ print length, $0 }' | sort -n | head -1 | cut -d' ' -f2-)"
  if [ -z "$index" ]; then
    rm -rf "$tmp"; log "ERROR: no index.html in $ui_src: not a built Jaeger UI"; exit 2
  fi
  rm -rf "$ui_dest"
  mv "$(dirname "$index")" "$ui_dest"
  rm -rf "$tmp"
  printf '%s\n' "$JAEGER_UI_SHA256" > "$ui_stamp"
  log "Jaeger UI ${JAEGER_UI_VERSION} unpacked into $ui_dest"
else
  [ -z "$ui_src" ] || log "ERNIE_OTEL_JAEGER_UI=$ui_src holds no $JAEGER_UI_ARCHIVE or assets.tar.gz"
  PYTHONPATH=. .venv/bin/python -c 'from ernie_otel.jaeger_ui import HOW_TO_GET; print("[setup] " + HOW_TO_GET)' >&2
fi

log "building/reusing the Thanos binary (fleet metrics store)"; bash deploy/thanos/build.sh >/dev/null
log "resolving/reusing OpenSearch and its launcher (fleet trace store)"; bash deploy/opensearch/build.sh >/dev/null
log "building/reusing the VictoriaLogs binary (log store)"; bash deploy/victorialogs/build.sh >/dev/null
log "building/reusing the Kubernetes tools (helm, controller-gen, CRDs, docker-compose)"
bash scripts/build-k8s-tools.sh >/dev/null  # helm, controller-gen, CRDs, docker-compose for tests/test_k8s.py
log "done"
