"""Black-box tests of the load balancer on a real loopback cluster: a
metadata storage and two storages filled by deploy_file, the balancer, and
two "machines" (127.0.0.2 and 127.0.0.3), each with a cache and a server.
The test speaks the client protocol with its own Python implementation
(pipeps_testlib) and reads where each request ran from the balancer's block
in the timing (docs/protocol.md, "Load balancer: client link"). No test
asserts on a duration."""
import os
import socket
import struct
import subprocess
import threading
import time

import numpy as np
import pytest

import pipeps_testlib as T

SEQ = 16
MACHINES = ["127.0.0.2", "127.0.0.3"]
ALL_MODELS = ["resnet152", "inception_v3", "densenet201", "bert_base", "gpt2"]
COPIES = ["inception_v3-alter-%d" % i for i in range(1, 4)] + ["densenet201-alter-%d" % i for i in range(1, 3)]
_seq = [0]


def run(args, **kw):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kw)
    assert p.returncode == 0, "%s failed:\n%s\n%s" % (args[0], p.stdout, p.stderr)
    return p


def make_input(model, seed=0, batch=1):
    rng = np.random.RandomState(seed)
    base = model.split("-alter-")[0]
    if base in ("bert_base", "gpt2"):
        return rng.randint(0, 1000, size=(batch, SEQ)).astype(np.int64)
    side = 299 if base == "inception_v3" else 224
    return rng.uniform(-1, 1, size=(batch, 3, side, side)).astype(np.float32)


