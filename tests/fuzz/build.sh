#!/usr/bin/env bash
# Build and run the libFuzzer targets (clang needed; not part of ctest).
#   tests/fuzz/build.sh            build build-fuzz/fuzz_kvbin, seed a corpus, fuzz 60 s
#   tests/fuzz/build.sh 600        fuzz 600 s
#   tests/fuzz/build.sh 60 model_blob   the METADATA blob decoder (fuzz_model_blob) instead
#   tests/fuzz/build.sh 60 cache_proto  the cache's message decoders (fuzz_cache_proto)
#   tests/fuzz/build.sh 60 server_proto the server's payload decoders (fuzz_server_proto)
#   tests/fuzz/build.sh 60 onnx_import  the ONNX importer (fuzz_onnx_import; its libraries are
#                                       built by CMake with clang into build-fuzz/onnx-lib)
# Crashes land in build-fuzz/ as crash-*; replay one with
#   build-fuzz/fuzz_kvbin build-fuzz/crash-...
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
out=build-fuzz
if [ "${2:-}" = "model_blob" ]; then
  mkdir -p "$out/corpus-model-blob"
  mflags=(-std=c11 -D_GNU_SOURCE -g -O1 -Isrc -DMODEL_BLOB_FUZZ_NO_CHECKSUM)
  msrc=(src/model/graph.c src/model/batching.c src/model/model_blob.c src/model/zoo*.c
        src/common/err.c src/common/buf.c)
  clang "${mflags[@]}" tests/fuzz/model_blob_seeds.c "${msrc[@]}" -lxxhash -lm -o "$out/model_blob_seeds"
  "$out/model_blob_seeds" "$out/corpus-model-blob"
  clang "${mflags[@]}" -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_model_blob.c "${msrc[@]}" \
    -lxxhash -lm -o "$out/fuzz_model_blob"
  exec "$out/fuzz_model_blob" -max_total_time="$seconds" -max_len=131072 -artifact_prefix="$out/" \
    "$out/corpus-model-blob"
fi
if [ "${2:-}" = "cache_proto" ]; then
  mkdir -p "$out/corpus-cache-proto"
  printf '\001\005\000\000\000model' > "$out/corpus-cache-proto/subscribe"
  clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
    tests/fuzz/fuzz_cache_proto.c src/cache/cache_proto.c src/common/err.c src/common/buf.c \
    -o "$out/fuzz_cache_proto"
  exec "$out/fuzz_cache_proto" -max_total_time="$seconds" -max_len=4096 -artifact_prefix="$out/" \
    "$out/corpus-cache-proto"
fi
if [ "${2:-}" = "server_proto" ]; then
  mkdir -p "$out/corpus-server-proto"
  clang -std=c11 -D_GNU_SOURCE -g -O1 -Isrc -fsanitize=fuzzer,address,undefined \
    tests/fuzz/fuzz_server_proto.c src/server/server_proto.c src/common/err.c src/common/buf.c \
    -o "$out/fuzz_server_proto"
  exec "$out/fuzz_server_proto" -max_total_time="$seconds" -max_len=8192 -artifact_prefix="$out/" \
    "$out/corpus-server-proto"
fi
if [ "${2:-}" = "onnx_import" ]; then
  lib="$out/onnx-lib"
  CC=clang cmake -S . -B "$lib" -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_C_FLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined" >/dev/null
  cmake --build "$lib" -j2 --target pipeps_onnx >/dev/null
  mkdir -p "$out/corpus-onnx"
  # seeds: a few backend node tests (one node each, inputs only) and small
  # models with initializers, Constant folding and external-data refs
  node=/usr/include/onnx/backend/test/data/node
  for t in test_conv_with_strides_padding test_gemm_default_matrix_bias test_softmax_axis_1 \
           test_maxpool_2d_pads test_layer_normalization_4d_axis0 test_resize_upsample_scales_linear \
           test_slice test_transpose_default test_reduce_mean_default_axes_keepdims_example \
           test_add_bcast test_softmax_axis_0_expanded test_convtranspose_pads test_pad; do
    [ -f "$node/$t/model.onnx" ] && cp "$node/$t/model.onnx" "$out/corpus-onnx/$t.onnx"
  done
  /usr/bin/python3 tests/fuzz/onnx_seeds.py "$out/corpus-onnx"
  clang -std=c11 -D_GNU_SOURCE -g -O1 -Isrc -I"$lib/src/onnx/proto" -fsanitize=fuzzer,address,undefined \
    tests/fuzz/fuzz_onnx_import.c -Wl,--start-group "$lib/src/onnx/libpipeps_onnx.a" \
    "$lib/src/exec/libpipeps_exec.a" "$lib/src/model/libpipeps_model.a" "$lib/src/common/libpipeps_common.a" \
    -Wl,--end-group -ldnnl -lprotobuf-c -lxxhash -lgomp -lpthread -lm -o "$out/fuzz_onnx_import"
  exec "$out/fuzz_onnx_import" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 \
    -artifact_prefix="$out/" "$out/corpus-onnx"
fi
mkdir -p "$out/corpus-kvbin"
flags=(-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -DKVBIN_FUZZ_NO_HEADER_CHECKSUM)
clang "${flags[@]}" tests/fuzz/fuzz_kvbin.c src/formats/kvbin.c src/common/err.c src/common/buf.c \
  -lxxhash -o "$out/fuzz_kvbin"
# seeds: small well-formed files from the independent Python writer
/usr/bin/python3 tests/integration/kvbin_py.py --seed-corpus "$out/corpus-kvbin"
"$out/fuzz_kvbin" -max_total_time="$seconds" -max_len=65536 -artifact_prefix="$out/" "$out/corpus-kvbin"
