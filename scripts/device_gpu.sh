#!/usr/bin/env bash
# GPU checks on a borrowed GPU machine (no network), from the repo root, in one command:
#
#     bash scripts/device_gpu.sh            # results and device.log under $OUT (default /tmp/device-out)
#
# Needs the wheel bundle in .whl/ and, for the overhead stage's full variant, the Collector and
# Jaeger built here by collector/build.sh, xz-compressed into .devbin/: `bash scripts/device_bundle.sh`
# makes both (carried with the working tree; neither is committed). Stages, each bounded by `timeout` and by an overall budget
# (DEVICE_BUDGET_S, default 540 s); a failed stage is logged and the next one still runs; DEVICE_STAGES
# (comma-separated names, default all but overhead) picks stages:
#   a. info: nvidia-smi, python/torch/CUDA, versions of the device packages the bundle relies on;
#      the image's whole pip list -> $OUT/device_pip_list.txt
#   b. install the wheels into the device's python (fallback: an overlay venv in /tmp that sees
#      the device's site-packages), import smoke test, pip check
#   c. build the random-weight models (0.3b, tiny) into $ERNIE_OTEL_CACHE; unpack the Collector
#      and Jaeger into $ERNIE_OTEL_CACHE/bin/device/ (where overhead.py looks for them)
#   d. benchmarks/gpu_check.py          -> $OUT/gpu_check.json, $OUT/gpu_check.md
#   e. benchmarks/serving.py (cuda)     -> $OUT/serving_gpu.json (0.3B shape, c=1/8/32, against
#      transformers serve --continuous-batching at its defaults and in bf16; DEVICE_SERVING_PEERS,
#      DEVICE_SERVING_BASE and DEVICE_SERVING_ROUNDS change what it compares)
#   f. overhead (opt-in) benchmarks/overhead.py (cuda) -> $OUT/overhead_gpu.json (off, off-again,
#      prom, full; the full variant needs a VictoriaLogs, which the carry has no room for)
#   g. server logs                      -> $OUT/server_logs.tgz
# The working tree's ernie_otel is used (PYTHONPATH), so a stale carried ernie-otel wheel only
# supplies the console scripts and entry points.
# Dry run elsewhere: PY=.venv/bin/python DEVICE_SKIP_INSTALL=1 BENCH_DEVICE=cpu bash scripts/device_gpu.sh
# shellcheck disable=SC2329  # the stage functions are invoked indirectly, through stage()
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
LOG=$OUT/device.log
: >"$LOG"
export PYTHONUNBUFFERED=1
export ERNIE_OTEL_CACHE=${ERNIE_OTEL_CACHE:-/tmp/ernie-otel-cache}
export HF_HOME=/tmp/hf-home HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
PY_FILE=/tmp/device_gpu.python  # stage b writes the interpreter to use from then on
rm -f "$PY_FILE"
BUDGET=${DEVICE_BUDGET_S:-540}
# The overhead stage is opt-in: its full variant's log store (VictoriaLogs, built with Go) does not
# fit the 64 MiB carry beside the Collector, Jaeger and the wheels, and the device has no Go.
STAGES=${DEVICE_STAGES:-info,install,models,gpu_check,serving}
DEV=${BENCH_DEVICE:-cuda}
START=$(date +%s)
M03=$ERNIE_OTEL_CACHE/models/bench-0.3b  # the directory benchmarks/serving.py's model_dir('0.3b') uses
SUMMARY=()
FAILED=0

log() { echo "$*" | tee -a "$LOG"; }

# stage NAME CAP_SECONDS COMMAND...: at most CAP seconds, and never past the overall budget.
stage() {
    local name=$1 cap=$2
    shift 2
    local now left limit t0 rc
    if [ "$name" != logs ] && [[ ",$STAGES," != *",$name,"* ]]; then
        log "== [$name] not asked for (DEVICE_STAGES=$STAGES)"
        return 0
    fi
    now=$(date +%s)
    left=$((START + BUDGET - now - 5))
    limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 15 ]; then
        log "== [$name] SKIPPED: ${left}s left of the ${BUDGET}s budget"
        SUMMARY+=("$(printf '%-10s %-8s %5s s' "$name" skipped 0)")
        FAILED=1
        return 0
    fi
    log "== [$name] start at +$((now - START))s, limit ${limit}s: $*"
    t0=$(date +%s)
    # The shell functions below run in a child bash (timeout runs programs, not functions).
    if [ "$(type -t "$1")" = function ]; then set -- bash -c "$1"; fi
    set -o pipefail
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=$?
    set +o pipefail
    local took=$(($(date +%s) - t0))
    local status=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=TIMEOUT; elif [ "$rc" -ne 0 ]; then status="rc=$rc"; fi
    [ "$status" = ok ] || FAILED=1
    log "== [$name] $status after ${took}s"
    SUMMARY+=("$(printf '%-10s %-8s %5s s' "$name" "$status" "$took")")
    return 0
}

