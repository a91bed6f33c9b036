"""Black-box tests of metadata_storage: the real daemon on loopback, spoken
to with the independent Python framing of pipeps_testlib (and through the C
client via `pipeps meta`)."""
import os
import random
import select
import socket
import struct
import subprocess
import threading
import time

import pytest

from pipeps_testlib import (E, MSG, MetaConn, Conn, binary, free_port, header, pack_str,
                            parse_stat, recv_exact, start_metadata, FLAG_RESPONSE, HEADER,
                            check_half_frame_stallers, run_on_used_port, sanitizer_build,
                            wait_closed)

META_MAX_KEY = 1024
META_MAX_VALUE = 64 << 20


def stop_clean(d):
    """Stop with SIGTERM; the daemon must exit 0 with no sanitizer report."""
    rc = d.stop()
    text = d.log_text()
    assert "Sanitizer" not in text and "runtime error" not in text, text[-3000:]
    assert rc == 0, text[-3000:]


@pytest.fixture
def meta(tmp_path):
    d = start_metadata(tmp_path / "data", tmp_path / "meta.log.txt")
    yield d
    stop_clean(d)


def log_of(tmp_path):
    return os.path.join(tmp_path, "data", "meta.log")


def wait_for_log(daemon, text, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in daemon.log_text():
            return True
        time.sleep(0.05)
    return False


def assert_closed(sock):
    """The server closed this connection (EOF, or a reset)."""
    sock.settimeout(10)
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return
    assert data == b"", "connection still open"


# ---------------------------------------------------------------- basics

def test_get_put_delete_list(meta):
    c = MetaConn(meta.port)
    assert c.put("m1-SIZE", b"1234") == (0, b"")
    assert c.get("m1-SIZE") == (0, b"1234")
    # overwrite, empty and binary values
    assert c.put("m1-SIZE", b"99") == (0, b"")
    assert c.get("m1-SIZE") == (0, b"99")
    assert c.put("empty", b"") == (0, b"")
    assert c.get("empty") == (0, b"")
    blob = bytes(range(256)) * 40
    assert c.put("m1-METADATA", blob)[0] == 0
    assert c.get("m1-METADATA") == (0, blob)
    # unknown key: PPS_ENOTFOUND with a message naming it
    status, msg = c.get("nope")
    assert status == E["NOTFOUND"] and b"nope" in msg
    # list: sorted, by prefix
    for k in ["m1-BATCH-10", "m1-BATCH-2", "m2-SIZE", "m1-BATCH-1"]:
        assert c.put(k, b"x")[0] == 0
    assert c.list("m1-BATCH-") == (0, ["m1-BATCH-1", "m1-BATCH-10", "m1-BATCH-2"])
    assert c.list("m2") == (0, ["m2-SIZE"])
    assert c.list("zzz") == (0, [])
    assert c.list("")[1] == sorted(["m1-SIZE", "empty", "m1-METADATA", "m1-BATCH-10",
                                    "m1-BATCH-2", "m2-SIZE", "m1-BATCH-1"])
    # delete; deleting again is a miss
    assert c.delete("m1-BATCH-2") == (0, b"")
    assert c.get("m1-BATCH-2")[0] == E["NOTFOUND"]
    assert c.delete("m1-BATCH-2")[0] == E["NOTFOUND"]
    assert c.list("m1-BATCH-") == (0, ["m1-BATCH-1", "m1-BATCH-10"])
    # ping echoes, stat reports
    assert c.call(MSG["PING"], b"hello") == (0, b"hello")
    st = c.stat()
    assert st["keys"] == 6
    assert st["puts"] == 8 and st["deletes"] == 2
    assert st["durable_seq"] == st["last_seq"]
    c.close()


def test_key_limits(meta):
    c = MetaConn(meta.port)
    longest = "k" * META_MAX_KEY
    assert c.put(longest, b"v")[0] == 0
    assert c.get(longest) == (0, b"v")
    assert c.put("k" * (META_MAX_KEY + 1), b"v")[0] == E["TOOBIG"]
    assert c.put("", b"v")[0] == E["INVAL"]
    assert c.put("a\0b", b"v")[0] == E["INVAL"]
    assert c.get("a\0b")[0] == E["INVAL"]
    # the connection survived all of those (the frames themselves were fine)
    assert c.get(longest) == (0, b"v")
    # a GET frame longer than the longest key is over its frame limit: refused, closed
    assert c.get("k" * (META_MAX_KEY + 1))[0] == E["TOOBIG"]
    assert_closed(c.sock)
    c.close()


def test_large_value(meta):
    c = MetaConn(meta.port)
    big = os.urandom(8 << 20)
    assert c.put("big", big) == (0, b"")
    status, body = c.get("big")
    assert status == 0 and body == big
    c.close()


def test_cli_client(meta, tmp_path):
    """The C client library, through `pipeps meta`."""
    addr = "127.0.0.1:%d" % meta.port
    meta_bin = [binary("pipeps"), "meta", addr]

    def run(*args, **kw):
        return subprocess.run(meta_bin + list(args), capture_output=True, timeout=30, **kw)

    assert run("put", "cli-a", "alpha").returncode == 0
    f = tmp_path / "value.bin"
    payload = os.urandom(100000)
    f.write_bytes(payload)
    assert run("put", "cli-b", "--file", str(f)).returncode == 0
    assert run("put", "cli-c", "--file", "-", input=b"from stdin").returncode == 0
    assert run("get", "cli-a").stdout == b"alpha"
    assert run("get", "cli-b").stdout == payload
    assert run("get", "cli-c").stdout == b"from stdin"
    assert run("list", "cli-").stdout == b"cli-a\ncli-b\ncli-c\n"
    assert run("delete", "cli-b").returncode == 0
    r = run("get", "cli-b")
    assert r.returncode == 1 and b"NOTFOUND" in r.stderr
    assert run("list").stdout == b"cli-a\ncli-c\n"
    assert run("frobnicate", "x").returncode == 2


# ------------------------------------------------- connections and clients

def test_persistent_connection_many_requests(meta):
    c = MetaConn(meta.port)
    for i in range(2000):
        key = "key-%d" % (i % 97)
        assert c.put(key, b"v%d" % i) == (0, b"")
        assert c.get(key) == (0, b"v%d" % i)
    c.close()


def test_pipelined_requests_answered_in_order(meta):
    c = Conn(meta.port)
    n = 300
    batch = b""
    for i in range(n):
        batch += header(MSG["META_PUT"], len(pack_str("p%d" % i)) + 8, request_id=2 * i + 1)
        batch += pack_str("p%d" % i) + b"value%03d" % i
        batch += header(MSG["META_GET"], len(pack_str("p%d" % i)), request_id=2 * i + 2)
        batch += pack_str("p%d" % i)
    c.sock.sendall(batch)  # everything at once, before reading any answer
    for i in range(n):
        mtype, flags, status, rid, body = c.recv()
        assert (mtype, status, rid, body) == (MSG["META_PUT"], 0, 2 * i + 1, b"")
        assert flags & FLAG_RESPONSE
        mtype, flags, status, rid, body = c.recv()
        # each GET sees the PUT pipelined just before it
        assert (mtype, status, rid, body) == (MSG["META_GET"], 0, 2 * i + 2, b"value%03d" % i)
    c.close()
    st = MetaConn(meta.port).stat()
    # group commit: pipelined writes share fsyncs
    assert st["puts"] == n and st["fsyncs"] < n and st["batch_max"] > 1


def test_20_concurrent_clients(meta):
    errors = []
    shared_seen = []

    def worker(w):
        try:
            c = MetaConn(meta.port)
            for i in range(100):
                key = "c%02d-%03d" % (w, i)
                val = os.urandom(random.randint(0, 300))
                assert c.put(key, val) == (0, b"")
                assert c.get(key) == (0, val)
                if i % 10 == 0:
                    assert c.put("shared", b"%d" % w) == (0, b"")
                    status, body = c.get("shared")
                    assert status == 0 and int(body) in range(20)
                    shared_seen.append(int(body))
            status, keys = c.list("c%02d-" % w)
            assert status == 0 and keys == ["c%02d-%03d" % (w, i) for i in range(100)]
            c.close()
        except Exception as e:  # reported below
            errors.append("worker %d: %r" % (w, e))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    c = MetaConn(meta.port)
    st = c.stat()
    assert st["keys"] == 20 * 100 + 1
    assert st["connections_total"] >= 21
    assert len(c.list("c")[1]) == 2000
    c.close()


# ------------------------------------------------------------ durability

def test_kill9_keeps_every_acknowledged_write(tmp_path):
    """Writers put and delete as fast as they can; the server is SIGKILLed
    mid-stream. After a restart every acknowledged put is there with its
    value and every acknowledged delete is still deleted; only the one
    request per writer that was in flight may have gone either way."""
    data = tmp_path / "data"
    d = start_metadata(data, tmp_path / "log1.txt")
    acked = [dict() for _ in range(4)]      # key -> value, or None if deleted
    inflight = [None] * 4                   # (key, value or None) not yet answered
    stop = threading.Event()

    def writer(w):
        c = MetaConn(d.port)
        i = 0
        try:
            while not stop.is_set():
                key = "w%d-%d" % (w, i)
                val = b"%d:%d:" % (w, i) + os.urandom(50)
                inflight[w] = (key, val)
                if c.put(key, val)[0] != 0:
                    break
                acked[w][key] = val
                if i % 3 == 2:
                    victim = "w%d-%d" % (w, i - 1)
                    inflight[w] = (victim, None)
                    if c.delete(victim)[0] != 0:
                        break
                    acked[w][victim] = None
                inflight[w] = None
                i += 1
        except (OSError, ConnectionError, struct.error, AssertionError):
            pass  # the server died under us

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    # Let some writes through, then kill without warning.
    deadline = time.time() + 30
    while sum(len(a) for a in acked) < 400 and time.time() < deadline:
        time.sleep(0.01)
    d.kill9()
    stop.set()
    for t in threads:
        t.join(30)
    total = sum(len(a) for a in acked)
    assert total >= 400

    d2 = start_metadata(data, tmp_path / "log2.txt")
    c = MetaConn(d2.port)
    for w in range(4):
        pending = inflight[w]
        for key, val in acked[w].items():
            if pending and pending[0] == key:
                continue  # its last request may or may not have landed
            status, body = c.get(key)
            if val is None:
                assert status == E["NOTFOUND"], "deleted key %s came back" % key
            else:
                assert (status, body) == (0, val), "acknowledged key %s lost" % key
    c.close()
    stop_clean(d2)


def test_restart_after_clean_stop(tmp_path):
    data = tmp_path / "data"
    d = start_metadata(data, tmp_path / "l1.txt")
    c = MetaConn(d.port)
    for i in range(50):
        assert c.put("k%d" % i, b"v%d" % i)[0] == 0
    assert c.delete("k7")[0] == 0
    c.close()
    stop_clean(d)
    d = start_metadata(data, tmp_path / "l2.txt")
    c = MetaConn(d.port)
    assert c.get("k49") == (0, b"v49")
    assert c.get("k7")[0] == E["NOTFOUND"]
    assert c.stat()["keys"] == 49
    c.close()
    stop_clean(d)


def test_torn_tail_is_dropped(tmp_path):
    data = tmp_path / "data"
    d = start_metadata(data, tmp_path / "l1.txt")
    c = MetaConn(d.port)
    for i in range(20):
        assert c.put("t%d" % i, b"value-%d" % i)[0] == 0
    c.close()
    d.kill9()
    good_size = os.path.getsize(data / "meta.log")
    # A crash in the middle of a write: a record header and part of a value,
    # then random garbage.
    with open(data / "meta.log", "ab") as f:
        f.write(b"MREC\x01\0\0\0" + struct.pack("<II", 5, 1000) + b"tornk" + b"x" * 40)
        f.write(os.urandom(333))
    d = start_metadata(data, tmp_path / "l2.txt")
    assert "torn tail" in d.log_text()
    assert os.path.getsize(data / "meta.log") == good_size
    c = MetaConn(d.port)
    for i in range(20):
        assert c.get("t%d" % i) == (0, b"value-%d" % i)
    assert c.get("tornk")[0] == E["NOTFOUND"]
    # writing continues after the cut, and survives another restart
    assert c.put("after", b"ok")[0] == 0
    c.close()
    d.kill9()
    d = start_metadata(data, tmp_path / "l3.txt")
    c = MetaConn(d.port)
    assert c.get("after") == (0, b"ok")
    assert c.get("t19") == (0, b"value-19")
    c.close()
    stop_clean(d)
    assert "torn tail" not in d.log_text()


def test_damage_in_the_middle_refuses_to_start(tmp_path):
    data = tmp_path / "data"
    d = start_metadata(data, tmp_path / "l1.txt")
    c = MetaConn(d.port)
    for i in range(10):
        assert c.put("d%d" % i, b"value-%d" % i)[0] == 0
    c.close()
    stop_clean(d)
    # flip a byte in the value of the 3rd record (valid records follow)
    rec = 24 + 2 + 7
    off = 16 + 2 * rec + 16 + 2 + 3
    with open(data / "meta.log", "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))
    port = free_port()
    out = subprocess.run([binary("metadata_storage"), str(port), "--dir", str(data)],
                         capture_output=True, timeout=30)
    assert out.returncode != 0
    assert b"damaged" in out.stderr and b"--truncate-damaged" in out.stderr
    d = start_metadata(data, tmp_path / "l2.txt", extra=["--truncate-damaged"])
    c = MetaConn(d.port)
    assert c.get("d1") == (0, b"value-1")
    assert c.get("d2")[0] == E["NOTFOUND"]
    c.close()
    stop_clean(d)
    assert any(n.startswith("meta.log.damaged-") for n in os.listdir(data))


def test_compaction_shrinks_log(tmp_path):
    data = tmp_path / "data"
    d = start_metadata(data, tmp_path / "l1.txt", extra=["--compact-min", "256K"])
    c = MetaConn(d.port)
    for i in range(50):
        assert c.put("keep-%d" % i, b"K%d" % i)[0] == 0
    for i in range(3000):
        assert c.put("hot", b"%06d" % i + b"x" * 994)[0] == 0
    assert c.delete("keep-3")[0] == 0
    st = c.stat()
    written = 3000 * (24 + 3 + 1000)
    assert st["compactions"] >= 1
    size = os.path.getsize(data / "meta.log")
    # the log holds about the live data, not the 3 MB written
    assert size < written / 4, size
    assert size <= 2 * 256 * 1024 + 2 * st["live_log_bytes"]
    assert c.get("hot") == (0, b"%06d" % 2999 + b"x" * 994)
    c.close()
    d.kill9()
    assert not os.path.exists(data / "meta.log.compact")
    d = start_metadata(data, tmp_path / "l2.txt", extra=["--compact-min", "256K"])
    c = MetaConn(d.port)
    assert c.get("hot") == (0, b"%06d" % 2999 + b"x" * 994)
    for i in range(50):
        expect = (E["NOTFOUND"], None) if i == 3 else (0, b"K%d" % i)
        got = c.get("keep-%d" % i)
        assert got[0] == expect[0] and (expect[1] is None or got[1] == expect[1])
    assert c.stat()["keys"] == 50
    c.close()
    stop_clean(d)


def test_default_data_dir_is_printed(tmp_path):
    port = free_port()
    d = start_metadata(None, tmp_path / "l.txt", port=port, cwd=str(tmp_path))
    c = MetaConn(port)
    assert c.put("x", b"y")[0] == 0
    c.close()
    stop_clean(d)
    expected = os.path.realpath(tmp_path / "metadata-data")
    assert os.path.isfile(os.path.join(expected, "meta.log"))
    assert "data directory %s" % expected in d.log_text()


def test_second_server_on_same_dir_is_refused(meta, tmp_path):
    out = subprocess.run([binary("metadata_storage"), str(free_port()), "--dir",
                          str(tmp_path / "data")], capture_output=True, timeout=30)
    assert out.returncode != 0 and b"lock" in out.stderr
    assert MetaConn(meta.port).get("x")[0] == E["NOTFOUND"]


# -------------------------------------------------------------- bad input

@pytest.fixture
def bystander(meta):
    """Another client, connected before the bad one, that must keep working."""
    c = MetaConn(meta.port)
    assert c.put("bystander", b"still here")[0] == 0
    yield c
    assert c.get("bystander") == (0, b"still here")
    assert c.put("bystander-2", b"ok")[0] == 0
    c.close()


def peer_name(sock):
    return "127.0.0.1:%d" % sock.getsockname()[1]


def test_bad_magic_closes_only_that_connection(meta, bystander):
    s = socket.create_connection(("127.0.0.1", meta.port))
    s.sendall(header(MSG["META_GET"], 5, magic=0xDEADBEEF) + b"xxxxx")
    magic, version, flags, mtype, status, _, rid, plen = HEADER.unpack(recv_exact(s, 32))
    body = recv_exact(s, plen)
    assert status == E["PROTO"] and mtype == MSG["ERROR"] and flags & FLAG_RESPONSE
    assert b"header" in body
    assert_closed(s)
    assert wait_for_log(meta, "peer %s" % peer_name(s))
    assert bystander.get("bystander") == (0, b"still here")


def test_wrong_version_closes(meta, bystander):
    s = socket.create_connection(("127.0.0.1", meta.port))
    s.sendall(header(MSG["PING"], 0, version=9))
    _, _, _, mtype, status, _, _, plen = HEADER.unpack(recv_exact(s, 32))
    recv_exact(s, plen)
    assert status == E["UNSUPPORTED"]
    assert_closed(s)


@pytest.mark.parametrize("mtype,length", [
    ("META_GET", 1 << 20),                                  # a key message of 1 MiB
    ("META_PUT", 4 + META_MAX_KEY + META_MAX_VALUE + 1),    # just over the PUT limit
    ("META_LIST", 1 << 62),                                 # absurd
    ("PING", 10 << 20),
])
def test_over_limit_length_is_refused_before_buffering(meta, bystander, mtype, length):
    s = socket.create_connection(("127.0.0.1", meta.port))
    s.sendall(header(MSG[mtype], length, request_id=77))
    _, _, flags, rtype, status, _, rid, plen = HEADER.unpack(recv_exact(s, 32))
    body = recv_exact(s, plen)
    assert (rtype, status, rid) == (MSG[mtype], E["TOOBIG"], 77)
    assert b"over the limit" in body
    assert_closed(s)
    assert wait_for_log(meta, "peer %s" % peer_name(s))


def test_unknown_type_keeps_connection(meta, bystander):
    c = Conn(meta.port)
    rid = c.send(0x01FF, b"some payload the server must skip")
    mtype, flags, status, rrid, body = c.recv()
    assert (mtype, status, rrid) == (MSG["ERROR"], E["UNSUPPORTED"], rid)
    assert b"0x01ff" in body
    # the stream is still in step: the same connection keeps working
    assert c.call(MSG["PING"], b"after") == (0, b"after")
    assert wait_for_log(meta, "peer %s" % peer_name(c.sock))
    c.close()


@pytest.mark.parametrize("mtype,payload,status", [
    ("META_GET", struct.pack("<I", 500) + b"short", "PROTO"),     # key length beyond payload
    ("META_GET", b"\x01\x00", "PROTO"),                           # payload too short for a length
    ("META_GET", pack_str("k") + b"trailing", "PROTO"),           # bytes after the key
    ("META_PUT", struct.pack("<I", 900) + b"abc", "PROTO"),       # key length beyond payload
    ("META_PUT", b"\x05", "PROTO"),
    ("META_DELETE", struct.pack("<I", 0xFFFFFFFF), "TOOBIG"),
    ("META_LIST", struct.pack("<I", 7), "PROTO"),
    ("META_GET", b"", "PROTO"),
])
def test_garbage_payload_is_answered_and_connection_survives(meta, bystander, mtype, payload,
                                                             status):
    c = Conn(meta.port)
    st, body = c.call(MSG[mtype], payload)
    assert st == E[status], body
    assert len(body) > 0  # a message for the human
    assert c.call(MSG["PING"], b"still in step") == (0, b"still in step")
    assert wait_for_log(meta, "peer %s" % peer_name(c.sock))
    c.close()


def test_response_frame_as_request(meta, bystander):
    s = socket.create_connection(("127.0.0.1", meta.port))
    s.sendall(header(MSG["META_GET"], 0, request_id=5, flags=FLAG_RESPONSE))
    _, _, _, mtype, status, _, rid, plen = HEADER.unpack(recv_exact(s, 32))
    recv_exact(s, plen)
    assert status == E["PROTO"] and rid == 5
    s.close()


@pytest.mark.parametrize("sent", ["half-header", "half-key", "half-value"])
def test_peer_disconnecting_mid_frame(meta, bystander, sent):
    s = socket.create_connection(("127.0.0.1", meta.port))
    frame = header(MSG["META_PUT"], 4 + 3 + 5000, request_id=9) + pack_str("mid") + b"v" * 5000
    cut = {"half-header": 17, "half-key": 32 + 5, "half-value": 32 + 7 + 2500}[sent]
    s.sendall(frame[:cut])
    time.sleep(0.1)
    peer = peer_name(s)
    s.close()
    assert wait_for_log(meta, "peer %s: disconnected mid-frame" % peer)
    # the half-sent PUT did not happen
    assert bystander.get("mid")[0] == E["NOTFOUND"]
    assert bystander.call(MSG["PING"], b"x") == (0, b"x")


def test_many_bad_clients_then_good_ones(meta, bystander):
    """A burst of misbehaving connections does not disturb the daemon."""
    for i in range(30):
        s = socket.create_connection(("127.0.0.1", meta.port))
        s.sendall(os.urandom(64))
        s.close()
    c = MetaConn(meta.port)
    assert c.put("after-burst", b"fine") == (0, b"")
    assert c.get("after-burst") == (0, b"fine")
    c.close()
    assert meta.alive()


def test_writes_progress_while_readers_are_busy(meta):
    """Readers that keep the event loop busy must not starve the group
    commit: a writer's PUTs still complete (a starved flush would hang here
    until the socket timeout)."""
    stop = threading.Event()
    errors = []

    def reader():
        try:
            c = MetaConn(meta.port)
            get = header(MSG["META_GET"], 5) + pack_str("r")
            while not stop.is_set():
                c.sock.sendall(get * 64)  # keep the loop busy: 64 requests in flight
                for _ in range(64):
                    assert c.recv()[2] in (0, E["NOTFOUND"])
            c.close()
        except Exception as e:
            errors.append(repr(e))

    readers = [threading.Thread(target=reader) for _ in range(6)]
    for t in readers:
        t.start()
    try:
        w = MetaConn(meta.port, timeout=60)
        for i in range(300):
            assert w.put("r", b"%d" % i) == (0, b"")
        assert w.get("r") == (0, b"299")
        w.close()
    finally:
        stop.set()
        for t in readers:
            t.join(30)
    assert not errors, errors


def test_out_of_file_descriptors_then_recovers(tmp_path):
    """More clients than the daemon has descriptors for: accept fails, is
    logged, the daemon pauses accepting instead of spinning, keeps serving the
    connections it has, and accepts again once descriptors are free."""
    from pipeps_testlib import Daemon
    port = free_port()
    cmd = "ulimit -n 32 && exec %s %d --dir %s" % (binary("metadata_storage"), port,
                                                     tmp_path / "data")
    d = Daemon(["sh", "-c", cmd], port, str(tmp_path / "l.txt"))
    first = MetaConn(port)
    assert first.put("k", b"v")[0] == 0
    extra = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
    assert wait_for_log(d, "accept failed")
    assert first.get("k") == (0, b"v")   # an existing client is unaffected
    for s in extra:
        s.close()
    late = MetaConn(port, timeout=30)
    assert late.get("k") == (0, b"v")
    late.close()
    first.close()
    stop_clean(d)


# ---------------------------------------------------------------- peer limits

def test_half_frame_stallers_are_dropped_and_new_clients_served(tmp_path):
    """Regression: peers that send half a frame header and go quiet used to
    hold their connections forever; with --max-conns they would lock every
    client out. Idle connections between frames are kept."""
    d = start_metadata(tmp_path / "data", tmp_path / "meta.log.txt",
                       extra=["--max-conns", 5, "--io-timeout", 3])
    try:
        check_half_frame_stallers(d.port, 5)
        assert wait_for_log(d, "stalled")
        assert wait_for_log(d, "--max-conns")
    finally:
        stop_clean(d)


def rss_anon_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def test_partial_puts_are_bounded_and_their_memory_returned(tmp_path):
    """Regression: 8 PUTs of 60 MiB values sent in part and then stalled grew
    the daemon by ~490 MiB, kept after they closed. Now large values being
    received are charged to --max-partial (the rest are refused with
    PPS_EBUSY), and a stalled one is dropped after --io-timeout with its
    buffer returned."""
    d = start_metadata(tmp_path / "data", tmp_path / "meta.log.txt",
                       extra=["--io-timeout", 5, "--max-partial", "128M"])
    try:
        pid = d.proc.pid
        c = MetaConn(d.port)
        assert c.put("warm", b"x" * 1000) == (0, b"")
        base = rss_anon_kib(pid)
        value_len, sent = 60 << 20, 24 << 20
        chunk = b"v" * (1 << 20)
        socks, statuses = [], []
        for i in range(8):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=60)
            key = pack_str("big-%d" % i)
            s.sendall(header(MSG["META_PUT"], len(key) + value_len, request_id=100 + i) + key)
            for _ in range(sent >> 20):
                s.sendall(chunk)
            socks.append(s)
        # two values fit in 128 MiB; the other six were refused at once
        # (their answers are waiting), the two accepted ones wait for more
        time.sleep(0.5)
        readable, _, _ = select.select(socks, [], [], 0)
        for i, s in enumerate(socks):
            if s not in readable:
                statuses.append(None)
                continue
            _m, _v, _f, _t, status, _r, rid, plen = HEADER.unpack(recv_exact(s, 32))
            assert rid == 100 + i
            statuses.append((status, recv_exact(s, plen)))
        refused = [x for x in statuses if x is not None]
        assert len(refused) == 6, statuses
        assert all(st == E["BUSY"] and b"--max-partial" in body for st, body in refused)
        st = c.call(MSG["STAT"])
        stat = parse_stat(st[1])
        assert stat["partial_bytes"] == 2 * value_len
        assert stat["partial_refused"] == 6
        # the two accepted ones stall: dropped after --io-timeout
        for s, x in zip(socks, statuses):
            if x is None:
                wait_closed(s)
        for s in socks:
            s.close()
        assert wait_for_log(d, "stalled")
        stat = parse_stat(c.call(MSG["STAT"])[1])
        assert stat["partial_bytes"] == 0 and stat["stalled_drops"] == 2
        assert c.get("big-0")[0] == E["NOTFOUND"]
        if not sanitizer_build():
            # what the partial values took went back to the system
            grown = rss_anon_kib(pid) - base
            assert grown < 32 * 1024, "still %d KiB more than before" % grown
        # a whole large value still goes through
        big = bytes(range(256)) * (40 << 12)
        assert c.put("big-ok", big) == (0, b"")
        assert c.get("big-ok") == (0, big)
        c.close()
    finally:
        stop_clean(d)


def test_port_in_use_is_said_once_and_creates_no_directory(tmp_path):
    """Regression: a port in use read "resource busy" over several lines, and
    the data directory was created before the bind failed."""
    data = tmp_path / "never-created"
    rc, out = run_on_used_port(lambda port: [binary("metadata_storage"), port, "--dir", data])
    assert rc != 0
    assert out.count("address already in use") == 1, out
    assert "resource busy" not in out, out
    assert not data.exists()