def wait_for(pred, timeout=60, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


class SlowDaemon(T.Daemon):
    """A daemon that may take long to listen (a cache pre-faulting its pool)."""

    def __init__(self, args, port, log_path, host="127.0.0.1"):
        self.args, self.port, self.log_path = args, port, log_path
        self.log = open(log_path, "ab")
        env = dict(os.environ)
        env.setdefault("PIPEPS_LOG", "info")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        end = time.time() + 600
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited:\n%s" % (args[0], open(log_path).read()[-3000:]))
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("port %d never opened" % port)


class Cluster:
    """kv.bin deployed on a metadata storage and two storages; a balancer;
    per machine a cache and a server, added on demand."""

    def __init__(self, tmp, models=None, spread=True):
        """models: the kv.bin's (default: the five and the copies); spread:
        alternate their storages (0 and 1, 1, 0 and 1, ...), else every model
        on both."""
        self.tmp = tmp
        models = models or ALL_MODELS + COPIES
        (tmp / "models.txt").write_text(
            "model_name\n" + "".join(("%s, %d\n" % (m, SEQ)) if m.split("-alter-")[0] in ("bert_base", "gpt2")
                                     else m + "\n" for m in models))
        self.kv = tmp / "kv.bin"
        run([T.binary("generate_file"), tmp / "models.txt", self.kv, "8M", "--quiet"])
        self.meta = T.start_metadata(tmp / "meta", tmp / "meta.log")
        self.storages = []
        for i in range(2):
            port = T.free_port()
            self.storages.append(T.Daemon([T.binary("storage"), str(port), "--dir", str(tmp / ("s%d" % i))],
                                          port, str(tmp / ("s%d.log" % i))))
        (tmp / "storage_list.txt").write_text(
            "address, port\n" + "".join("127.0.0.1, %d\n" % d.port for d in [self.meta] + self.storages))
        (tmp / "dist.txt").write_text("model, storages\n" + "".join(
            "%s, %s\n" % (m, "0, 1" if i % 2 == 0 or not spread else str(i % 2)) for i, m in enumerate(models)))
        run([T.binary("deploy_file"), tmp / "storage_list.txt", tmp / "dist.txt", self.kv])
        self.refs = {}
        self.lb = None
        self.daemons = []

    def reference(self, model, x):
        key = (model, x.shape, x.tobytes()[:64])
        if key not in self.refs:
            _seq[0] += 1
            xin = self.tmp / ("ref-in-%d.npy" % _seq[0])
            yout = self.tmp / ("ref-out-%d.npy" % _seq[0])
            np.save(xin, x)
            run([T.binary("pipeps"), "run", self.kv, model, "--input", xin, "--output", yout, "--repeat", "0"])
            self.refs[key] = np.load(yout)
        return self.refs[key]

    def start_lb(self, policy="basic", extra=()):
        self.lb_ports = [T.free_port() for _ in range(3)]
        args = [T.binary("load_balancer"), policy]
        for p in self.lb_ports:
            args += ["127.0.0.1", str(p)]
        args += ["127.0.0.1", str(self.meta.port)] + [str(a) for a in extra]
        _seq[0] += 1
        self.lb = T.Daemon(args, self.lb_ports[0], str(self.tmp / ("lb-%d.log" % _seq[0])))
        return self.lb

    def restart_lb(self, policy="basic", extra=()):
        """A new balancer on the same ports (servers and caches re-register)."""
        self.lb.stop()
        args = [T.binary("load_balancer"), policy]
        for p in self.lb_ports:
            args += ["127.0.0.1", str(p)]
        args += ["127.0.0.1", str(self.meta.port)] + [str(a) for a in extra]
        _seq[0] += 1
        self.lb = T.Daemon(args, self.lb_ports[0], str(self.tmp / ("lb-%d.log" % _seq[0])))
        return self.lb

    def start_cache(self, host, size, port=None, shm=None):
        _seq[0] += 1
        shm = shm or "pipeps-lbtest-%d-%d" % (os.getpid(), _seq[0])
        port = port or T.free_port()
        args = [T.binary("cache"), host, str(port), "127.0.0.1", str(self.meta.port), "127.0.0.1",
                str(self.lb_ports[2]), shm, size, "64K", "--lb-backoff-max", "500"]
        d = SlowDaemon(args, port, str(self.tmp / ("cache-%s-%d.log" % (host, _seq[0]))), host=host)
        d.shm_name, d.host = shm, host
        self.daemons.append(d)
        return d

    def start_server(self, host, cache, memory="8G", port=None):
        _seq[0] += 1
        port = port or T.free_port()
        args = [T.binary("server"), host, str(port), host, str(cache.port), "127.0.0.1", str(self.lb_ports[1]),
                "--memory", memory, "--reserve", "0", "--stall-timeout", "120"]
        d = SlowDaemon(args, port, str(self.tmp / ("server-%s-%d.log" % (host, _seq[0]))), host=host)
        d.host = host
        self.daemons.append(d)
        return d

    def stat(self):
        c = T.Conn(self.lb_ports[0])
        try:
            status, body = c.call(T.MSG["STAT"])
        finally:
            c.close()
        assert status == 0
        return body.decode()

    def stat_value(self, name):
        for line in self.stat().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == name:
                return float(parts[1])
        raise KeyError(name)

    def wait_registered(self, nservers, ncaches):
        def ok():
            text = self.stat()
            servers = [l for l in text.splitlines() if l.startswith("server ") and " ready 1 " in l]
            caches = [l for l in text.splitlines() if l.startswith("cache ") and " connected 1 " in l]
            return len(servers) >= nservers and len(caches) >= ncaches
        wait_for(ok, 60, "%d servers and %d caches to register" % (nservers, ncaches))

    def stop_all(self):
        for d in self.daemons:
            if d.alive():
                d.stop()
        self.daemons = []
        for shm in os.listdir("/dev/shm"):
            if shm.startswith("pipeps-lbtest-%d-" % os.getpid()):
                os.unlink("/dev/shm/" + shm)

    def stop(self):
        self.stop_all()
        if self.lb:
            self.lb.stop()
        for s in self.storages:
            s.stop()
        self.meta.stop()


def infer(port, model, x, timeout=600):
    c = T.ServerConn(port, timeout=timeout)
    try:
        return c.infer(model, [x])
    finally:
        c.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("lb"))
    c.start_lb("basic")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def machines(cluster):
    """Two machines with caches that hold every model, servers that keep
    models resident."""
    caches = [cluster.start_cache(h, "3G") for h in MACHINES]
    servers = [cluster.start_server(h, c) for h, c in zip(MACHINES, caches)]
    cluster.wait_registered(2, 2)
    return caches, servers


def decode_model_info(body):
    """MODEL_INFO answer -> ([(name, dtype, dims)], [(name, dtype, dims)], nbatches, param_bytes)."""
    pos = 0

    def specs():
        nonlocal pos
        (n,) = struct.unpack_from("<I", body, pos)
        pos += 4
        out = []
        for _ in range(n):
            (k,) = struct.unpack_from("<I", body, pos)
            name = body[pos + 4:pos + 4 + k].decode()
            pos += 4 + k
            dtype, ndims = struct.unpack_from("<BB", body, pos)
            pos += 2
            dims = list(struct.unpack_from("<%dq" % ndims, body, pos))
            pos += 8 * ndims
            out.append((name, dtype, dims))
        return out

    ins, outs = specs(), specs()
    nbatches, param_bytes = struct.unpack_from("<IQ", body, pos)
    return ins, outs, nbatches, param_bytes


