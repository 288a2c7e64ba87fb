#!/usr/bin/env bash
# Build (or reuse) the VictoriaLogs binary: the log store that the Collector's logs pipeline
# writes to (OTLP/HTTP at /insert/opentelemetry/v1/logs) and whose vmui (/select/vmui) and LogsQL
# API (/select/logsql/query) the stack serves. Apache-2.0, built from Go modules like Thanos.
#
# Usage:  VLOGS=$(bash deploy/victorialogs/build.sh | tail -1)
#   The last stdout line is the absolute path of the `victoria-logs` binary; progress goes to stderr.
#
# The binary lives outside the repo, under
# ${ERNIE_OTEL_CACHE:-$HOME/.cache/ernie-otel}/victorialogs/<hash>/, keyed by everything that
# changes the output (module version, link flags, Go version, OS/arch): an unchanged tree answers
# in well under a second. The build goes into a temp dir renamed into place only after the binary
# ran, so an interrupted build leaves no half entry.
#
# Environment:
#   ERNIE_OTEL_CACHE         cache root (default ~/.cache/ernie-otel)
#   ERNIE_OTEL_BUILD_JOBS    go build -p (default: number of CPUs, at most 4)
#   ERNIE_OTEL_FORCE_BUILD=1 rebuild even when the cache has an entry
set -euo pipefail

VLOGS_MODULE="github.com/VictoriaMetrics/VictoriaLogs"
VLOGS_VERSION="v1.52.1"
VLOGS_PKG="$VLOGS_MODULE/app/victoria-logs"
# The release Makefile stamps the version through lib/buildinfo; `-version` then names the release
# (the check below relies on it). `netgo`/`osusergo`: pure-Go resolver and user lookup, as released.
VLOGS_TAGS="netgo,osusergo"
VLOGS_LDFLAGS="-s -w -X github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo.Version=victoria-logs-${VLOGS_VERSION}"

log() { printf '[victorialogs-build] %s\n' "$*" >&2; }
die() { printf '[victorialogs-build] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not on PATH (need Go to build VictoriaLogs ${VLOGS_VERSION})"

GO_VERSION="$(go env GOVERSION)"
CACHE_ROOT="${ERNIE_OTEL_CACHE:-$HOME/.cache/ernie-otel}"
mkdir -p "$CACHE_ROOT/bin" "$CACHE_ROOT/victorialogs"
CACHE_ROOT="$(cd "$CACHE_ROOT" && pwd)"

sha256() { if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -c1-64; else shasum -a 256 | cut -c1-64; fi; }
HASH="$(printf 'vlogs=%s@%s\ntags=%s\nldflags=%s\ngo=%s\nos=%s/%s\n' \
  "$VLOGS_MODULE" "$VLOGS_VERSION" "$VLOGS_TAGS" "$VLOGS_LDFLAGS" "$GO_VERSION" \
  "$(go env GOOS)" "$(go env GOARCH)" | sha256 | cut -c1-16)"
DEST="$CACHE_ROOT/victorialogs/$HASH"

cache_hit() { [[ -x "$DEST/victoria-logs" ]]; }

if [[ "${ERNIE_OTEL_FORCE_BUILD:-0}" != "1" ]] && cache_hit; then
  log "cache hit: $DEST"
  printf '%s\n' "$DEST/victoria-logs"
  exit 0
fi

# The same lock as collector/build.sh: one Go build at a time on a small box, and a second caller
# waits and then finds the cache entry instead of compiling the same thing again.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_ROOT/bin/.lock"
  if ! flock -n 9; then
    log "another build holds $CACHE_ROOT/bin/.lock; waiting for it"
    flock 9
  fi
  if [[ "${ERNIE_OTEL_FORCE_BUILD:-0}" != "1" ]] && cache_hit; then
    log "cache hit after waiting: $DEST"
    printf '%s\n' "$DEST/victoria-logs"
    exit 0
  fi
fi

cpus="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
JOBS="${ERNIE_OTEL_BUILD_JOBS:-$(( cpus < 4 ? cpus : 4 ))}"
export GOFLAGS="${GOFLAGS:-} -p=${JOBS}"
export CGO_ENABLED=0

# Holding the lock, a temp dir left here is from a build that was killed (SIGKILL skips the trap).
for stale in "$CACHE_ROOT"/victorialogs/.tmp-*; do
  [[ -e "$stale" ]] || continue
  log "removing leftover $stale"
  chmod -R u+w "$stale" 2>/dev/null || true
  rm -rf "$stale"
done
TMP="$(mktemp -d "$CACHE_ROOT/victorialogs/.tmp-XXXXXX")"
cleanup() { chmod -R u+w "$TMP" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

T0=$SECONDS
log "cache miss: building $VLOGS_PKG@$VLOGS_VERSION into $DEST (go $GO_VERSION, -p=$JOBS)"
mkdir -p "$TMP/mod" "$TMP/out"
if ! (
  cd "$TMP/mod"
  go mod init ernie-otel.invalid/victorialogs-build
  go get -tool "$VLOGS_PKG@$VLOGS_VERSION"
) >"$TMP/get.log" 2>&1; then
  tail -n 40 "$TMP/get.log" >&2
  die "go get $VLOGS_PKG@$VLOGS_VERSION failed"
fi
log "compiling victoria-logs"
( cd "$TMP/mod" && go build -trimpath -tags "$VLOGS_TAGS" -ldflags="$VLOGS_LDFLAGS" \
    -o "$TMP/out/victoria-logs" "$VLOGS_PKG" >&2 ) || die "go build of victoria-logs failed"

"$TMP/out/victoria-logs" -version >/dev/null 2>&1 || die "built victoria-logs does not run"
printf 'hash=%s\nvlogs=%s@%s\ntags=%s\ngo=%s\nbuilt=%s\n' \
  "$HASH" "$VLOGS_MODULE" "$VLOGS_VERSION" "$VLOGS_TAGS" "$GO_VERSION" "$(date -u +%FT%TZ)" \
  > "$TMP/out/BUILD_INFO"
rm -rf "$DEST"
mv "$TMP/out" "$DEST"
log "done in $(( SECONDS - T0 ))s: $(du -h "$DEST/victoria-logs" | cut -f1) victoria-logs"
printf '%s\n' "$DEST/victoria-logs"
