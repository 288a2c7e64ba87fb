#!/usr/bin/env bash
# Build (or reuse) the two Go binaries the ernie-otel pipeline runs:
#   otelcol-ernie  the Collector distribution described by collector/manifest.yaml (built with ocb)
#   jaeger         Jaeger v2 (cmd/jaeger of github.com/jaegertracing/jaeger)
#
# Usage:  BIN=$(bash collector/build.sh | tail -1)
#   The last stdout line is the absolute directory holding both binaries; progress goes to stderr.
#
# Binaries live outside the repo, under ${ERNIE_OTEL_CACHE:-$HOME/.cache/ernie-otel}/bin/<hash>/,
# because CI works in a fresh clone and nothing built may be committed. <hash> covers everything
# that changes the output (manifest, builder/Jaeger versions and link flags, Go version, OS/arch),
# so an unchanged tree answers in well under a second and any edit rebuilds. A build goes into a
# temp dir that is renamed into place only after both binaries ran, so an interrupted build never
# leaves a half cache entry behind.
#
# Environment:
#   ERNIE_OTEL_CACHE         cache root (default ~/.cache/ernie-otel)
#   ERNIE_OTEL_BUILD_JOBS    go build -p (default: number of CPUs, at most 4; these builds
#                            take up to ~1 GiB per compile job and small CI runners have little RAM)
#   ERNIE_OTEL_FORCE_BUILD=1 rebuild even when the cache has an entry
set -euo pipefail

BUILDER_VERSION="v0.165.0"
JAEGER_MODULE="github.com/jaegertracing/jaeger"
# v1.76.0 is the Go module version of Jaeger v2.13.0 (v2 is still published under the v1 module path).
JAEGER_VERSION="v1.76.0"
JAEGER_RELEASE="v2.13.0"
# Jaeger's release builds stamp the version this way; without it `jaeger version` and Jaeger's
# service.version are empty.
JAEGER_LDFLAGS="-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=${JAEGER_RELEASE}"

log() { printf '[build] %s\n' "$*" >&2; }
die() { printf '[build] ERROR: %s\n' "$*" >&2; exit 1; }

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MANIFEST="$SCRIPT_DIR/manifest.yaml"
[[ -f "$MANIFEST" ]] || die "manifest not found: $MANIFEST"
command -v go >/dev/null 2>&1 || die "go is not on PATH (need Go >= 1.26 to build the Collector ${BUILDER_VERSION})"

GO_VERSION="$(go env GOVERSION)"
CACHE_ROOT="${ERNIE_OTEL_CACHE:-$HOME/.cache/ernie-otel}"
mkdir -p "$CACHE_ROOT/bin" "$CACHE_ROOT/tools"
CACHE_ROOT="$(cd "$CACHE_ROOT" && pwd)"

sha256() { if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -c1-64; else shasum -a 256 | cut -c1-64; fi; }
HASH="$({
  cat "$MANIFEST"
  printf '\nbuilder=%s\njaeger=%s@%s ldflags=%s\ngo=%s\nos=%s/%s\n' \
    "$BUILDER_VERSION" "$JAEGER_MODULE" "$JAEGER_VERSION" "$JAEGER_LDFLAGS" "$GO_VERSION" \
    "$(go env GOOS)" "$(go env GOARCH)"
} | sha256 | cut -c1-16)"
DEST="$CACHE_ROOT/bin/$HASH"

cache_hit() { [[ -x "$DEST/otelcol-ernie" && -x "$DEST/jaeger" ]]; }

if [[ "${ERNIE_OTEL_FORCE_BUILD:-0}" != "1" ]] && cache_hit; then
  log "cache hit: $DEST"
  printf '%s\n' "$DEST"
  exit 0
fi

# Two callers (a test session and a developer shell) must not compile the same thing twice at
# once on a 2-core box; the second waits and then finds the cache entry.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_ROOT/bin/.lock"
  if ! flock -n 9; then
    log "another build holds $CACHE_ROOT/bin/.lock; waiting for it"
    flock 9
  fi
  if [[ "${ERNIE_OTEL_FORCE_BUILD:-0}" != "1" ]] && cache_hit; then
    log "cache hit after waiting: $DEST"
    printf '%s\n' "$DEST"
    exit 0
  fi
  # Holding the lock, any temp dir is left over from a build that was killed (SIGKILL skips the
  # cleanup trap); each holds generated sources and up to ~200 MB of binaries.
  for stale in "$CACHE_ROOT"/bin/.tmp-*; do
    [[ -e "$stale" ]] || continue
    log "removing leftover $stale"
    chmod -R u+w "$stale" 2>/dev/null || true
    rm -rf "$stale"
  done
fi

cpus="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
JOBS="${ERNIE_OTEL_BUILD_JOBS:-$(( cpus < 4 ? cpus : 4 ))}"
export GOFLAGS="${GOFLAGS:-} -p=${JOBS}"
# Static binaries: they run on any Linux box and need no C toolchain.
export CGO_ENABLED=0

