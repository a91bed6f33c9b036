#!/usr/bin/python3
"""Server benchmark (issue 5): latency of a request with the model resident,
in the local cache only, and only in remote storage (pipelined and
stop-and-start), plain and with the fetch throttled to 1.25 GB/s (10 GbE),
for resnet152 and bert_base at batch 1 and 8; median of N runs each, all in
one run. Not a test: figures and ratios are printed (and written as a
Markdown table with --markdown FILE); nothing is asserted.

It starts its own metadata storage, two storages (filled by deploy_file
from a kv.bin made by generate_file), caches and servers on loopback, in a
temporary directory. The fetch time of each model (SUBSCRIBE to DONE on an
empty cache, no server attached) is measured in the same run, unthrottled
and throttled, so ratios compare figures taken on the same machine state.

Issue 10 added: the parameter format (--target native, the default, or
portable), a fresh server process's first request from the cache after its
start-up warm-up (--warm-models) and without it, and a closed loop of
--alternate SECONDS alternating the first two models on a server whose
--memory holds only one of them (every request a cold load from the cache):
the largest queue wait there is time a request spent behind background work
(a single client: never behind another request).

Usage: bench/bench_server.py [--bin build/bin] [--runs 5] [--models resnet152,bert_base]
                             [--batches 1,8[:model+model]] [--throttle 1.25G] [--threads 2]
                             [--target native|portable] [--alternate 60]
                             [--markdown out.md] [--keep DIR]
"""
import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import pipeps_testlib as T  # noqa: E402

MSG_CACHE_SUBSCRIBE, MSG_CACHE_DONE, MSG_CACHE_OUT = 0x0302, 0x0305, 0x0308
SEQ = 128


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(args):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("%s failed:\n%s%s" % (args[0], p.stdout, p.stderr))
    return p


