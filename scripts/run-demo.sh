#!/usr/bin/env bash
# The main job: a local PipePS cluster on loopback serving the built-in models
# to a client workload.
#   1. build (installing missing Debian packages first),
#   2. `pipeps up` with the built-in cluster (`pipeps up --print-default`):
#      metadata_storage and two storages, the five seed models generated into
#      a kv.bin and deployed over both storages, a load balancer (basic
#      policy, HTTP API on 7480) and two serving "machines" (127.0.0.2 and
#      127.0.0.3), each a cache (1.5 GiB shared-memory pool) and a server;
#      `up` returns once every daemon answers its health check,
#   3. client workload through the balancer (client_one and a request list):
#      per model, a cold request (parameters only in remote storage: fetched
#      and executed pipelined), then warm requests, each with its latency
#      breakdown and where it ran, and a summary with the cold/warm split,
#   4. print the balancer's and the caches' counters, then `pipeps down`.
# Usage: scripts/run-demo.sh [--models "resnet152 bert_base"] [--repeat N] [--batch N] [--keep]
# (PIPEPS_BUILD_DIR=DIR builds and runs in DIR instead of build/.)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
models="resnet152 inception_v3 densenet201 bert_base gpt2"
repeat=4
batch=1
keep=0
while (($#)); do
  case "$1" in
    --models) models=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-demo: unknown argument $1" >&2; exit 2 ;;
  esac
done

build=${PIPEPS_BUILD_DIR:-build}
scripts/deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
BIN=$root/$build/bin

work=$(mktemp -d /tmp/pipeps-demo.XXXXXX)
cluster=$work/cluster
cleanup() {
  local rc=$?
  [ -d "$cluster" ] && "$BIN/pipeps" down --dir "$cluster" >/dev/null 2>&1 || true
  if [ "$keep" = 1 ] || [ $rc -ne 0 ]; then
    echo "run-demo: files and logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }

# The built-in cluster with this run's models (the transformers at sequence
# length 16, as in the default).
list=""
for m in $models; do
  case $m in bert_base|gpt2) list="$list $m:16" ;; *) list="$list $m" ;; esac
done
"$BIN/pipeps" up --print-default | sed "s/^models = .*/models =$list/" > "$work/cluster.ini"
lb=$(sed -n '/^\[balancer\]/,/^\[/s/^client_port = //p' "$work/cluster.ini")

step "pipeps up: storage tier, models, load balancer, two machines"
"$BIN/pipeps" up "$work/cluster.ini" --dir "$cluster"

step "client workload through the balancer: per model, 1 cold request + $repeat warm ones, batch $batch (client_one)"
{
  echo "model_name, batch_size, send_interval"
  for m in $models; do
    for _ in $(seq 0 "$repeat"); do echo "$m, $batch, 0.000000"; done
  done
} > "$work/request_list.txt"
"$BIN/client_one" "$work/request_list.txt" 127.0.0.1 "$lb" --csv "$work/requests.csv"

step "load balancer counters"
"$BIN/pipeps" stat lb "127.0.0.1:$lb" | grep -Ev '^(decisions_|latency|queue_ms)' || true
for machine in $(sed -n '/^\[machine /,/^\[/s/^addr = //p' "$work/cluster.ini"); do
  port=$(sed -n "/^addr = $machine\$/,/^\[/s/^cache_port = //p" "$work/cluster.ini")
  step "cache counters ($machine)"
  "$BIN/pipeps" stat cache "$machine:$port" | grep -E '^(used_bytes|models|hits|misses|cache_in|bytes_fetched|fetch_throughput)'
done

step "pipeps down"
"$BIN/pipeps" down --dir "$cluster"
step "done"
