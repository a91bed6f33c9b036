#!/usr/bin/env bash
# Install the Debian packages PipePS needs to build, test and benchmark.
# Idempotent: does nothing (and needs no network) when all are present.
set -euo pipefail
packages=(
  build-essential cmake pkg-config   # toolchain
  libevent-dev                       # event loops of the control-plane daemons
  libxxhash-dev                      # checksums of log records, kv.bin, stored values
  libdnnl-dev                        # oneDNN: the CPU compute kernels
  libcmocka-dev                      # C unit tests
  libcjson-dev                       # JSON of the HTTP inference API (load balancer)
  libonnx-dev protobuf-c-compiler    # ONNX import: C generated from onnx.proto by protoc-c
  libprotobuf-c-dev                  #   and the protobuf-c runtime that decodes it
  libonnx-testdata python3-onnx      # tests: ONNX backend node tests, export of torch models
  python3-requests                   # HTTP API tests
  python3-pytest python3-numpy       # black-box tests (Debian's /usr/bin/python3)
  python3-prometheus-client          # tests: parse the /metrics bodies
  chromium                           # tests: render the load balancer's status page headless
  python3-torch python3-torchvision  # test oracles and benchmark baselines, never the serving path
  libopenblas0-openmp                # a fair PyTorch baseline (see docs/benchmarks.md)
  iperf3                             # plain loopback TCP baseline for the benchmarks
  gnuplot-nox                        # pipeps bench: the PNG plots
  iproute2 procps                    # tests: pipeps up as hosts in network namespaces (ip netns), pgrep
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
