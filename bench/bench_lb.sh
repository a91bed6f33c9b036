#!/usr/bin/env bash
# The load balancer's own cost, in one run on loopback (docs/benchmarks.md,
# "Load balancer"): tiny_mlp (a few microseconds of compute) served by one
# server behind a cache;
#   1. latency, one request at a time: straight to the server, through the
#      balancer, and a PING round trip (the floor): p50/p99 in microseconds,
#      min and median over --reps repetitions, and what the balancer adds;
#      and the same request over the balancer's HTTP API (KServe v2, JSON
#      and binary tensor data, keep-alive);
#   2. the balancer's throughput ceiling: stand-in servers that answer at
#      once (bench_lb fake-servers), many requests in flight, through the
#      balancer and straight to one stand-in (the client's own ceiling).
# Usage: bench/bench_lb.sh [--reps R] [--requests N] [--seconds T] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=5 requests=3000 seconds=4 keep=0
while (($#)); do
  case "$1" in
    --reps) reps=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--reps R] [--requests N] [--seconds T] [--keep]" >&2; exit 2 ;;
  esac
done
B=${PIPEPS_BIN:-build/bin}
[ -x "$B/bench_lb" ] || { scripts/deps.sh; cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null; cmake --build build -j"$(nproc)" >/dev/null; }
dir=$(mktemp -d /tmp/pipeps-bench-lb.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f /dev/shm/pipeps-bench-lb-$$
  if ((keep)); then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 600); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

META=$(port) ST=$(port) CACHE=$(port) SRV=$(port) LBC=$(port) LBS=$(port) LBK=$(port)
printf 'model_name\ntiny_mlp\n' >"$dir/models.txt"
"$B/generate_file" "$dir/models.txt" "$dir/kv.bin" --quiet 2>/dev/null
"$B/metadata_storage" "$META" --dir "$dir/meta" >"$dir/meta.log" 2>&1 & pids+=($!)
"$B/storage" "$ST" --dir "$dir/s0" >"$dir/s0.log" 2>&1 & pids+=($!)
wait_port "$META"; wait_port "$ST"
printf 'address, port\n127.0.0.1, %s\n127.0.0.1, %s\n' "$META" "$ST" >"$dir/storages.txt"
printf 'model, storages\ntiny_mlp, 0\n' >"$dir/dist.txt"
"$B/deploy_file" "$dir/storages.txt" "$dir/dist.txt" "$dir/kv.bin" >"$dir/deploy.log" 2>&1
HTTP=$(port)
PIPEPS_LOG=warn "$B/load_balancer" basic 127.0.0.1 "$LBC" 127.0.0.1 "$LBS" 127.0.0.1 "$LBK" 127.0.0.1 "$META" \
  --http-port "$HTTP" >"$dir/lb.log" 2>&1 & pids+=($!)
"$B/cache" 127.0.0.1 "$CACHE" 127.0.0.1 "$META" 127.0.0.1 "$LBK" pipeps-bench-lb-$$ 64M 64K >"$dir/cache.log" 2>&1 & pids+=($!)
wait_port "$LBC"; wait_port "$CACHE"
PIPEPS_LOG=warn "$B/server" 127.0.0.1 "$SRV" 127.0.0.1 "$CACHE" 127.0.0.1 "$LBS" --reserve 0 --threads 1 \
  >"$dir/server.log" 2>&1 & pids+=($!)
wait_port "$SRV"
for _ in $(seq 200); do "$B/pipeps" stat lb "127.0.0.1:$LBC" | grep -q "ready 1" && break; sleep 0.05; done

echo "# bench_lb: $(date -u +%FT%TZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## 1. latency, one request at a time ($requests requests x $reps repetitions, microseconds)"
"$B/bench_lb" latency "127.0.0.1:$LBC" tiny_mlp --requests 200 >/dev/null   # cold start, then resident
for r in $(seq "$reps"); do
  "$B/bench_lb" ping "127.0.0.1:$LBC" --requests "$requests" | sed "s/^/rep $r /"
  "$B/bench_lb" latency "127.0.0.1:$SRV" tiny_mlp --requests "$requests" | sed "s/^latency/rep $r direct/"
  "$B/bench_lb" latency "127.0.0.1:$LBC" tiny_mlp --requests "$requests" | sed "s/^latency/rep $r balancer/"
  "$B/bench_lb" http "127.0.0.1:$HTTP" tiny_mlp --requests "$requests" | sed "s/^/rep $r /"
  "$B/bench_lb" http "127.0.0.1:$HTTP" tiny_mlp --requests "$requests" --binary | sed "s/^/rep $r /"
done | tee "$dir/latency.txt"
python3 - "$dir/latency.txt" <<'EOF'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    kind = f[2]
    kv = dict(zip(f[3::2], f[4::2]))
    rows.setdefault(kind, []).append((float(kv["p50_us"]), float(kv["p99_us"])))
def mm(xs): return "min %.1f / median %.1f" % (min(xs), st.median(xs))
for k in ("ping", "direct", "balancer", "http_json", "http_binary"):
    print("%-11s p50 %s   p99 %s" % (k, mm([a for a, _ in rows[k]]), mm([b for _, b in rows[k]])))
for k in ("http_json", "http_binary"):
    r50 = [h[0] / b[0] for h, b in zip(rows[k], rows["balancer"])]
    print("%s / binary protocol through the balancer, p50: %s" % (k, "min %.2f / median %.2f" % (min(r50), st.median(r50))))
d50 = [b[0] - a[0] for a, b in zip(rows["direct"], rows["balancer"])]
d99 = [b[1] - a[1] for a, b in zip(rows["direct"], rows["balancer"])]
print("added by the balancer: p50 %s us, p99 %s us (per repetition: balancer - direct)" % (mm(d50), mm(d99)))
EOF

echo "## 2. throughput ceiling with stand-in servers ($seconds s x $reps repetitions)"
LB2C=$(port) LB2S=$(port) LB2K=$(port)
PIPEPS_LOG=warn "$B/load_balancer" least_loaded 127.0.0.1 "$LB2C" 127.0.0.1 "$LB2S" 127.0.0.1 "$LB2K" 127.0.0.1 "$META" \
  --max-outstanding 64 >"$dir/lb2.log" 2>&1 & pids+=($!)
wait_port "$LB2S"
"$B/bench_lb" fake-servers "127.0.0.1:$LB2S" 4 >"$dir/fake.txt" 2>&1 & pids+=($!)
for _ in $(seq 200); do [ "$("$B/pipeps" stat lb "127.0.0.1:$LB2C" | grep -c 'ready 1')" -ge 4 ] && break; sleep 0.05; done
FAKE=$(head -1 "$dir/fake.txt" | awk '{print $3}')
for r in $(seq "$reps"); do
  "$B/bench_lb" throughput "$FAKE" tiny_mlp --conns 2 --inflight 128 --seconds "$seconds" | sed "s/^/rep $r direct /"
  "$B/bench_lb" throughput "127.0.0.1:$LB2C" tiny_mlp --conns 2 --inflight 128 --seconds "$seconds" | sed "s/^/rep $r balancer /"
done | tee "$dir/throughput.txt"
python3 - "$dir/throughput.txt" <<'EOF'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[2], []).append(float(f[f.index("per_s") + 1]))
for k in ("direct", "balancer"):
    print("%-9s answers/s min %.0f / median %.0f / max %.0f" % (k, min(rows[k]), st.median(rows[k]), max(rows[k])))
print("balancer / direct (medians): %.2f" % (st.median(rows["balancer"]) / st.median(rows["direct"])))
EOF
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
