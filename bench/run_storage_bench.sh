#!/usr/bin/env bash
# Storage benchmark: GET of a 32 MiB value and of a 240 MiB model's slices
# (8 x 30 MiB) from one storage over loopback, against a plain loopback TCP
# stream of the same size in the same run; PUT (fdatasync'd) against a local
# write + fdatasync; once with each GET send path of the storage (send from a
# mapping of the data file, the default, and sendfile). Builds nothing: run
# after `cmake --build build`.
#
#   bench/run_storage_bench.sh [BUILD_DIR] [bench_storage options...]
#   e.g. bench/run_storage_bench.sh build --reps 9
#
# Also prints iperf3's loopback figure (1 MiB writes) when iperf3 is
# installed, as a second reference for the plain stream.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
if [ $# -gt 0 ] && [ -d "$1" ]; then build=$1; shift; fi
bin="$build/bin"
if [ ! -x "$bin/bench_storage" ] || [ ! -x "$bin/storage" ]; then
  echo "run_storage_bench.sh: $bin/bench_storage or $bin/storage missing; build first" >&2
  exit 1
fi
echo "== $(date -u +%FT%TZ) $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
# The default GET path (send from a mapping of the data file), then sendfile.
"$bin/bench_storage" "$@"
echo
"$bin/bench_storage" --send-path sendfile "$@"

if command -v iperf3 >/dev/null; then
  port=$(( 20000 + RANDOM % 20000 ))
  iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  sleep 0.3
  echo "== iperf3 loopback, 1 MiB writes, 3 s"
  iperf3 -c 127.0.0.1 -p "$port" -l 1M -t 3 -f M 2>&1 | grep -E "sender|receiver" || true
  wait "$server" 2>/dev/null || true
fi