def test_model_info_comes_from_the_metadata_not_a_cache(cluster, machines):
    """MODEL_INFO through the balancer describes the model from its METADATA
    blob without making any cache fetch it; unknown models get NOTFOUND."""
    caches, _ = machines
    before = [T.CacheConn(c.port, host=c.host).stat()["fetches_started"] for c in caches]
    c = T.Conn(cluster.lb_ports[0])
    try:
        status, body = c.call(T.MSG["MODEL_INFO"], T.pack_str("gpt2"))
        assert status == 0, body
        ins, outs, nbatches, param_bytes = decode_model_info(body)
        assert ins[0][0] == "input_ids" and ins[0][1] == 2 and ins[0][2] == [-1, SEQ], ins
        assert outs[0][2] == [-1, SEQ, 50257], outs
        assert nbatches > 0 and param_bytes > 400e6
        status, body = c.call(T.MSG["MODEL_INFO"], T.pack_str("gpt2"))  # cached now
        assert status == 0 and decode_model_info(body)[0] == ins
        status, body = c.call(T.MSG["MODEL_INFO"], T.pack_str("nosuch_model"))
        assert status == T.E["NOTFOUND"], body
    finally:
        c.close()
    after = [T.CacheConn(c.port, host=c.host).stat()["fetches_started"] for c in caches]
    assert after == before


def test_five_models_through_the_balancer_equal_pipeps_run(cluster, machines):
    """Every model through the balancer, cold then warm: outputs equal
    `pipeps run` bit for bit, and the balancer's block says where it ran."""
    for model in ALL_MODELS:
        for batch in (1, 2):
            x = make_input(model, seed=batch, batch=batch)
            status, timing, outs = infer(cluster.lb_ports[0], model, x)
            assert status == 0, "%s: %s" % (model, timing)
            np.testing.assert_array_equal(outs[0], cluster.reference(model, x))
            lb = timing["lb"]
            assert lb["server"].rsplit(":", 1)[0] in MACHINES
            assert lb["attempts"] == 1 and 1 <= lb["rule"] <= 4
            assert lb["lb_total_us"] >= lb["lb_queue_us"]


def test_pipeps_infer_through_the_balancer(cluster, machines, tmp_path):
    x = make_input("densenet201", seed=7)
    np.save(tmp_path / "x.npy", x)
    p = run([T.binary("pipeps"), "infer", "127.0.0.1:%d" % cluster.lb_ports[0], "densenet201", "--input",
             tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--repeat", "2"])
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), cluster.reference("densenet201", x))


def test_basic_sends_repeats_to_the_machine_that_caches_the_model(cluster, machines):
    model = "inception_v3-alter-1"
    x = make_input(model)
    where = []
    for _ in range(4):
        status, timing, outs = infer(cluster.lb_ports[0], model, x)
        assert status == 0, timing
        where.append((timing["lb"]["machine_id"], timing["lb"]["rule"], timing["lb"]["placed"]))
    first = where[0][0]
    assert all(m == first for m, _, _ in where), where
    assert all(rule == 1 for _, rule, _ in where[1:]), where  # cached and idle
    assert all(placed != 2 for _, _, placed in where[1:]), where
    # One CACHE_IN for it, on that machine only.
    lines = [l for l in cluster.stat().splitlines() if l.startswith("model %s " % model)]
    assert lines and lines[0].endswith("cached_on %d" % first), lines


def test_answers_come_back_by_request_id_out_of_order(cluster, machines):
    """Two requests on one connection: a slow cold one and a fast one that
    another server answers first; each answer carries its own id."""
    conn = T.ServerConn(cluster.lb_ports[0], timeout=600)
    try:
        slow = make_input("resnet152", seed=3, batch=4)
        fast = make_input("densenet201", seed=4)
        conn.send(T.MSG["INFER"], T.encode_infer("resnet152", [slow]), request_id=101)
        conn.send(T.MSG["INFER"], T.encode_infer("densenet201", [fast]), request_id=102)
        got = {}
        for _ in range(2):
            _t, _f, status, rid, body = conn.recv()
            assert status == 0, body[:200]
            got[rid] = T.decode_infer_response(body)[1][0]
        np.testing.assert_array_equal(got[101], cluster.reference("resnet152", slow))
        np.testing.assert_array_equal(got[102], cluster.reference("densenet201", fast))
    finally:
        conn.close()


