"""Black-box tests of the inference server on loopback with the real tier:
generate_file -> kv.bin, a metadata storage and two storages filled by
deploy_file, a cache, and servers. Outputs are compared bit for bit with
`pipeps run` on the same kv.bin. The test plays the load balancer where one
is needed (FakeServerLB) and speaks the server's protocol with its own Python
implementation (pipeps_testlib), so the C code is checked against
docs/protocol.md. No test asserts on a duration: timing fields are checked
for their logical relations only.

The tier serves the native parameter format (generate_file's default:
weights prepared offline, used in place from the cache); the reference
outputs come from the portable format, so every serving mode is also a
check that the prepared weights compute exactly what the plain ones do."""
import os
import socket
import struct
import subprocess
import threading
import time

import numpy as np
import pytest

import pipeps_testlib as T

MODELS = ["resnet152", "inception_v3", "densenet201", "bert_base", "gpt2"]
SEQ = 16
MAX_BATCH = "8M"
PORTABLE_BERT = "bert_base-alter-portable"
_seq = [0]


def shm_name():
    _seq[0] += 1
    return "pipeps-srvtest-%d-%d" % (os.getpid(), _seq[0])


def run(args, **kw):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kw)
    assert p.returncode == 0, "%s failed:\n%s\n%s" % (args[0], p.stdout, p.stderr)
    return p


def make_input(model, seed=0, batch=1):
    rng = np.random.RandomState(seed)
    if model in ("bert_base", "gpt2"):
        return rng.randint(0, 1000, size=(batch, SEQ)).astype(np.int64)
    side = 299 if model == "inception_v3" else 224
    return rng.uniform(-1, 1, size=(batch, 3, side, side)).astype(np.float32)


class SlowDaemon(T.Daemon):
    """A daemon that may take long to listen (a cache pre-faulting its pool
    on a loaded machine)."""

    def __init__(self, args, port, log_path):
        self.args, self.port, self.log_path = args, port, log_path
        self.log = open(log_path, "ab")
        env = dict(os.environ)
        env.setdefault("PIPEPS_LOG", "info")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        T.wait_for_port(port, self.proc, log_path, timeout=600)


class Tier:
    """kv.bin deployed on a metadata storage and two storages."""

    def __init__(self, tmp):
        self.tmp = tmp
        (tmp / "models.txt").write_text(
            "model_name\nresnet152\ninception_v3\ndensenet201\nbert_base, %d\ngpt2, %d\n" % (SEQ, SEQ))
        self.kv = tmp / "kv.bin"
        run([T.binary("generate_file"), tmp / "models.txt", self.kv, MAX_BATCH, "--quiet"])
        self.kv_portable = tmp / "portable.kv.bin"
        run([T.binary("generate_file"), tmp / "models.txt", self.kv_portable, MAX_BATCH, "--quiet",
             "--target", "portable"])
        self.meta = T.start_metadata(tmp / "meta", tmp / "meta.log")
        self.storages = []
        for i in range(2):
            port = T.free_port()
            self.storages.append(T.Daemon([T.binary("storage"), str(port), "--dir",
                                           str(tmp / ("s%d" % i))], port, str(tmp / ("s%d.log" % i))))
        (tmp / "storage_list.txt").write_text(
            "address, port\n" + "".join("127.0.0.1, %d\n" % d.port
                                        for d in [self.meta] + self.storages))
        (tmp / "dist.txt").write_text("model, storages\n" + "".join("%s, 0, 1\n" % m for m in MODELS))
        run([T.binary("deploy_file"), tmp / "storage_list.txt", tmp / "dist.txt", self.kv])
        # One portable model too, whose matmul weights a server relays after
        # the cold run (PORTABLE_BERT).
        (tmp / "portable-models.txt").write_text("model_name\n%s, %d\n" % (PORTABLE_BERT, SEQ))
        run([T.binary("generate_file"), tmp / "portable-models.txt", tmp / "portable-deploy.kv.bin",
             MAX_BATCH, "--quiet", "--target", "portable"])
        (tmp / "dist-portable.txt").write_text("model, storages\n%s, 0, 1\n" % PORTABLE_BERT)
        run([T.binary("deploy_file"), tmp / "storage_list.txt", tmp / "dist-portable.txt",
             tmp / "portable-deploy.kv.bin"])
        self.refs = {}

    def reference(self, model, x, tag):
        """Output of `pipeps run` on the portable kv.bin for input x."""
        key = (model, tag)
        if key not in self.refs:
            xin = self.tmp / ("ref-in-%s-%s.npy" % (model, tag))
            yout = self.tmp / ("ref-out-%s-%s.npy" % (model, tag))
            np.save(xin, x)
            run([T.binary("pipeps"), "run", self.kv_portable, model, "--input", xin, "--output", yout,
                 "--repeat", "0"])
            self.refs[key] = np.load(yout)
        return self.refs[key]

    def cache(self, size="1536M", extra=(), port=None):
        name = shm_name()
        port = port or T.free_port()
        args = [T.binary("cache"), "127.0.0.1", str(port), "127.0.0.1", str(self.meta.port),
                "127.0.0.1", str(T.free_port()), name, size, "64K"] + [str(a) for a in extra]
        d = SlowDaemon(args, port, str(self.tmp / ("cache-%s.log" % name)))
        d.shm_name = name
        return d

    def server(self, cache, mode="pipelined", memory="8G", lb_port=0, extra=()):
        n = len(list(self.tmp.glob("server-*.log")))
        return T.start_server(cache.port, lb_port, self.tmp / ("server-%d.log" % n),
                              extra=["--mode", mode, "--memory", memory, "--stall-timeout", "120"]
                              + list(extra))

    def stop(self):
        for s in self.storages:
            s.stop()
        self.meta.stop()


