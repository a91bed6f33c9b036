#!/bin/bash
# bench_models.sh: warm latency of the PipePS CPU executor (`pipeps run`)
# against PyTorch 1.13 eager on the same architecture, weights, batch size
# and thread count, measured in the same run; and, for resnet152, the time
# from "first parameter batch available" to the output when batches arrive
# at a simulated 2.5 GB/s.
#
#   bench/bench_models.sh [--reps R] [--rounds K] [--models "m1 m2"] [--batches "1 8"]
#                         [--threads T] [--kv KV_BIN] [--feed-gbps G]
#
# Each (model, batch) is measured in K rounds; every round runs PipePS and
# PyTorch back to back (R warm runs each, after warm-up), so both see the
# same machine load. Reported: median and min over all rounds, and the
# ratios PipePS / PyTorch (below 1.0: PipePS faster). Figures only, nothing
# is asserted. Needs Debian's /usr/bin/python3 with torch and torchvision.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${PIPEPS_BIN:-$ROOT/build/bin}"
PY=/usr/bin/python3
OPENBLAS=/usr/lib/x86_64-linux-gnu/openblas-openmp

REPS=10
ROUNDS=3
MODELS="resnet152 inception_v3 bert_base gpt2"
BATCHES="1 8"
THREADS=2
KV=""
GBPS=2.5

while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --models) MODELS="$2"; shift 2 ;;
        --batches) BATCHES="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --kv) KV="$2"; shift 2 ;;
        --feed-gbps) GBPS="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "bench_models.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# PipePS reads the native format (generate_file's default); the PyTorch
# baseline reads the same weights from a portable copy (plain layouts).
{ echo "model_name[, seq_len]"; for m in $MODELS; do echo "$m"; done; } > "$TMP/model_list.txt"
if [ -z "$KV" ]; then
    KV="$TMP/kv.bin"
    "$BIN/generate_file" --quiet "$TMP/model_list.txt" "$KV" >/dev/null
fi
TORCH_KV="$TMP/portable.bin"
"$BIN/generate_file" --quiet --target portable "$TMP/model_list.txt" "$TORCH_KV" >/dev/null

echo "bench_models: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), threads $THREADS, $REPS warm runs x $ROUNDS rounds"
printf "%-13s %5s | %10s %10s | %10s %10s | %7s %7s\n" model batch "pipeps med" "min" "torch med" "min" "ratio" "min/min"

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
minimum() { sort -g | head -1; }

for m in $MODELS; do
    for b in $BATCHES; do
        : > "$TMP/p.txt"; : > "$TMP/t.txt"
        for r in $(seq "$ROUNDS"); do
            # pipeps run prints one warm line; each round contributes its median and min.
            "$BIN/pipeps" run "$KV" "$m" --batch "$b" --threads "$THREADS" --repeat "$REPS" \
                | awk '/^warm latency/ {print $4, $7}' >> "$TMP/p.txt"
            LD_LIBRARY_PATH="$OPENBLAS" "$PY" "$HERE/torch_baseline.py" "$TORCH_KV" "$m" "$b" "$REPS" "$THREADS" \
                | awk '/^torch/ {print $4, $5}' >> "$TMP/t.txt"
        done
        pm=$(cut -d' ' -f1 "$TMP/p.txt" | median); pn=$(cut -d' ' -f2 "$TMP/p.txt" | minimum)
        tmed=$(cut -d' ' -f1 "$TMP/t.txt" | median); tn=$(cut -d' ' -f2 "$TMP/t.txt" | minimum)
        awk -v m="$m" -v b="$b" -v pm="$pm" -v pn="$pn" -v tm="$tmed" -v tn="$tn" 'BEGIN {
            printf "%-13s %5d | %10.2f %10.2f | %10.2f %10.2f | %7.2f %7.2f\n", m, b, pm, pn, tm, tn, pm/tm, pn/tn }'
    done
done

# Pipelined: batches arrive at GBPS GB/s (a feeder thread), resnet152 batch 1.
# Each pipeps run does 3 cold cycles: the first with fresh memory (page faults
# on the prepared weights), the next two with memory recycled from the
# previous cycle, as in a server that switches between models.
if echo " $MODELS " | grep -q " resnet152 "; then
    : > "$TMP/f.txt"
    for r in $(seq "$ROUNDS"); do
        "$BIN/pipeps" run "$KV" resnet152 --batch 1 --threads "$THREADS" --repeat "$REPS" --feed-gbps "$GBPS" \
                --cold-runs 3 \
            | awk '/last batch/ {l=$(NF-4)} /^cold cycles/ {f=$8; c1=$11; c2=$12} /^warm latency/ {print f, $4, l, c1, c2}' >> "$TMP/f.txt"
    done
    fm=$(cut -d' ' -f1 "$TMP/f.txt" | median); fn=$(cut -d' ' -f1 "$TMP/f.txt" | minimum)
    wm=$(cut -d' ' -f2 "$TMP/f.txt" | median); lm=$(cut -d' ' -f3 "$TMP/f.txt" | median)
    rm_=$(cut -d' ' -f4,5 "$TMP/f.txt" | tr ' ' '\n' | median); rn=$(cut -d' ' -f4,5 "$TMP/f.txt" | tr ' ' '\n' | minimum)
    awk -v g="$GBPS" -v fm="$fm" -v fn="$fn" -v wm="$wm" -v lm="$lm" -v rm="$rm_" -v rn="$rn" 'BEGIN {
        d = lm > wm ? lm : wm
        printf "resnet152 b1, batches arriving at %.2f GB/s (all delivered after %.2f ms), warm latency %.2f ms:\n", g, lm, wm
        printf "  first batch available -> output, fresh memory:    median %.2f ms (min %.2f), %.2f x max(delivery, warm)\n", fm, fn, fm / d
        printf "  first batch available -> output, recycled memory: median %.2f ms (min %.2f), %.2f x max(delivery, warm)\n", rm, rn, rm / d }'
fi
