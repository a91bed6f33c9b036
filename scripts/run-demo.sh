#!/usr/bin/env bash
# The main job: a local PipePS cluster on loopback serving the built-in models
# to a client workload.
#   1. build (installing missing Debian packages first),
#   2. generate_file: build the five seed models and write kv.bin,
#   3. start metadata_storage and two storages, deploy_file kv.bin over them
#      (large models sliced over both storages),
#   4. start the load balancer and two serving "machines" (127.0.0.2 and
#      127.0.0.3), each a cache (shared-memory pool) and a server that
#      register with the balancer,
#   5. client workload through the balancer (client_one and a request list):
#      per model, a cold request (parameters only in remote storage: fetched
#      and executed pipelined), then warm requests, each with its latency
#      breakdown and where it ran, and a summary with the cold/warm split,
#   6. print the balancer's and the caches' counters and stop everything.
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

step "load balancer (basic policy) + two machines, each a cache (1536 MiB pool) and a server"
lb_client=$(free_port); lb_server=$(free_port); lb_cache=$(free_port)
start load_balancer "$lb_client" "$BIN/load_balancer" basic 127.0.0.1 "$lb_client" 127.0.0.1 "$lb_server" \
  127.0.0.1 "$lb_cache" 127.0.0.1 "$meta_port"
machines="127.0.0.2 127.0.0.3"
cache_port=$(free_port); server_port=$(free_port)
for host in $machines; do
  "$BIN/cache" "$host" "$cache_port" 127.0.0.1 "$meta_port" 127.0.0.1 "$lb_cache" "$shm_name-$host" 1536M 1M \
    >"$work/cache-$host.log" 2>&1 &
  pids+=($!)
done
for host in $machines; do
  for _ in $(seq 1 600); do
    "$PY" -c "import socket; socket.create_connection(('$host',$cache_port),0.2)" 2>/dev/null && break
    sleep 0.1
  done
  "$BIN/server" "$host" "$server_port" "$host" "$cache_port" 127.0.0.1 "$lb_server" --threads "$(nproc)" \
    --memory 3G >"$work/server-$host.log" 2>&1 &
  pids+=($!)
  echo "machine $host: cache on $host:$cache_port, server on $host:$server_port (logs in $work)"
done
for _ in $(seq 1 600); do
  ready=$("$BIN/pipeps" stat lb "127.0.0.1:$lb_client" | grep -c '^server .* ready 1' || true)
  caches=$("$BIN/pipeps" stat lb "127.0.0.1:$lb_client" | grep -c '^cache .* connected 1' || true)
  [ "$ready" -ge 2 ] && [ "$caches" -ge 2 ] && break
  sleep 0.1
done
echo "registered with the balancer: $ready servers, $caches caches"

step "client workload through the balancer: per model, 1 cold request + $repeat warm ones, batch $batch (client_one)"
{
  echo "model_name, batch_size, send_interval"
  for m in $models; do
    for _ in $(seq 0 "$repeat"); do echo "$m, $batch, 0.000000"; done
  done
} > "$work/request_list.txt"
"$BIN/client_one" "$work/request_list.txt" 127.0.0.1 "$lb_client" --csv "$work/requests.csv"

step "load balancer counters"
"$BIN/pipeps" stat lb "127.0.0.1:$lb_client" | grep -Ev '^(decisions_|latency|queue_ms)' || true
for host in $machines; do
  step "cache counters ($host)"
  "$BIN/pipeps" stat cache "$host:$cache_port" | grep -E '^(used_bytes|models|hits|misses|cache_in|bytes_fetched|fetch_throughput)'
done
step "done"
