#!/usr/bin/python3
"""pipeps bench: the experiments of issue 14 on local clusters, each written
as a CSV, a PNG plot (gnuplot) and a Markdown table into --out DIR.

Tooling only (Debian's /usr/bin/python3), never on the serving path. Every
experiment starts its own cluster on loopback (free ports, a temporary
directory, a /dev/shm pool named after this process) and stops it, so the
experiments are independent and can be run one at a time. The cluster
machinery (daemons, cache eviction, INFER timing, inputs) is bench_server's.

Experiments (names on the command line; none = all):
  latency    per model: resident, from the local cache, from remote storage
             pipelined and stop-and-start (batch 1, median of --runs)
  placement  throughput and p50/p99 latency against offered load (open-loop
             `client`, Zipf 0.9, exponential intervals) per placement policy
  batchsize  first-request latency (from storage, pipelined) against
             generate_file's MAX_BATCH_SIZE (0 = one layer per batch)
  cachesize  throughput and hit rate against the caches' size
  sharding   fetch time and cold pipelined latency with 1, 2 and 4 storages
  netns      `latency` with the storages in a network namespace behind a veth
             pair limited to 10 Gbit/s by tc (root and `ip netns` only)

The easy thing to get wrong: a daemon left behind. Every daemon goes through
one Bench object whose close() runs in a finally; the netns is deleted there
too, and the shm pools are named pipeps-bench-<pid>* and removed at exit.
"""
import argparse
import csv
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_server as BS  # noqa: E402
from bench_server import T  # noqa: E402

POLICIES = ("basic", "fastest_start", "round_robin", "least_loaded")
SOURCES = ("resident", "cache", "storage-pipelined", "storage-stop-and-start")
SOURCE_NAME = {0: "resident", 1: "cache", 2: "storage"}


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def model_line(m):
    base = m.split("-alter-")[0]
    return m + (", %d" % BS.SEQ if base in ("bert_base", "gpt2") else "")


def base_model(m):
    return m.split("-alter-")[0]


class Cluster(BS.Bench):
    """bench_server's Bench, with the choices the experiments vary: the model
    list, MAX_BATCH_SIZE, the number of storages, the distribution, and the
    address the storages listen on (a netns, for `netns`)."""

    def __init__(self, opt, tmp, models, nstorages=2, spread=2, max_batch=None,
                 storage_host="127.0.0.1", ns=None):
        self.opt, self.tmp, self.bin = opt, tmp, opt.bin
        self.daemons, self.cache, self.nserver = [], None, 0
        self.models, self.storage_host, self.ns = models, storage_host, ns
        os.makedirs(tmp, exist_ok=True)
        open(self.p("models.txt"), "w").write(
            "model_name\n" + "".join(model_line(m) + "\n" for m in models))
        self.kv = self.p("kv.bin")
        args = [self.b("generate_file"), self.p("models.txt"), self.kv]
        if max_batch is not None:
            args.append(str(max_batch))
        BS.run(args + ["--quiet"])
        try:
            self.meta = self.remote([self.b("metadata_storage"), storage_host, None, "--dir", self.p("meta")],
                                    "meta")
            self.storages = [self.remote([self.b("storage"), None, "--dir", self.p("s%d" % i),
                                          "--addr", storage_host], "s%d" % i) for i in range(nstorages)]
            open(self.p("storage_list.txt"), "w").write(
                "address, port\n" + "".join("%s, %d\n" % (storage_host, d.port)
                                            for d in [self.meta] + self.storages))
            self.deploy(spread)
        except BaseException:
            self.close()  # sys.exit included: no daemon outlives a failed start
            raise

    def deploy(self, spread):
        open(self.p("dist.txt"), "w").write("model, storages\n" + "".join(
            "%s, %s\n" % (m, ", ".join(str(i) for i in range(spread))) for m in self.models))
        BS.run([self.b("deploy_file"), self.p("storage_list.txt"), self.p("dist.txt"), self.kv])

    def remote(self, args, tag):
        """A daemon on the storage side: in the netns when there is one."""
        if not self.ns:
            return self.daemon(args, tag)
        port = T.free_port()
        args = ["ip", "netns", "exec", self.ns] + [str(port) if a is None else str(a) for a in args]
        d = T.Daemon.__new__(T.Daemon)
        d.args, d.port, d.log_path = args, port, self.p("%s.log" % tag)
        d.log = open(d.log_path, "ab")
        d.proc = subprocess.Popen(args, stdout=d.log, stderr=subprocess.STDOUT)
        wait_tcp(self.storage_host, port, d.proc, d.log_path)
        self.daemons.append(d)
        return d

    def start_cache(self, throttle=None, size="1536M"):
        if self.cache:
            self.cache.stop()
            self.daemons.remove(self.cache)
        self.cache = self.daemon([self.b("cache"), "127.0.0.1", None, self.storage_host, self.meta.port,
                                  "127.0.0.1", T.free_port(), shm_name("c"), size, "64K"], "cache")


