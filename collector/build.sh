#!/usr/bin/env bash
# Build (or reuse) the two Go binaries the ernie-otel pipeline runs:
#   otelcol-ernie  the Collector distribution described by collector/manifest.yaml (built with ocb)
#   jaeger         Jaeger v2 (cmd/jaeger of github.com/jaegertracing/jaeger)
#
# Usage:  BIN=$(bash collector/build.sh | tail -1)
#   The last stdout line is the absolute directory holding both binaries; progress goes to stderr.
#
# Binaries live outside the repo, under ${ERNIE_OTEL_CACHE:-$HOME/.cache/ernie-otel}/bin/,
# because CI works in a fresh clone and nothing built may be committed. Each binary has its own
# cache entry, keyed by a hash of everything that changes it:
#   collector-<hash>/otelcol-ernie   manifest, builder version, Go version, OS/arch
#   jaeger-<hash>/jaeger             Jaeger module/version/link flags, Go version, OS/arch
# so a manifest edit rebuilds the Collector (~12 min on 2 cores) but never Jaeger (several more).
# The directory printed is <collector hash>-<jaeger hash>/, holding hard links to both (one
# directory is what callers and the device bundle expect; hard links survive the pruning of the
# entries they came from). Every entry is built in a temp dir and renamed into place only after
# its binary ran, so an interrupted build never leaves a half entry behind.
#
# Environment:
#   ERNIE_OTEL_CACHE         cache root (default ~/.cache/ernie-otel)
#   ERNIE_OTEL_BUILD_JOBS    go build -p (default: number of CPUs, at most 4; these builds
#                            take up to ~1 GiB per compile job and small CI runners have little RAM)
#   ERNIE_OTEL_FORCE_BUILD=1 rebuild both even when the cache has them
set -euo pipefail

BUILDER_VERSION="v0.161.0"
JAEGER_MODULE="github.com/jaegertracing/jaeger"
# v1.76.0 is the Go module version of Jaeger v2.13.0 (v2 is still published under the v1 module path).
JAEGER_VERSION="v1.76.0"
JAEGER_RELEASE="v2.13.0"
# Jaeger's release builds stamp the version this way; without it `jaeger version` and Jaeger's
# service.version are empty.
JAEGER_LDFLAGS="-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=${JAEGER_RELEASE}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_TAG=build
# shellcheck source=../scripts/build-cache.sh
source "$SCRIPT_DIR/../scripts/build-cache.sh"
MANIFEST="$SCRIPT_DIR/manifest.yaml"
[[ -f "$MANIFEST" ]] || die "manifest not found: $MANIFEST"
command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build the Collector ${BUILDER_VERSION} and Jaeger)"

GO_VERSION="$(go env GOVERSION)"
PLATFORM="$(go env GOOS)/$(go env GOARCH)"
cache_setup tools

# The recipe line changes when the way the Collector is compiled changes (here: ocb generates,
# then `go mod tidy -e` + `go build`), so such an edit of this script also rebuilds.
COLLECTOR_HASH="$({
  cat "$MANIFEST"
  printf '\nbuilder=%s\nrecipe=generate+tidy-e+build\ngo=%s\nos=%s\n' "$BUILDER_VERSION" "$GO_VERSION" "$PLATFORM"
} | sha256 | cut -c1-16)"
JAEGER_HASH="$(printf 'jaeger=%s@%s ldflags=%s\ngo=%s\nos=%s\n' \
  "$JAEGER_MODULE" "$JAEGER_VERSION" "$JAEGER_LDFLAGS" "$GO_VERSION" "$PLATFORM" | sha256 | cut -c1-16)"
COLLECTOR_DEST="$CACHE_ROOT/bin/collector-$COLLECTOR_HASH"
JAEGER_DEST="$CACHE_ROOT/bin/jaeger-$JAEGER_HASH"
DEST="$CACHE_ROOT/bin/$COLLECTOR_HASH-$JAEGER_HASH"

cache_hit() { [[ -x "$DEST/otelcol-ernie" && -x "$DEST/jaeger" ]]; }
reuse_or_lock cache_hit "$DEST"
# Each temp dir holds generated sources and up to ~200 MB of binaries.
clear_stale "$CACHE_ROOT/bin"
go_build_env

TMP="$(mktemp -d "$CACHE_ROOT/bin/.tmp-$COLLECTOR_HASH-XXXXXX")"
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

# publish STAGE_DIR DEST_DIR: atomically replace DEST_DIR by the finished STAGE_DIR.
publish() {
  rm -rf "$2"  # only a forced rebuild or a broken entry (missing binary) reaches this with $2 there
  mv "$1" "$2"
}

T0=$SECONDS
log "building what the cache lacks (go $GO_VERSION, -p=$JOBS; a cold build takes many minutes)"

