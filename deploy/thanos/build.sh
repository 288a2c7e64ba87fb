#!/usr/bin/env bash
# Build (or reuse) the Thanos binary the fleet metrics profile runs (receive, query, store,
# compact, rule and `thanos tools bucket` are all sub-commands of this one binary).
#
# Usage:  THANOS=$(bash deploy/thanos/build.sh | tail -1)
#   The last stdout line is the absolute path of the `thanos` binary; progress goes to stderr.
#
# The binary lives outside the repo, under ${ERNIE_OTEL_CACHE:-$HOME/.cache/ernie-otel}/thanos/<hash>/
# (not bin/, whose entries collector/build.sh prunes to its three newest),
# keyed by everything that changes the output (module version, tags, link flags, replaces, Go
# version, OS/arch): an unchanged tree answers in well under a second. The build goes into a temp
# dir renamed into place only after the binary ran, so an interrupted build leaves no half entry.
#
# Environment: as scripts/build-cache.sh says (cache root, build jobs, forced rebuild).
set -euo pipefail

THANOS_MODULE="github.com/thanos-io/thanos"
# v0.42.5 needs a newer Go than the 1.26 this project builds with.
THANOS_VERSION="v0.42.4"
# `slicelabels` is not optional: Thanos' release builds (.promu.yml) use it, and without it every
# receiver panics on its first gRPC call (`makeslice: len out of range`). `netgo` gives the pure-Go
# resolver, as in the release builds.
THANOS_TAGS="netgo,slicelabels"
THANOS_LDFLAGS="-s -w -X github.com/prometheus/common/version.Version=${THANOS_VERSION#v}"
# Thanos' own go.mod has these `replace` directives; replaces of a dependency are ignored by Go, so
# the throwaway module that builds it must repeat them or it resolves versions that do not compile.
THANOS_REPLACES=(
  "capnproto.org/go/capnp/v3=capnproto.org/go/capnp/v3@v3.0.0-alpha.30"
  "github.com/bradfitz/gomemcache=github.com/themihai/gomemcache@v0.0.0-20180902122335-24332e2d58ab"
  "github.com/sercand/kuberesolver/v4=github.com/sercand/kuberesolver/v5@v5.1.1"
  "github.com/vimeo/galaxycache=github.com/thanos-community/galaxycache@v0.0.0-20211122094458-3a32041a1f1e"
  "gopkg.in/alecthomas/kingpin.v2=github.com/alecthomas/kingpin@v1.3.8-0.20210301060133-17f40c25f497"
  "zenhack.net/go/util=github.com/zenhack/go-util@v0.0.0-20231005031245-66f5419c2aea"
)

BUILD_TAG=thanos-build
# shellcheck source=../../scripts/build-cache.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../../scripts" && pwd)/build-cache.sh"

command -v go >/dev/null 2>&1 || die "go is not on PATH (need Go >= 1.26 to build Thanos ${THANOS_VERSION})"

GO_VERSION="$(go env GOVERSION)"
cache_setup thanos
HASH="$({
  printf 'thanos=%s@%s\ntags=%s\nldflags=%s\ngo=%s\nos=%s/%s\n' \
    "$THANOS_MODULE" "$THANOS_VERSION" "$THANOS_TAGS" "$THANOS_LDFLAGS" "$GO_VERSION" \
    "$(go env GOOS)" "$(go env GOARCH)"
  printf '%s\n' "${THANOS_REPLACES[@]}"
} | sha256 | cut -c1-16)"
DEST="$CACHE_ROOT/thanos/$HASH"

cache_hit() { [[ -x "$DEST/thanos" ]]; }
reuse_or_lock cache_hit "$DEST/thanos"
go_build_env
clear_stale "$CACHE_ROOT/thanos"
stage_dir thanos

T0=$SECONDS
log "cache miss: building $THANOS_MODULE@$THANOS_VERSION into $DEST (go $GO_VERSION, -p=$JOBS; ~3 min on 2 cores)"
go_tool_build "$THANOS_MODULE/cmd/thanos" "$THANOS_VERSION" "$THANOS_TAGS" "$THANOS_LDFLAGS" "$TMP/out/thanos" \
  "${THANOS_REPLACES[@]}"

[[ "$("$TMP/out/thanos" --version 2>&1)" == *"${THANOS_VERSION#v}"* ]] || die "built thanos does not run"
printf 'hash=%s\nthanos=%s@%s\ntags=%s\ngo=%s\nbuilt=%s\n' \
  "$HASH" "$THANOS_MODULE" "$THANOS_VERSION" "$THANOS_TAGS" "$GO_VERSION" "$(date -u +%FT%TZ)" \
  > "$TMP/out/BUILD_INFO"
rm -rf "$DEST"
mv "$TMP/out" "$DEST"
log "done in $(( SECONDS - T0 ))s: $(du -h "$DEST/thanos" | cut -f1) thanos"
printf '%s\n' "$DEST/thanos"