def wait_tcp(host, port, proc, log_path, timeout=120):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit("daemon exited before listening:\n" + open(log_path).read()[-2000:])
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("%s:%d never opened" % (host, port))


def shm_name(tag):
    return "pipeps-bench-%d-%s" % (os.getpid(), tag)


def make_input(model):
    """bench_server's inputs, plus tiny_mlp's [1, 64]."""
    if base_model(model) == "tiny_mlp":
        import numpy as np
        return np.random.RandomState(1).uniform(-1, 1, size=(1, 64)).astype(np.float32)
    return BS.make_input(base_model(model), 1)


def median(v):
    return statistics.median(v) if v else float("nan")


# ---------------------------------------------------------------- outputs

def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([("%.3f" % x) if isinstance(x, float) else x for x in r])


def write_md(path, title, header, rows, note=""):
    lines = ["### " + title, ""]
    if note:
        lines += [note, ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in rows:
        lines.append("| " + " | ".join(("%.1f" % x) if isinstance(x, float) else str(x) for x in r) + " |")
    open(path, "w").write("\n".join(lines) + "\n")


def gnuplot(script, png):
    full = "set terminal pngcairo size 960,600 noenhanced font ',11'\nset output '%s'\n%s\n" % (png, script)
    p = subprocess.run(["gnuplot"], input=full, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("gnuplot failed for %s:\n%s" % (png, p.stderr))


def bar_plot(png, title, ylabel, dat, columns, logy=True):
    """Clustered bars: dat is a whitespace table, first column the x label,
    then one column per series named in columns."""
    import math
    plots = ", ".join("'%s' using %d:xtic(1) title '%s'" % (dat, i + 2, c) for i, c in enumerate(columns))
    vals = [float(v) for line in open(dat) for v in line.split()[1:] if float(v) > 0]
    low = 10 ** math.floor(math.log10(min(vals))) if logy and vals else 0  # a decade below the smallest
    gnuplot("set title '%s'\nset ylabel '%s'\nset xlabel 'model'\nset style data histograms\n"
            "set style histogram clustered gap 1\nset style fill solid 0.8 border -1\n"
            "set key outside bottom center horizontal\nset grid ytics\n%sset yrange [%g:*]\nplot %s"
            % (title, ylabel, "set logscale y\n" if logy else "", low, plots), png)


def line_plot(png, title, xlabel, ylabel, series, logx=False, logy=False, y2=None):
    """series: [(title, [(x, y)], axis[, gnuplot style])]; data inline."""
    plots, data = [], []
    for name, pts, axis, *style in series:
        plots.append("'-' using 1:2 with linespoints lw 2 %s axes %s title '%s'" % (
            style[0] if style else "", axis, name))
        data.append("\n".join("%g %g" % p for p in pts) + "\ne")
    extra = ("set logscale x\n" if logx else "") + ("set logscale y\n" if logy else "")
    if y2:
        extra += "set y2label '%s'\nset y2tics\nset ytics nomirror\n" % y2
    gnuplot("set title '%s'\nset xlabel '%s'\nset ylabel '%s'\nset key outside bottom center horizontal\n"
            "set grid\n%splot %s\n%s" % (title, xlabel, ylabel, extra, ", ".join(plots), "\n".join(data)),
            png)


# ---------------------------------------------------------------- experiments

def measure_latency(c, models, runs):
    """bench_server's four sources for each model at batch 1, in one cluster."""
    c.start_cache()
    switch = {m: c.server(m, memory="1") for m in ("pipelined", "stop-and-start")}
    rows = []
    for model in models:
        x = make_input(model)
        fetch = [1e3 * c.fetch_time(model) for _ in range(runs)]
        rows.append((model, "fetch-only", median(fetch), min(fetch), runs))
        for mode, srv in switch.items():
            c.infer(srv, model, x)  # the process's first run of this model pays one-off costs
            v = []
            for _ in range(runs):
                c.evict(model)
                t = c.infer(srv, model, x)
                v.append(BS.ms(t["total_us"]))
            rows.append((model, "storage-" + mode, median(v), min(v), runs))
        v = [BS.ms(c.infer(switch["pipelined"], model, x)["total_us"]) for _ in range(runs)]
        rows.append((model, "cache", median(v), min(v), runs))
        srv = c.server("pipelined")
        c.infer(srv, model, x)
        c.infer(srv, model, x)
        v = [BS.ms(c.infer(srv, model, x)["total_us"]) for _ in range(runs)]
        c.stop_server(srv)
        rows.append((model, "resident", median(v), min(v), runs))
        log("%s: %s" % (model, ", ".join("%s %.1f ms" % (r[1], r[2]) for r in rows if r[0] == model)))
    for srv in switch.values():
        c.stop_server(srv)
    return rows


def report_latency(opt, name, title, rows):
    header = ["model", "source", "median_ms", "min_ms", "runs"]
    write_csv(out(opt, name, "csv"), header, rows)
    models = list(dict.fromkeys(r[0] for r in rows))
    srcs = list(SOURCES) + ["fetch-only"]
    get = {(r[0], r[1]): r[2] for r in rows}
    dat = out(opt, name, "dat")
    open(dat, "w").write("".join("%s %s\n" % (m, " ".join("%.3f" % get[(m, s)] for s in SOURCES))
                                 for m in models))
    bar_plot(out(opt, name, "png"), title + " (batch 1, median of %d)" % opt.runs,
             "latency (ms, log scale)", dat, SOURCES)
    os.remove(dat)
    mdrows = [[m] + [get[(m, s)] for s in srcs] +
              ["%.2f" % (get[(m, "storage-stop-and-start")] / get[(m, "storage-pipelined")])]
              for m in models]
    write_md(out(opt, name, "md"), title,
             ["model", "resident (ms)", "from cache (ms)", "storage pipelined (ms)",
              "storage stop-and-start (ms)", "fetch only (ms)", "stop-and-start / pipelined"], mdrows,
             "Server-side latency (request receipt to response ready), median of %d runs at batch 1. "
             "'fetch only' is SUBSCRIBE to DONE on an empty cache, no server." % opt.runs)


def exp_latency(opt, tmp):
    c = Cluster(opt, tmp, opt.models)
    try:
        rows = measure_latency(c, opt.models, opt.runs)
    finally:
        c.close()
    report_latency(opt, "latency", "Latency per model and parameter source", rows)


def exp_netns(opt, tmp):
    if os.geteuid() != 0:
        return skip(opt, "netns", "not running as root (network namespaces and tc need root)")
    ns = "pipeps-bench-%d" % os.getpid()
    va, vb = "pbh%d" % (os.getpid() % 100000), "pbs%d" % (os.getpid() % 100000)
    p = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if p.returncode != 0:
        return skip(opt, "netns", "`ip netns add` failed: " + p.stderr.strip())
    c = None
    try:
        for cmd in (["ip", "link", "add", va, "type", "veth", "peer", "name", vb],
                    ["ip", "link", "set", vb, "netns", ns],
                    ["ip", "addr", "add", "10.213.0.1/24", "dev", va],
                    ["ip", "link", "set", va, "up"],
                    ["ip", "netns", "exec", ns, "ip", "addr", "add", "10.213.0.2/24", "dev", vb],
                    ["ip", "netns", "exec", ns, "ip", "link", "set", vb, "up"],
                    ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
                    ["tc", "qdisc", "add", "dev", va, "root", "tbf", "rate", "10gbit", "burst", "2mb",
                     "latency", "50ms"],
                    ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", vb, "root", "tbf", "rate",
                     "10gbit", "burst", "2mb", "latency", "50ms"]):
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                return skip(opt, "netns", "`%s` failed: %s" % (" ".join(cmd), p.stderr.strip()))
        c = Cluster(opt, tmp, opt.models, storage_host="10.213.0.2", ns=ns)
        rows = measure_latency(c, opt.models, opt.runs)
    finally:
        if c:
            c.close()
        subprocess.run(["ip", "link", "del", va], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    report_latency(opt, "netns", "Latency per model, storages behind a 10 Gbit/s veth (tc tbf)", rows)


def skip(opt, name, why):
    msg = "experiment %s skipped: %s" % (name, why)
    print(msg, flush=True)
    open(out(opt, name, "skipped.txt"), "w").write(msg + "\n")


class Machines:
    """A load balancer and two machines (127.0.0.2, .3: a cache and a server
    each) over a Cluster's storages, as bench_placement.sh sets them up."""

    def __init__(self, c, policy, pool):
        self.c, self.procs = c, []
        try:
            self.start(policy, pool)
        except BaseException:
            self.close()
            raise

    def start(self, policy, pool):
        c = self.c
        self.lbc, self.lbs, self.lbk = T.free_port(), T.free_port(), T.free_port()
        env = dict(os.environ, PIPEPS_LOG="warn")
        self.lb = self.spawn([c.b("load_balancer"), policy, "127.0.0.1", self.lbc, "127.0.0.1", self.lbs,
                              "127.0.0.1", self.lbk, c.storage_host, c.meta.port], "lb", env)
        wait_tcp("127.0.0.1", self.lbc, self.lb, c.p("lb.log"))
        self.cp, sp = T.free_port(), T.free_port()
        self.hosts = ("127.0.0.2", "127.0.0.3")
        for h in self.hosts:
            p = self.spawn([c.b("cache"), h, self.cp, c.storage_host, c.meta.port, "127.0.0.1", self.lbk,
                            shm_name(h), pool, "1M", "--lb-backoff-max", "200"], "cache-" + h, env)
            wait_tcp(h, self.cp, p, c.p("cache-%s.log" % h))
        for h in self.hosts:
            self.spawn([c.b("server"), h, sp, h, self.cp, "127.0.0.1", self.lbs, "--threads", "1",
                        "--memory", "1G", "--reserve", "0"], "server-" + h, env)
        for _ in range(1200):
            st = self.pipeps("stat", "lb", "127.0.0.1:%d" % self.lbc)
            lines = st.splitlines()
            if (sum(1 for l in lines if l.startswith("server ") and " ready 1" in l) >= 2 and
                    sum(1 for l in lines if l.startswith("cache ") and " connected 1" in l) >= 2):
                return
            time.sleep(0.1)
        sys.exit("machines did not register with the load balancer")

    def spawn(self, args, tag, env):
        f = open(self.c.p(tag + ".log"), "ab")
        p = subprocess.Popen([str(a) for a in args], stdout=f, stderr=subprocess.STDOUT, env=env)
        f.close()
        self.procs.append(p)
        return p

    def pipeps(self, *args):
        return subprocess.run([self.c.b("pipeps")] + list(args), capture_output=True, text=True).stdout

    def fetched(self):
        total = 0
        for h in self.hosts:
            for line in self.pipeps("stat", "cache", "%s:%d" % (h, self.cp)).splitlines():
                f = line.split()
                if len(f) >= 2 and f[0] == "bytes_fetched":
                    total += int(f[1])
        return total

    def run_client(self, req_list, tag):
        path = self.c.p("client-%s.csv" % tag)
        subprocess.run([self.c.b("client"), req_list, "127.0.0.1", str(self.lbc), "--quiet", "--csv", path,
                        "--timeout", "300"], capture_output=True)
        return client_stats(path)

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def client_stats(path):
    rows = list(csv.DictReader(open(path))) if os.path.exists(path) else []

    def col(r, *names):
        for n in names:
            if n in r:
                return r[n]
        raise KeyError(names)
    ok = [r for r in rows if col(r, "status") in ("0", "ok", "OK")]
    lat = sorted(float(col(r, "latency_ms")) for r in ok)
    send = [float(col(r, "send_s", "send_time_s")) for r in rows]
    done = [float(col(r, "send_s", "send_time_s")) + float(col(r, "latency_ms")) / 1e3 for r in ok]
    span = (max(done) - min(send)) if ok else 1.0

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
    hits = sum(1 for r in ok if col(r, "source") in ("resident", "cache"))
    return {"answered": len(ok), "errors": len(rows) - len(ok), "throughput": len(ok) / span,
            "p50": pct(0.5), "p99": pct(0.99), "hit_rate": hits / len(ok) if ok else 0.0}


def zipf_list(c, n, rate, tag):
    path = c.p("work-%s.txt" % tag)
    BS.run([c.b("workload"), c.p("models.txt"), path, n, 1, "zipf", "0.9", "%g" % rate, "exponential",
            "--seed", "7", "--batch", "1"])
    return path


def pool_size(c, fraction, floor=1.25):
    """fraction of all the models' bytes, and at least floor x the largest."""
    sizes = model_sizes(c)
    return max(int(sum(sizes.values()) * fraction), int(max(sizes.values()) * floor))


def model_sizes(c):
    sizes = {}
    for line in subprocess.run([c.b("pipeps"), "inspect", c.kv], capture_output=True, text=True).stdout.splitlines():
        f = line.split()
        if f and f[0] == "model" and "total_size" in f:
            sizes[f[1].rstrip(":")] = int(f[f.index("total_size") + 1])
    return sizes


def exp_placement(opt, tmp):
    c = Cluster(opt, tmp, opt.copies_list)
    rows = []
    try:
        pool = "%dM" % (pool_size(c, 0.125) >> 20)  # two caches: a quarter of the bytes in all
        for policy in POLICIES:
            for rate in opt.rates:
                m = Machines(c, policy, pool)
                try:
                    before = m.fetched()
                    s = m.run_client(zipf_list(c, opt.requests, rate, "%s-%g" % (policy, rate)),
                                     "%s-%g" % (policy, rate))
                    gb = (m.fetched() - before) / 1e9
                finally:
                    m.close()
                rows.append((policy, rate, s["answered"], s["errors"], s["throughput"], s["p50"], s["p99"],
                             s["hit_rate"], gb))
                log("placement %s @%g req/s: %.2f req/s, p50 %.0f ms, p99 %.0f ms, hit %.2f" %
                    (policy, rate, s["throughput"], s["p50"], s["p99"], s["hit_rate"]))
    finally:
        c.close()
    header = ["policy", "offered_rps", "answered", "errors", "throughput_rps", "p50_ms", "p99_ms",
              "hit_rate", "gb_fetched"]
    write_csv(out(opt, "placement", "csv"), header, rows)
    write_md(out(opt, "placement", "md"), "Placement policies against offered load", header,
             [r[:4] + tuple("%.2f" % v for v in r[4:5]) + r[5:7] + tuple("%.2f" % v for v in r[7:])
              for r in rows],
             "%d models (%s), Zipf 0.9, exponential intervals, %d requests per run, two machines whose "
             "caches hold a quarter of the bytes; fresh caches and servers per run." %
             (len(opt.copies_list), ", ".join(sorted(set(map(base_model, opt.copies_list)))), opt.requests))
    series = []
    for i, policy in enumerate(POLICIES):
        pr = [r for r in rows if r[0] == policy]
        series.append((policy + " p50", [(r[1], max(r[5], 0.1)) for r in pr], "x1y1", "lc %d dt 1" % (i + 1)))
        series.append((policy + " p99", [(r[1], max(r[6], 0.1)) for r in pr], "x1y1", "lc %d dt 2" % (i + 1)))
    line_plot(out(opt, "placement", "png"), "Latency (p50 solid, p99 dashed) against offered load per placement policy",
              "offered load (requests/s)", "latency (ms, log scale)", series, logy=True)
    line_plot(out(opt, "placement-throughput", "png"), "Throughput against offered load per placement policy",
              "offered load (requests/s)", "throughput (answers/s)",
              [(p, [(r[1], r[4]) for r in rows if r[0] == p], "x1y1") for p in POLICIES])


def exp_cachesize(opt, tmp):
    c = Cluster(opt, tmp, opt.copies_list)
    rows = []
    try:
        total = sum(model_sizes(c).values())
        for frac in opt.cache_fractions:
            pool_b = pool_size(c, frac, floor=1.1)  # per cache, as a fraction of all the models' bytes
            m = Machines(c, "basic", "%dM" % (pool_b >> 20))
            try:
                s = m.run_client(zipf_list(c, opt.requests, opt.rates[-1], "cache"), "cache-%g" % frac)
            finally:
                m.close()
            rows.append((pool_b >> 20, "%.2f" % (pool_b / total), s["answered"], s["errors"],
                         s["throughput"], s["p50"], s["p99"], s["hit_rate"]))
            log("cache %d MiB: %.2f req/s, hit %.2f" % (pool_b >> 20, s["throughput"], s["hit_rate"]))
    finally:
        c.close()
    header = ["cache_mib_per_machine", "fraction_of_model_bytes", "answered", "errors", "throughput_rps",
              "p50_ms", "p99_ms", "hit_rate"]
    write_csv(out(opt, "cachesize", "csv"), header, rows)
    write_md(out(opt, "cachesize", "md"), "Throughput and hit rate against cache size", header,
             [r[:4] + ("%.2f" % r[4], r[5], r[6], "%.2f" % r[7]) for r in rows],
             "Basic policy, two machines, open loop at %g req/s, Zipf 0.9, %d requests, %d models." %
             (opt.rates[-1], opt.requests, len(opt.copies_list)))
    line_plot(out(opt, "cachesize", "png"), "Throughput and hit rate against cache size (basic policy)",
              "cache size per machine (MiB)", "throughput (answers/s)",
              [("throughput", [(r[0], r[4]) for r in rows], "x1y1"),
               ("hit rate", [(r[0], r[7]) for r in rows], "x1y2")], y2="hit rate (fraction of answers)")


def exp_batchsize(opt, tmp):
    rows = []
    for mb in opt.batch_sizes:
        c = Cluster(opt, os.path.join(tmp, "b%d" % mb), opt.batch_models, max_batch=mb)
        try:
            c.start_cache()
            srv = c.server("pipelined", memory="1")
            nb = {}
            for line in subprocess.run([c.b("pipeps"), "inspect", c.kv], capture_output=True,
                                       text=True).stdout.splitlines():
                f = line.split()
                if f and f[0] == "model" and "batches," in f:
                    nb[f[1].rstrip(":")] = int(f[f.index("batches,") - 1])
            for model in opt.batch_models:
                x = make_input(model)
                c.infer(srv, model, x)
                v = []
                for _ in range(opt.runs):
                    c.evict(model)
                    v.append(BS.ms(c.infer(srv, model, x)["total_us"]))
                rows.append((model, mb, nb.get(model, 0), median(v), min(v)))
                log("batchsize %s %d: %d batches, %.1f ms" % (model, mb, nb.get(model, 0), median(v)))
        finally:
            c.close()
            shutil.rmtree(os.path.join(tmp, "b%d" % mb), ignore_errors=True)
    header = ["model", "max_batch_bytes", "batches", "median_ms", "min_ms"]
    write_csv(out(opt, "batchsize", "csv"), header, rows)
    write_md(out(opt, "batchsize", "md"), "First-request latency against parameter batch size", header,
             rows, "Cold request (model only in remote storage) on a pipelined server, batch 1, median of %d. "
             "MAX_BATCH_SIZE 0 = one layer per batch." % opt.runs)
    line_plot(out(opt, "batchsize", "png"), "First-request latency (from storage, pipelined) against batch size",
              "MAX_BATCH_SIZE (bytes, log scale; 0 drawn at 1 KiB)", "latency (ms)",
              [(m, [(max(r[1], 1024), r[3]) for r in rows if r[0] == m], "x1y1") for m in opt.batch_models],
              logx=True)


def exp_sharding(opt, tmp):
    rows = []
    c = Cluster(opt, tmp, opt.models, nstorages=4, spread=1)
    try:
        for spread in (1, 2, 4):
            if spread > 1:
                c.deploy(spread)
            c.start_cache()
            srv = c.server("pipelined", memory="1")
            for model in opt.models:
                x = make_input(model)
                fetch = [1e3 * c.fetch_time(model) for _ in range(opt.runs)]
                c.infer(srv, model, x)
                v = []
                for _ in range(opt.runs):
                    c.evict(model)
                    v.append(BS.ms(c.infer(srv, model, x)["total_us"]))
                rows.append((model, spread, median(fetch), median(v)))
                log("sharding %s over %d: fetch %.1f ms, pipelined %.1f ms" % (model, spread, median(fetch),
                                                                               median(v)))
            c.stop_server(srv)
    finally:
        c.close()
    header = ["model", "storages", "fetch_ms", "pipelined_ms"]
    write_csv(out(opt, "sharding", "csv"), header, rows)
    write_md(out(opt, "sharding", "md"), "One storage against two and four per model", header, rows,
             "Median of %d: fetch = SUBSCRIBE to DONE on an empty cache; pipelined = cold request "
             "from storage, batch 1. All storages on this machine (loopback)." % opt.runs)
    dat = out(opt, "sharding", "dat")
    open(dat, "w").write("".join("%s %s\n" % (m, " ".join("%.3f" % r[3] for r in rows if r[0] == m))
                                 for m in opt.models))
    bar_plot(out(opt, "sharding", "png"), "Cold pipelined latency with the model on 1, 2 and 4 storages",
             "latency (ms, log scale)", dat, ["1 storage", "2 storages", "4 storages"])
    os.remove(dat)


EXPERIMENTS = {"latency": exp_latency, "placement": exp_placement, "batchsize": exp_batchsize,
               "cachesize": exp_cachesize, "sharding": exp_sharding, "netns": exp_netns}


def out(opt, name, ext):
    return os.path.join(opt.out, "%s.%s" % (name, ext))


def main():
    ap = argparse.ArgumentParser(prog="pipeps bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                    help="any of %s (default: all)" % ", ".join(EXPERIMENTS))
    ap.add_argument("--out", default="bench-results", help="output directory (default bench-results)")
    ap.add_argument("--quick", action="store_true", help="small models, few requests (about 2 minutes)")
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "bin"))
    ap.add_argument("--runs", type=int, help="runs per latency figure (default 3; --quick 1)")
    ap.add_argument("--requests", type=int, help="requests per open-loop run (default 120; --quick 16)")
    ap.add_argument("--rates", help="offered loads in req/s, comma-separated")
    ap.add_argument("--models", help="models of latency, sharding, netns (comma-separated)")
    ap.add_argument("--threads", default="1", help="server compute threads (default 1)")
    opt = ap.parse_args()
    for e in opt.experiments:
        if e not in EXPERIMENTS:
            ap.error("unknown experiment '%s' (have: %s)" % (e, ", ".join(EXPERIMENTS)))
    if shutil.which("gnuplot") is None:
        sys.exit("pipeps bench: gnuplot not found (scripts/deps.sh installs gnuplot-nox)")
    q = opt.quick
    opt.runs = opt.runs or (1 if q else 3)
    opt.requests = opt.requests or (16 if q else 120)
    opt.rates = [float(r) for r in (opt.rates or ("2,6" if q else "0.5,1,2,4")).split(",")]
    opt.models = (opt.models or ("tiny_mlp,inception_v3,densenet201" if q else
                                 "resnet152,inception_v3,densenet201,bert_base,gpt2")).split(",")
    bases = ["tiny_mlp", "densenet201"] if q else ["resnet152", "inception_v3", "bert_base"]
    copies = 3 if q else 4
    opt.copies_list = ["%s-alter-%d" % (b, i) for i in range(1, copies + 1) for b in bases]
    opt.batch_models = ["tiny_mlp", "densenet201"] if q else ["resnet152", "bert_base"]
    opt.batch_sizes = [0, 1 << 30] if q else [0, 1 << 20, 4 << 20, 32 << 20, 128 << 20, 1 << 30]
    opt.cache_fractions = [0.4, 1.0] if q else [0.15, 0.3, 0.6]
    opt.bin = os.path.abspath(opt.bin)
    os.makedirs(opt.out, exist_ok=True)
    names = opt.experiments or list(EXPERIMENTS)
    print("pipeps bench: %s into %s (%s); %d cores, load average %s" % (
        ", ".join(names), opt.out, "quick" if q else "full", os.cpu_count(),
        open("/proc/loadavg").read().split()[0]), flush=True)
    tmp = tempfile.mkdtemp(prefix="pipeps-bench-")
    try:
        for name in names:
            t0 = time.time()
            EXPERIMENTS[name](opt, os.path.join(tmp, name))
            print("pipeps bench: %s done in %.0f s" % (name, time.time() - t0), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for f in glob.glob("/dev/shm/pipeps-bench-%d-*" % os.getpid()):
            os.remove(f)


if __name__ == "__main__":
    main()
