#!/usr/bin/python3
"""PyTorch eager baseline for bench_onnx.sh: the module that
tests/integration/onnx_export.py exports (same constructor, seed 0, so the
same weights as the imported .onnx), at the same batch size and threads.

  onnx_torch_baseline.py NAME BATCH REPS [THREADS]

Prints one line: "torch NAME BATCH median_ms min_ms". Run it with Debian's
/usr/bin/python3 and LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp
(as bench/torch_baseline.py)."""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import onnx_export as X  # noqa: E402


def main(argv):
    name, batch, reps = argv[1], int(argv[2]), int(argv[3])
    torch.set_num_threads(int(argv[4]) if len(argv) > 4 else 2)
    net = X.build(name)
    seq = X.TEXT_SEQ if name == X.TEXT else None
    x = torch.from_numpy(X.ExportedModel(name, None, net, 0, seq).make_input(batch))
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
    print("torch %s %d %.2f %.2f" % (name, batch, med, times[0]))


if __name__ == "__main__":
    main(sys.argv)