def test_bad_input_gets_errors_and_the_balancer_keeps_serving(cluster, machines):
    port = cluster.lb_ports[0]
    # Unknown model: answered at once from the metadata storage's silence.
    status, text, _ = infer(port, "nosuch_model", make_input("densenet201"))
    assert status == T.E["NOTFOUND"], text
    assert "unknown model" in text
    # Wrong input shape: the server's error is relayed.
    status, text, _ = infer(port, "densenet201", np.zeros((1, 3, 10, 10), np.float32))
    assert status == T.E["SHAPE"], text
    # Bad model name, a response frame, an unknown type: errors, connection kept.
    c = T.Conn(port)
    try:
        c.send(T.MSG["INFER"], T.pack_str("bad name") + struct.pack("<II", 0, 0), request_id=5)
        _t, _f, status, rid, body = c.recv()
        assert status == T.E["INVAL"] and rid == 5
        c.sock.sendall(T.header(T.MSG["INFER"], 0, request_id=6, flags=1))
        _t, _f, status, rid, body = c.recv()
        assert status == T.E["PROTO"]
        c.sock.sendall(T.header(0x0777, 3, request_id=7) + b"abc")
        _t, _f, status, rid, body = c.recv()
        assert status == T.E["UNSUPPORTED"]
        status, body = c.call(T.MSG["PING"], b"still here")
        assert status == 0 and body == b"still here"
    finally:
        c.close()
    # A bad magic closes that connection only.
    c = T.Conn(port)
    try:
        c.sock.sendall(T.header(T.MSG["INFER"], 0, magic=0x12345678))
        _t, _f, status, rid, body = c.recv()
        assert status == T.E["PROTO"]
        assert c.sock.recv(1) == b""
    finally:
        c.close()
    # A peer that disconnects mid-frame.
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(T.header(T.MSG["INFER"], 1000)[:20])
    s.close()
    status, timing, outs = infer(port, "densenet201", make_input("densenet201", seed=9))
    assert status == 0, timing


def test_oversized_input_is_refused_before_buffering(cluster, machines, tmp_path):
    """--max-request: the payload is refused on its header and skipped; the
    connection goes on."""
    port = T.free_port()
    args = [T.binary("load_balancer"), "basic", "127.0.0.1", str(port), "127.0.0.1", "0", "127.0.0.1", "0",
            "127.0.0.1", str(cluster.meta.port), "--max-request", "64K"]
    d = T.Daemon(args, port, str(tmp_path / "lb-small.log"))
    try:
        c = T.Conn(port)
        big = T.encode_infer("densenet201", [np.zeros((1, 3, 224, 224), np.float32)])
        c.send(T.MSG["INFER"], big, request_id=9)
        _t, _f, status, rid, body = c.recv()
        assert status == T.E["TOOBIG"] and rid == 9, body
        status, body = c.call(T.MSG["PING"], b"after")
        assert status == 0 and body == b"after"
        c.close()
    finally:
        d.stop()


def test_queue_timeout_when_no_server_can_take_it(cluster, tmp_path):
    port = T.free_port()
    args = [T.binary("load_balancer"), "basic", "127.0.0.1", str(port), "127.0.0.1", "0", "127.0.0.1", "0",
            "127.0.0.1", str(cluster.meta.port), "--queue-timeout", "0.5"]
    d = T.Daemon(args, port, str(tmp_path / "lb-empty.log"))
    try:
        status, text, _ = infer(port, "densenet201", make_input("densenet201"))
        assert status == T.E["TIMEOUT"], text
        assert "no server registered" in text
        # Unknown models are still answered at once, not timed out.
        status, text, _ = infer(port, "nosuch_model", make_input("densenet201"))
        assert status == T.E["NOTFOUND"], text
    finally:
        d.stop()


