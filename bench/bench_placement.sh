#!/usr/bin/env bash
# Placement policies compared in one run on loopback (docs/benchmarks.md,
# "Load balancer: placement"): 24 model names (8 copies each of resnet152,
# inception_v3 and bert_base), Zipf(0.9) popularity, two machines
# (127.0.0.2, 127.0.0.3) whose caches hold about a quarter of the models'
# bytes, an open-loop client (`client`, Poisson arrivals from `workload`) at
# a rate near saturation. Per policy (basic, fastest_start, round_robin,
# least_loaded), on fresh caches and servers: throughput, p50/p99 latency,
# hit rate (answers served resident or from the local cache) and bytes
# fetched from the storages.
#
# Saturation is measured first: `client_concurrent 4` on the same workload
# with the basic policy; the open-loop rate is --load (default 0.8) times it.
# Usage: bench/bench_placement.sh [--requests N] [--load F] [--copies K] [--kv KV] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=240 load=0.8 copies=8 kv="" keep=0 seq=16
while (($#)); do
  case "$1" in
    --requests) requests=$2; shift 2 ;;
    --load) load=$2; shift 2 ;;
    --copies) copies=$2; shift 2 ;;
    --kv) kv=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--requests N] [--load F] [--copies K] [--kv KV] [--keep]" >&2; exit 2 ;;
  esac
done
B=${PIPEPS_BIN:-build/bin}
PY=/usr/bin/python3
dir=$(mktemp -d /tmp/pipeps-bench-placement.XXXXXX)
pids=() machine_pids=()
cleanup() {
  for p in "${machine_pids[@]}" "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f /dev/shm/pipeps-bench-pl-$$-*
  if ((keep)); then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # host port
  for _ in $(seq 1200); do $PY -c "import socket; socket.create_connection(('$1',$2),0.2)" 2>/dev/null && return 0; sleep 0.05; done
  echo "bench_placement: $1:$2 never opened" >&2; exit 1
}

# Models: 8 copies of each, as generate_file's -alter- names.
{ echo "model_name[, seq_len]"
  for i in $(seq "$copies"); do       # interleaved: Zipf ranks mix the architectures
    for base in resnet152 inception_v3 bert_base; do
      if [ "$base" = bert_base ]; then echo "$base-alter-$i, $seq"; else echo "$base-alter-$i"; fi
    done
  done; } >"$dir/models.txt"
if [ -z "$kv" ]; then
  kv=$dir/kv.bin
  "$B/generate_file" "$dir/models.txt" "$kv" --quiet
fi
total=$("$B/pipeps" inspect "$kv" | awk '/^model /{for(i=1;i<=NF;i++) if($i=="total_size") s+=$(i+1)} END{printf "%.0f\n", s}')
[ "$total" -gt 0 ] || total=$((copies * (241384448 + 95557120 + 435566592)))
largest=$("$B/pipeps" inspect "$kv" | awk '/^model /{for(i=1;i<=NF;i++) if($i=="total_size" && $(i+1)>m) m=$(i+1)} END{printf "%.0f\n", m}')
pool_bytes=$((total / 8))               # two caches: a quarter of the bytes in all
if [ "$pool_bytes" -lt $((largest * 5 / 4)) ]; then pool_bytes=$((largest * 5 / 4)); fi  # at least the largest model
pool=$((pool_bytes / 1048576))M
echo "# bench_placement: $(date -u +%FT%TZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $((3 * copies)) models, $total bytes in all; caches of $pool each; $requests requests, Zipf 0.9"

META=$(port) S0=$(port) S1=$(port)
"$B/metadata_storage" "$META" --dir "$dir/meta" >"$dir/meta.log" 2>&1 & pids+=($!)
"$B/storage" "$S0" --dir "$dir/s0" >"$dir/s0.log" 2>&1 & pids+=($!)
"$B/storage" "$S1" --dir "$dir/s1" >"$dir/s1.log" 2>&1 & pids+=($!)
wait_port 127.0.0.1 "$META"; wait_port 127.0.0.1 "$S0"; wait_port 127.0.0.1 "$S1"
printf 'address, port\n127.0.0.1, %s\n127.0.0.1, %s\n127.0.0.1, %s\n' "$META" "$S0" "$S1" >"$dir/storages.txt"
{ echo "model, storages"; tail -n +2 "$dir/models.txt" | cut -d, -f1 | awk '{print $1 ", 0, 1"}'; } >"$dir/dist.txt"
"$B/deploy_file" "$dir/storages.txt" "$dir/dist.txt" "$kv" >"$dir/deploy.log" 2>&1

# The request list: Zipf(0.9) over the 24 names, exponential intervals
# (the rate is set per run below by scaling the intervals).
"$B/workload" "$dir/models.txt" "$dir/workload.txt" "$requests" 1 zipf 0.9 1 exponential --seed 7 --batch 1

