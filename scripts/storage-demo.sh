#!/usr/bin/env bash
# The storage tier end to end, on loopback:
#   1. start metadata_storage and two storages (temporary data directories),
#   2. write a kv.bin with two synthetic models (tests/integration/kvbin_py.py,
#      independent of the C writer) and check it with `pipeps inspect --verify`,
#   3. deploy it: alpha on storage 0, beta sliced over storages 1 and 0,
#   4. read every key back through the location records (`pipeps fetch`) and
#      compare the bytes with kv.bin's,
#   5. kill -9 every daemon, restart them on the same directories, compare again,
#   6. stop everything.
# Usage: scripts/storage-demo.sh [--scale K] [--keep]
#   --scale K  multiply the big batch sizes by K (default 4: about 16 MB in all)
#   --keep     leave the temporary directory (logs, lists, kv.bin) in place
# Builds build/ first if build/bin/pipeps is missing. Exit status 0 = all bytes matched.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scale=4
keep=0
while (($#)); do
  case "$1" in
    --scale) scale=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "storage-demo: unknown argument $1" >&2; exit 2 ;;
  esac
done

BIN=${PIPEPS_BIN:-$root/build/bin}
PY=/usr/bin/python3
if [ ! -x "$BIN/pipeps" ]; then
  scripts/deps.sh
  cmake -S . -B build -DPIPEPS_WERROR=ON >/dev/null
  cmake --build build -j"$(nproc)" >/dev/null
fi

work=$(mktemp -d /tmp/pipeps-storage-demo.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$keep" = 1 ] || [ $rc -ne 0 ]; then
    echo "storage-demo: files and logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # port pid log
  for _ in $(seq 1 300); do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "storage-demo: daemon on port $1 exited; its log:" >&2
      cat "$3" >&2
      return 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "storage-demo: port $1 never opened" >&2
  return 1
}

meta_port=$(free_port)
store_ports=("$(free_port)" "$(free_port)")
declare -A pid_of

start_daemons() {
  local log="$work/metadata_storage.log"
  "$BIN/metadata_storage" 127.0.0.1 "$meta_port" --dir "$work/meta-data" >>"$log" 2>&1 &
  pid_of[meta]=$!; pids+=("$!")
  wait_port "$meta_port" "$!" "$log"
  for i in 0 1; do
    log="$work/storage$i.log"
    "$BIN/storage" "${store_ports[$i]}" --dir "$work/storage$i-data" >>"$log" 2>&1 &
    pid_of[s$i]=$!; pids+=("$!")
    wait_port "${store_ports[$i]}" "$!" "$log"
  done
  echo "metadata_storage 127.0.0.1:$meta_port, storages 127.0.0.1:${store_ports[0]} and 127.0.0.1:${store_ports[1]}"
}

compare_all() { # label
  local ok=1
  for model in alpha beta; do
    local out="$work/fetched-$1-$model"
    rm -rf "$out"; mkdir -p "$out"
    "$BIN/pipeps" fetch "127.0.0.1:$meta_port" "$model" --out "$out" >"$out.txt"
    for f in "$work/expected/$model"-*; do
      local key
      key=$(basename "$f")
      if ! cmp -s "$f" "$out/$key"; then
        echo "MISMATCH: $key" >&2
        ok=0
      fi
    done
    echo "$model: $(($(wc -l <"$out.txt") - 1)) keys read back through $model-LOCATION, $(cat "$out"/* | wc -c) bytes, all equal to kv.bin"
  done
  [ $ok = 1 ]
}

step "start the storage tier"
start_daemons

step "write kv.bin (two synthetic models) and inspect it"
"$PY" tests/integration/kvbin_py.py "$work/kv.bin" --scale "$scale"
"$PY" tests/integration/kvbin_py.py --extract "$work/kv.bin" "$work/expected"
"$BIN/pipeps" inspect "$work/kv.bin" --verify

step "deploy: alpha on storage 0, beta over storages 1 and 0"
cat >"$work/storage_list.txt" <<EOF
address, port
127.0.0.1, $meta_port
127.0.0.1, ${store_ports[0]}
127.0.0.1, ${store_ports[1]}
EOF
cat >"$work/model_distribution_list.txt" <<EOF
model, storages
alpha, 0
beta, 1, 0
EOF
"$BIN/deploy_file" "$work/storage_list.txt" "$work/model_distribution_list.txt" "$work/kv.bin"

step "read every key back through the location records"
compare_all before

step "kill -9 every daemon, restart on the same directories"
for d in meta s0 s1; do
  kill -9 "${pid_of[$d]}"
  wait "${pid_of[$d]}" 2>/dev/null || true
done
pids=()
start_daemons
compare_all after-restart

step "stop"
for pid in "${pids[@]}"; do kill "$pid"; done
for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
pids=()
echo
echo "storage demo: OK (every key matched before and after kill -9 + restart)"