@pytest.fixture(scope="module")
def tier(tmp_path_factory):
    t = Tier(tmp_path_factory.mktemp("tier"))
    yield t
    t.stop()


@pytest.fixture(scope="module")
def serving(tier):
    """One cache, a pipelined server that keeps models (A), a stop-and-start
    server (B) and a pipelined server (C) that keep nothing."""
    cache = tier.cache()
    a = tier.server(cache, "pipelined")
    b = tier.server(cache, "stop-and-start", memory="1")
    c = tier.server(cache, "pipelined", memory="1")
    yield cache, a, b, c
    for d in (a, b, c, cache):
        d.stop()


def infer_ok(server, model, x):
    conn = T.ServerConn(server.port, timeout=600)
    try:
        status, timing, outs = conn.infer(model, [x])
    finally:
        conn.close()
    assert status == 0, "%s: %s" % (T.E.get(status, status), timing)
    assert len(outs) == 1
    return timing, outs[0]


def check_timing(t, source, mode):
    assert T.INFER_SOURCES[t["source"]] == source, t
    assert t["mode"] == (1 if mode == "stop-and-start" else 0)
    assert t["total_us"] >= t["queue_us"]
    assert t["exec_end_us"] >= t["exec_start_us"]
    assert t["total_us"] >= t["exec_end_us"]
    assert t["compute_us"] > 0
    if source == "resident":
        assert t["batches_at_start"] == t["nbatches"] and t["last_batch_us"] == 0
    else:
        assert t["nbatches"] > 1
        assert t["meta_us"] <= t["first_batch_us"] <= t["last_batch_us"] <= t["exec_end_us"]
    if mode == "stop-and-start" and source != "resident":
        # The baseline runs only once every batch is here.
        assert t["exec_start_us"] >= t["last_batch_us"]


def relaid_lines(server):
    return "".join(l for l in server.log_text().splitlines(True) if "weights relaid in" in l)


