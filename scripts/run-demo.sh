#!/usr/bin/env bash
# The main job: a local PipePS cluster on loopback serving the built-in models
# to a client workload.
#   1. build (installing missing Debian packages first),
#   2. generate_file: build the five seed models and write kv.bin,
#   3. start metadata_storage and two storages, deploy_file kv.bin over them
#      (large models sliced over both storages),
#   4. start one cache (shared-memory pool) and one server,
#   5. client workload: per model, a cold request (parameters only in remote
#      storage: fetched and executed pipelined), then warm requests (resident),
#      each with its latency breakdown,
#   6. print the cache's counters and stop everything.
# There is no load balancer yet: the client talks to the server directly, and
# the cache's registration with LB_PORT simply keeps retrying in the background.
# Usage: scripts/run-demo.sh [--models "resnet152 bert_base"] [--repeat N] [--batch N] [--keep]
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
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-demo: unknown argument $1" >&2; exit 2 ;;
  esac
done

scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
BIN=$root/build/bin
PY=/usr/bin/python3

work=$(mktemp -d /tmp/pipeps-demo.XXXXXX)
shm_name="pipeps-demo-$$"
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$keep" = 1 ] || [ $rc -ne 0 ]; then
    echo "run-demo: files and logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port pid log
  for _ in $(seq 1 600); do
    if ! kill -0 "$2" 2>/dev/null; then echo "run-demo: daemon died, log $3:" >&2; cat "$3" >&2; return 1; fi
    if "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "run-demo: port $1 never opened (log $3)" >&2; return 1
}
start() { # name port args...
  local name=$1 port=$2; shift 2
  "$@" >"$work/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_port "$port" "$pid" "$work/$name.log"
  echo "started $name on 127.0.0.1:$port (log $work/$name.log)"
}

step "generate_file: the built-in models -> kv.bin"
{ echo "model_name[, seq_len]"; for m in $models; do echo "$m"; done; } > "$work/model_list.txt"
"$BIN/generate_file" "$work/model_list.txt" "$work/kv.bin"
"$BIN/pipeps" inspect "$work/kv.bin" | grep -v -- '-BATCH-' || true

step "storage tier: metadata_storage + 2 storages, deploy_file"
meta_port=$(free_port); s0=$(free_port); s1=$(free_port)
start metadata_storage "$meta_port" "$BIN/metadata_storage" "$meta_port" --dir "$work/meta"
start storage0 "$s0" "$BIN/storage" "$s0" --dir "$work/storage0"
start storage1 "$s1" "$BIN/storage" "$s1" --dir "$work/storage1"
printf 'address, port\n127.0.0.1, %s\n127.0.0.1, %s\n127.0.0.1, %s\n' "$meta_port" "$s0" "$s1" > "$work/storage_list.txt"
{
  echo "model, storages"
  i=0
  for m in $models; do
    case $((i % 3)) in 0) echo "$m, 0, 1" ;; 1) echo "$m, 0" ;; 2) echo "$m, 1" ;; esac
    i=$((i + 1))
  done
} > "$work/model_distribution_list.txt"
cat "$work/model_distribution_list.txt"
"$BIN/deploy_file" "$work/storage_list.txt" "$work/model_distribution_list.txt" "$work/kv.bin"

step "serving machine: cache (3 GiB shared-memory pool) + server"
cache_port=$(free_port); server_port=$(free_port); lb_port=$(free_port)
start cache "$cache_port" "$BIN/cache" 127.0.0.1 "$cache_port" 127.0.0.1 "$meta_port" \
  127.0.0.1 "$lb_port" "$shm_name" 3G 1M
start server "$server_port" "$BIN/server" 127.0.0.1 "$server_port" 127.0.0.1 "$cache_port" \
  127.0.0.1 0 --threads "$(nproc)" --memory 3G

step "client workload: per model, 1 cold request (from remote storage) + $repeat warm ones, batch $batch"
for m in $models; do
  echo "-- $m"
  "$BIN/pipeps" infer "127.0.0.1:$server_port" "$m" --batch "$batch" --repeat $((repeat + 1))
done

step "cache counters"
"$BIN/pipeps" stat cache "127.0.0.1:$cache_port"
step "done"