# --- Collector ------------------------------------------------------------------------------
if [[ "$FORCE" == "1" || ! -x "$COLLECTOR_DEST/otelcol-ernie" ]]; then
  BUILDER_BIN_DIR="$CACHE_ROOT/tools/builder-$BUILDER_VERSION-$GO_VERSION"
  if [[ ! -x "$BUILDER_BIN_DIR/builder" ]]; then
    log "installing ocb (go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION)"
    mkdir -p "$BUILDER_BIN_DIR"
    GOBIN="$BUILDER_BIN_DIR" go install -trimpath -ldflags='-s -w' \
      "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION" >&2
  fi
  mkdir -p "$TMP/collector" "$TMP/collector-out"
  cp "$MANIFEST" "$TMP/collector/manifest.yaml"
  log "generating otelcol-ernie sources with ocb (downloads modules on a cold module cache)"
  # ocb writes the sources and go.mod, then runs `go mod tidy`, which fails at this release: the
  # k8s attributes processor's tests import a package (pkg/semconvtest) the module proxy does not
  # serve. Tests are not part of the binary, so that one failure is tolerated; `go mod tidy -e`
  # below resolves everything else, and `go build` fails loudly if anything real is missing.
  heartbeat_start "resolving otelcol-ernie modules"
  if ! ( cd "$TMP/collector" && "$BUILDER_BIN_DIR/builder" --config manifest.yaml --skip-compilation ) \
      >"$TMP/collector-ocb.log" 2>&1; then
    if [[ -f "$TMP/collector/_build/go.mod" ]] && grep -q "failed to update go.mod" "$TMP/collector-ocb.log"; then
      log "ocb's own go mod tidy failed (expected: a test-only import that is not served); using go mod tidy -e"
    else
      tail -n 40 "$TMP/collector-ocb.log" >&2
      die "ocb failed to generate otelcol-ernie (see above)"
    fi
  fi
  if ! ( cd "$TMP/collector/_build" && go mod tidy -e ) >"$TMP/collector-tidy.log" 2>&1; then
    tail -n 40 "$TMP/collector-tidy.log" >&2
    die "go mod tidy -e failed for otelcol-ernie"
  fi
  heartbeat_stop
  log "compiling otelcol-ernie"
  heartbeat_start "building otelcol-ernie"
  ( cd "$TMP/collector/_build" && go build -trimpath -ldflags='-s -w' \
      -o "$TMP/collector-out/otelcol-ernie" . >&2 ) || die "go build of otelcol-ernie failed"
  heartbeat_stop
  "$TMP/collector-out/otelcol-ernie" --version >/dev/null 2>&1 || die "built otelcol-ernie does not run"
  printf 'hash=%s\nbuilder=%s\ngo=%s\nbuilt=%s\n' "$COLLECTOR_HASH" "$BUILDER_VERSION" "$GO_VERSION" \
    "$(date -u +%FT%TZ)" >"$TMP/collector-out/BUILD_INFO"
  publish "$TMP/collector-out" "$COLLECTOR_DEST"
  log "otelcol-ernie built after $(( SECONDS - T0 ))s"
fi

# --- Jaeger v2 ------------------------------------------------------------------------------
# `go install module@version` refuses cmd/jaeger because Jaeger's go.mod has replace directives;
# a throwaway module that depends on it as a tool builds it with the versions Jaeger pins.
if [[ "$FORCE" == "1" || ! -x "$JAEGER_DEST/jaeger" ]]; then
  T1=$SECONDS
  mkdir -p "$TMP/jaeger" "$TMP/jaeger-out"
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
  ( cd "$TMP/jaeger" && go build -trimpath -ldflags="$JAEGER_LDFLAGS" -o "$TMP/jaeger-out/jaeger" "$JAEGER_MODULE/cmd/jaeger" >&2 ) \
    || die "go build of jaeger failed"
  heartbeat_stop
  [[ "$("$TMP/jaeger-out/jaeger" version 2>/dev/null)" == *"$JAEGER_RELEASE"* ]] || die "built jaeger does not run"
  printf 'hash=%s\njaeger=%s@%s (%s)\ngo=%s\nbuilt=%s\n' "$JAEGER_HASH" "$JAEGER_MODULE" "$JAEGER_VERSION" \
    "$JAEGER_RELEASE" "$GO_VERSION" "$(date -u +%FT%TZ)" >"$TMP/jaeger-out/BUILD_INFO"
  publish "$TMP/jaeger-out" "$JAEGER_DEST"
  log "jaeger built after $(( SECONDS - T1 ))s"
fi

# --- the pair callers use -------------------------------------------------------------------
mkdir -p "$TMP/pair"
ln "$COLLECTOR_DEST/otelcol-ernie" "$TMP/pair/otelcol-ernie" 2>/dev/null \
  || cp "$COLLECTOR_DEST/otelcol-ernie" "$TMP/pair/otelcol-ernie"
ln "$JAEGER_DEST/jaeger" "$TMP/pair/jaeger" 2>/dev/null || cp "$JAEGER_DEST/jaeger" "$TMP/pair/jaeger"
cat "$COLLECTOR_DEST/BUILD_INFO" "$JAEGER_DEST/BUILD_INFO" >"$TMP/pair/BUILD_INFO"
publish "$TMP/pair" "$DEST"

# Each binary is ~100-200 MB; keep the three most recent entries of each kind (older manifests
# rarely come back, and a rebuild is only a cache miss). Pairs are hard links and cost nothing
# extra unless their sources were pruned. Running binaries are unaffected by unlinking on Linux.
prune() {
  ls -1dt "$@" 2>/dev/null | tail -n +4 | while IFS= read -r old_entry; do
    log "pruning old cache entry $old_entry"
    rm -rf "$old_entry"
  done
}
prune "$CACHE_ROOT"/bin/collector-*/
prune "$CACHE_ROOT"/bin/jaeger-*/
prune "$CACHE_ROOT"/bin/[0-9a-f]*-[0-9a-f]*/
log "done in $(( SECONDS - T0 ))s: $(du -h "$DEST/otelcol-ernie" | cut -f1) otelcol-ernie, $(du -h "$DEST/jaeger" | cut -f1) jaeger"
printf '%s\n' "$DEST"
