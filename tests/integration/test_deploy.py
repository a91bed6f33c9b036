"""Black-box tests of deploy_file and `pipeps fetch` against real
metadata_storage and storage daemons on loopback.

kv.bin files come from the independent Python writer (kvbin_py.py); the
location records are decoded here from docs/formats.md and every slice is
also read with a plain Python STORE_GET, so the check does not rest on the C
code reading back what the C code wrote."""
import os
import pty
import select
import socket
import struct
import subprocess
import threading
import time

import pytest

import kvbin_py
from pipeps_testlib import (E, MSG, Conn, Daemon, FLAG_RESPONSE, HEADER, binary, free_port, pack_str,
                            recv_exact)

# ----------------------------------------------------------------- helpers


class Reader:
    def __init__(self, data):
        self.d, self.p = data, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.d, self.p)
        self.p += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def str(self):
        n = self.take("I")
        s = self.d[self.p:self.p + n].decode()
        self.p += n
        return s


def decode_location(data):
    """The location record as docs/formats.md describes it."""
    r = Reader(data)
    magic, version, reserved = r.take("IHH")
    assert (magic, version, reserved) == (0x4C535050, 1, 0)
    rec = {"model": r.str(), "generation": r.take("Q"), "total_size": r.take("Q"), "metadata_key": r.str(),
           "keys": []}
    for _ in range(r.take("I")):
        key = {"key": r.str(), "size": r.take("Q"), "slices": []}
        for _ in range(r.take("I")):
            key["slices"].append({"offset": r.take("Q"), "size": r.take("Q"), "addr": r.str(),
                                  "port": r.take("H"), "storage_key": r.str()})
        rec["keys"].append(key)
    assert r.p == len(data)
    return rec


def meta_get(port, key):
    c = Conn(port)
    try:
        return c.call(MSG["META_GET"], pack_str(key))
    finally:
        c.close()


def store_get(port, key):
    c = Conn(port)
    try:
        return c.call(MSG["STORE_GET"], pack_str(key) + struct.pack("<QQ", 0, 2**64 - 1))
    finally:
        c.close()


def store_values(port):
    c = Conn(port)
    try:
        status, body = c.call(MSG["STORE_STAT"])
    finally:
        c.close()
    assert status == 0
    stats = dict(line.split(" ", 1) for line in body.decode().splitlines() if " " in line)
    return int(stats["values"])


