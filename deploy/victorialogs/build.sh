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
# Environment: as scripts/build-cache.sh says (cache root, build jobs, forced rebuild).
set -euo pipefail

VLOGS_MODULE="github.com/VictoriaMetrics/VictoriaLogs"
VLOGS_VERSION="v1.52.1"
VLOGS_PKG="$VLOGS_MODULE/app/victoria-logs"
# The release Makefile stamps the version through lib/buildinfo; `-version` then names the release
# (the check below relies on it). `netgo`/`osusergo`: pure-Go resolver and user lookup, as released.
VLOGS_TAGS="netgo,osusergo"
VLOGS_LDFLAGS="-s -w -X github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo.Version=victoria-logs-${VLOGS_VERSION}"

BUILD_TAG=victorialogs-build
# shellcheck source=../../scripts/build-cache.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../../scripts" && pwd)/build-cache.sh"

command -v go >/dev/null 2>&1 || die "go is not on PATH (need Go to build VictoriaLogs ${VLOGS_VERSION})"

GO_VERSION="$(go env GOVERSION)"
cache_setup victorialogs
HASH="$(printf 'vlogs=%s@%s\ntags=%s\nldflags=%s\ngo=%s\nos=%s/%s\n' \
  "$VLOGS_MODULE" "$VLOGS_VERSION" "$VLOGS_TAGS" "$VLOGS_LDFLAGS" "$GO_VERSION" \
  "$(go env GOOS)" "$(go env GOARCH)" | sha256 | cut -c1-16)"
DEST="$CACHE_ROOT/victorialogs/$HASH"

cache_hit() { [[ -x "$DEST/victoria-logs" ]]; }
reuse_or_lock cache_hit "$DEST/victoria-logs"
go_build_env
clear_stale "$CACHE_ROOT/victorialogs"
stage_dir victorialogs

T0=$SECONDS
log "cache miss: building $VLOGS_PKG@$VLOGS_VERSION into $DEST (go $GO_VERSION, -p=$JOBS)"
go_tool_build "$VLOGS_PKG" "$VLOGS_VERSION" "$VLOGS_TAGS" "$VLOGS_LDFLAGS" "$TMP/out/victoria-logs"

"$TMP/out/victoria-logs" -version >/dev/null 2>&1 || die "built victoria-logs does not run"
printf 'hash=%s\nvlogs=%s@%s\ntags=%s\ngo=%s\nbuilt=%s\n' \
  "$HASH" "$VLOGS_MODULE" "$VLOGS_VERSION" "$VLOGS_TAGS" "$GO_VERSION" "$(date -u +%FT%TZ)" \
  > "$TMP/out/BUILD_INFO"
rm -rf "$DEST"
mv "$TMP/out" "$DEST"
log "done in $(( SECONDS - T0 ))s: $(du -h "$DEST/victoria-logs" | cut -f1) victoria-logs"
printf '%s\n' "$DEST/victoria-logs"