LBC=$(port) LBS=$(port) LBK=$(port) CP=$(port) SP=$(port)
start_lb() { # policy
  PIPEPS_LOG=warn "$B/load_balancer" "$1" 127.0.0.1 "$LBC" 127.0.0.1 "$LBS" 127.0.0.1 "$LBK" 127.0.0.1 "$META" \
    >"$dir/lb-$1.log" 2>&1 &
  lb_pid=$!
  wait_port 127.0.0.1 "$LBC"
}
start_machines() { # tag
  machine_pids=()
  for h in 127.0.0.2 127.0.0.3; do
    PIPEPS_LOG=warn "$B/cache" "$h" "$CP" 127.0.0.1 "$META" 127.0.0.1 "$LBK" "pipeps-bench-pl-$$-$h" "$pool" 1M \
      --lb-backoff-max 200 >"$dir/cache-$1-$h.log" 2>&1 &
    machine_pids+=($!)
  done
  for h in 127.0.0.2 127.0.0.3; do
    wait_port "$h" "$CP"
    PIPEPS_LOG=warn "$B/server" "$h" "$SP" "$h" "$CP" 127.0.0.1 "$LBS" --threads 2 --memory 1G --reserve 0 \
      >"$dir/server-$1-$h.log" 2>&1 &
    machine_pids+=($!)
  done
  for _ in $(seq 600); do
    st=$("$B/pipeps" stat lb "127.0.0.1:$LBC")
    [ "$(grep -c '^server .* ready 1' <<<"$st")" -ge 2 ] && [ "$(grep -c '^cache .* connected 1' <<<"$st")" -ge 2 ] && return 0
    sleep 0.1
  done
  echo "bench_placement: machines did not register" >&2; exit 1
}
stop_machines() {
  for p in "${machine_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${machine_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  machine_pids=()
  kill "$lb_pid" 2>/dev/null || true; wait "$lb_pid" 2>/dev/null || true
}
fetched() { # bytes fetched by both caches so far
  for h in 127.0.0.2 127.0.0.3; do "$B/pipeps" stat cache "$h:$CP" | awk '$1=="bytes_fetched"{print $2}'; done |
    awk '{s+=$1} END{printf "%.0f\n", s}'
}

# Saturation: 4 closed loops, basic policy.
start_lb basic; start_machines calib
t0=$(date +%s.%N)
"$B/client_concurrent" 4 "$dir/workload.txt" 127.0.0.1 "$LBC" --quiet --csv "$dir/calib.csv" >"$dir/calib.txt" 2>&1 || true
t1=$(date +%s.%N)
stop_machines
sat=$($PY -c "print($requests / ($t1 - $t0))")
rate=$($PY -c "print($sat * $load)")
echo "# saturation (client_concurrent 4, basic): $(printf %.2f "$sat") req/s; open-loop rate $(printf %.2f "$rate") req/s"
# Rescale the intervals to the chosen rate (they were drawn at 1 req/s).
$PY - "$dir/workload.txt" "$dir/run.txt" "$rate" <<'EOF'
import sys
src, dst, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
lines = open(src).read().splitlines()
out = [lines[0]]
for l in lines[1:]:
    m, b, iv = [x.strip() for x in l.split(",")]
    out.append("%s, %s, %f" % (m, b, float(iv) / rate))
open(dst, "w").write("\n".join(out) + "\n")
EOF

printf '\n| policy | answered | errors | throughput (req/s) | p50 (ms) | p99 (ms) | hit rate | GB fetched |\n|---|---|---|---|---|---|---|---|\n'
for policy in basic fastest_start round_robin least_loaded; do
  start_lb "$policy"; start_machines "$policy"
  before=$(fetched)
  "$B/client" "$dir/run.txt" 127.0.0.1 "$LBC" --quiet --csv "$dir/$policy.csv" >"$dir/$policy.txt" 2>&1 || true
  after=$(fetched)
  "$B/pipeps" stat lb "127.0.0.1:$LBC" >"$dir/$policy.stat"
  stop_machines
  $PY - "$dir/$policy.csv" "$policy" "$((after - before))" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def col(r, *names):
    for n in names:
        if n in r:
            return r[n]
    raise KeyError(names)
ok = [r for r in rows if col(r, "status") in ("0", "ok", "OK")]
lat = sorted(float(col(r, "latency_ms")) for r in ok)
send = [float(col(r, "send_s", "send_time_s")) for r in rows]
done = [float(col(r, "send_s", "send_time_s")) + float(col(r, "latency_ms")) / 1e3 for r in ok]
span = (max(done) - min(send)) if ok else 1
hits = sum(1 for r in ok if col(r, "source") in ("resident", "cache"))
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
print("| %s | %d | %d | %.2f | %.0f | %.0f | %.2f | %.2f |" % (
    sys.argv[2], len(ok), len(rows) - len(ok), len(ok) / span, pct(0.5), pct(0.99),
    hits / len(ok) if ok else 0, int(sys.argv[3]) / 1e9))
EOF
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