@pytest.mark.parametrize("model", MODELS)
def test_outputs_bit_identical_in_every_mode(tier, serving, model):
    cache, a, b, c = serving
    x = make_input(model)
    ref = tier.reference(model, x, "s0")
    x3 = make_input(model, seed=3, batch=3)
    ref3 = tier.reference(model, x3, "s3b3")

    t, y = infer_ok(a, model, x)                    # cold: only in remote storage
    check_timing(t, "storage", "pipelined")
    assert np.array_equal(y, ref), "pipelined from storage differs from pipeps run"

    t, y = infer_ok(a, model, x)                    # resident in A
    check_timing(t, "resident", "pipelined")
    assert np.array_equal(y, ref), "resident run differs"
    t, y = infer_ok(a, model, x3)                   # resident, batch 3
    assert np.array_equal(y, ref3), "resident run at batch 3 differs"
    if model == "gpt2":
        # GPT-2's output projection shares its weight with the token
        # embedding, so the native format keeps it plain: the cold run used
        # it in place; the idle worker relays it (after the first or, if a
        # request was already queued, a later request) and the outputs keep
        # the same bits.
        deadline = time.time() + 20
        while "%s: " % model not in relaid_lines(a) and time.time() < deadline:
            time.sleep(0.05)
        assert "%s: " % model in relaid_lines(a), "no deferred relayout logged"
        t, y = infer_ok(a, model, x)
        check_timing(t, "resident", "pipelined")
        assert np.array_equal(y, ref), "resident run after the relayout differs"

    t, y = infer_ok(b, model, x)                    # stop-and-start, from the cache
    check_timing(t, "cache", "stop-and-start")
    assert np.array_equal(y, ref), "stop-and-start differs"
    t, y = infer_ok(b, model, x3)
    check_timing(t, "cache", "stop-and-start")
    assert np.array_equal(y, ref3), "stop-and-start at batch 3 differs"

    t, y = infer_ok(c, model, x)                    # pipelined from the cache
    check_timing(t, "cache", "pipelined")
    assert np.array_equal(y, ref), "pipelined from the cache differs"
    t, y = infer_ok(c, model, x3)
    check_timing(t, "cache", "pipelined")
    assert np.array_equal(y, ref3), "pipelined from the cache at batch 3 differs"

    st = T.ServerConn(c.port).stat()
    assert st["resident_models"] == 0               # --memory 1 keeps nothing


def test_request_during_idle_relayout_is_not_held(tier):
    """A portable model's cold run uses its matmul weights in place; once it
    is answered the idle worker reorders them (hundreds of ms of work for
    bert_base) in slices that stop for a request. A request sent right after
    the first answer arrives during that work and must start within about a
    slice, not after the whole relayout (the bound is generous: a loaded
    machine must not make it flake; the old unsliced relayout took over
    600 ms on a quiet one). The relayout completes afterwards and the
    outputs keep their bits."""
    cache = tier.cache(size="1G")
    srv = tier.server(cache, "pipelined")
    try:
        x = make_input("bert_base")
        ref = tier.reference("bert_base", x, "s0")
        t, y = infer_ok(srv, PORTABLE_BERT, x)       # cold: weights used in place
        assert np.array_equal(y, ref)
        t, y = infer_ok(srv, PORTABLE_BERT, x)       # arrives while the worker relays
        assert np.array_equal(y, ref)
        assert t["queue_us"] < 250000, "waited %.1f ms behind the relayout" % (t["queue_us"] / 1e3)
        deadline = time.time() + 60
        while "%s: " % PORTABLE_BERT not in relaid_lines(srv) and time.time() < deadline:
            time.sleep(0.05)
        assert "%s: " % PORTABLE_BERT in relaid_lines(srv), "the relayout never finished"
        t, y = infer_ok(srv, PORTABLE_BERT, x)
        assert np.array_equal(y, ref), "output after the relayout differs"
    finally:
        srv.stop()
        cache.stop()


def test_fresh_server_warms_the_cached_models_kernels(tier):
    """CACHE_LIST names the complete models; a
    server started afterwards builds their kernels before any request
    (--warm-models, STAT warmed_models), and then serves them as usual."""
    cache = tier.cache(size="1G")
    first = tier.server(cache, "pipelined")
    try:
        for m in ("inception_v3", "resnet152"):
            infer_ok(first, m, make_input(m))
    finally:
        first.stop()
    cc = T.CacheConn(cache.port)
    try:
        listed = [e[0] for e in cc.cache_list()]
    finally:
        cc.close()
    assert sorted(listed) == ["inception_v3", "resnet152"], listed
    warm = tier.server(cache, "pipelined", extra=["--warm-models", "1"])
    cold = tier.server(cache, "pipelined", extra=["--warm-models", "0"])
    try:
        assert wait_for(lambda: T.ServerConn(warm.port).stat()["warmed_models"] == 1, 120)
        assert "warm-up: kernels of 1 of the cache's" in warm.log_text()
        assert T.ServerConn(cold.port).stat()["warmed_models"] == 0
        x = make_input("resnet152")
        for srv in (warm, cold):
            t, y = infer_ok(srv, "resnet152", x)
            check_timing(t, "cache", "pipelined")
            assert np.array_equal(y, tier.reference("resnet152", x, "s0"))
    finally:
        warm.stop()
        cold.stop()
        cache.stop()