class Tier:
    """metadata_storage and two storages, restartable on the same dirs."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.meta_port = free_port()
        self.store_ports = [free_port(), free_port()]
        self.daemons = {}
        self.start()

    def start(self):
        self.daemons["meta"] = Daemon([binary("metadata_storage"), "127.0.0.1", str(self.meta_port),
                                       "--dir", str(self.tmp / "meta-data")], self.meta_port,
                                      str(self.tmp / "meta.log"))
        for i, port in enumerate(self.store_ports):
            self.daemons["s%d" % i] = Daemon([binary("storage"), str(port), "--dir", str(self.tmp / ("s%d-data" % i))],
                                             port, str(self.tmp / ("s%d.log" % i)))

    def kill9_all(self):
        for d in self.daemons.values():
            d.kill9()

    def stop(self):
        for d in self.daemons.values():
            d.stop()

    def write_lists(self, dist, storage_ports=None, name="lists"):
        ports = self.store_ports if storage_ports is None else storage_ports
        sl = self.tmp / (name + "-storage_list.txt")
        sl.write_text("address, port\n127.0.0.1, %d\n" % self.meta_port +
                      "".join("127.0.0.1, %d\n" % p for p in ports))
        dl = self.tmp / (name + "-model_distribution_list.txt")
        dl.write_text("model, storages\n" + "".join("%s, %s\n" % (m, ", ".join(map(str, s))) for m, s in dist))
        return str(sl), str(dl)

    def deploy(self, sl, dl, kv):
        p = subprocess.run([binary("deploy_file"), sl, dl, kv], capture_output=True, text=True, timeout=300)
        return p.returncode, p.stdout, p.stderr

    def location(self, model):
        status, body = meta_get(self.meta_port, model + "-LOCATION")
        if status == E["NOTFOUND"]:
            return None
        assert status == 0, body
        return decode_location(body)

    def fetch(self, model, out_dir):
        os.makedirs(out_dir, exist_ok=True)
        p = subprocess.run([binary("pipeps"), "fetch", "127.0.0.1:%d" % self.meta_port, model, "--out", str(out_dir)],
                           capture_output=True, text=True, timeout=300)
        return p.returncode, p.stdout, p.stderr


@pytest.fixture
def tier(tmp_path):
    t = Tier(tmp_path)
    yield t
    t.stop()


def models_by_name(models):
    return {name: (total, nbatches, dict(records)) for name, total, nbatches, records in models}


DIST = [("alpha", [0]), ("beta", [1, 0])]


def check_deployed(tier, models, dist, tmp, label):
    """Every key, read back three ways, equals kv.bin's bytes: the location
    record decoded in Python + raw STORE_GETs, and `pipeps fetch`."""
    expected = models_by_name(models)
    ports = tier.store_ports
    for model, storages in dist:
        total, nbatches, records = expected[model]
        rec = tier.location(model)
        assert rec is not None, model
        assert rec["model"] == model and rec["total_size"] == total
        assert rec["metadata_key"] == "%s-METADATA@%d" % (model, rec["generation"])
        status, body = meta_get(tier.meta_port, rec["metadata_key"])
        assert status == 0 and body == records[model + "-METADATA"]
        status, body = meta_get(tier.meta_port, model + "-SIZE")
        assert status == 0 and body == str(total).encode()
        assert [k["key"] for k in rec["keys"]] == ["%s-BATCH-%d" % (model, i) for i in range(nbatches)]
        for k in rec["keys"]:
            value = records[k["key"]]
            assert k["size"] == len(value)
            assert 1 <= len(k["slices"]) <= len(storages)
            got = b""
            for i, s in enumerate(k["slices"]):
                assert s["offset"] == len(got)
                assert s["addr"] == "127.0.0.1" and s["port"] == ports[storages[i]]  # i-th listed storage
                assert s["storage_key"] == "%s@%d" % (k["key"], rec["generation"])
                if i < len(k["slices"]) - 1:
                    assert s["size"] % 512 == 0 and s["size"] == k["slices"][0]["size"]
                status, body = store_get(s["port"], s["storage_key"])
                assert status == 0, body
                assert len(body) == s["size"]
                got += body
            assert got == value, k["key"]
        out = tmp / ("fetched-%s-%s" % (label, model))
        rc, stdout, stderr = tier.fetch(model, out)
        assert rc == 0, stderr
        assert stdout.startswith("model %s generation %d total_size %d keys %d\n"
                                 % (model, rec["generation"], total, nbatches))
        for key, value in records.items():
            assert (out / key).read_bytes() == value, key


def all_storage_values(tier):
    return [store_values(p) for p in tier.store_ports]


# ----------------------------------------------------------------- tests


def test_deploy_read_back_and_survive_kill9(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    models = kvbin_py.synthetic(seed=11)
    kvbin_py.write(kv, models)
    sl, dl = tier.write_lists(DIST)
    rc, out, err = tier.deploy(sl, dl, kv)
    assert rc == 0, err
    gen = tier.location("alpha")["generation"]
    assert "alpha: generation %d, 5 batches" % gen in out
    assert "beta: generation %d, 3 batches" % gen in out
    assert "on storages 1,0" in out
    # progress on a pipe: a plain summary line, no carriage returns
    assert "deploy_file: pushed" in err and "\r" not in err
    check_deployed(tier, models, DIST, tmp_path, "before")
    # beta really is split: some of its slices on each storage
    beta_ports = {s["port"] for k in tier.location("beta")["keys"] for s in k["slices"]}
    assert beta_ports == set(tier.store_ports)

    tier.kill9_all()
    tier.start()
    check_deployed(tier, models, DIST, tmp_path, "after")


def test_redeploy_replaces_and_deletes_old_generation(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    v1 = kvbin_py.synthetic(seed=1)
    kvbin_py.write(kv, v1)
    sl, dl = tier.write_lists(DIST)
    rc, _, err = tier.deploy(sl, dl, kv)
    assert rc == 0, err
    old = {m: tier.location(m) for m, _ in DIST}
    values_v1 = all_storage_values(tier)

    v2 = kvbin_py.synthetic(seed=2)
    kvbin_py.write(kv, v2)
    rc, _, err = tier.deploy(sl, dl, kv)
    assert rc == 0, err
    check_deployed(tier, v2, DIST, tmp_path, "v2")
    for model, _ in DIST:
        new = tier.location(model)
        assert new["generation"] > old[model]["generation"]
        for k in old[model]["keys"]:
            for s in k["slices"]:
                status, _ = store_get(s["port"], s["storage_key"])
                assert status == E["NOTFOUND"], s["storage_key"]
        status, _ = meta_get(tier.meta_port, old[model]["metadata_key"])
        assert status == E["NOTFOUND"]
    # same shape, old values gone: the storages hold as many values as before
    assert all_storage_values(tier) == values_v1


def test_redeploy_moves_a_model_to_other_storages(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    models = kvbin_py.synthetic(seed=5)
    kvbin_py.write(kv, models)
    sl, dl = tier.write_lists([("alpha", [0, 1])])
    assert tier.deploy(sl, dl, kv)[0] == 0
    sl, dl = tier.write_lists([("alpha", [1])], name="moved")
    rc, _, err = tier.deploy(sl, dl, kv)
    assert rc == 0, err
    check_deployed(tier, models, [("alpha", [1])], tmp_path, "moved")
    assert store_values(tier.store_ports[0]) == 0  # the old generation's slices on storage 0 are gone


def assert_nothing_published(tier, models=("alpha", "beta")):
    for m in models:
        assert tier.location(m) is None, m
        status, _ = meta_get(tier.meta_port, m + "-SIZE")
        assert status == E["NOTFOUND"]
    c = Conn(tier.meta_port)
    try:
        status, body = c.call(MSG["META_LIST"], pack_str(""))
    finally:
        c.close()
    assert status == 0 and struct.unpack_from("<I", body)[0] == 0, body
    assert all_storage_values(tier) == [0, 0]


def test_model_missing_from_kvbin_publishes_nothing(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    kvbin_py.write(kv, kvbin_py.synthetic(seed=1))
    sl, dl = tier.write_lists(DIST + [("gamma", [0])])
    rc, out, err = tier.deploy(sl, dl, kv)
    assert rc == 1
    assert "%s:4: model gamma is not in %s" % (dl, kv) in err
    assert out == ""
    assert_nothing_published(tier)


def test_storage_index_out_of_range_publishes_nothing(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    kvbin_py.write(kv, kvbin_py.synthetic(seed=1))
    sl, dl = tier.write_lists([("alpha", [0]), ("beta", [0, 2])])
    rc, _, err = tier.deploy(sl, dl, kv)
    assert rc == 1
    assert "%s:3: storage index 2 out of range: the storage list has 2 storages (0..1)" % dl in err
    assert_nothing_published(tier)


def test_unreachable_storage_publishes_nothing(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    kvbin_py.write(kv, kvbin_py.synthetic(seed=1))
    dead = free_port()
    sl, dl = tier.write_lists(DIST, storage_ports=[tier.store_ports[0], dead])
    rc, _, err = tier.deploy(sl, dl, kv)
    assert rc == 1
    assert "storage 1 127.0.0.1:%d (%s:4) unreachable" % (dead, sl) in err
    assert_nothing_published(tier)


def test_unreachable_metadata_storage(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    kvbin_py.write(kv, kvbin_py.synthetic(seed=1))
    sl, dl = tier.write_lists(DIST)
    tier.daemons["meta"].stop()
    rc, _, err = tier.deploy(sl, dl, kv)
    assert rc == 1
    assert "metadata storage 127.0.0.1:%d (%s:2) unreachable" % (tier.meta_port, sl) in err
    assert all_storage_values(tier) == [0, 0]


def test_truncated_kvbin_names_offset_and_publishes_nothing(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    kvbin_py.write(kv, kvbin_py.synthetic(seed=1))
    key, header_off, value_off, value = kvbin_py.read(kv)[1][3][3]  # beta-BATCH-2, record 3 of beta
    with open(kv, "r+b") as f:
        f.truncate(value_off + 4096)
    sl, dl = tier.write_lists(DIST)
    rc, _, err = tier.deploy(sl, dl, kv)
    assert rc == 1
    assert ("%s: record 3 of model beta at offset %d: length %d beyond end of file (size %d)"
            % (kv, header_off, len(value), value_off + 4096)) in err
    assert_nothing_published(tier)


def test_corrupt_value_names_key_and_offset_and_publishes_nothing(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    kvbin_py.write(kv, kvbin_py.synthetic(seed=1))
    key, header_off, value_off, _ = kvbin_py.read(kv)[0][3][4]  # alpha-BATCH-3
    with open(kv, "r+b") as f:
        f.seek(value_off + 5)
        b = f.read(1)
        f.seek(value_off + 5)
        f.write(bytes([b[0] ^ 1]))
    sl, dl = tier.write_lists(DIST)
    rc, _, err = tier.deploy(sl, dl, kv)
    assert rc == 1
    assert "%s: model alpha: record %s at offset %d: value checksum mismatch" % (kv, key, header_off) in err
    assert_nothing_published(tier)


class FailingStorage:
    """A fake storage that acknowledges `ok_puts` STORE_PUTs, refuses the
    next ones with PPS_ENOSPACE, and records DELETEs."""

    def __init__(self, ok_puts):
        self.ok_puts = ok_puts
        self.put_keys, self.deleted = [], []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def reply(self, conn, mtype, rid, status, payload=b""):
        conn.sendall(HEADER.pack(0x31535050, 1, FLAG_RESPONSE, mtype, status, 0, rid, len(payload)) + payload)

    def serve(self, conn):
        try:
            while True:
                _magic, _v, _flags, mtype, _st, _res, rid, plen = HEADER.unpack(recv_exact(conn, 32))
                payload = recv_exact(conn, plen)
                klen = struct.unpack_from("<I", payload)[0] if plen >= 4 else 0
                key = payload[4:4 + klen].decode()
                with self.lock:
                    if mtype == MSG["STORE_PUT"]:
                        if len(self.put_keys) < self.ok_puts:
                            self.put_keys.append(key)
                            self.reply(conn, mtype, rid, 0)
                        else:
                            self.reply(conn, mtype, rid, E["NOSPACE"], b"fake storage is full")
                    elif mtype == MSG["STORE_DELETE"]:
                        self.deleted.append(key)
                        self.reply(conn, mtype, rid, 0 if key in self.put_keys else E["NOTFOUND"])
                    else:
                        self.reply(conn, mtype, rid, E["UNSUPPORTED"], b"fake")
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def test_failing_push_publishes_nothing_and_removes_pushed_slices(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    models = kvbin_py.synthetic(seed=1)
    kvbin_py.write(kv, models)
    fake = FailingStorage(ok_puts=2)
    try:
        # beta over [fake, real storage 0]; alpha on real storage 0
        sl, dl = tier.write_lists(DIST, storage_ports=[tier.store_ports[0], fake.port])
        rc, out, err = tier.deploy(sl, dl, kv)
        assert rc == 1
        assert "storage 1 127.0.0.1:%d: put beta-BATCH-" % fake.port in err
        assert "nothing published" in err
        assert out == ""
        assert_nothing_published(tier)  # also: real storage 0 holds nothing any more
        assert len(fake.put_keys) == 2
        assert set(fake.put_keys) <= set(fake.deleted)  # acknowledged slices taken back
    finally:
        fake.close()


def test_failing_push_on_redeploy_keeps_the_old_model(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    v1 = kvbin_py.synthetic(seed=1)
    kvbin_py.write(kv, v1)
    sl, dl = tier.write_lists([("alpha", [0])])
    assert tier.deploy(sl, dl, kv)[0] == 0
    before = tier.location("alpha")
    fake = FailingStorage(ok_puts=1)
    try:
        kvbin_py.write(kv, kvbin_py.synthetic(seed=2))
        sl2, dl2 = tier.write_lists([("alpha", [0, 1])], storage_ports=[tier.store_ports[0], fake.port], name="f")
        rc, _, err = tier.deploy(sl2, dl2, kv)
        assert rc == 1, err
        assert tier.location("alpha") == before
        check_deployed(tier, v1, [("alpha", [0])], tmp_path, "kept")
    finally:
        fake.close()


class FlakyMeta(FailingStorage):
    """A fake metadata storage (a dict) that refuses the PUT of one key."""

    def __init__(self, refuse_key):
        self.refuse_key = refuse_key
        self.kv = {}
        super().__init__(ok_puts=0)

    def serve(self, conn):
        try:
            while True:
                _magic, _v, _flags, mtype, _st, _res, rid, plen = HEADER.unpack(recv_exact(conn, 32))
                payload = recv_exact(conn, plen)
                klen = struct.unpack_from("<I", payload)[0]
                key = payload[4:4 + klen].decode()
                with self.lock:
                    if mtype == MSG["META_GET"]:
                        if key in self.kv:
                            self.reply(conn, mtype, rid, 0, self.kv[key])
                        else:
                            self.reply(conn, mtype, rid, E["NOTFOUND"], b"no such key")
                    elif mtype == MSG["META_PUT"] and key == self.refuse_key:
                        self.reply(conn, mtype, rid, E["IO"], b"fake disk error")
                    elif mtype == MSG["META_PUT"]:
                        self.kv[key] = payload[4 + klen:]
                        self.reply(conn, mtype, rid, 0)
                    elif mtype == MSG["META_DELETE"]:
                        found = self.kv.pop(key, None) is not None
                        self.reply(conn, mtype, rid, 0 if found else E["NOTFOUND"])
                    else:
                        self.reply(conn, mtype, rid, E["UNSUPPORTED"], b"fake")
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()


def test_failing_location_put_leaves_that_model_unpublished(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    models = kvbin_py.synthetic(seed=1)
    kvbin_py.write(kv, models)
    meta = FlakyMeta(refuse_key="beta-LOCATION")
    try:
        sl = tmp_path / "flaky-storage_list.txt"
        sl.write_text("address, port\n127.0.0.1, %d\n" % meta.port +
                      "".join("127.0.0.1, %d\n" % p for p in tier.store_ports))
        _, dl = tier.write_lists(DIST)
        rc, out, err = tier.deploy(str(sl), dl, kv)
        assert rc == 1
        assert "model beta: put beta-LOCATION on the metadata storage: input/output error" in err
        assert "1 of 2 models published" in err
        # alpha is published and whole; of beta nothing is left behind
        assert out.startswith("alpha: generation ") and "beta" not in out
        assert sorted(meta.kv) == ["alpha-LOCATION", "alpha-METADATA@%d" % decode_location(meta.kv["alpha-LOCATION"])[
            "generation"], "alpha-SIZE"]
        rec = decode_location(meta.kv["alpha-LOCATION"])
        nslices = sum(len(k["slices"]) for k in rec["keys"])
        assert all_storage_values(tier) == [nslices, 0]  # only alpha's slices, all on storage 0
    finally:
        meta.close()


def test_progress_on_a_terminal(tier, tmp_path):
    kv = str(tmp_path / "kv.bin")
    kvbin_py.write(kv, kvbin_py.synthetic(seed=1, scale=8))
    sl, dl = tier.write_lists(DIST)
    master, slave = pty.openpty()
    p = subprocess.Popen([binary("deploy_file"), sl, dl, kv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=slave)
    os.close(slave)
    text = b""
    deadline = time.time() + 120
    while time.time() < deadline:
        r, _, _ = select.select([master], [], [], 1)
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            text += chunk
        elif p.poll() is not None:
            break
    os.close(master)
    assert p.wait(60) == 0
    text = text.decode(errors="replace")
    assert "\r" in text and "pushed" in text and "/s" in text
    assert "done in" in text


def test_usage(tmp_path):
    p = subprocess.run([binary("deploy_file")], capture_output=True, text=True)
    assert p.returncode == 2 and "usage: deploy_file STORAGE_LIST DISTRIBUTION_LIST KV_BIN" in p.stderr
    p = subprocess.run([binary("pipeps"), "deploy_file", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "usage: deploy_file" in p.stdout


def test_storage_demo_script():
    """scripts/storage-demo.sh (the README's storage-tier demo) passes."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    env = dict(os.environ, PIPEPS_BIN=os.path.abspath(os.environ.get("PIPEPS_BIN", os.path.join(root, "build/bin"))))
    p = subprocess.run([os.path.join(root, "scripts", "storage-demo.sh"), "--scale", "1"], capture_output=True,
                       text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "storage demo: OK" in p.stdout
    assert p.stdout.count("all equal to kv.bin") == 4