class Bench:
    def __init__(self, opt, tmp):
        self.opt, self.tmp = opt, tmp
        self.bin = opt.bin
        self.daemons = []
        models = "".join("%s%s\n" % (m, ", %d" % SEQ if m in ("bert_base", "gpt2") else "")
                         for m in opt.models)
        open(os.path.join(tmp, "models.txt"), "w").write("model_name\n" + models)
        self.kv = os.path.join(tmp, "kv.bin")
        log("generating kv.bin ...")
        run([self.b("generate_file"), os.path.join(tmp, "models.txt"), self.kv, "--quiet",
             "--target", opt.target])
        self.meta = self.daemon([self.b("metadata_storage"), None, "--dir", self.p("meta")], "meta")
        self.storages = [self.daemon([self.b("storage"), None, "--dir", self.p("s%d" % i)],
                                     "s%d" % i) for i in range(2)]
        open(self.p("storage_list.txt"), "w").write(
            "address, port\n" + "".join("127.0.0.1, %d\n" % d.port
                                        for d in [self.meta] + self.storages))
        open(self.p("dist.txt"), "w").write(
            "model, storages\n" + "".join("%s, 0, 1\n" % m for m in opt.models))
        log("deploying ...")
        run([self.b("deploy_file"), self.p("storage_list.txt"), self.p("dist.txt"), self.kv])
        self.cache = None
        self.nserver = 0

    def b(self, name):
        return os.path.join(self.bin, name)

    def p(self, name):
        return os.path.join(self.tmp, name)

    def daemon(self, args, tag, port=None):
        port = port or T.free_port()
        args = [str(port) if a is None else str(a) for a in args]
        log_path = self.p("%s.log" % tag)
        d = T.Daemon.__new__(T.Daemon)
        d.args, d.port, d.log_path = args, port, log_path
        d.log = open(log_path, "ab")
        env = dict(os.environ, PIPEPS_LOG=os.environ.get("PIPEPS_LOG", "info"))
        d.proc = subprocess.Popen(args, stdout=d.log, stderr=subprocess.STDOUT, env=env)
        T.wait_for_port(port, d.proc, log_path, timeout=600)
        self.daemons.append(d)
        return d

    def start_cache(self, throttle=None):
        if self.cache:
            self.cache.stop()
        name = "pipeps-bench-%d" % os.getpid()
        extra = ["--throttle", throttle] if throttle else []
        self.cache = self.daemon([self.b("cache"), "127.0.0.1", None, "127.0.0.1", self.meta.port,
                                  "127.0.0.1", T.free_port(), name, "1536M", "64K"] + extra,
                                 "cache-%s" % (throttle or "plain"))

    def evict(self, model):
        """CACHE_OUT; a server's unpin may still be on its way: retry EBUSY."""
        for _ in range(200):
            c = T.Conn(self.cache.port)
            try:
                status, body = c.call(MSG_CACHE_OUT, T.pack_str(model))
            finally:
                c.close()
            if status != T.E["BUSY"]:
                break
            time.sleep(0.05)
        assert status in (0, T.E["NOTFOUND"]), (status, body)

    def fetch_time(self, model):
        """SUBSCRIBE to DONE on an empty cache: the time to bring the model
        from the storages into the pool."""
        self.evict(model)
        c = T.Conn(self.cache.port, timeout=600)
        try:
            t0 = time.perf_counter()
            rid = c.send(MSG_CACHE_SUBSCRIBE, T.pack_str(model))
            while True:
                mtype, flags, status, r, body = c.recv()
                assert status == 0, body
                if r == rid and mtype == MSG_CACHE_DONE:
                    break
            return time.perf_counter() - t0
        finally:
            c.close()  # unpins

    def server(self, mode, memory="8G", warm=None):
        """A server; warm=N: --warm-models N and wait until it warmed N models."""
        self.nserver += 1
        extra = ["--warm-models", str(warm or 0)]
        d = self.daemon([self.b("server"), "127.0.0.1", None, "127.0.0.1", self.cache.port,
                         "127.0.0.1", "0", "--mode", mode, "--threads", self.opt.threads,
                         "--memory", memory] + extra, "server-%d" % self.nserver)
        # Wait for its cache connection (and warm-up), so the measured
        # request does not pay for them.
        for _ in range(1200):
            st = T.ServerConn(d.port).stat()
            if st.get("cache_connected") == 1 and st.get("warmed_models", 0) >= (warm or 0):
                break
            time.sleep(0.05)
        return d

    def stop_server(self, d):
        d.stop()
        self.daemons.remove(d)

    def infer(self, srv, model, x):
        c = T.ServerConn(srv.port, timeout=900)
        try:
            status, timing, _ = c.infer(model, [x])
        finally:
            c.close()
        if status != 0:
            sys.exit("INFER %s failed: %s" % (model, timing))
        return timing

    def close(self):
        for d in self.daemons:
            d.stop()


def alternate(bench, opt):
    """Closed loop alternating two models on a server that keeps one."""
    a, b = opt.models[0], opt.models[1]
    bench.start_cache(None)
    for m in (a, b):
        bench.fetch_time(m)                              # both in the cache
    # Room for either of the two, not both (pinned bytes + activations).
    srv = bench.server("pipelined")
    for m in (a, b):
        bench.infer(srv, m, make_input(m, 1))
    st = T.ServerConn(srv.port).stat()
    bench.stop_server(srv)
    used = st["memory_used"]
    memory = int(used * 0.75)
    srv = bench.server("pipelined", memory=str(memory))
    xs = {m: make_input(m, 1) for m in (a, b)}
    queue, total = [], []
    t_end = time.time() + opt.alternate
    i = 0
    while time.time() < t_end:
        m = (a, b)[i % 2]
        t = bench.infer(srv, m, xs[m])
        if i >= 2:                                       # the first two warm the process
            queue.append(ms(t["queue_us"]))
            total.append(ms(t["total_us"]))
        i += 1
    st = T.ServerConn(srv.port).stat()
    bench.stop_server(srv)
    assert st["served_from_cache"] >= len(queue), st     # every request was a cold load
    queue.sort()
    log("alternating: %d requests, queue max %.3f ms" % (len(queue), queue[-1]))
    return {"n": len(queue), "qmax": queue[-1], "q99": queue[int(0.99 * (len(queue) - 1))],
            "q50": statistics.median(queue), "t50": statistics.median(total),
            "memory": "%d MB" % (memory >> 20)}