def test_infer_client_tool(tier, serving):
    cache, a, b, c = serving
    x = make_input("densenet201", seed=3, batch=2)
    ref = tier.reference("densenet201", x, "s3b2")
    np.save(tier.tmp / "tool-in.npy", x)
    p = run([T.binary("pipeps"), "infer", "127.0.0.1:%d" % a.port, "densenet201", "--input",
             tier.tmp / "tool-in.npy", "--output", tier.tmp / "tool-out.npy", "--repeat", "3"])
    assert p.stdout.count("request ") == 3 and "median" in p.stdout
    assert np.array_equal(np.load(tier.tmp / "tool-out.npy"), ref)
    # Without --input: the input spec comes from MODEL_INFO.
    p = run([T.binary("pipeps"), "infer", "127.0.0.1:%d" % a.port, "gpt2", "--batch", "2",
             "--output", tier.tmp / "gen-out.npy"])
    assert np.load(tier.tmp / "gen-out.npy").shape[:2] == (2, SEQ)
    # bert_base: only input_ids is generated; the optional inputs are left out.
    p = run([T.binary("pipeps"), "infer", "127.0.0.1:%d" % a.port, "bert_base",
             "--output", tier.tmp / "gen-bert.npy"])
    assert np.load(tier.tmp / "gen-bert.npy").shape == (1, SEQ, 768)
    p = subprocess.run([T.binary("pipeps"), "infer", "127.0.0.1:%d" % a.port, "no_such_model"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "no_such_model" in p.stderr


def test_bert_optional_inputs(tier, serving):
    """bert_base's trailing optional inputs may be left out of INFER (the
    defaults, mask all ones and token types 0, give the same bits); a
    padding mask and token types give what `pipeps run --input2 --input3`
    gives; more inputs than the model has, mask values other than 0/1 and
    negative token ids are refused."""
    cache, a, b, c = serving
    ids = make_input("bert_base", seed=11, batch=2)
    ref = tier.reference("bert_base", ids, "s11b2")
    ones, zeros = np.ones_like(ids), np.zeros_like(ids)
    mask, types = ones.copy(), zeros.copy()
    mask[1, SEQ // 2:] = 0
    types[:, SEQ // 3:] = 1
    for i, arr in enumerate((ids, mask, types)):
        np.save(tier.tmp / ("opt-in%d.npy" % i), arr)
    run([T.binary("pipeps"), "run", tier.kv, "bert_base", "--input", tier.tmp / "opt-in0.npy",
         "--input2", tier.tmp / "opt-in1.npy", "--input3", tier.tmp / "opt-in2.npy",
         "--output", tier.tmp / "opt-out.npy", "--repeat", "0"])
    want = np.load(tier.tmp / "opt-out.npy")
    assert not np.array_equal(want, ref)

    def text(m):
        return m if isinstance(m, str) else m.decode()

    conn = T.ServerConn(a.port, timeout=600)
    try:
        for arrays in ([ids], [ids, ones], [ids, ones, zeros]):
            status, msg, outs = conn.infer("bert_base", arrays)
            assert status == 0, msg
            assert np.array_equal(outs[0], ref), len(arrays)
        status, msg, outs = conn.infer("bert_base", [ids, mask, types])
        assert status == 0, msg
        assert np.array_equal(outs[0], want)
        status, msg, _ = conn.infer("bert_base", [ids, ones, zeros, zeros])
        assert status == T.E["SHAPE"] and "1 to 3 input tensors" in text(msg), msg
        bad = ones.copy()
        bad[0, 1] = 2
        status, msg, _ = conn.infer("bert_base", [ids, bad])
        assert status == T.E["RANGE"] and "'attention_mask' at [0, 1] is 2" in text(msg), msg
        neg = ids.copy()
        neg[1, 2] = -1
        status, msg, _ = conn.infer("bert_base", [neg])
        assert status == T.E["RANGE"] and "'input_ids' at [1, 2] is -1" in text(msg), msg
    finally:
        conn.close()


def test_bad_requests_get_errors_and_server_keeps_serving(tier, serving):
    cache, a, b, c = serving
    conn = T.ServerConn(a.port, timeout=300)
    x = make_input("inception_v3")
    cases = [
        ("inception_v3", [np.zeros((1, 3, 224, 224), np.float32)], "SHAPE"),   # wrong size
        ("inception_v3", [np.zeros((1, 3, 299, 299), np.int64)], "SHAPE"),     # wrong dtype
        ("inception_v3", [x, x], "SHAPE"),                                       # two inputs
        ("bert_base", [np.zeros((1, SEQ + 1), np.int64)], "SHAPE"),           # wrong length
        ("bert_base", [np.full((1, SEQ), 10 ** 9, np.int64)], "RANGE"),       # token id
        ("no_such_model", [x], "NOTFOUND"),
    ]
    for model, arrays, err in cases:
        status, msg, _ = conn.infer(model, arrays)
        assert status == T.E[err], (model, status, msg)
        assert msg
    # Malformed payloads on a well-framed request: an error, the connection stays.
    good = T.encode_infer("inception_v3", [x])
    for payload in (b"", good[:40], good[:-1], good + b"x", T.pack_str("a b") + good[9:],
                    T.pack_str("x" * 300) + struct.pack("<II", 0, 1),
                    T.pack_str("inception_v3") + struct.pack("<II", 0, 0),
                    T.pack_str("inception_v3") + struct.pack("<II", 0, 1) +
                    struct.pack("<BB6xq", 1, 1, -3) + struct.pack("<Q", 0)):
        status, body = conn.call(T.MSG["INFER"], payload)
        assert status < 0, payload[:32]
    # Unknown type: ERROR/UNSUPPORTED, connection kept.
    status, _ = conn.call(0x04ff, b"")
    assert status == T.E["UNSUPPORTED"]
    t = conn.infer("inception_v3", [x])
    assert t[0] == 0
    conn.close()
    # Bad magic and an over-limit length: answered, then that connection closes.
    for hdr in (T.header(T.MSG["INFER"], 0, magic=0x12345678),
                T.header(T.MSG["INFER"], 1 << 40)):
        s = socket.create_connection(("127.0.0.1", a.port), timeout=30)
        s.sendall(hdr)
        _, _, _, mtype, status, _, _, plen = T.HEADER.unpack(T.recv_exact(s, 32))
        assert status in (T.E["PROTO"], T.E["TOOBIG"])
        T.recv_exact(s, plen)
        assert s.recv(1) == b""
        s.close()
    # A peer that vanishes in the middle of a request.
    s = socket.create_connection(("127.0.0.1", a.port), timeout=30)
    s.sendall(T.header(T.MSG["INFER"], len(good)) + good[:1000])
    s.close()
    t, y = infer_ok(a, "inception_v3", x)
    assert np.array_equal(y, tier.reference("inception_v3", x, "s0"))
    st = T.ServerConn(a.port).stat()
    assert st["bad_requests"] >= 8 and a.alive()


def test_throttled_fetch_overlaps_execution(tier):
    """Batches slowed down by the cache's throttle: same output, and the
    timing shows compute that happened before the last batch arrived."""
    cache = tier.cache(size="512M", extra=["--throttle", "40M"])
    srv = tier.server(cache, "pipelined")
    try:
        x = make_input("resnet152", seed=5)
        t, y = infer_ok(srv, "resnet152", x)
        assert np.array_equal(y, tier.reference("resnet152", x, "s5"))
        check_timing(t, "storage", "pipelined")
        assert t["batches_at_start"] < t["nbatches"]
        assert t["exec_start_us"] < t["last_batch_us"]
        # Compute finished within less than the whole compute time after the
        # last batch arrived: part of it ran while batches were in flight.
        assert t["exec_end_us"] - t["last_batch_us"] < t["compute_us"], t
    finally:
        srv.stop()
        cache.stop()


def test_killed_cache_gives_errors_then_reconnects(tier):
    cache = tier.cache(size="512M", extra=["--throttle", "20M"])
    srv = tier.server(cache, "pipelined")
    try:
        x = make_input("densenet201", seed=7)
        t, y = infer_ok(srv, "densenet201", x)          # resident from now on
        # Kill the cache while a cold model is being fetched (slowly).
        result = {}

        def cold():
            conn = T.ServerConn(srv.port, timeout=300)
            result["r"] = conn.infer("resnet152", [make_input("resnet152")])
            conn.close()

        th = threading.Thread(target=cold)
        th.start()
        time.sleep(1.5)
        cache.kill9()
        # A killed cache leaves its segment; the server's mapping keeps the
        # pages alive, so it can go from the namespace now.
        os.unlink("/dev/shm/" + cache.shm_name)
        th.join(300)
        assert not th.is_alive(), "request hung after the cache died"
        status, msg, _ = result["r"]
        assert status in (T.E["CLOSED"], T.E["FETCH"], T.E["CONNECT"]), (status, msg)
        assert "cache" in msg
        # Resident models keep working; cold ones get a clear error.
        t, y2 = infer_ok(srv, "densenet201", x)
        assert T.INFER_SOURCES[t["source"]] == "resident" and np.array_equal(y, y2)
        conn = T.ServerConn(srv.port, timeout=120)
        status, msg, _ = conn.infer("inception_v3", [make_input("inception_v3")])
        conn.close()
        assert status in (T.E["CONNECT"], T.E["CLOSED"]), (status, msg)
        # The cache comes back on the same port: the server reconnects.
        cache2 = tier.cache(size="512M", port=cache.port)
        try:
            deadline = time.time() + 120
            while True:
                conn = T.ServerConn(srv.port, timeout=300)
                status, t, outs = conn.infer("inception_v3", [make_input("inception_v3")])
                conn.close()
                if status == 0 or time.time() > deadline:
                    break
                time.sleep(0.5)
            assert status == 0, t
            assert np.array_equal(outs[0], tier.reference("inception_v3",
                                                          make_input("inception_v3"), "s0"))
        finally:
            cache2.stop()
        assert srv.alive()
    finally:
        srv.stop()
        if cache.alive():
            cache.stop()


class FakeServerLB:
    """Accepts server registrations (answers status 0) and records them and
    the one-way events that follow."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.registrations, self.events = [], []
        self.conns = []
        self.stop_flag = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stop_flag:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            while True:
                hdr = T.recv_exact(c, 32)
                _, _, flags, mtype, status, _, rid, plen = T.HEADER.unpack(hdr)
                body = T.recv_exact(c, plen)
                if mtype == T.MSG["LB_SERVER_REGISTER"]:
                    self.registrations.append(T.decode_lb_server_register(body))
                    c.sendall(T.header(mtype, 0, rid, flags=T.FLAG_RESPONSE))
                elif mtype == T.MSG["LB_SERVER_EVENT"]:
                    self.events.append(T.decode_lb_server_event(body))
        except (ConnectionError, OSError):
            pass

    def close(self):
        self.stop_flag = True
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


def wait_for(pred, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_registers_with_a_late_load_balancer(tier):
    cache = tier.cache(size="512M")
    lb_port = T.free_port()
    srv = tier.server(cache, "pipelined", memory="150M", lb_port=lb_port,
                      extra=["--threads", "2"])
    lb = None
    try:
        x = make_input("densenet201")
        t, _ = infer_ok(srv, "densenet201", x)       # serves with no load balancer up
        time.sleep(0.5)
        lb = FakeServerLB(lb_port)                    # appears later: the server retries
        assert wait_for(lambda: lb.registrations), "server never registered"
        reg = lb.registrations[0]
        assert reg["client_port"] == srv.port and reg["cache_port"] == cache.port
        assert reg["memory_capacity"] == 150 << 20 and reg["threads"] == 2
        assert "densenet201" in reg["models"]
        infer_ok(srv, "inception_v3", make_input("inception_v3"))
        assert wait_for(lambda: any(e["model"] == "inception_v3" and e["kind"] == "resident"
                                    for e in lb.events))
        # 150M holds one of these two (about 90 and 105 MB with the parameters they pin):
        # the older one was dropped (LRU).
        assert wait_for(lambda: any(e["model"] == "densenet201" and e["kind"] == "evicted"
                                    for e in lb.events))
        st = T.ServerConn(srv.port).stat()
        assert st["lb_registered"] == 1 and st["memory_used"] <= 150 << 20
    finally:
        srv.stop()
        cache.stop()
        if lb:
            lb.close()


def test_bad_arguments():
    base = [T.binary("server"), "127.0.0.1", str(T.free_port()), "127.0.0.1", "1", "127.0.0.1", "0"]
    for extra in (["--mode", "fast"], ["--threads", "0"], ["--memory", "lots"], ["--bogus", "1"]):
        p = subprocess.run(base + extra, capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, extra
    p = subprocess.run(base[:4], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "usage" in p.stderr
    p = subprocess.run([T.binary("server"), "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "stop-and-start" in p.stdout


class FakeCache:
    """Plays a misbehaving cache: a real shared-memory segment holding one
    model's METADATA and batches (from a kv.bin), a HELLO answer, and a
    SUBSCRIBE stream shaped by `behaviour`:
      "stall":       META and batch 0, then silence
      "bad-offset":  META, then a batch outside the pool
      "bad-meta":    META pointing at bytes that are not a METADATA blob
    Records the UNPINs it receives."""

    _records = {}

    def __init__(self, kv_path, model, behaviour):
        import kvbin_py
        if (kv_path, model) not in FakeCache._records:
            for name, _, _, records in kvbin_py.read(kv_path):
                if name == model:
                    FakeCache._records[(kv_path, model)] = {k: v for k, _, _, v in records}
        recs = FakeCache._records[(kv_path, model)]
        self.meta = recs["%s-METADATA" % model]
        self.batches = []
        i = 0
        while "%s-BATCH-%d" % (model, i) in recs:
            self.batches.append(recs["%s-BATCH-%d" % (model, i)])
            i += 1
        self.shm = "pipeps-fakecache-%d" % os.getpid()
        layout, off = [], 4096
        blob = bytearray(4096)
        blob[:len(self.meta)] = self.meta
        for b in self.batches:
            layout.append((off, len(b)))
            blob += b + b"\0" * ((-len(b)) % 4096)
            off += len(b) + (-len(b)) % 4096
        self.layout, self.size = layout, len(blob)
        with open("/dev/shm/" + self.shm, "wb") as f:
            f.write(blob)
        self.model, self.behaviour = model, behaviour
        self.unpins = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _send(self, c, mtype, rid, payload):
        c.sendall(T.header(mtype, len(payload), rid, flags=T.FLAG_RESPONSE) + payload)

    def _serve(self, c):
        try:
            while True:
                _, _, _, mtype, _, _, rid, plen = T.HEADER.unpack(T.recv_exact(c, 32))
                body = T.recv_exact(c, plen)
                if mtype == 0x0301:    # HELLO
                    self._send(c, mtype, rid, struct.pack("<I", 1) + T.pack_str("/" + self.shm)
                               + struct.pack("<QQ", self.size, 4096))
                elif mtype == 0x0302:  # SUBSCRIBE
                    total = sum(len(b) for b in self.batches)
                    meta_off, meta_len = (0, len(self.meta))
                    if self.behaviour == "bad-meta":
                        meta_off = self.layout[0][0]
                    self._send(c, 0x0303, rid, T.pack_str(self.model) + struct.pack(
                        "<QQIQQ", 1, total, len(self.batches), meta_off, meta_len))
                    if self.behaviour == "stall":
                        off, n = self.layout[0]
                        self._send(c, 0x0304, rid, struct.pack("<IQQ", 0, off, n))
                    elif self.behaviour == "bad-offset":
                        self._send(c, 0x0304, rid, struct.pack("<IQQ", 0, self.size, 4096))
                elif mtype == 0x0306:  # UNPIN
                    self.unpins.append(struct.unpack("<Q", body)[0])
                    self._send(c, mtype, rid, b"")
        except (ConnectionError, OSError):
            pass

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()
        os.unlink("/dev/shm/" + self.shm)


@pytest.mark.parametrize("behaviour", ["stall", "bad-offset", "bad-meta"])
def test_misbehaving_cache_gives_errors_not_hangs(tier, behaviour):
    model = "densenet201"
    fake = FakeCache(tier.kv, model, behaviour)
    srv = T.start_server(fake.port, 0, tier.tmp / ("server-fake-%s.log" % behaviour),
                         extra=["--stall-timeout", "2"])
    try:
        conn = T.ServerConn(srv.port, timeout=120)
        status, msg, _ = conn.infer(model, [make_input(model)])
        want = {"stall": ("FETCH", "no progress"), "bad-offset": ("CLOSED", "cache"),
                "bad-meta": ("CORRUPT", "metadata")}[behaviour]
        assert status == T.E[want[0]] and want[1] in msg, (status, msg)
        if behaviour == "stall":
            # The server gave up on its own: it releases the pin.
            assert wait_for(lambda: fake.unpins, timeout=30)
        status, body = conn.call(T.MSG["PING"], b"still there")
        assert status == 0 and body == b"still there"
        conn.close()
        assert srv.alive()
    finally:
        srv.stop()
        fake.close()


# ---------------------------------------------------------------- peer limits

def test_half_frame_stallers_are_dropped_and_new_clients_served(tmp_path):
    """Regression: 256 peers sending half a frame header and going quiet
    locked every client out ("refused, 256 connections already"). A stall
    inside a frame is now dropped after --io-timeout; idle connections are
    kept; one over --max-conns is told PPS_EBUSY."""
    s = T.start_server(T.free_port(), 0, tmp_path / "server.log",
                       extra=["--max-conns", 5, "--io-timeout", 3, "--reserve", 0])
    try:
        T.check_half_frame_stallers(s.port, 5)
        text = s.log_text()
        assert "stalled" in text and "--max-conns" in text
    finally:
        s.stop()


def test_partial_infer_payloads_are_bounded(tmp_path):
    """Large INFER payloads being received are charged to --max-partial: one
    that does not fit is refused with PPS_EBUSY (its bytes skipped, the
    connection kept), and a stalled one is dropped after --io-timeout."""
    s = T.start_server(T.free_port(), 0, tmp_path / "server.log",
                       extra=["--max-partial", "8M", "--max-request", "8M", "--io-timeout", 3,
                              "--reserve", 0])
    try:
        staller = socket.create_connection(("127.0.0.1", s.port), timeout=60)
        staller.sendall(T.header(T.MSG["INFER"], 6 << 20, 5) + b"\0" * (1 << 20))
        assert T.wait_connections(s.port, 2) == 2
        c = T.Conn(s.port, timeout=60)
        deadline = time.time() + 30
        while True:  # until the server has charged the staller's payload
            st = T.parse_stat(c.call(T.MSG["STAT"])[1])
            if st["partial_bytes"] or time.time() > deadline:
                break
            time.sleep(0.05)
        assert st["partial_bytes"] == 6 << 20
        status, body = c.call(T.MSG["INFER"], b"\0" * (4 << 20))
        assert status == T.E["BUSY"] and b"--max-partial" in body
        assert c.call(T.MSG["PING"], b"still in step") == (0, b"still in step")
        T.wait_closed(staller)
        st = T.parse_stat(c.call(T.MSG["STAT"])[1])
        assert st["partial_bytes"] == 0 and st["stalled_drops"] == 1 and st["partial_refused"] == 1
        c.close()
    finally:
        s.stop()


def test_unknown_model_error_names_it_once(tmp_path):
    """Regression: "nosuch_model: model nosuch_model: model nosuch_model is
    not deployed ..." -- every layer named the model again."""
    meta = T.start_metadata(tmp_path / "meta", tmp_path / "meta.log")
    lb = T.FakeLB()
    cache = T.start_cache(meta.port, lb.port, shm_name(), 8 << 20, 1 << 20, tmp_path / "cache.log")
    s = T.start_server(cache.port, 0, tmp_path / "server.log", extra=["--reserve", 0])
    try:
        c = T.ServerConn(s.port, timeout=60)
        status, msg, _ = c.infer("nosuch_model", [np.zeros((1, 4), np.float32)])
        assert status == T.E["NOTFOUND"], msg
        status, body = c.call(T.MSG["MODEL_INFO"], T.pack_str("nosuch_model"))
        assert status == T.E["NOTFOUND"], body
        for text in (msg if isinstance(msg, str) else msg.decode(), body.decode()):
            assert "not deployed" in text, text
            assert text.count("model nosuch_model") == 1, text
            assert "nosuch_model: model" not in text and "(model nosuch_model" not in text, text
        c.close()
    finally:
        s.stop()
        cache.stop()
        lb.stop()
        meta.stop()


def test_port_in_use_is_said_once():
    """Regression: a port in use read "resource busy"."""
    rc, out = T.run_on_used_port(lambda port: [
        T.binary("server"), "127.0.0.1", port, "127.0.0.1", T.free_port(), "127.0.0.1", 0,
        "--reserve", 0])
    assert rc != 0
    assert out.count("address already in use") == 1, out
    assert "resource busy" not in out, out
