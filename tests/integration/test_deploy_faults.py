"""deploy_file against a metadata storage that fails at the commit point, and
`pipeps gc`, which removes the generations a failed deploy leaves behind
(issue 11, defect 2).

A fault-injecting proxy sits between deploy_file and a real metadata_storage.
It forwards frames both ways and, for one key, either drops the
acknowledgement of its META_PUT (the record is durable, the deployer never
hears so: the metadata storage "died" right after the fsync) or drops the
META_PUT itself; then it cuts the connection and, optionally, stops
listening (the metadata storage stays down). A second kind of proxy holds a
storage's puts after a few, so deploy_file can be killed mid-push at a known
point, leaving exactly the slices `pipeps gc` must find."""
import socket
import struct
import subprocess
import threading
import time

import pytest

import kvbin_py
from pipeps_testlib import E, MSG, Conn, HEADER, binary, free_port, pack_str, recv_exact, unpack_str_list
from test_deploy import DIST, Tier, all_storage_values, check_deployed, meta_get, store_get


class MetaProxy:
    """Forwards PipePS frames between clients and the metadata storage at
    upstream_port. drop_ack: the key whose META_PUT answer is swallowed;
    drop_put: the key whose META_PUT never reaches the storage. After either
    fault the client's connection is cut, and with then_down=True the proxy
    stops listening (connections are refused) until listen() is called."""

    def __init__(self, upstream_port, drop_ack=None, drop_put=None, then_down=False):
        self.upstream_port = upstream_port
        self.drop_ack, self.drop_put, self.then_down = drop_ack, drop_put, then_down
        self.port = free_port()
        self.events = []
        self.lock = threading.Lock()
        self.lsock = None
        self.listen()

    def listen(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self.lsock = s
        threading.Thread(target=self.accept_loop, args=(s,), daemon=True).start()

    def stop_listening(self):
        s, self.lsock = self.lsock, None
        if s:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def accept_loop(self, lsock):
        while True:
            try:
                client, _ = lsock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            pair = (client, upstream)
            watched = {}
            threading.Thread(target=self.client_to_upstream, args=(pair, watched), daemon=True).start()
            threading.Thread(target=self.upstream_to_client, args=(pair, watched), daemon=True).start()

    def cut(self, pair, event):
        with self.lock:
            self.events.append(event)
        if self.then_down:  # before the cut, or the client could reconnect in between
            self.stop_listening()
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    @staticmethod
    def read_frame(sock):
        head = recv_exact(sock, 32)
        plen = HEADER.unpack(head)[7]
        return head, recv_exact(sock, plen)

    def client_to_upstream(self, pair, watched):
        client, upstream = pair
        try:
            while True:
                head, payload = self.read_frame(client)
                mtype, rid = HEADER.unpack(head)[3], HEADER.unpack(head)[6]
                key = None
                if mtype == MSG["META_PUT"] and len(payload) >= 4:
                    klen = struct.unpack_from("<I", payload)[0]
                    key = payload[4:4 + klen].decode(errors="replace")
                if key is not None and key == self.drop_put:
                    self.drop_put = None  # once
                    self.cut(pair, ("dropped put", key))
                    return
                if key is not None and key == self.drop_ack:
                    self.drop_ack = None  # once
                    watched[rid] = key
                upstream.sendall(head + payload)
        except (ConnectionError, OSError):
            pass

    def upstream_to_client(self, pair, watched):
        client, upstream = pair
        try:
            while True:
                head, payload = self.read_frame(upstream)
                rid, status = HEADER.unpack(head)[6], HEADER.unpack(head)[4]
                if rid in watched:
                    self.cut(pair, ("dropped ack", watched.pop(rid), status))
                    return
                client.sendall(head + payload)
        except (ConnectionError, OSError):
            pass

    def close(self):
        self.stop_listening()


@pytest.fixture
def tier(tmp_path):
    t = Tier(tmp_path)
    yield t
    t.stop()


def proxied_storage_list(tier, tmp_path, proxy):
    sl = tmp_path / "proxied-storage_list.txt"
    sl.write_text("address, port\n127.0.0.1, %d\n" % proxy.port +
                  "".join("127.0.0.1, %d\n" % p for p in tier.store_ports))
    return str(sl)


def deploy(sl, dl, kv, *extra):
    p = subprocess.run([binary("deploy_file"), sl, dl, kv] + list(extra), capture_output=True, text=True,
                       timeout=300)
    return p.returncode, p.stdout, p.stderr


def gc(sl, *extra):
    p = subprocess.run([binary("pipeps"), "gc", sl] + list(extra), capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def meta_keys(tier, prefix=""):
    c = Conn(tier.meta_port)
    try:
        status, body = c.call(MSG["META_LIST"], pack_str(prefix))
    finally:
        c.close()
    assert status == 0, body
    return unpack_str_list(body)


def slice_keys(rec):
    """(port, storage key) of every slice of a decoded location record."""
    return [(s["port"], s["storage_key"]) for k in rec["keys"] for s in k["slices"]]


def deploy_v1(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    v1 = kvbin_py.synthetic(seed=1)
    kvbin_py.write(kv, v1)
    sl, dl = tier.write_lists(DIST)
    rc, _, err = deploy(sl, dl, kv)
    assert rc == 0, err
    v2 = kvbin_py.synthetic(seed=2)
    kvbin_py.write(kv, v2)
    return v1, v2, kv, sl, dl, {m: tier.location(m) for m, _ in DIST}


# ----------------------------------------------------------------- deploy_file


def test_lost_location_ack_is_read_back_and_the_deploy_succeeds(tier, tmp_path):
    v1, v2, kv, _, dl, old = deploy_v1(tier, tmp_path)
    values_v1 = all_storage_values(tier)
    proxy = MetaProxy(tier.meta_port, drop_ack="alpha-LOCATION")
    try:
        rc, out, err = deploy(proxied_storage_list(tier, tmp_path, proxy), dl, kv)
    finally:
        proxy.close()
    assert proxy.events == [("dropped ack", "alpha-LOCATION", 0)]
    assert rc == 0, err
    assert "alpha-LOCATION was written all the same" in err
    assert "alpha: generation" in out and "beta: generation" in out
    check_deployed(tier, v2, DIST, tmp_path, "v2")
    # the previous generation is gone, the new one is whole
    for model, _ in DIST:
        for port, key in slice_keys(old[model]):
            assert store_get(port, key)[0] == E["NOTFOUND"], key
        assert meta_keys(tier, model + "-METADATA") == [tier.location(model)["metadata_key"]]
    assert all_storage_values(tier) == values_v1


def test_lost_location_put_is_read_back_as_not_published(tier, tmp_path):
    v1, v2, kv, _, dl, old = deploy_v1(tier, tmp_path)
    values_v1 = all_storage_values(tier)
    proxy = MetaProxy(tier.meta_port, drop_put="alpha-LOCATION")
    try:
        rc, out, err = deploy(proxied_storage_list(tier, tmp_path, proxy), dl, kv)
    finally:
        proxy.close()
    assert proxy.events == [("dropped put", "alpha-LOCATION")]
    assert rc == 1
    assert "0 of 2 models published" in err, err
    assert out == ""
    # both models keep generation 1, and nothing of the failed one is left
    check_deployed(tier, v1, DIST, tmp_path, "v1")
    for model, _ in DIST:
        assert tier.location(model)["generation"] == old[model]["generation"]
        assert meta_keys(tier, model + "-METADATA") == [old[model]["metadata_key"]]
    assert all_storage_values(tier) == values_v1


def test_lost_ack_with_the_metadata_storage_gone_keeps_both_generations_then_gc(tier, tmp_path):
    v1, v2, kv, sl, dl, old = deploy_v1(tier, tmp_path)
    values_v1 = all_storage_values(tier)
    proxy = MetaProxy(tier.meta_port, drop_ack="alpha-LOCATION", then_down=True)
    try:
        rc, out, err = deploy(proxied_storage_list(tier, tmp_path, proxy), dl, kv, "--retry-for", "2")
    finally:
        proxy.close()
    assert proxy.events == [("dropped ack", "alpha-LOCATION", 0)]
    assert rc == 1
    assert "model alpha: OUTCOME UNKNOWN" in err, err
    assert "pipeps gc" in err and "pipeps fetch" in err
    assert "alpha" not in out

    # The record was durable: alpha is generation 2, whole, and its
    # generation 1 was not deleted either (deploy_file could not know).
    new = tier.location("alpha")
    assert new["generation"] > old["alpha"]["generation"]
    check_deployed(tier, [m for m in v2 if m[0] == "alpha"], [DIST[0]], tmp_path, "alpha-v2")
    for port, key in slice_keys(old["alpha"]):
        assert store_get(port, key)[0] == 0, key
    assert sorted(meta_keys(tier, "alpha-METADATA")) == sorted([old["alpha"]["metadata_key"], new["metadata_key"]])
    # beta never got to publish: still generation 1, its new slices removed
    assert tier.location("beta") == old["beta"]
    check_deployed(tier, [m for m in v1 if m[0] == "beta"], [DIST[1]], tmp_path, "beta-v1")
    alpha_slices = [len([1 for p, _ in slice_keys(new) if p == port]) for port in tier.store_ports]
    assert all_storage_values(tier) == [v + a for v, a in zip(values_v1, alpha_slices)]

    # gc, dry run: names alpha's generation 1 and nothing else, deletes nothing
    rc, out, err = gc(sl, "--min-age", "0", "--dry-run")
    assert rc == 0, err
    expected = ["storage %d 127.0.0.1:%d %s %d" % (tier.store_ports.index(s["port"]), s["port"], s["storage_key"],
                                                   s["size"])
                for k in old["alpha"]["keys"] for s in k["slices"]]
    expected.append("metadata %s" % old["alpha"]["metadata_key"])
    assert sorted(out.splitlines()) == sorted("would delete " + e for e in expected)
    assert all_storage_values(tier) == [v + a for v, a in zip(values_v1, alpha_slices)]

    # gc: deletes them; both models stay readable
    rc, out, err = gc(sl, "--min-age", "0")
    assert rc == 0, err
    assert sorted(out.splitlines()) == sorted("deleted " + e for e in expected)
    for port, key in slice_keys(old["alpha"]):
        assert store_get(port, key)[0] == E["NOTFOUND"], key
    assert meta_keys(tier, "alpha-METADATA") == [new["metadata_key"]]
    assert all_storage_values(tier) == values_v1  # same shapes: as many values as one generation each
    check_deployed(tier, [m for m in v2 if m[0] == "alpha"], [DIST[0]], tmp_path, "alpha-after-gc")
    check_deployed(tier, [m for m in v1 if m[0] == "beta"], [DIST[1]], tmp_path, "beta-after-gc")
    # nothing left to collect
    rc, out, err = gc(sl, "--min-age", "0")
    assert rc == 0 and out == "", err
    assert "deleted 0 storage values" in err


class StallingProxy(MetaProxy):
    """Forwards to a storage until it has passed `puts` STORE_PUTs, then holds
    every later request (a storage that stopped answering mid-deploy)."""

    def __init__(self, upstream_port, puts):
        self.puts_left = puts
        self.held = threading.Event()
        super().__init__(upstream_port)

    def client_to_upstream(self, pair, watched):
        client, upstream = pair
        try:
            while True:
                head, payload = self.read_frame(client)
                if HEADER.unpack(head)[3] == MSG["STORE_PUT"]:
                    if self.puts_left == 0:
                        self.held.set()
                        continue
                    self.puts_left -= 1
                upstream.sendall(head + payload)
        except (ConnectionError, OSError):
            pass


def test_gc_removes_what_a_killed_deploy_pushed(tier, tmp_path):
    v1, v2, kv, sl, dl, old = deploy_v1(tier, tmp_path)
    values_v1 = all_storage_values(tier)
    # Each storage behind a proxy that passes a few puts, then holds the next:
    # a put is only sent once the one before it is acknowledged (durable).
    proxies = [StallingProxy(tier.store_ports[0], puts=1), StallingProxy(tier.store_ports[1], puts=2)]
    try:
        stalled = tmp_path / "stalled-storage_list.txt"
        stalled.write_text("address, port\n127.0.0.1, %d\n127.0.0.1, %d\n127.0.0.1, %d\n"
                           % (tier.meta_port, proxies[0].port, proxies[1].port))
        p = subprocess.Popen([binary("deploy_file"), str(stalled), dl, kv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        for proxy in proxies:
            assert proxy.held.wait(120), "deploy_file never got to its held put"
        p.kill()
        p.communicate()
    finally:
        for proxy in proxies:
            proxy.close()
    # The killed run published nothing but left slices on both storages.
    for model, _ in DIST:
        assert tier.location(model) == old[model]
    left = [v - o for v, o in zip(all_storage_values(tier), values_v1)]
    assert left == [1, 2]
    # Too young for the default --min-age: kept (it could be a deploy still pushing).
    rc, out, err = gc(sl)
    assert rc == 0 and out == "", err
    assert "kept %d younger than --min-age" % sum(left) in err
    rc, out, err = gc(sl, "--min-age", "0")
    assert rc == 0, err
    assert len(out.splitlines()) == sum(left)
    assert all(line.startswith("deleted storage ") for line in out.splitlines())
    assert all_storage_values(tier) == values_v1
    check_deployed(tier, v1, DIST, tmp_path, "v1-after-gc")


def test_retry_for_option(tmp_path):
    p = subprocess.run([binary("deploy_file"), "a", "b", "c", "--retry-for", "x"], capture_output=True, text=True)
    assert p.returncode == 2 and "bad --retry-for 'x'" in p.stderr
    p = subprocess.run([binary("deploy_file"), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--retry-for" in p.stdout and "pipeps gc" in p.stdout


# ----------------------------------------------------------------- gc


def now_ms():
    return int(time.time() * 1000)


def store_put(port, key, value):
    c = Conn(port)
    try:
        status, body = c.call(MSG["STORE_PUT"], pack_str(key) + value)
    finally:
        c.close()
    assert status == 0, body


def meta_put(port, key, value):
    c = Conn(port)
    try:
        status, body = c.call(MSG["META_PUT"], pack_str(key) + value)
    finally:
        c.close()
    assert status == 0, body


def test_gc_deletes_only_old_unreferenced_generations(tier, tmp_path):
    v1, _, _, sl, _, live = deploy_v1(tier, tmp_path)
    s0, s1 = tier.store_ports
    old, young = 1000, now_ms()  # 1970, and now
    # left by crashed deploys: an old generation of alpha (pushed and described),
    # a model never published, a generation still being pushed
    orphans = [(s0, "alpha-BATCH-0@%d" % old), (s1, "alpha-BATCH-2@%d" % old), (s1, "gamma-BATCH-3@%d" % old),
               (s0, "x-BATCH-1-BATCH-0@%d" % old)]
    for port, key in orphans:
        store_put(port, key, b"o" * 700)
    store_put(s0, "delta-BATCH-0@%d" % young, b"y" * 10)
    meta_orphans = ["alpha-METADATA@%d" % old, "gamma-METADATA@%d" % old]
    for key in meta_orphans:
        meta_put(tier.meta_port, key, b"desc")
    meta_put(tier.meta_port, "omega-METADATA@%d" % young, b"desc")
    # keys of other shapes are never touched
    others = [(s0, "unrelated"), (s0, "alpha-BATCH-0@12ab"), (s1, "alpha-BATCH-@5"), (s1, "-BATCH-0@5"),
              (s0, "alpha-BATCH-0")]
    for port, key in others:
        store_put(port, key, b"x")
    for key in ["alpha-METADATA", "alpha-METADATA@", "note@5", "alpha-LOCATIONS"]:
        meta_put(tier.meta_port, key, b"keep")

    rc, out, err = gc(sl)  # default --min-age: 1 h
    assert rc == 0, err
    deleted = sorted(out.splitlines())
    assert deleted == sorted(["deleted storage %d 127.0.0.1:%d %s 700" % (tier.store_ports.index(p), p, k)
                              for p, k in orphans] +
                             ["deleted metadata %s" % k for k in meta_orphans])
    assert "kept 2 younger than --min-age" in err
    for port, key in orphans:
        assert store_get(port, key)[0] == E["NOTFOUND"]
    assert store_get(s0, "delta-BATCH-0@%d" % young)[0] == 0
    for port, key in others:
        assert store_get(port, key)[0] == 0, key
    check_deployed(tier, v1, DIST, tmp_path, "after-gc")

    # --min-age 0: the young ones go too; the live generations never
    rc, out, err = gc(sl, "--min-age", "0")
    assert rc == 0, err
    assert sorted(out.splitlines()) == sorted(["deleted storage 0 127.0.0.1:%d delta-BATCH-0@%d 10" % (s0, young),
                                               "deleted metadata omega-METADATA@%d" % young])
    for port, key in others:
        assert store_get(port, key)[0] == 0, key
    assert sorted(meta_keys(tier, "alpha-METADATA")) == sorted(["alpha-METADATA", "alpha-METADATA@",
                                                                live["alpha"]["metadata_key"]])
    check_deployed(tier, v1, DIST, tmp_path, "after-gc-0")


def test_gc_leaves_a_model_with_an_undecodable_location_alone(tier, tmp_path):
    _, _, _, sl, _, _ = deploy_v1(tier, tmp_path)
    meta_put(tier.meta_port, "broken-LOCATION", b"not a location record")
    store_put(tier.store_ports[0], "broken-BATCH-0@1000", b"b")
    meta_put(tier.meta_port, "broken-METADATA@1000", b"d")
    rc, out, err = gc(sl, "--min-age", "0")
    assert rc == 1
    assert "broken-LOCATION is undecodable" in err and "nothing of broken is deleted" in err
    assert out == ""
    assert store_get(tier.store_ports[0], "broken-BATCH-0@1000")[0] == 0
    assert meta_get(tier.meta_port, "broken-METADATA@1000")[0] == 0


def test_gc_with_a_storage_down_collects_the_rest_and_fails(tier, tmp_path):
    _, _, _, sl, _, _ = deploy_v1(tier, tmp_path)
    store_put(tier.store_ports[0], "gamma-BATCH-0@1000", b"g")
    tier.daemons["s1"].stop()
    rc, out, err = gc(sl, "--min-age", "0")
    assert rc == 1
    assert "storage 1 127.0.0.1:%d unreachable" % tier.store_ports[1] in err, err
    assert out.splitlines() == ["deleted storage 0 127.0.0.1:%d gamma-BATCH-0@1000 1" % tier.store_ports[0]]


def test_gc_metadata_storage_down_deletes_nothing(tier, tmp_path):
    _, _, _, sl, _, _ = deploy_v1(tier, tmp_path)
    store_put(tier.store_ports[0], "gamma-BATCH-0@1000", b"g")
    tier.daemons["meta"].stop()
    rc, out, err = gc(sl, "--min-age", "0")
    assert rc == 1 and out == ""
    assert "unreachable" in err and "nothing deleted" in err
    assert store_get(tier.store_ports[0], "gamma-BATCH-0@1000")[0] == 0


def test_gc_usage(tmp_path):
    p = subprocess.run([binary("pipeps"), "gc"], capture_output=True, text=True)
    assert p.returncode == 2 and "usage: pipeps gc STORAGE_LIST" in p.stderr
    p = subprocess.run([binary("pipeps"), "gc", "x", "--min-age", "5 minutes"], capture_output=True, text=True)
    assert p.returncode == 2 and "bad --min-age" in p.stderr


# ----------------------------------------------------------------- STORE_LIST


def store_list(conn, prefix):
    status, body = conn.call(MSG["STORE_LIST"], pack_str(prefix))
    if status:
        return status, body
    n = struct.unpack_from("<I", body)[0]
    p, out = 4, {}
    for _ in range(n):
        klen = struct.unpack_from("<I", body, p)[0]
        key = body[p + 4:p + 4 + klen].decode()
        out[key] = struct.unpack_from("<Q", body, p + 4 + klen)[0]
        p += 12 + klen
    assert p == len(body)
    return 0, out


MSG.setdefault("STORE_LIST", 0x0205)


def test_store_list(tmp_path):
    from pipeps_testlib import start_storage
    d = start_storage(tmp_path / "s", tmp_path / "s.log")
    try:
        for key, n in [("a-1", 3), ("a-2", 0), ("b-1", 5000), ("a-3", 1)]:
            store_put(d.port, key, b"v" * n)
        c = Conn(d.port)
        try:
            assert store_list(c, "") == (0, {"a-1": 3, "a-2": 0, "b-1": 5000, "a-3": 1})
            assert store_list(c, "a-") == (0, {"a-1": 3, "a-2": 0, "a-3": 1})
            assert store_list(c, "zz") == (0, {})
            st, _ = c.call(MSG["STORE_DELETE"], pack_str("a-2"))
            assert st == 0
            assert store_list(c, "a") == (0, {"a-1": 3, "a-3": 1})
            # a malformed payload is refused and the connection stays usable
            st, body = c.call(MSG["STORE_LIST"], struct.pack("<I", 9) + b"ab")
            assert st == E["PROTO"], body
            st, body = c.call(MSG["STORE_LIST"], pack_str("a\0"))
            assert st == E["PROTO"] and b"NUL" in body
            assert store_list(c, "b") == (0, {"b-1": 5000})
        finally:
            c.close()
        # survives a restart (the index is rebuilt from the files)
        d.stop()
        d = start_storage(tmp_path / "s", tmp_path / "s.log")
        c = Conn(d.port)
        try:
            assert store_list(c, "") == (0, {"a-1": 3, "b-1": 5000, "a-3": 1})
        finally:
            c.close()
    finally:
        d.stop()