def make_input(model, batch):
    import numpy as np
    rng = np.random.RandomState(batch)
    if model in ("bert_base", "gpt2"):
        return rng.randint(0, 1000, size=(batch, SEQ)).astype(np.int64)
    side = 299 if model == "inception_v3" else 224
    return rng.uniform(-1, 1, size=(batch, 3, side, side)).astype(np.float32)


def ms(us):
    return us / 1000.0


def summary(vals):
    return min(vals), statistics.median(vals)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "bin"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--models", default="resnet152,bert_base")
    ap.add_argument("--batches", default="1,8",
                    help="batch sizes; B:m1+m2 measures batch B for those models only")
    ap.add_argument("--throttle", default="1.25G")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--target", default="native", choices=["native", "portable"])
    ap.add_argument("--alternate", type=int, default=60,
                    help="seconds of the alternating closed loop (0: skip)")
    ap.add_argument("--markdown")
    ap.add_argument("--keep")
    opt = ap.parse_args()
    opt.models = opt.models.split(",")
    batches, batch_models = [], {}
    for spec in opt.batches.split(","):
        b, _, only = spec.partition(":")
        batches.append(int(b))
        if only:
            batch_models[int(b)] = only.split("+")

    def measured(model, batch):
        return model in batch_models.get(batch, [model])
    tmp = opt.keep or tempfile.mkdtemp(prefix="pipeps-bench-server-")
    os.makedirs(tmp, exist_ok=True)
    load_start = open("/proc/loadavg").read().split()[:3]
    bench = Bench(opt, tmp)
    alt = None
    res = {}   # (model, batch, what) -> [ms]
    fetch = {}  # (model, throttled) -> [s]
    try:
        for throttled in (False, True):
            bench.start_cache(opt.throttle if throttled else None)
            tag = "throttled" if throttled else "plain"
            # Long-lived servers that keep nothing (--memory 1): every request
            # is a model switch in a warm process, as in PipeSwitch.
            switch = {m: bench.server(m, memory="1") for m in ("pipelined", "stop-and-start")}
            for model in opt.models:
                fetch[(model, throttled)] = [bench.fetch_time(model) for _ in range(opt.runs)]
                log("%s fetch (%s): median %.1f ms" % (model, tag,
                                                       1e3 * statistics.median(fetch[(model, throttled)])))
                for batch in batches:
                    if not measured(model, batch):
                        continue
                    x = make_input(model, batch)
                    for mode, srv in switch.items():
                        bench.infer(srv, model, x)       # warm-up (first run in the process)
                        key = (model, batch, "storage-%s-%s" % (tag, mode))
                        res[key] = []
                        for _ in range(opt.runs):
                            bench.evict(model)
                            t = bench.infer(srv, model, x)
                            assert t["source"] == 2, t
                            res[key].append(ms(t["total_us"]))
                        log("%s b%d from storage (%s, %s): median %.1f ms" %
                            (model, batch, tag, mode, statistics.median(res[key])))
                    if throttled:
                        continue
                    # The model is in the cache now (the last run fetched it).
                    key = (model, batch, "cache")
                    res[key] = []
                    for _ in range(opt.runs):
                        t = bench.infer(switch["pipelined"], model, x)
                        assert t["source"] == 1, t
                        res[key].append(ms(t["total_us"]))
                    for key, warm in (((model, batch, "cache-fresh"), 1),
                                      ((model, batch, "cache-fresh-cold"), None)):
                        res[key] = []
                        for _ in range(opt.runs):
                            # the cache lists this model first: the last one used
                            srv = bench.server("pipelined", warm=warm)
                            t = bench.infer(srv, model, x)
                            bench.stop_server(srv)
                            assert t["source"] == 1, t
                            res[key].append(ms(t["total_us"]))
                    srv = bench.server("pipelined")
                    bench.infer(srv, model, x)           # load + warm-up
                    bench.infer(srv, model, x)
                    ts = [bench.infer(srv, model, x) for _ in range(opt.runs)]
                    bench.stop_server(srv)
                    res[(model, batch, "resident")] = [ms(t["total_us"]) for t in ts]
                    log("%s b%d from cache: median %.1f ms (fresh process %.1f ms); resident %.1f ms" %
                        (model, batch, statistics.median(res[(model, batch, "cache")]),
                         statistics.median(res[(model, batch, "cache-fresh")]),
                         statistics.median(res[(model, batch, "resident")])))
            for srv in switch.values():
                bench.stop_server(srv)
        if opt.alternate > 0 and len(opt.models) >= 2:
            alt = alternate(bench, opt)
    finally:
        bench.close()

    lines = []
    lines.append("| model | batch | resident | from cache | cache/resident | "
                 "from cache, fresh process (warmed) | fresh/resident | fresh, no warm-up | fetch | "
                 "storage pipelined | storage stop-and-start | pipelined/max(fetch, resident) | "
                 "pipelined/(fetch+resident) | stop-and-start/pipelined | fetch @%s | pipelined @%s | stop-and-start @%s | "
                 "pipelined/max @%s | s&s/pipelined @%s |"
                 % ((opt.throttle,) * 5))
    lines.append("|" + "---|" * 19)
    for model in opt.models:
        for batch in batches:
            if not measured(model, batch):
                continue
            g = lambda w: res[(model, batch, w)]  # noqa: E731
            f = lambda v: "%.1f / %.1f" % summary(v)  # noqa: E731
            resident = statistics.median(g("resident"))
            cache = statistics.median(g("cache"))
            row = [model, str(batch), f(g("resident")), f(g("cache")), "%.3f" % (cache / resident),
                   f(g("cache-fresh")), "%.3f" % (statistics.median(g("cache-fresh")) / resident),
                   f(g("cache-fresh-cold"))]
            for throttled, tag in ((False, "plain"), (True, "throttled")):
                fe = [1e3 * v for v in fetch[(model, throttled)]]
                pipe = statistics.median(g("storage-%s-pipelined" % tag))
                sas = statistics.median(g("storage-%s-stop-and-start" % tag))
                bound = max(statistics.median(fe), resident)
                row += [f(fe), f(g("storage-%s-pipelined" % tag)),
                        f(g("storage-%s-stop-and-start" % tag)), "%.3f" % (pipe / bound)]
                if not throttled:
                    row.append("%.3f" % (pipe / (statistics.median(fe) + resident)))
                row.append("%.3f" % (sas / pipe))
            lines.append("| " + " | ".join(row) + " |")
    if alt:
        lines.append("")
        lines.append("Closed loop alternating %s and %s for %d s on one server whose --memory "
                     "holds one of them (%s): %d requests; queue wait max %.3f ms, p99 %.3f ms, "
                     "median %.3f ms; total median %.1f ms."
                     % (opt.models[0], opt.models[1], opt.alternate, alt["memory"], alt["n"],
                        alt["qmax"], alt["q99"], alt["q50"], alt["t50"]))
    text = "\n".join(lines)
    print("All latencies in ms as min / median of %d runs (server-side total: receipt of the "
          "request to response ready). Cold runs are model switches in a warm server process "
          "(--memory 1, so nothing stays resident); 'fresh process' starts a new server per "
          "run. fetch = SUBSCRIBE to DONE on an empty cache, no server attached. Goals "
          "(issue 10): cache/resident <= 1.05; fresh/resident <= 1.3; pipelined/max @throttle "
          "<= 1.10 and s&s/pipelined @throttle >= 1.3; pipelined/(fetch+resident) <= 1.1 and "
          "s&s/pipelined >= 1 unthrottled. Parameter format: %s. Load average %s at the start, "
          "%s at the end." % (opt.runs, opt.target, " ".join(load_start),
                              " ".join(open("/proc/loadavg").read().split()[:3])))
    print(text)
    if opt.markdown:
        open(opt.markdown, "w").write(text + "\n")
    if not opt.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
