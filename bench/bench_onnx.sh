#!/bin/bash
# bench_onnx.sh: imported ONNX models (issue 12). Three parts, all figures,
# nothing asserted:
#  1. warm latency of each imported torchvision model (exported by
#     tests/integration/onnx_export.py at opset 17, seed 0) with `pipeps run`
#     against PyTorch eager on the same module, same batch and threads,
#     measured back to back in each round (the bench_models.sh pattern);
#  2. the hand-written architecture against its import: the built-in
#     resnet152 against torchvision's resnet152 exported and imported
#     (goal: imported <= 1.1 x hand-written);
#  3. pipelined cold start through a loopback cluster for two imported
#     models (bench/bench_onnx_cluster.py).
#
#   bench/bench_onnx.sh [--reps R] [--rounds K] [--models "m1 m2"] [--batches "1 8"]
#                       [--threads T] [--cluster-models "m1 m2"] [--no-handwritten] [--quick]
#
# --quick: a smoke run (mnasnet0_5 only, batch 1, 2 reps, 1 round, no
# resnet152 comparison, one cluster model, one run). Needs Debian's
# /usr/bin/python3 with torch, torchvision and onnx.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${PIPEPS_BIN:-$ROOT/build/bin}"
PY=/usr/bin/python3
OPENBLAS=/usr/lib/x86_64-linux-gnu/openblas-openmp
EXPORT="$ROOT/tests/integration/onnx_export.py"

REPS=10
ROUNDS=3
MODELS="resnet18 resnet50 densenet121 efficientnet_b0 mobilenet_v3_small regnet_y_400mf mnasnet0_5 vit_b_16 text_encoder"
BATCHES="1 8"
THREADS=2
CLUSTER_MODELS="resnet50 mobilenet_v3_small"
CLUSTER_RUNS=3
HANDWRITTEN=1

while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --models) MODELS="$2"; shift 2 ;;
        --batches) BATCHES="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --cluster-models) CLUSTER_MODELS="$2"; shift 2 ;;
        --no-handwritten) HANDWRITTEN=0; shift ;;
        --quick) REPS=2; ROUNDS=1; MODELS="mnasnet0_5"; BATCHES="1"; CLUSTER_MODELS="mnasnet0_5"
                 CLUSTER_RUNS=1; HANDWRITTEN=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "bench_onnx.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
seq_of() {  # the text model's sequence length (onnx_export.TEXT_SEQ) with a prefix, else nothing
    [ "$1" = text_encoder ] && echo "$2$("$PY" -c "import sys; sys.path.insert(0, '$ROOT/tests/integration'); import onnx_export; print(onnx_export.TEXT_SEQ)")" || true
}
export_model() {  # name -> $TMP/name.onnx (once)
    [ -f "$TMP/$1.onnx" ] || "$PY" "$EXPORT" "$1" "$TMP/$1.onnx" 17 >/dev/null 2>"$TMP/export-$1.log" ||
        { cat "$TMP/export-$1.log" >&2; exit 1; }
}

echo "bench_onnx: exporting and importing ..." >&2
{
    echo "model_name"
    for m in $MODELS; do export_model "$m"; echo "$m, file=$TMP/$m.onnx$(seq_of "$m" ", seq=")"; done
    if [ "$HANDWRITTEN" = 1 ]; then
        export_model resnet152
        echo "resnet152"
        echo "onnx_resnet152, file=$TMP/resnet152.onnx"
    fi
} > "$TMP/model_list.txt"
KV="$TMP/kv.bin"
"$BIN/generate_file" "$TMP/model_list.txt" "$KV" --quiet >/dev/null 2>"$TMP/generate.log" ||
    { cat "$TMP/generate.log" >&2; exit 1; }

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
minimum() { sort -g | head -1; }
pipeps_warm() {  # kv model batch -> "median min" of one pipeps run
    "$BIN/pipeps" run "$1" "$2" --batch "$3" --threads "$THREADS" --repeat "$REPS" |
        awk '/^warm latency/ {print $4, $7}'
}

echo "bench_onnx: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), threads $THREADS, $REPS warm runs x $ROUNDS rounds"
echo "imported (opset 17) against PyTorch eager on the exported module, ms:"
printf "%-19s %5s | %10s %10s | %10s %10s | %7s %7s\n" model batch "pipeps med" "min" "torch med" "min" "ratio" "min/min"
for m in $MODELS; do
    for b in $BATCHES; do
        : > "$TMP/p.txt"; : > "$TMP/t.txt"
        for r in $(seq "$ROUNDS"); do
            pipeps_warm "$KV" "$m" "$b" >> "$TMP/p.txt"
            LD_LIBRARY_PATH="$OPENBLAS" "$PY" "$HERE/onnx_torch_baseline.py" "$m" "$b" "$REPS" "$THREADS" |
                awk '/^torch/ {print $4, $5}' >> "$TMP/t.txt"
        done
        pm=$(cut -d' ' -f1 "$TMP/p.txt" | median); pn=$(cut -d' ' -f2 "$TMP/p.txt" | minimum)
        tmed=$(cut -d' ' -f1 "$TMP/t.txt" | median); tn=$(cut -d' ' -f2 "$TMP/t.txt" | minimum)
        awk -v m="$m" -v b="$b" -v pm="$pm" -v pn="$pn" -v tm="$tmed" -v tn="$tn" 'BEGIN {
            printf "%-19s %5d | %10.2f %10.2f | %10.2f %10.2f | %7.2f %7.2f\n", m, b, pm, pn, tm, tn, pm/tm, pn/tn }'
    done
done

if [ "$HANDWRITTEN" = 1 ]; then
    echo "hand-written resnet152 (built-in) against torchvision's resnet152 imported, ms:"
    printf "%-19s %5s | %10s %10s | %10s %10s | %7s %7s\n" model batch "imported" "min" "built-in" "min" "ratio" "min/min"
    for b in $BATCHES; do
        : > "$TMP/i.txt"; : > "$TMP/h.txt"
        for r in $(seq "$ROUNDS"); do
            pipeps_warm "$KV" onnx_resnet152 "$b" >> "$TMP/i.txt"
            pipeps_warm "$KV" resnet152 "$b" >> "$TMP/h.txt"
        done
        im=$(cut -d' ' -f1 "$TMP/i.txt" | median); in_=$(cut -d' ' -f2 "$TMP/i.txt" | minimum)
        hm=$(cut -d' ' -f1 "$TMP/h.txt" | median); hn=$(cut -d' ' -f2 "$TMP/h.txt" | minimum)
        awk -v b="$b" -v im="$im" -v in_="$in_" -v hm="$hm" -v hn="$hn" 'BEGIN {
            printf "%-19s %5d | %10.2f %10.2f | %10.2f %10.2f | %7.2f %7.2f\n", "resnet152", b, im, in_, hm, hn, im/hm, in_/hn }'
    done
fi

if [ -n "$CLUSTER_MODELS" ]; then
    args=()
    for m in $CLUSTER_MODELS; do export_model "$m"; args+=(--onnx "$m=$TMP/$m.onnx$(seq_of "$m" :)"); done
    "$PY" "$HERE/bench_onnx_cluster.py" --bin "$BIN" "${args[@]}" --runs "$CLUSTER_RUNS" \
        --batches "$(echo $BATCHES | tr ' ' ',')" --threads "$THREADS"
fi