def test_a_client_that_stops_reading_is_dropped(cluster, tmp_path):
    """--max-backlog: answers piling up for a client that never reads cost
    bounded memory; the client is dropped and others are served. Stand-in
    servers (bench_lb fake-servers) answer at once."""
    meta = T.MetaConn(cluster.meta.port)
    meta.put("standin-SIZE", b"1000")
    meta.close()
    port, sport = T.free_port(), T.free_port()
    args = [T.binary("load_balancer"), "least_loaded", "127.0.0.1", str(port), "127.0.0.1", str(sport),
            "127.0.0.1", "0", "127.0.0.1", str(cluster.meta.port), "--max-backlog", "1M", "--max-outstanding", "64"]
    d = T.Daemon(args, port, str(tmp_path / "lb-backlog.log"))
    fake = subprocess.Popen([os.path.join(T.BUILD, "bin", "bench_lb"), "fake-servers", "127.0.0.1:%d" % sport, "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def ready():
            c = T.Conn(port)
            try:
                return " ready 1 " in c.call(T.MSG["STAT"])[1].decode()
            finally:
                c.close()
        wait_for(ready, 30, "the stand-in server")
        x = np.zeros((1, 64), np.float32)
        req = T.encode_infer("standin", [x])
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        frame = T.header(T.MSG["INFER"], len(req)) + req
        try:
            for _ in range(200):
                s.sendall(frame * 500)
        except OSError:
            pass  # dropped while still sending
        wait_for(lambda: "over --max-backlog" in open(d.log_path).read(), 60, "the reader to be dropped")
        s.close()
        c = T.Conn(port)
        status, body = c.call(T.MSG["PING"], b"others")
        assert status == 0 and body == b"others"
        c.close()
    finally:
        fake.kill()
        fake.wait()
        d.stop()


def test_unknown_policy_lists_the_known_ones(cluster):
    p = subprocess.run([T.binary("load_balancer"), "fastest", "127.0.0.1", "1", "127.0.0.1", "2", "127.0.0.1", "3",
                        "127.0.0.1", "4"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "basic, fastest_start, round_robin, least_loaded" in p.stderr
    p = subprocess.run([T.binary("load_balancer"), "basic", "127.0.0.1", "1"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2 and "9 arguments" in p.stderr


def concurrent_requests(port, jobs, nthreads):
    """Send (model, x) jobs from nthreads closed loops; -> [(model, status, timing, out)]."""
    results, lock = [], threading.Lock()
    it = iter(list(jobs))

    def loop():
        conn = T.ServerConn(port, timeout=600)
        try:
            while True:
                with lock:
                    job = next(it, None)
                if job is None:
                    return
                model, x = job
                status, timing, outs = conn.infer(model, [x])
                with lock:
                    results.append((model, x, status, timing, outs[0] if outs else None))
        finally:
            conn.close()

    threads = [threading.Thread(target=loop) for _ in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
        assert not t.is_alive(), "a client thread hung"
    return results


@pytest.fixture(scope="module")
def small_machines(cluster, machines):
    """The same cluster with caches too small for all models: pools of 280M.
    At amplifier 1.5 the balancer makes room for 137M (inception_v3) or 116M
    (densenet201) next to the bytes already held (91M / 77M a model), so no
    machine can hold a third model and the six models of the eviction test
    cannot all stay: evictions are certain, whatever the routing. Servers
    keep nothing resident, so every pin at a cache is a request in flight."""
    cluster.stop_all()
    cluster.restart_lb("basic", ["--amplifier", "1.5"])
    caches = [cluster.start_cache(h, "280M") for h in MACHINES]
    servers = [cluster.start_server(h, c, memory="1") for h, c in zip(MACHINES, caches)]
    cluster.wait_registered(2, 2)
    return caches, servers


def test_eviction_keeps_caches_within_capacity_and_spares_models_in_use(cluster, small_machines):
    caches, _ = small_machines
    models = ["inception_v3", "inception_v3-alter-1", "inception_v3-alter-2", "inception_v3-alter-3",
              "densenet201", "densenet201-alter-1"]
    jobs = [(models[(i * 7) % len(models)], make_input(models[(i * 7) % len(models)], seed=i % 3))
            for i in range(36)]
    stop = threading.Event()
    over = []

    def watch():
        while not stop.is_set():
            for cache in caches:
                try:
                    s = T.CacheConn(cache.port, host=cache.host).stat()
                except OSError:
                    continue
                if s["used_bytes"] > s["capacity_bytes"]:
                    over.append(s)
            time.sleep(0.05)

    w = threading.Thread(target=watch)
    w.start()
    try:
        results = concurrent_requests(cluster.lb_ports[0], jobs, 4)
    finally:
        stop.set()
        w.join()
    assert len(results) == len(jobs)
    for model, x, status, timing, out in results:
        assert status == 0, "%s: %s" % (model, timing)
        np.testing.assert_array_equal(out, cluster.reference(model, x))
    assert not over
    assert cluster.stat_value("cache_out") > 0, "the workload should have needed evictions"
    # A CACHE_OUT of a model with a subscription in flight would be refused
    # by the cache (pinned): the balancer never asked for one.
    assert cluster.stat_value("cache_out_refused") == 0
    for line in cluster.stat().splitlines():
        if line.startswith("cache ") and " connected 1 " in line:
            f = line.split()
            assert int(f[f.index("used") + 1]) <= int(f[f.index("capacity") + 1]), line


def test_killing_a_server_mid_run_answers_every_request(cluster, small_machines):
    caches, servers = small_machines
    models = ["densenet201", "inception_v3"]
    jobs = [(models[i % 2], make_input(models[i % 2], seed=1)) for i in range(24)]
    killer = threading.Timer(1.0, servers[1].kill9)
    killer.start()
    results = concurrent_requests(cluster.lb_ports[0], jobs, 6)
    killer.join()
    assert len(results) == len(jobs)
    ok = [r for r in results if r[2] == 0]
    for model, x, status, timing, out in results:
        if status == 0:
            np.testing.assert_array_equal(out, cluster.reference(model, x))
        else:
            assert status in (T.E["CLOSED"], T.E["TIMEOUT"]), timing
    assert ok
    wait_for(lambda: cluster.stat_value("servers") == 1, 30, "the balancer to drop the dead server")
    # Requests after the loss all succeed on the surviving server.
    for model, x in jobs[:4]:
        status, timing, outs = infer(cluster.lb_ports[0], model, x)
        assert status == 0, timing
    # A server that comes back registers again and takes requests.
    servers[1] = cluster.start_server(MACHINES[1], caches[1], memory="1", port=servers[1].port)
    cluster.wait_registered(2, 2)


def test_killing_and_restarting_a_cache_the_run_goes_on(cluster, small_machines):
    caches, servers = small_machines
    model = "densenet201-alter-1"
    x = make_input(model, seed=2)
    results = []
    done = threading.Event()

    def client():
        conn = T.ServerConn(cluster.lb_ports[0], timeout=600)
        try:
            while not done.is_set():
                results.append(conn.infer(model, [x])[0])
        finally:
            conn.close()

    t = threading.Thread(target=client)
    t.start()
    try:
        wait_for(lambda: len(results) >= 2, 300, "the first requests")
        regs = cluster.stat_value("cache_registrations")
        old = caches[0]
        old.kill9()
        if os.path.exists("/dev/shm/" + old.shm_name):
            os.unlink("/dev/shm/" + old.shm_name)
        wait_for(lambda: cluster.stat_value("cache_losses") >= 1, 30, "the balancer to see the cache go")
        caches[0] = cluster.start_cache(old.host, "400M", port=old.port, shm=old.shm_name)
        wait_for(lambda: cluster.stat_value("cache_registrations") > regs, 60, "the cache to register again")
        n = len(results)
        wait_for(lambda: len(results) >= n + 3 and results[-1] == 0, 300, "requests after the restart")
    finally:
        done.set()
        t.join(600)
    assert results[-1] == 0
    status, timing, outs = infer(cluster.lb_ports[0], model, x)
    assert status == 0, timing
    np.testing.assert_array_equal(outs[0], cluster.reference(model, x))


@pytest.mark.parametrize("policy", ["round_robin", "least_loaded", "fastest_start"])
def test_other_policies_serve_correctly(cluster, small_machines, policy):
    cluster.restart_lb(policy)
    cluster.wait_registered(2, 2)
    models = ["densenet201", "inception_v3", "densenet201-alter-1"]
    jobs = [(models[i % 3], make_input(models[i % 3], seed=5)) for i in range(9)]
    results = concurrent_requests(cluster.lb_ports[0], jobs, 3)
    for model, x, status, timing, out in results:
        assert status == 0, "%s: %s" % (model, timing)
        np.testing.assert_array_equal(out, cluster.reference(model, x))
        assert timing["lb"]["rule"] == {"fastest_start": 5, "round_robin": 6, "least_loaded": 7}[policy]
    used = {r[3]["lb"]["server"] for r in results}
    if policy == "round_robin":
        assert len(used) == 2, used
    assert cluster.stat_value("decisions_" + policy) == len(jobs)


def test_balancer_stops_cleanly(cluster, small_machines):
    """SIGTERM: a clean exit (0), no sanitizer report, every request that was
    answered before counted."""
    status, timing, outs = infer(cluster.lb_ports[0], "densenet201", make_input("densenet201"))
    assert status == 0, timing
    rc = cluster.lb.stop()
    text = open(cluster.lb.log_path, errors="replace").read()
    assert rc == 0, text[-3000:]
    assert "Sanitizer" not in text and "runtime error" not in text, text[-3000:]
    assert "stopped:" in text
    cluster.lb = None
