# Shared by the scripts that build or resolve a binary outside the repo (collector/build.sh,
# deploy/thanos/build.sh, deploy/opensearch/build.sh): sourced, never run.
#
# The contract of each such script: the last stdout line is the cache entry (or the binary in it);
# progress goes to stderr; an entry is keyed by a hash of everything that changes it, built in a
# temp dir beside it and renamed into place only when complete, so an interrupted build never
# leaves a half entry; one heavy build at a time on a small box (one lock for all of them).
#
# Set BUILD_TAG (the log prefix) before sourcing. Environment the scripts share:
#   ERNIE_OTEL_CACHE         cache root (default ~/.cache/ernie-otel)
#   ERNIE_OTEL_BUILD_JOBS    go build -p (default: number of CPUs, at most 4)
#   ERNIE_OTEL_FORCE_BUILD=1 rebuild even when the cache has an entry

log() { printf '[%s] %s\n' "$BUILD_TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$BUILD_TAG" "$*" >&2; exit 1; }
sha256() { if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -c1-64; else shasum -a 256 | cut -c1-64; fi; }

FORCE="${ERNIE_OTEL_FORCE_BUILD:-0}"

# cache_setup SUBDIR...: CACHE_ROOT (absolute) with bin/ (which holds the lock) and each SUBDIR.
cache_setup() {
  CACHE_ROOT="${ERNIE_OTEL_CACHE:-$HOME/.cache/ernie-otel}"
  local sub
  mkdir -p "$CACHE_ROOT/bin"
  for sub in "$@"; do mkdir -p "$CACHE_ROOT/$sub"; done
  CACHE_ROOT="$(cd "$CACHE_ROOT" && pwd)"
}

# reuse_or_lock HIT_CHECK RESULT: print RESULT and exit when HIT_CHECK (a command) says the entry is
# there; otherwise take the build lock (fd 9, held until the script exits) and check again, since a
# second caller waits for the first and then finds its entry instead of compiling the same thing.
reuse_or_lock() {
  local hit="$1" result="$2"
  if [[ "$FORCE" != "1" ]] && "$hit"; then
    log "cache hit: $result"
    printf '%s\n' "$result"
    exit 0
  fi
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>"$CACHE_ROOT/bin/.lock"
  if ! flock -n 9; then
    log "another build holds $CACHE_ROOT/bin/.lock; waiting for it"
    flock 9
  fi
  if [[ "$FORCE" != "1" ]] && "$hit"; then
    log "cache hit after waiting: $result"
    printf '%s\n' "$result"
    exit 0
  fi
}

# clear_stale DIR: holding the lock, a DIR/.tmp-* is left from a build that was killed (SIGKILL skips
# the cleanup trap). Go's module cache marks files read-only, hence the chmod.
clear_stale() {
  local stale
  for stale in "$1"/.tmp-*; do
    [[ -e "$stale" ]] || continue
    log "removing leftover $stale"
    chmod -R u+w "$stale" 2>/dev/null || true
    rm -rf "$stale"
  done
}

# go_build_env: at most 4 parallel compile jobs (each takes up to ~1 GiB) and static binaries, which
# run on any Linux box and need no C toolchain.
go_build_env() {
  local cpus
  cpus="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
  JOBS="${ERNIE_OTEL_BUILD_JOBS:-$(( cpus < 4 ? cpus : 4 ))}"
  export GOFLAGS="${GOFLAGS:-} -p=${JOBS}"
  export CGO_ENABLED=0
}

# stage_dir SUBDIR: TMP, a temp dir beside SUBDIR's entries (same file system, so the finished
# entry is renamed into place), removed when the script exits.
stage_dir() {
  TMP="$(mktemp -d "$CACHE_ROOT/$1/.tmp-XXXXXX")"
  trap 'chmod -R u+w "$TMP" 2>/dev/null || true; rm -rf "$TMP"' EXIT
  trap 'exit 130' INT TERM
}

# go_tool_build PKG VERSION TAGS LDFLAGS OUT [REPLACE...]: compile the Go command PKG@VERSION into
# OUT from a throwaway module that depends on it as a tool (`go install PKG@VERSION` refuses modules
# whose go.mod has replace directives, and those replaces do not apply to a module that depends on
# them, so the caller repeats them as REPLACE arguments: old=new@version).
go_tool_build() {
  local pkg="$1" version="$2" tags="$3" ldflags="$4" out="$5" r
  shift 5
  mkdir -p "$TMP/mod" "$(dirname "$out")"
  if ! (
    cd "$TMP/mod" && go mod init ernie-otel.invalid/build || exit 1
    for r in "$@"; do go mod edit -replace "$r" || exit 1; done
    go get -tool "$pkg@$version"
  ) >"$TMP/get.log" 2>&1; then
    tail -n 40 "$TMP/get.log" >&2
    die "go get $pkg@$version failed"
  fi
  log "compiling $(basename "$out") (-tags $tags)"
  ( cd "$TMP/mod" && go build -trimpath -tags "$tags" -ldflags="$ldflags" -o "$out" "$pkg" >&2 ) \
    || die "go build of $pkg failed"
}
