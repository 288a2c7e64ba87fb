#!/usr/bin/env bash
# Build what scripts/device_gpu.sh needs on a GPU machine that has no network, from this checkout:
#
#     bash scripts/device_bundle.sh        # after scripts/setup.sh (needs .venv and the Collector build)
#
# - .whl/: wheels for the device's Python 3.12 (cp312, manylinux x86_64) of every package ernie-serve,
#   the benchmarks and `transformers serve` need beyond what that image already holds (torch, numpy,
#   tokenizers, safetensors, ... -- see the device's KINDS.md), each at the version installed in .venv,
#   plus ernie-otel's own wheel (console scripts and entry points).
# - .devbin/: otelcol-ernie and jaeger from collector/build.sh's cache, xz-compressed (~38 MiB
#   for both), for the overhead benchmark's full variant.
# Both folders are git-ignored locally (.git/info/exclude) and travel with `carry`; about 60 MiB in
# all, under the device's 64 MiB limit. Then:  run(command="bash scripts/device_gpu.sh",
# carry=[".whl", ".devbin"]).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# Not carried: the image has them (torch, numpy, tokenizers, safetensors, regex, pyyaml, ...;
# huggingface-hub 1.33 there satisfies transformers' >=1.31 and leaves room under the 64 MiB).
PACKAGES=(
    transformers httpx2 httpcore2 truststore click typer idna
    fastapi starlette uvicorn pydantic pydantic-core annotated-types annotated-doc typing-inspection
    typing-extensions anyio h11 httpx httpcore asgiref wrapt
    opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-instrumentation
    opentelemetry-instrumentation-asgi opentelemetry-instrumentation-fastapi opentelemetry-util-http
    opentelemetry-exporter-prometheus opentelemetry-exporter-otlp-common
    opentelemetry-exporter-otlp-proto-common opentelemetry-exporter-otlp-proto-grpc opentelemetry-proto
    googleapis-common-protos protobuf prometheus-client openai jiter sniffio
)
for d in .whl .devbin; do
    grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude
done
rm -rf .whl && mkdir -p .whl
specs=()
for p in "${PACKAGES[@]}"; do
    v=$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$p")
    specs+=("$p==$v")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${specs[@]}"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl .
# The cache holds one entry per binary plus the pair build.sh prints; ask it (a cache hit is instant).
bin=$(bash collector/build.sh | tail -1)
rm -rf .devbin && mkdir -p .devbin
# The x86 branch filter and preset 9e save ~2 MiB over plain -6 (~38 MiB for both); the tree, the
# wheels and these must stay under the device's 64 MiB. Python's lzma reads the filter chain back.
for b in otelcol-ernie jaeger; do
    xz -T1 --x86 --lzma2=preset=9e,dict=64MiB -c "$bin/$b" >".devbin/$b.xz" &
done
wait
du -sh .whl .devbin
