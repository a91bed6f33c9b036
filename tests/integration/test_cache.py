"""Black-box tests of the cache daemon on loopback, with real storages and a
real metadata storage. Models are deployed synthetically (slices written with
STORE_PUT, the location record with META_PUT), and the test plays the
servers (the cache protocol over TCP, the pool read from /dev/shm) and the
load balancer (FakeLB)."""
import mmap
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import pipeps_testlib as T

MB = 1 << 20
_seq = [0]


def shm_name():
    _seq[0] += 1
    return "pipeps-test-%d-%d" % (os.getpid(), _seq[0])


class Cluster:
    def __init__(self, tmp):
        self.tmp = tmp
        self.meta = T.start_metadata(tmp / "meta", tmp / "meta.log")
        self.storages = []
        for i in range(2):
            self.add_storage()
        self.caches = []
        self.lb_port = T.free_port()  # nobody listens unless a test starts a FakeLB

    def add_storage(self):
        i = len(self.storages)
        port = T.free_port()
        d = T.Daemon([T.binary("storage"), str(port), "--dir", str(self.tmp / ("s%d" % i))],
                     port, str(self.tmp / ("s%d.log" % i)))
        self.storages.append(d)
        return d

    def cache(self, size="64M", block="64K", extra=(), name=None, lb_port=None, port=None):
        name = name or shm_name()
        c = T.start_cache(self.meta.port, lb_port or self.lb_port, name, size, block,
                          self.tmp / ("cache-%s.log" % name), port=port,
                          extra=["--lb-backoff-max", "300"] + list(extra))
        c.shm_name = name
        self.caches.append(c)
        return c

    def deploy(self, model, sizes, storages=(0, 1), seed=1):
        return T.deploy_synthetic(self.meta.port, [self.storages[i].port for i in storages],
                                  model, sizes, seed=seed)

    def stop(self):
        for c in self.caches:
            c.stop()
        for s in self.storages:
            s.stop()
        self.meta.stop()


