#!/bin/sh
# Server benchmark (docs/benchmarks.md, "server"): builds if needed, then runs
# bench/bench_server.py with Debian's Python (numpy). Arguments are passed on,
# e.g. bench/bench_server.sh --runs 5 --markdown /tmp/server.md
set -e
cd "$(dirname "$0")/.."
if [ ! -x build/bin/server ]; then
    cmake -S . -B build >/dev/null && cmake --build build -j2 >/dev/null
fi
exec /usr/bin/python3 bench/bench_server.py --bin build/bin "$@"
