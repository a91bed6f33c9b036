#!/usr/bin/python3
"""Pipelined cold start of imported ONNX models through a loopback cluster
(bench_onnx.sh's last part): metadata storage, two storages filled by
deploy_file from a kv.bin whose model list imports the given .onnx files,
one cache, and servers in pipelined and stop-and-start mode. Reported per
model and batch, min / median of N runs: the request latency with the
model only in the storages (pipelined, and stop-and-start), from the cache,
and resident, plus the fetch time alone (SUBSCRIBE to DONE on an empty
cache), and the ratio pipelined / max(fetch, resident). Not a test:
nothing is asserted.

Usage: bench/bench_onnx_cluster.py --bin build/bin --onnx NAME=PATH.onnx[:SEQ] [--onnx ...]
                                   [--runs 3] [--batches 1,8] [--threads 2] [--markdown out.md]

The cluster plumbing (daemons, eviction, fetch timing) is bench_server.py's
Bench; only the model list differs (file= lines)."""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import bench_server as S  # noqa: E402


class OnnxBench(S.Bench):
    """bench_server's Bench with a model list of imported files."""

    def __init__(self, opt, tmp):
        self.opt, self.tmp = opt, tmp
        self.bin = opt.bin
        self.daemons = []
        lines = []
        for name, path, seq in opt.onnx:
            lines.append("%s, file=%s%s" % (name, os.path.abspath(path), ", seq=%d" % seq if seq else ""))
        open(os.path.join(tmp, "models.txt"), "w").write("model_name\n" + "\n".join(lines) + "\n")
        self.kv = os.path.join(tmp, "kv.bin")
        S.log("generating kv.bin (importing %d models) ..." % len(lines))
        S.run([self.b("generate_file"), os.path.join(tmp, "models.txt"), self.kv, "--quiet"])
        self.meta = self.daemon([self.b("metadata_storage"), None, "--dir", self.p("meta")], "meta")
        self.storages = [self.daemon([self.b("storage"), None, "--dir", self.p("s%d" % i)], "s%d" % i)
                         for i in range(2)]
        open(self.p("storage_list.txt"), "w").write(
            "address, port\n" + "".join("127.0.0.1, %d\n" % d.port for d in [self.meta] + self.storages))
        open(self.p("dist.txt"), "w").write("model, storages\n" + "".join("%s, 0, 1\n" % m for m, _, _ in opt.onnx))
        S.log("deploying ...")
        S.run([self.b("deploy_file"), self.p("storage_list.txt"), self.p("dist.txt"), self.kv])
        self.cache = None
        self.nserver = 0


def make_input(seq, batch):
    import numpy as np
    rng = np.random.RandomState(batch)
    if seq:
        return rng.randint(0, 1000, size=(batch, seq)).astype(np.int64)
    return rng.uniform(-1, 1, size=(batch, 3, 224, 224)).astype(np.float32)


def parse_onnx(arg):
    name, rest = arg.split("=", 1)
    seq = 0
    if rest.rsplit(":", 1)[-1].isdigit() and ":" in rest:
        rest, s = rest.rsplit(":", 1)
        seq = int(s)
    return name, rest, seq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "bin"))
    ap.add_argument("--onnx", action="append", type=parse_onnx, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--markdown")
    opt = ap.parse_args()
    batches = [int(b) for b in opt.batches.split(",")]
    tmp = tempfile.mkdtemp(prefix="pipeps-bench-onnx-")
    bench = OnnxBench(opt, tmp)
    rows = []
    try:
        bench.start_cache()
        switch = {m: bench.server(m, memory="1") for m in ("pipelined", "stop-and-start")}
        for name, _path, seq in opt.onnx:
            fetch = [1e3 * bench.fetch_time(name) for _ in range(opt.runs)]
            for batch in batches:
                x = make_input(seq, batch)
                cold = {}
                for mode, srv in switch.items():
                    bench.infer(srv, name, x)  # first run in the process
                    cold[mode] = []
                    for _ in range(opt.runs):
                        bench.evict(name)
                        t = bench.infer(srv, name, x)
                        assert t["source"] == 2, t
                        cold[mode].append(S.ms(t["total_us"]))
                cache = [S.ms(bench.infer(switch["pipelined"], name, x)["total_us"]) for _ in range(opt.runs)]
                srv = bench.server("pipelined")
                bench.infer(srv, name, x)
                bench.infer(srv, name, x)
                resident = [S.ms(bench.infer(srv, name, x)["total_us"]) for _ in range(opt.runs)]
                bench.stop_server(srv)
                bound = max(statistics.median(fetch), statistics.median(resident))
                f = lambda v: "%.1f / %.1f" % S.summary(v)  # noqa: E731
                rows.append([name, str(batch), f(resident), f(cache), f(fetch), f(cold["pipelined"]),
                             f(cold["stop-and-start"]), "%.3f" % (statistics.median(cold["pipelined"]) / bound),
                             "%.3f" % (statistics.median(cold["stop-and-start"]) /
                                       statistics.median(cold["pipelined"]))])
                S.log("%s b%d: pipelined cold %.1f ms, resident %.1f ms" % (
                    name, batch, statistics.median(cold["pipelined"]), statistics.median(resident)))
    finally:
        bench.close()
        shutil.rmtree(tmp, ignore_errors=True)
    lines = ["| model | batch | resident | from cache | fetch | storage pipelined | storage stop-and-start | "
             "pipelined/max(fetch, resident) | stop-and-start/pipelined |", "|" + "---|" * 9]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines)
    print("Imported models, cold start through the cluster: ms as min / median of %d runs (server-side "
          "total); cold = model switch in a warm server process (--memory 1)." % opt.runs)
    print(text)
    if opt.markdown:
        open(opt.markdown, "w").write(text + "\n")


if __name__ == "__main__":
    main()