@pytest.fixture
def cl(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def pool_view(name):
    f = open("/dev/shm/" + name, "rb")
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    f.close()
    return m


def check_model_bytes(pool, events, src):
    meta = [e for e in events if e["kind"] == "meta"][0]
    assert pool[meta["offset"]:meta["offset"] + meta["len"]] == src["metadata"]
    batches = [e for e in events if e["kind"] == "batch"]
    assert [e["index"] for e in batches] == list(range(len(src["batches"])))
    for e in batches:
        data = src["batches"][e["index"]]
        assert e["len"] == len(data)
        assert pool[e["offset"]:e["offset"] + e["len"]] == data, "batch %d differs" % e["index"]
        if e["len"]:
            assert e["offset"] % 4096 == 0  # batches start block-aligned: usable in place


def subscribe_all(cache, model):
    c = T.CacheConn(cache.port)
    rid = c.subscribe(model)
    return c, rid, c.follow(rid)


def test_fetch_sliced_over_two_storages_bytes_match(cl):
    sizes = [3 * MB + 123, 4096, 1, 0, 2 * MB, 777777, 512 * 7]
    src = cl.deploy("m2s", sizes)
    cache = cl.cache()
    conn = T.CacheConn(cache.port)
    hello = conn.hello()
    assert hello["shm_name"] == "/" + cache.shm_name
    assert hello["pool_size"] == 64 * MB and hello["block_size"] == 64 * 1024
    rid = conn.subscribe("m2s")
    events = conn.follow(rid)
    kinds = [e["kind"] for e in events]
    assert kinds == ["meta"] + ["batch"] * len(sizes) + ["done"], kinds
    assert events[0]["nbatches"] == len(sizes) and events[0]["total_size"] == sum(sizes)
    assert events[-1]["hit"] == 0
    pool = pool_view(cache.shm_name)
    check_model_bytes(pool, events, src)
    st = conn.stat()
    assert st["bytes_fetched"] == sum(sizes)
    assert st["misses"] == 1 and st["hits"] == 0 and st["models"] == 1
    assert st["batches"] == len(sizes) and st["pinned_models"] == 1
    assert st["storage_connections"] == 2  # both storages served slices
    # a second server: everything is announced at once from the pool
    c2, rid2, ev2 = subscribe_all(cache, "m2s")
    assert ev2[-1]["kind"] == "done" and ev2[-1]["hit"] == 1
    check_model_bytes(pool, ev2, src)
    assert c2.stat()["hits"] == 1 and c2.stat()["fetches_started"] == 1
    assert conn.unpin(rid) == (0, b"")
    assert conn.unpin(rid)[0] == T.E["NOTFOUND"]
    pool.close()


def test_cache_client_library_via_cache_get(cl, tmp_path):
    """cache_client (the servers' library) end to end, through `pipeps cache-get`."""
    sizes = [MB, 3 * MB + 5, 4096 * 9]
    src = cl.deploy("viaclient", sizes)
    cache = cl.cache()
    out = subprocess.run([T.binary("pipeps"), "cache-get", "127.0.0.1:%d" % cache.port,
                          "viaclient", "--dump", str(tmp_path / "dump")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("pool /" + cache.shm_name)
    assert [l.split()[0] for l in lines[1:]] == ["meta"] + ["batch"] * 3 + ["done"]
    assert (tmp_path / "dump" / "metadata").read_bytes() == src["metadata"]
    for i, b in enumerate(src["batches"]):
        assert (tmp_path / "dump" / ("batch-%d" % i)).read_bytes() == b
    # unknown model: an error, exit status 1
    out = subprocess.run([T.binary("pipeps"), "cache-get", "127.0.0.1:%d" % cache.port, "nope"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "error" in out.stdout and "PPS_ENOTFOUND" in out.stdout
    # pipeps stat cache
    out = subprocess.run([T.binary("pipeps"), "stat", "cache", "127.0.0.1:%d" % cache.port],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    st = dict(l.split(" ", 1) for l in out.stdout.splitlines())
    for key in ("capacity_bytes", "used_bytes", "models", "batches", "hits", "misses",
                "bytes_fetched", "fetch_throughput_bytes_per_second", "evictions"):
        assert key in st, key
    assert int(st["capacity_bytes"]) == 64 * MB and int(st["models"]) == 1
    assert int(st["bytes_fetched"]) == sum(sizes)


def test_readiness_in_batch_order_before_model_done(cl):
    sizes = [MB] * 8
    src = cl.deploy("slow", sizes)
    cache = cl.cache(extra=["--throttle", "8M"])  # ~1 s for the model
    conn = T.CacheConn(cache.port)
    watcher = T.CacheConn(cache.port)
    pool = pool_view(cache.shm_name)
    rid = conn.subscribe("slow")
    seen = []

    def on_event(ev):
        if ev["kind"] == "batch" and ev["index"] == 0:
            # batch 0 is usable now, while the model is still being fetched
            assert pool[ev["offset"]:ev["offset"] + ev["len"]] == src["batches"][0]
            st = watcher.stat()
            seen.append(st)
    events = conn.follow(rid, on_event)
    assert [e["index"] for e in events if e["kind"] == "batch"] == list(range(8))
    assert seen and seen[0]["models_fetching"] == 1 and seen[0]["batches"] < 8
    assert seen[0]["bytes_fetched"] < sum(sizes)
    check_model_bytes(pool, events, src)
    pool.close()


def test_concurrent_subscribers_fetch_once(cl):
    sizes = [MB] * 6
    src = cl.deploy("shared", sizes)
    cache = cl.cache(extra=["--throttle", "12M", "--fetch-threads", "2", "--depth", "3"])
    results = [None] * 4
    barrier = threading.Barrier(4)

    def worker(i):
        c = T.CacheConn(cache.port)
        barrier.wait()
        rid = c.subscribe("shared")
        results[i] = c.follow(rid)
        c.close()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    pool = pool_view(cache.shm_name)
    for ev in results:
        assert ev is not None and ev[-1]["kind"] == "done"
        check_model_bytes(pool, ev, src)
        # all four saw the same placement
        assert [(e["offset"], e["len"]) for e in ev if e["kind"] == "batch"] == \
               [(e["offset"], e["len"]) for e in results[0] if e["kind"] == "batch"]
    st = T.CacheConn(cache.port).stat()
    assert st["fetches_started"] == 1
    assert st["bytes_fetched"] == sum(sizes)
    assert st["misses"] + st["hits"] == 4
    pool.close()


def test_eviction_with_pool_smaller_than_two_models(cl):
    a = cl.deploy("ma", [3 * MB, 3 * MB], seed=1)
    b = cl.deploy("mb", [3 * MB, 3 * MB], seed=2)
    lb = T.FakeLB()
    try:
        cache = cl.cache(size="10M", block="64K", lb_port=lb.port)
        lb.wait_registrations(1)
        conn = T.CacheConn(cache.port)
        pool = pool_view(cache.shm_name)
        rid = conn.subscribe("ma")
        check_model_bytes(pool, conn.follow(rid), a)
        assert conn.unpin(rid)[0] == 0
        rid = conn.subscribe("mb")  # needs ma's room: ma (unpinned, LRU) goes
        check_model_bytes(pool, conn.follow(rid), b)
        st = conn.stat()
        assert st["evictions_lru"] == 1 and st["models"] == 1
        assert conn.unpin(rid)[0] == 0
        rid = conn.subscribe("ma")  # and back
        ev = conn.follow(rid)
        assert ev[-1]["hit"] == 0
        check_model_bytes(pool, ev, a)
        st = conn.stat()
        assert st["evictions_lru"] == 2 and st["fetches_started"] == 3
        lb.wait(lambda: len(lb.events) >= 5)
        evs = [T.decode_cache_event(b) for _, b in lb.events]
        assert [(e["kind"], e["model"]) for e in evs] == [
            ("loaded", "ma"), ("evicted", "ma"), ("loaded", "mb"), ("evicted", "mb"),
            ("loaded", "ma")]
        assert all(e["capacity"] == 10 * MB for e in evs)
        pool.close()
    finally:
        lb.stop()


def test_cache_out_then_cache_in_reuses_the_room_at_once(cl):
    """CACHE_OUT's room is usable by the very next request: for a complete
    model at once, for an interrupted fetch as soon as its threads let go."""
    a = cl.deploy("qa", [3 * MB, 3 * MB], seed=12)
    b = cl.deploy("qb", [3 * MB, 3 * MB], seed=13)
    cache = cl.cache(size="10M")
    conn = T.CacheConn(cache.port)
    for i in range(6):
        model = ("qa", "qb")[i % 2]
        st, body = conn.cache_in(model)
        assert st == 0, body
        st, body = conn.cache_out(model)
        assert st == 0, body
    # interrupt a slow fetch, then ask for a model that needs its blocks
    slow = cl.cache(size="10M", extra=["--throttle", "4M"])
    c2 = T.CacheConn(slow.port)
    c2.send(T.MSG["CACHE_IN"], T.pack_str("qa"))
    time.sleep(0.3)  # some of qa has landed
    st, body = c2.cache_out("qb")
    assert st == T.E["NOTFOUND"]
    rid_out = c2.send(T.MSG["CACHE_OUT"], T.pack_str("qa"))
    rid_in = c2.send(T.MSG["CACHE_IN"], T.pack_str("qb"))
    answers = {}
    while len(answers) < 3:
        mtype, flags, status, rid, body = c2.recv()
        answers[rid] = (mtype, status, body)
    assert answers[rid_out][1] == 0
    assert answers[rid_in][1] == 0, answers[rid_in]
    cancelled = [v for k, v in answers.items() if k not in (rid_out, rid_in)][0]
    assert cancelled[0] == T.MSG["CACHE_IN"] and cancelled[1] == T.E["CANCELED"]
    conn2 = T.CacheConn(slow.port)
    rid = conn2.subscribe("qb")
    ev = conn2.follow(rid)
    assert ev[-1]["hit"] == 1
    pool = pool_view(slow.shm_name)
    check_model_bytes(pool, ev, b)
    pool.close()
    st = conn2.stat()
    assert st["models"] == 1 and st["fetches_failed"] == 0
    del a


def test_pinned_model_is_never_evicted(cl):
    a = cl.deploy("pa", [4 * MB, 2 * MB], seed=3)
    cl.deploy("pb", [4 * MB, 2 * MB], seed=4)
    cache = cl.cache(size="10M")
    conn = T.CacheConn(cache.port)
    pool = pool_view(cache.shm_name)
    rid = conn.subscribe("pa")
    ev_a = conn.follow(rid)
    check_model_bytes(pool, ev_a, a)
    # pb needs pa's room, but pa is pinned: pb fails, pa stays intact
    other = T.CacheConn(cache.port)
    rid_b = other.subscribe("pb")
    ev = other.follow(rid_b)
    assert ev[-1]["kind"] == "error" and ev[-1]["status"] == T.E["NOSPACE"], ev
    check_model_bytes(pool, ev_a, a)
    st, body = other.cache_out("pa")
    assert st == T.E["BUSY"], body
    check_model_bytes(pool, ev_a, a)
    assert conn.stat()["evictions"] == 0
    # unpinned: now pb can take its place
    assert conn.unpin(rid)[0] == 0
    rid_b = other.subscribe("pb")
    assert other.follow(rid_b)[-1]["kind"] == "done"
    # a server that disconnects releases its pins
    rid_b2 = conn.subscribe("pb")
    assert conn.follow(rid_b2)[-1]["kind"] == "done"
    assert conn.stat()["pinned_models"] == 1
    other.close()
    conn.close()
    c3 = T.CacheConn(cache.port)
    deadline = time.time() + 10
    while c3.stat()["pinned_models"] and time.time() < deadline:
        time.sleep(0.05)
    assert c3.stat()["pinned_models"] == 0
    assert c3.cache_out("pb")[0] == 0
    pool.close()


def test_storage_killed_mid_fetch(cl):
    x = cl.deploy("victim", [MB] * 12, storages=(0,), seed=5)
    y = cl.deploy("survivor", [2 * MB, MB], storages=(1,), seed=6)
    z = cl.deploy("cached", [MB], storages=(1,), seed=7)
    lb = T.FakeLB()
    try:
        cache = cl.cache(extra=["--throttle", "6M", "--retries", "2"], lb_port=lb.port)
        conn = T.CacheConn(cache.port)
        pool = pool_view(cache.shm_name)
        rid = conn.subscribe("cached")
        ev_z = conn.follow(rid)
        used_before = conn.stat()["used_bytes"]
        server = T.CacheConn(cache.port)
        rid = server.subscribe("victim")
        killed = []

        def on_event(ev):
            if ev["kind"] == "batch" and not killed:
                cl.storages[0].kill9()
                killed.append(ev["index"])
        events = server.follow(rid, on_event)
        assert killed, "no batch arrived before the error"
        err = events[-1]
        assert err["kind"] == "error" and err["status"] == T.E["FETCH"], err
        assert "storage 127.0.0.1:%d" % cl.storages[0].port in err["message"]
        # the cache keeps serving: a model on the other storage, and a cached one
        rid = conn.subscribe("survivor")
        check_model_bytes(pool, conn.follow(rid), y)
        check_model_bytes(pool, ev_z, z)
        rid = server.subscribe("cached")
        assert server.follow(rid)[-1]["hit"] == 1
        st = conn.stat()
        assert st["fetches_failed"] == 1 and st["models"] == 2
        # the victim's blocks were returned once its fetch threads were done
        expected = used_before + 3 * MB + 64 * 1024  # survivor: 2 batches + a metadata block
        deadline = time.time() + 20
        while conn.stat()["used_bytes"] != expected and time.time() < deadline:
            time.sleep(0.05)
        assert conn.stat()["used_bytes"] == expected
        # asking again fails again (the storage is still down), cleanly
        rid = server.subscribe("victim")
        assert server.follow(rid)[-1]["status"] == T.E["FETCH"]
        lb.wait(lambda: any(T.decode_cache_event(b)["kind"] == "failed" for _, b in lb.events))
        assert cache.alive()
        pool.close()
    finally:
        lb.stop()


def test_value_missing_on_a_storage_fails_without_retry(cl):
    cl.deploy("holey", [MB, MB, MB], seed=11)
    # the location record names a slice the storage no longer has
    s = T.Conn(cl.storages[1].port)
    st, body = s.call(T.MSG["STORE_DELETE"], T.pack_str("holey-BATCH-1@1"))
    assert st == 0, body
    cache = cl.cache()
    conn = T.CacheConn(cache.port)
    rid = conn.subscribe("holey")
    ev = conn.follow(rid)
    assert ev[-1]["kind"] == "error" and ev[-1]["status"] == T.E["FETCH"], ev
    assert "holey-BATCH-1@1" in ev[-1]["message"] and "after 1 attempts" in ev[-1]["message"]
    # batches before the hole may have been announced; none after it
    assert [e["index"] for e in ev if e["kind"] == "batch"] in ([], [0])
    deadline = time.time() + 10
    while conn.stat()["used_bytes"] and time.time() < deadline:
        time.sleep(0.05)
    st = conn.stat()
    assert st["used_bytes"] == 0 and st["models"] == 0 and st["fetches_failed"] == 1


def test_unknown_model_and_bad_names(cl):
    cache = cl.cache()
    conn = T.CacheConn(cache.port)
    rid = conn.subscribe("not-deployed")
    ev = conn.follow(rid)
    assert ev[-1]["kind"] == "error" and ev[-1]["status"] == T.E["NOTFOUND"]
    assert "not deployed" in ev[-1]["message"]
    rid = conn.send(T.MSG["CACHE_SUBSCRIBE"], T.pack_str("has space"))
    ev = conn.event()
    assert ev["rid"] == rid and ev["status"] == T.E["INVAL"]
    assert conn.cache_out("not-here")[0] == T.E["NOTFOUND"]
    assert conn.unpin(12345)[0] == T.E["NOTFOUND"]
    st = conn.stat()  # the connection survived all of these
    assert st["fetches_failed"] == 1 and st["models"] == 0 and st["used_bytes"] == 0


def test_malformed_client_messages_do_not_disturb_others(cl):
    src = cl.deploy("steady", [2 * MB, MB], seed=8)
    cache = cl.cache(extra=["--throttle", "6M"])
    good = T.CacheConn(cache.port)
    rid = good.subscribe("steady")
    first = good.event()
    assert first["kind"] == "meta"

    def bad(payload, expect_status=None):
        s = socket.create_connection(("127.0.0.1", cache.port), timeout=10)
        s.sendall(payload)
        got = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            pytest.fail("the cache did not close a misbehaving connection")
        s.close()
        if expect_status is not None:
            assert len(got) >= 32
            status = struct.unpack_from("<i", got, 8)[0]
            assert status == expect_status, (status, got)
        return got

    bad(b"\x00" * 32, T.E["PROTO"])                                   # bad magic
    bad(T.header(0x0399, 0), T.E["UNSUPPORTED"])                      # unknown type
    bad(T.header(T.MSG["CACHE_SUBSCRIBE"], 1 << 30), T.E["TOOBIG"])   # over-limit length
    bad(T.header(T.MSG["CACHE_SUBSCRIBE"], 3) + b"abc", T.E["PROTO"])  # malformed payload
    bad(T.header(T.MSG["CACHE_UNPIN"], 4) + b"abcd", T.E["PROTO"])     # short payload
    bad(T.header(0x0001, 0, version=9), T.E["UNSUPPORTED"])           # other version
    bad(T.header(T.MSG["CACHE_META"], 0, flags=1), T.E["PROTO"])      # a response from a server
    bad(os.urandom(4096))                                             # garbage
    # a peer that disconnects in the middle of a frame
    s = socket.create_connection(("127.0.0.1", cache.port))
    s.sendall(T.header(T.MSG["CACHE_SUBSCRIBE"], 100) + b"\x05\x00")
    s.close()
    # a subscriber that vanishes mid-fetch
    s = T.CacheConn(cache.port)
    s.subscribe("steady")
    s.close()
    events = [first] + good.follow(rid)
    pool = pool_view(cache.shm_name)
    check_model_bytes(pool, events, src)
    st = good.stat()
    assert st["bad_requests"] >= 7 and st["fetches_started"] == 1
    assert cache.alive()
    pool.close()


def test_leftover_pool_of_a_killed_cache_is_replaced(cl):
    src = cl.deploy("again", [MB, MB], seed=9)
    name = shm_name()
    c1 = cl.cache(name=name)
    subscribe_all(c1, "again")
    assert os.path.exists("/dev/shm/" + name)
    # a second cache cannot take a live cache's pool
    port2 = T.free_port()
    p = subprocess.run([T.binary("cache"), "127.0.0.1", str(port2), "127.0.0.1", str(cl.meta.port),
                        "127.0.0.1", str(cl.lb_port), name, "16M", "64K"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "in use" in p.stderr
    c1.kill9()
    assert os.path.exists("/dev/shm/" + name)  # left behind by the crash
    c2 = cl.cache(name=name, size="32M")
    assert "leftover" in c2.log_text()
    conn, rid, ev = subscribe_all(c2, "again")
    assert ev[-1]["hit"] == 0  # a fresh pool, not the dead cache's contents
    pool = pool_view(name)
    assert len(pool) == 32 * MB
    check_model_bytes(pool, ev, src)
    pool.close()
    conn.close()
    assert c2.stop() == 0
    assert not os.path.exists("/dev/shm/" + name)  # clean shutdown removes it


def test_load_balancer_started_after_the_cache(cl):
    src = cl.deploy("lbm", [2 * MB, MB], seed=10)
    lb_port = T.free_port()
    cache = cl.cache(lb_port=lb_port, size="16M", block="4096")
    time.sleep(1.0)  # the cache is retrying meanwhile
    assert cache.alive()
    lb = T.FakeLB(port=lb_port)
    try:
        mtype, body = lb.wait_registrations(1)
        assert mtype == T.MSG["LB_CACHE_REGISTER"]
        reg = T.decode_cache_register(body)
        assert reg["server_port"] == cache.port and reg["server_addr"] == "127.0.0.1"
        assert reg["capacity"] == 16 * MB and reg["block_size"] == 4096
        assert reg["shm_name"] == "/" + cache.shm_name and reg["models"] == []
        # the LB's commands on the registered connection
        mtype, status, body = lb.request(T.MSG["CACHE_IN"], T.pack_str("lbm"))
        assert status == 0 and struct.unpack("<Q", body)[0] == 3 * MB
        lb.wait(lambda: len(lb.events) >= 1)
        ev = T.decode_cache_event(lb.events[0][1])
        assert ev["kind"] == "loaded" and ev["model"] == "lbm" and ev["size"] >= 3 * MB
        conn, rid, events = subscribe_all(cache, "lbm")
        assert events[-1]["hit"] == 1
        pool = pool_view(cache.shm_name)
        check_model_bytes(pool, events, src)
        pool.close()
        mtype, status, body = lb.request(T.MSG["CACHE_OUT"], T.pack_str("lbm"))
        assert status == T.E["BUSY"]
        assert conn.unpin(rid)[0] == 0
        mtype, status, body = lb.request(T.MSG["CACHE_OUT"], T.pack_str("lbm"))
        assert status == 0
        lb.wait(lambda: len(lb.events) >= 2)
        assert T.decode_cache_event(lb.events[1][1])["kind"] == "evicted"
        mtype, status, body = lb.request(T.MSG["CACHE_IN"], T.pack_str("missing"))
        assert status == T.E["NOTFOUND"]
        mtype, status, body = lb.request(T.MSG["CACHE_IN"], T.pack_str("lbm"))
        assert status == 0
        # the load balancer goes away and comes back: the cache registers again,
        # listing what it holds
        lb.drop_peers()
        mtype, body = lb.wait_registrations(2)
        reg = T.decode_cache_register(body)
        assert [m for m, _ in reg["models"]] == ["lbm"] and reg["used"] >= 3 * MB
        assert conn.stat()["lb_registrations"] == 2
    finally:
        lb.stop()


def test_bad_arguments(cl):
    base = [T.binary("cache"), "127.0.0.1", str(T.free_port()), "127.0.0.1", str(cl.meta.port),
            "127.0.0.1", str(cl.lb_port)]
    for args in (["x", "16M", "1000"],      # block size not a multiple of 4096
                 ["x", "1K", "64K"],        # pool smaller than a block
                 ["x", "lots", "64K"],      # not a size
                 ["a/b", "16M", "64K"],     # bad shm name
                 ["x", "16M"]):             # missing argument
        p = subprocess.run(base + args, capture_output=True, text=True, timeout=30)
        assert p.returncode != 0, args
    p = subprocess.run([T.binary("cache"), "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "SHM_BLOCK_SIZE" in p.stdout


def test_model_deployed_by_deploy_file_matches_kv_bin(cl, tmp_path):
    """The real chain: a kv.bin (written by the independent Python writer),
    deploy_file over both storages, the cache fetching it: every byte of
    every batch and of the METADATA blob in the pool equals kv.bin."""
    import kvbin_py
    models = kvbin_py.synthetic(seed=21, scale=2)
    kv = str(tmp_path / "kv.bin")
    kvbin_py.write(kv, models)
    sl = tmp_path / "storage_list.txt"
    sl.write_text("address, port\n127.0.0.1, %d\n" % cl.meta.port +
                  "".join("127.0.0.1, %d\n" % s.port for s in cl.storages))
    dl = tmp_path / "model_distribution_list.txt"
    dl.write_text("model, storages\nalpha, 0, 1\nbeta, 1\n")
    p = subprocess.run([T.binary("deploy_file"), str(sl), str(dl), kv], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    cache = cl.cache()
    pool = pool_view(cache.shm_name)
    for name, total, nbatches, records in kvbin_py.read(kv):
        values = {key: value for key, _h, _v, value in records}
        conn, rid, events = subscribe_all(cache, name)
        assert events[-1]["kind"] == "done", events[-1]
        meta = events[0]
        assert meta["kind"] == "meta" and meta["nbatches"] == nbatches
        assert meta["total_size"] == total
        assert pool[meta["offset"]:meta["offset"] + meta["len"]] == values[name + "-METADATA"]
        batches = [e for e in events if e["kind"] == "batch"]
        assert [e["index"] for e in batches] == list(range(nbatches))
        for e in batches:
            expect = values["%s-BATCH-%d" % (name, e["index"])]
            assert pool[e["offset"]:e["offset"] + e["len"]] == expect
        conn.close()
    pool.close()


# ---------------------------------------------------------------- peer limits, stalls

def test_half_frame_stallers_are_dropped_and_new_clients_served(cl):
    """Regression: 1024 peers sending half a frame header and going quiet
    locked every server out of the cache. A stall inside a frame is now
    dropped after --io-timeout; idle connections are kept; one over
    --max-conns is told PPS_EBUSY."""
    cache = cl.cache(extra=["--max-conns", 5, "--io-timeout", 3])
    T.check_half_frame_stallers(cache.port, 5)
    text = cache.log_text()
    assert "stalled" in text and "--max-conns" in text


def test_frozen_storage_fails_the_fetch_soon(cl):
    """Regression: a storage stopped with SIGSTOP held a waiting fetch for
    122 s (4 attempts x 30 s). A storage that makes no progress for
    --progress-timeout is resent to once on a fresh connection, then the
    fetch fails; once the storage runs again the model is fetched."""
    data = cl.deploy("icy", [MB, MB], storages=(1,), seed=21)
    cache = cl.cache(extra=["--progress-timeout", 1])
    conn = T.CacheConn(cache.port, timeout=120)
    frozen = cl.storages[1].proc
    frozen.send_signal(signal.SIGSTOP)
    try:
        st, body = conn.cache_in("icy")
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert st == T.E["FETCH"], body
    text = body.decode()
    assert "no progress for 1 s" in text and "after 2 attempts" in text, text
    assert "icy-BATCH-0@1" in text, text
    assert "no progress (--progress-timeout)" in cache.log_text()
    st, body = conn.cache_in("icy")
    assert st == 0, body
    rid = conn.subscribe("icy")
    ev = conn.follow(rid)
    pool = pool_view(cache.shm_name)
    check_model_bytes(pool, ev, data)
    pool.close()


def test_failed_fetch_does_not_fragment_the_pool(cl):
    """Regression: a failed fetch's blocks were freed only when its fetch
    threads let go (here: a frozen storage), so the next model was placed
    after the dead region and left a hole when it came free. The abandoned
    fetch now lets go at once and the next model reuses its room."""
    frozen = cl.add_storage()
    cl.deploy("frag", [2 * MB] * 4, storages=(0, 2), seed=22)
    other = cl.deploy("other", [3 * MB, 3 * MB], storages=(1,), seed=23)
    s = T.Conn(cl.storages[0].port)
    st, body = s.call(T.MSG["STORE_DELETE"], T.pack_str("frag-BATCH-1@1"))
    assert st == 0, body
    s.close()
    cache = cl.cache(size="16M", block="64K")
    conn = T.CacheConn(cache.port, timeout=120)
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        st, body = conn.cache_in("frag")  # batch 1 is missing: fails while s2 hangs
        assert st == T.E["FETCH"] and b"frag-BATCH-1@1" in body, body
        rid = conn.subscribe("other")
        ev = conn.follow(rid)
        assert ev[-1]["kind"] == "done", ev
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    pool = pool_view(cache.shm_name)
    check_model_bytes(pool, ev, other)
    pool.close()
    assert ev[0]["kind"] == "meta" and ev[0]["offset"] == 0, ev[0]  # the freed room, reused
    deadline = time.time() + 60
    while time.time() < deadline:
        st = conn.stat()
        if st["models_fetching"] == 0 and st["used_bytes"] == 6 * MB + 64 * 1024:
            break
        time.sleep(0.05)
    assert st["used_bytes"] == 6 * MB + 64 * 1024, st
    assert st["largest_free_extent_bytes"] == st["free_bytes"], st


def test_port_in_use_is_said_once(cl):
    """Regression: a port in use read "resource busy" over two lines."""
    rc, out = T.run_on_used_port(lambda port: [
        T.binary("cache"), "127.0.0.1", port, "127.0.0.1", cl.meta.port, "127.0.0.1", cl.lb_port,
        shm_name(), "1M", "64K"])
    assert rc != 0
    assert out.count("address already in use") == 1, out
    assert "resource busy" not in out, out
