#!/usr/bin/python3
"""PyTorch eager baseline for bench_models.sh: the same architecture with the
same weights (loaded from kv.bin by tests/integration/torch_models.py), the
same batch size, 2 threads by default.

  torch_baseline.py KV_BIN MODEL BATCH REPS [THREADS]

Prints one line: "torch MODEL BATCH median_ms min_ms". Run it with Debian's
/usr/bin/python3 and LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp
(see /work/shared/BASELINES.md: the pthread OpenBLAS fights PyTorch's OpenMP
threads).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import torch_models as tm  # noqa: E402


def main(argv):
    path, model, batch, reps = argv[1], argv[2], int(argv[3]), int(argv[4])
    threads = int(argv[5]) if len(argv) > 5 else 2
    torch.set_num_threads(threads)
    kv = tm.KvBin(path)
    net, meta, _ = tm.load_model(kv, model)
    x = tm.make_input(meta, batch)
    times = []
    with torch.no_grad():
        for _ in range(2):  # warm-up
            net(x)
        for _ in range(reps):
            t0 = time.perf_counter()
            net(x)
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    n = len(times)
    med = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    print("torch %s %d %.2f %.2f" % (model, batch, med, times[0]))
    del net
    kv.close()


if __name__ == "__main__":
    main(sys.argv)