TMP="$(mktemp -d "$CACHE_ROOT/bin/.tmp-$HASH-XXXXXX")"
HEARTBEAT_PID=""
cleanup() {
  if [[ -n "$HEARTBEAT_PID" ]]; then kill "$HEARTBEAT_PID" 2>/dev/null || true; fi
  # Go's module cache marks files read-only; make the temp tree writable before removing it.
  chmod -R u+w "$TMP" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The compile steps print nothing for many minutes; say we are alive.
heartbeat_start() {
  local what="$1" start="$SECONDS"
  # fd 9 (the build lock) is closed so a lingering heartbeat can never hold the lock; the TERM
  # trap takes its sleep down with it.
  (
    exec 9>&-
    nap=""
    trap 'kill "$nap" 2>/dev/null; exit 0' TERM
    while :; do
      sleep 60 & nap=$!
      wait "$nap"
      printf '[build] ... still %s (%ds)\n' "$what" "$(( SECONDS - start ))" >&2
    done
  ) &
  HEARTBEAT_PID=$!
}
heartbeat_stop() {
  if [[ -n "$HEARTBEAT_PID" ]]; then kill "$HEARTBEAT_PID" 2>/dev/null || true; wait "$HEARTBEAT_PID" 2>/dev/null || true; fi
  HEARTBEAT_PID=""
}

T0=$SECONDS
log "cache miss: building into $DEST (go $GO_VERSION, -p=$JOBS; first build takes many minutes)"
mkdir -p "$TMP/out"

# --- Collector ------------------------------------------------------------------------------
BUILDER_BIN_DIR="$CACHE_ROOT/tools/builder-$BUILDER_VERSION-$GO_VERSION"
if [[ ! -x "$BUILDER_BIN_DIR/builder" ]]; then
  log "installing ocb (go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION)"
  mkdir -p "$BUILDER_BIN_DIR"
  GOBIN="$BUILDER_BIN_DIR" go install -trimpath -ldflags='-s -w' \
    "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION" >&2
fi

mkdir -p "$TMP/collector"
cp "$MANIFEST" "$TMP/collector/manifest.yaml"
log "generating and compiling otelcol-ernie with ocb (downloads modules on a cold module cache)"
heartbeat_start "building otelcol-ernie"
# ocb already compiles with -trimpath -ldflags='-s -w' unless debug_compilation is set.
( cd "$TMP/collector" && "$BUILDER_BIN_DIR/builder" --config manifest.yaml >&2 ) \
  || die "ocb failed (see messages above)"
heartbeat_stop
mv "$TMP/collector/_build/otelcol-ernie" "$TMP/out/otelcol-ernie"
log "otelcol-ernie built after $(( SECONDS - T0 ))s"

# --- Jaeger v2 ------------------------------------------------------------------------------
# `go install module@version` refuses cmd/jaeger because Jaeger's go.mod has replace directives;
# a throwaway module that depends on it as a tool builds it with the versions Jaeger pins.
T1=$SECONDS
mkdir -p "$TMP/jaeger"
log "resolving $JAEGER_MODULE/cmd/jaeger@$JAEGER_VERSION in a throwaway module"
# `go get` lists every one of Jaeger's ~300 dependencies; keep that in a log unless it fails.
if ! (
  cd "$TMP/jaeger"
  go mod init ernie-otel.invalid/jaeger-build
  go get -tool "$JAEGER_MODULE/cmd/jaeger@$JAEGER_VERSION"
) >"$TMP/jaeger-get.log" 2>&1; then
  tail -n 40 "$TMP/jaeger-get.log" >&2
  die "go get $JAEGER_MODULE/cmd/jaeger@$JAEGER_VERSION failed"
fi
log "compiling jaeger"
heartbeat_start "building jaeger"
( cd "$TMP/jaeger" && go build -trimpath -ldflags="$JAEGER_LDFLAGS" -o "$TMP/out/jaeger" "$JAEGER_MODULE/cmd/jaeger" >&2 ) \
  || die "go build of jaeger failed"
heartbeat_stop
log "jaeger built after $(( SECONDS - T1 ))s"

# --- check, then publish atomically ---------------------------------------------------------
"$TMP/out/otelcol-ernie" --version >/dev/null 2>&1 || die "built otelcol-ernie does not run"
[[ "$("$TMP/out/jaeger" version 2>/dev/null)" == *"$JAEGER_RELEASE"* ]] || die "built jaeger does not run"
printf 'hash=%s\nbuilder=%s\njaeger=%s@%s (%s)\ngo=%s\nbuilt=%s\n' \
  "$HASH" "$BUILDER_VERSION" "$JAEGER_MODULE" "$JAEGER_VERSION" "$JAEGER_RELEASE" "$GO_VERSION" \
  "$(date -u +%FT%TZ)" \
  > "$TMP/out/BUILD_INFO"

rm -rf "$DEST"  # only reached with ERNIE_OTEL_FORCE_BUILD=1 or a broken entry (missing binary)
mv "$TMP/out" "$DEST"
# Each entry is ~200 MB; keep the three most recent (older manifests rarely come back, and a
# rebuild is only a cache miss). Running binaries are unaffected by unlinking on Linux.
ls -1dt "$CACHE_ROOT"/bin/*/ 2>/dev/null | tail -n +4 | while IFS= read -r old_entry; do
  log "pruning old cache entry $old_entry"
  rm -rf "$old_entry"
done
log "done in $(( SECONDS - T0 ))s: $(du -h "$DEST/otelcol-ernie" | cut -f1) otelcol-ernie, $(du -h "$DEST/jaeger" | cut -f1) jaeger"
printf '%s\n' "$DEST"