show_info() {
    nvidia-smi || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=index,uuid,name,driver_version,memory.used,memory.reserved,memory.total,power.limit \
        --format=csv || true
    echo "nproc $(nproc); $(uname -r); $(command -v "$PY")"
    # Before the install: what the image holds, for the next bundle's decisions.
    "$PY" -m pip list --format=freeze --disable-pip-version-check >"$OUT/device_pip_list.txt" 2>&1 || true
    "$PY" - <<'EOF'
import sys, importlib.metadata as md
print("python", sys.version.split()[0], sys.executable)
names = ("torch transformers tokenizers safetensors huggingface-hub hf-xet regex tqdm packaging filelock fsspec "
         "pyyaml requests grpcio protobuf rich typer click shellingham nvidia-ml-py accelerate numpy setuptools "
         "pip typing-extensions idna certifi anyio h11 httpx httpcore prometheus-client psutil jinja2").split()
for n in names:
    try:
        print(f"  {n} {md.version(n)}")
    except md.PackageNotFoundError:
        print(f"  {n} -")
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
}

install_wheels() {
    # pip runs without PYTHONPATH: the repo root on it would make a local ernie_otel.egg-info look
    # like an installed ernie-otel, and the wheel (console scripts, entry points) would be skipped.
    local py=$PY
    echo "$(find .whl -maxdepth 1 -type f -name '*.whl' | wc -l) wheels, $(du -sh .whl | cut -f1)"
    local pip_install=(-m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check)
    if [ "${FORCE_OVERLAY:-0}" != 1 ] && env -u PYTHONPATH "$py" "${pip_install[@]}" .whl/*.whl; then
        echo "installed into $("$py" -c 'import sys; print(sys.prefix)')"
    else
        # Overlay venv: its own site-packages (the wheels) ahead of the device's (torch & co, via a
        # .pth), and its bin/ holds python3 and the console scripts side by side, as the benchmarks
        # expect (they start BIN/ernie-serve, BIN/transformers next to sys.executable).
        echo "install into the device python failed; falling back to the overlay venv /tmp/ovenv"
        local base_site ov_site
        base_site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
        rm -rf /tmp/ovenv
        "$py" -m venv --without-pip /tmp/ovenv || return 1
        ov_site=$(/tmp/ovenv/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
        echo "$base_site" >"$ov_site/zz_device_site.pth"
        py=/tmp/ovenv/bin/python3
        env -u PYTHONPATH "$py" "${pip_install[@]}" --ignore-installed .whl/*.whl || return 1
        echo "installed into /tmp/ovenv"
    fi
    echo "$py" >"$PY_FILE"
    local bin
    bin=$(dirname "$("$py" -c 'import sys; print(sys.executable)')")
    ls -l "$bin/ernie-serve" "$bin/ernie-otel" "$bin/transformers" || return 1
    "$py" - <<'EOF' || return 1
import importlib.metadata as md
import ernie_otel, ernie_otel.server  # noqa: F401  (the tree's copy, via PYTHONPATH)
import fastapi, openai, pynvml, transformers, uvicorn  # noqa: F401
from transformers import Ernie4_5ForCausalLM  # noqa: F401
print("ernie_otel from", ernie_otel.__file__)
print(", ".join(f"{n} {md.version(n)}" for n in ("transformers", "huggingface-hub", "tokenizers", "fastapi",
      "pydantic", "uvicorn", "openai", "opentelemetry-sdk", "protobuf", "click", "typer")))
EOF
    echo "pip check (declared conflicts; the bundle's tokenizers/huggingface-hub one is known and harmless):"
    env -u PYTHONPATH "$py" -m pip check 2>&1 | head -40
    return 0
}

build_models() {
    local bin
    bin=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")
    SECONDS=0
    if [ ! -f "$M03/config.json" ]; then
        "$bin/ernie-otel" tiny-model --size 0.3b "$M03" || return 1
    fi
    echo "0.3b ready after ${SECONDS}s: $(du -sh "$M03" | cut -f1)"
    "$bin/ernie-otel" tiny-model || return 1
    echo "tiny ready after ${SECONDS}s"
    if ls .devbin/*.xz >/dev/null 2>&1; then
        mkdir -p "$ERNIE_OTEL_CACHE/bin/device"
        "$PY" - "$ERNIE_OTEL_CACHE/bin/device" .devbin/*.xz <<'EOF' || return 1
import lzma, os, shutil, sys
dest = sys.argv[1]
for src in sys.argv[2:]:
    out = os.path.join(dest, os.path.basename(src)[:-3])
    with lzma.open(src) as f, open(out, "wb") as g:
        shutil.copyfileobj(f, g, 1 << 20)
    os.chmod(out, 0o755)
    print("unpacked", out, os.path.getsize(out))
EOF
        "$ERNIE_OTEL_CACHE/bin/device/otelcol-ernie" --version || return 1
    else
        echo "no .devbin/: the overhead stage's full variant will export to a closed port"
    fi
}

collect_logs() {
    # shellcheck disable=SC2046
    tar czf "$OUT/server_logs.tgz" $(ls -d /tmp/ernie-gpu-check-* /tmp/ernie-serving-* /tmp/ernie-overhead-* \
        2>/dev/null) 2>/dev/null
    ls -l "$OUT"
}

export REPO OUT LOG PY PY_FILE M03
export -f show_info install_wheels build_models collect_logs

log "device_gpu.sh at $(date -u +%FT%TZ), repo $REPO, OUT $OUT, budget ${BUDGET}s, cache $ERNIE_OTEL_CACHE"
log "git: $(git -C "$REPO" log -1 --format='%h %s' 2>/dev/null || echo 'no git')"
stage info 60 show_info
if [ "${DEVICE_SKIP_INSTALL:-0}" = 1 ]; then log "== [install] skipped (DEVICE_SKIP_INSTALL=1)"; else
    stage install 150 install_wheels
fi
[ -s "$PY_FILE" ] && PY=$(cat "$PY_FILE")
export PY
log "python for the benchmarks: $PY"
stage models 120 build_models
stage gpu_check 150 "$PY" benchmarks/gpu_check.py --model "$M03" --device "$DEV" --json "$OUT/gpu_check.json" \
    --markdown "$OUT/gpu_check.md"
# DEVICE_SERVING_PEERS picks serving.py's peers; DEVICE_SERVING_BASE=REV adds REV's code for the
# base-ernie-serve* peers (the device's copy of the checkout has its git history).
SERVING_PEERS=${DEVICE_SERVING_PEERS:-ernie-serve,transformers-cb,transformers-cb-bf16}
SERVING_BASE=()
[ -n "${DEVICE_SERVING_BASE:-}" ] && SERVING_BASE=(--base "$DEVICE_SERVING_BASE")
stage serving 300 "$PY" benchmarks/serving.py --models 0.3b --concurrency 1,8,32 --peers "$SERVING_PEERS" \
    "${SERVING_BASE[@]}" --device "$DEV" --rounds "${DEVICE_SERVING_ROUNDS:-3}" --json "$OUT/serving_gpu.json"
stage overhead 150 "$PY" benchmarks/overhead.py --model "$M03" --variants prom,full,off-again --device "$DEV" \
    --rounds 4 --restart-every 2 --requests 32 --json "$OUT/overhead_gpu.json"
BUDGET=$((BUDGET + 30)) stage logs 20 collect_logs

log ""
log "stage      status   time   (total $(($(date +%s) - START)) s of a ${BUDGET} s budget)"
for line in "${SUMMARY[@]}"; do log "$line"; done
if [ -f "$OUT/gpu_check.md" ]; then
    log ""
    cat "$OUT/gpu_check.md" >>"$LOG"
    head -30 "$OUT/gpu_check.md"
fi
exit "$FAILED"
