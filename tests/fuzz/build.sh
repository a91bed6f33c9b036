#!/usr/bin/env bash
# Build and run the libFuzzer targets (clang needed; not part of ctest).
#   tests/fuzz/build.sh            build build-fuzz/fuzz_kvbin, seed a corpus, fuzz 60 s
#   tests/fuzz/build.sh 600        fuzz 600 s
# Crashes land in build-fuzz/ as crash-*; replay one with
#   build-fuzz/fuzz_kvbin build-fuzz/crash-...
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
out=build-fuzz
mkdir -p "$out/corpus-kvbin"
flags=(-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -DKVBIN_FUZZ_NO_HEADER_CHECKSUM)
clang "${flags[@]}" tests/fuzz/fuzz_kvbin.c src/formats/kvbin.c src/common/err.c src/common/buf.c \
  -lxxhash -o "$out/fuzz_kvbin"
# seeds: small well-formed files from the independent Python writer
/usr/bin/python3 tests/integration/kvbin_py.py --seed-corpus "$out/corpus-kvbin"
"$out/fuzz_kvbin" -max_total_time="$seconds" -max_len=65536 -artifact_prefix="$out/" "$out/corpus-kvbin"
