"""Black-box tests of the storage daemon (build/bin/storage) over loopback.

Each test starts real daemons with their own data directory and port, and
talks to them with the independent Python framing of pipeps_testlib.
Checks: PUT/GET/range/DELETE/STAT, a 1 GiB value streamed both ways,
concurrent and slow readers, kill -9 and restart, torn and corrupt records
in the data files, compaction, and every kind of bad input while another
client keeps working.
"""
import glob
import hashlib
import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from pipeps_testlib import (E, MSG, U64_MAX, Conn, binary, free_port, header, pack_str, parse_stat,
                            recv_exact, start_storage, store_get, store_put, store_stat,
                            check_half_frame_stallers, run_on_used_port)


class Storage:
    """One storage daemon and its data directory, restartable."""

    def __init__(self, tmp_path, name="s", extra=()):
        self.dir = tmp_path / (name + "-data")
        self.log = tmp_path / (name + ".log")
        self.extra = list(extra)
        self.port = free_port()
        self.daemon = None
        self.start()

    def start(self):
        self.daemon = start_storage(self.dir, self.log, self.port, self.extra)

    def stop(self):
        return self.daemon.stop()

    def kill9(self):
        self.daemon.kill9()

    def restart(self):
        self.stop()
        self.start()

    def conn(self, timeout=60):
        return Conn(self.port, timeout=timeout)

    def log_text(self):
        return self.log.read_text(errors="replace")

    def data_files(self):
        return sorted(glob.glob(str(self.dir / "data-*.pps")))


@pytest.fixture
def storages(tmp_path):
    made = []

    def make(name="s", extra=()):
        s = Storage(tmp_path, name, extra)
        made.append(s)
        return s

    yield make
    for s in made:
        alive = s.daemon.alive()
        rc = s.stop()
        # Every daemon must have survived its test and stop cleanly.
        assert alive, "storage died during the test:\n" + s.log_text()
        assert rc == 0, "storage exited with %s:\n%s" % (rc, s.log_text())


def pattern(n, seed):
    """n deterministic pseudo-random bytes."""
    out = bytearray()
    block = hashlib.sha256(b"%d" % seed).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


def big_pattern(n, seed):
    """Faster for large n: a random 1 MiB block, each copy stamped with its index."""
    base = pattern(1 << 20, seed)
    parts = []
    for i in range((n + (1 << 20) - 1) >> 20):
        parts.append(struct.pack("<Q", i) + base[8:])
    return b"".join(parts)[:n]


# ---------------------------------------------------------------- basics

def test_put_get_range_delete_stat(storages):
    s = storages()
    c = s.conn()
    v = pattern(3_000_000, 1)
    assert store_put(c, "m-BATCH-0", v) == 0
    assert store_put(c, "empty", b"") == 0
    st, got = store_get(c, "m-BATCH-0")
    assert st == 0 and got == v
    st, got = store_get(c, "m-BATCH-0", 1000, 12345)
    assert st == 0 and got == v[1000:13345]
    st, got = store_get(c, "m-BATCH-0", 2_999_000)
    assert st == 0 and got == v[2_999_000:]
    st, got = store_get(c, "m-BATCH-0", len(v))  # empty range at the end
    assert st == 0 and got == b""
    st, got = store_get(c, "empty")
    assert st == 0 and got == b""

    # Overwrite.
    v2 = pattern(100_000, 2)
    assert store_put(c, "m-BATCH-0", v2) == 0
    assert store_get(c, "m-BATCH-0") == (0, v2)

    stat = store_stat(c)
    for name in ("values", "bytes_stored", "bytes_free", "files", "gets", "puts", "bytes_sent",
                 "bytes_on_disk", "deletes", "connections"):
        assert name in stat, name
    assert stat["values"] == 2
    assert stat["bytes_stored"] == len(v2)
    assert stat["bytes_free"] > 0
    assert stat["files"] >= 1
    assert stat["puts"] == 3
    assert stat["gets"] == 6
    assert stat["bytes_sent"] >= len(v) + 12345
    # The generic STAT answers the same text.
    st, text = c.call(MSG["STAT"])
    assert st == 0 and parse_stat(text)["values"] == 2

    st, _ = c.call(MSG["STORE_DELETE"], pack_str("m-BATCH-0"))
    assert st == 0
    st, msg = store_get(c, "m-BATCH-0")
    assert st == E["NOTFOUND"] and b"m-BATCH-0" in msg
    st, msg = c.call(MSG["STORE_DELETE"], pack_str("m-BATCH-0"))
    assert st == E["NOTFOUND"] and msg
    assert store_stat(c)["values"] == 1
    # PING echoes.
    assert c.call(MSG["PING"], b"hello") == (0, b"hello")


def test_get_errors(storages):
    s = storages()
    c = s.conn()
    assert store_put(c, "k", pattern(1000, 3)) == 0
    st, msg = store_get(c, "nope")
    assert st == E["NOTFOUND"] and b"nope" in msg
    for off, ln in ((0, 1001), (1000, 1), (1001, U64_MAX), (1001, 0), (U64_MAX, 2), (5, U64_MAX - 2)):
        st, msg = store_get(c, "k", off, ln)
        assert st == E["RANGE"], (off, ln)
        assert b"1000" in msg  # the message names the value's size
    # The connection is still in step.
    assert store_get(c, "k", 10, 10) == (0, pattern(1000, 3)[10:20])


def test_default_dir_is_printed(tmp_path):
    port = free_port()
    log = open(tmp_path / "log", "wb")
    p = subprocess.Popen([binary("storage"), str(port)], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=log)
    try:
        line = p.stdout.readline().decode()
        assert "storage-data-%d" % port in line
        c = None
        for _ in range(200):
            try:
                c = Conn(port)
                break
            except OSError:
                time.sleep(0.05)
        assert store_put(c, "x", b"1") == 0
        assert (tmp_path / ("storage-data-%d" % port)).is_dir()
        assert glob.glob(str(tmp_path / ("storage-data-%d" % port) / "data-*.pps"))
    finally:
        p.terminate()
        assert p.wait(10) == 0
        log.close()


def test_same_dir_twice_is_refused(storages, tmp_path):
    s = storages()
    port = free_port()
    r = subprocess.run([binary("storage"), str(port), "--dir", str(s.dir)], capture_output=True,
                       timeout=30)
    assert r.returncode != 0
    assert b"another storage" in r.stderr


# ---------------------------------------------------------------- big values

def rss_anon_kib(pid):
    """Anonymous resident memory of a process (heap, stacks), in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def put_streamed(sock, key, n, chunk_fn, nchunks, on_chunk=None):
    """PUT a value of n bytes produced chunk by chunk; returns its sha1."""
    k = key.encode()
    sock.sendall(header(MSG["STORE_PUT"], 4 + len(k) + n, request_id=77) + pack_str(k))
    h = hashlib.sha1()
    sent = 0
    for i in range(nchunks):
        b = chunk_fn(i)
        h.update(b)
        sock.sendall(b)
        sent += len(b)
        if on_chunk:
            on_chunk(i)
    assert sent == n
    return h.hexdigest()


def read_response_header(sock):
    return struct.unpack("<IBBHiIQQ", recv_exact(sock, 32))


def test_1gib_value_streamed(storages):
    s = storages()
    n = 1 << 30
    base = bytearray(pattern(4 << 20, 9))
    chunk = 4 << 20

    def make_chunk(i):
        base[0:8] = struct.pack("<Q", i)  # every chunk differs: catches misplaced data
        return bytes(base)

    pid = s.daemon.proc.pid
    peak = [rss_anon_kib(pid)]

    def sample(i):
        if i % 16 == 0:
            peak[0] = max(peak[0], rss_anon_kib(pid))

    sock = socket.create_connection(("127.0.0.1", s.port), timeout=120)
    digest = put_streamed(sock, "huge", n, make_chunk, n // chunk, sample)
    _m, _v, flags, _t, status, _r, rid, plen = read_response_header(sock)
    assert status == 0 and rid == 77 and plen == 0

    sock.sendall(header(MSG["STORE_GET"], 4 + 4 + 16, request_id=78) + pack_str("huge") +
                 struct.pack("<QQ", 0, U64_MAX))
    _m, _v, flags, _t, status, _r, rid, plen = read_response_header(sock)
    assert status == 0 and plen == n
    h = hashlib.sha1()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    left = n
    while left:
        got = sock.recv_into(view[:min(left, len(buf))])
        assert got > 0
        h.update(view[:got])
        left -= got
        if left % (64 << 20) < got:
            peak[0] = max(peak[0], rss_anon_kib(pid))
    assert h.hexdigest() == digest
    # The value was streamed, never held in the daemon's memory.
    assert peak[0] < 256 * 1024, "daemon anonymous memory reached %d KiB" % peak[0]

    # A range across a chunk boundary deep inside the value.
    c = s.conn(timeout=120)
    off = 200 * chunk - 10
    st, got = store_get(c, "huge", off, 20)
    assert st == 0
    assert got == bytes(make_chunk(199))[-10:] + bytes(make_chunk(200))[:10]
    assert store_stat(c)["bytes_stored"] == n
    sock.close()


# ---------------------------------------------------------------- concurrency

def test_many_concurrent_readers(storages):
    s = storages()
    c = s.conn()
    vals = {("v%d" % i): pattern(4_000_000 + i * 1000, 10 + i) for i in range(4)}
    for k, v in vals.items():
        assert store_put(c, k, v) == 0
    errors = []

    def reader(t):
        try:
            cc = s.conn()
            for j in range(6):
                k = "v%d" % ((t + j) % 4)
                v = vals[k]
                off = (t * 7919 + j * 104729) % (len(v) // 2)
                ln = len(v) - off if j % 2 else 1_000_000
                st, got = store_get(cc, k, off, ln if j % 2 == 0 else U64_MAX)
                if st != 0 or got != v[off:off + ln]:
                    errors.append((t, j, st))
            cc.close()
        except Exception as e:  # noqa: BLE001 - report any failure of a reader
            errors.append((t, repr(e)))

    threads = [threading.Thread(target=reader, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store_stat(c)["gets"] == 16 * 6


def test_slow_reader_does_not_block_others(storages):
    s = storages()
    c = s.conn()
    big = big_pattern(128 << 20, 5)
    small = pattern(4_000_000, 6)
    assert store_put(c, "big", big) == 0
    assert store_put(c, "small", small) == 0

    slow = socket.create_connection(("127.0.0.1", s.port), timeout=60)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    slow.sendall(header(MSG["STORE_GET"], 4 + 3 + 16, request_id=5) + pack_str("big") +
                 struct.pack("<QQ", 0, U64_MAX))
    _m, _v, _f, _t, status, _r, _rid, plen = read_response_header(slow)
    assert status == 0 and plen == len(big)
    first = recv_exact(slow, 1 << 20)  # then stop reading: the server's send blocks

    # Meanwhile everyone else is served: GETs, a PUT, a DELETE, STAT.
    for i in range(20):
        assert store_get(c, "small", i * 1000, 100_000) == (0, small[i * 1000:i * 1000 + 100_000])
    assert store_put(c, "other", b"x" * 1000) == 0
    assert c.call(MSG["STORE_DELETE"], pack_str("other"))[0] == 0
    other = s.conn()
    assert store_get(other, "small") == (0, small)
    assert store_stat(other)["connections"] >= 3

    # The slow reader still gets every byte when it resumes.
    rest = recv_exact(slow, len(big) - len(first))
    assert first + rest == big
    slow.close()


def test_value_stays_readable_under_overwrite_delete_and_compaction(storages):
    s = storages(extra=["--file-size", "16M"])
    c = s.conn()
    big = big_pattern(48 << 20, 11)
    assert store_put(c, "x", big) == 0
    slow = socket.create_connection(("127.0.0.1", s.port), timeout=60)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    slow.sendall(header(MSG["STORE_GET"], 4 + 1 + 16, request_id=5) + pack_str("x") +
                 struct.pack("<QQ", 0, U64_MAX))
    read_response_header(slow)
    first = recv_exact(slow, 1 << 20)
    # Overwrite, then delete: the old file is wholly dead and is removed.
    assert store_put(c, "x", big_pattern(20 << 20, 12)) == 0
    assert c.call(MSG["STORE_DELETE"], pack_str("x"))[0] == 0
    deadline = time.time() + 60
    while store_stat(c)["compactions"] == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert store_stat(c)["compactions"] > 0
    rest = recv_exact(slow, len(big) - len(first))
    assert first + rest == big
    slow.close()
    assert store_get(c, "x")[0] == E["NOTFOUND"]


# ---------------------------------------------------------------- durability

def test_kill9_loses_nothing_acknowledged(storages):
    s = storages()
    c = s.conn()
    expected = {}
    for i in range(150):
        k = "key-%d" % (i % 60)
        if i % 7 == 3 and k in expected:
            assert c.call(MSG["STORE_DELETE"], pack_str(k))[0] == 0
            del expected[k]
        else:
            v = pattern((i * 7919) % 300_000, i)
            assert store_put(c, k, v) == 0
            expected[k] = v
    # A PUT in flight when the daemon dies is never acknowledged: it must
    # not show up, whole or partial.
    received = store_stat(c)["bytes_received"]
    inflight = socket.create_connection(("127.0.0.1", s.port), timeout=30)
    inflight.sendall(header(MSG["STORE_PUT"], 4 + 8 + (64 << 20)) + pack_str("inflight") +
                     b"z" * (8 << 20))
    # Kill only once the daemon is writing the value (its record is in the file).
    deadline = time.time() + 60
    while store_stat(c)["bytes_received"] < received + (4 << 20) and time.time() < deadline:
        time.sleep(0.02)
    s.kill9()
    inflight.close()
    s.start()
    c = s.conn()
    for i in range(60):
        k = "key-%d" % i
        st, got = store_get(c, k)
        if k in expected:
            assert st == 0 and got == expected[k], k
        else:
            assert st == E["NOTFOUND"], k
    assert store_get(c, "inflight")[0] == E["NOTFOUND"]
    stat = store_stat(c)
    assert stat["values"] == len(expected)
    assert "torn tail" in s.log_text()
    # And it keeps working.
    assert store_put(c, "after", b"ok") == 0
    s.kill9()
    s.start()
    assert store_get(s.conn(), "after") == (0, b"ok")


def test_restart_keeps_everything(storages):
    s = storages()
    c = s.conn()
    vals = {("k%d" % i): pattern(i * 1000, i) for i in range(30)}
    for k, v in vals.items():
        assert store_put(c, k, v) == 0
    c.close()
    s.restart()
    c = s.conn()
    for k, v in vals.items():
        assert store_get(c, k) == (0, v)
    stat = store_stat(c)
    assert stat["recovered_records"] == 30 and stat["recovery_dropped"] == 0


def first_record(path):
    """(header+key bytes, value length) of the first record of a data file."""
    with open(path, "rb") as f:
        hdr = f.read(48)
        key_len = struct.unpack_from("<I", hdr, 8)[0]
        value_len = struct.unpack_from("<Q", hdr, 16)[0]
        return hdr + f.read(key_len), value_len


def test_torn_tail_is_dropped_on_restart(storages):
    s = storages()
    c = s.conn()
    va, vb = pattern(200_000, 1), pattern(300_000, 2)
    assert store_put(c, "a", va) == 0
    assert store_put(c, "b", vb) == 0
    c.close()
    s.stop()
    path = s.data_files()[-1]
    clean = os.path.getsize(path)

    # A copy of a real record header (valid checksums) whose value is cut
    # short, as a crash in the middle of a PUT leaves it.
    head, value_len = first_record(path)
    with open(path, "ab") as f:
        f.write(head + b"\x01" * (value_len // 2))
    s.start()
    c = s.conn()
    assert store_get(c, "a") == (0, va)
    assert store_get(c, "b") == (0, vb)
    assert os.path.getsize(path) == clean
    assert "torn tail" in s.log_text()
    assert store_stat(c)["recovery_dropped"] == len(head) + value_len // 2
    c.close()
    s.stop()

    # Random bytes at the tail.
    with open(path, "ab") as f:
        f.write(os.urandom(5000))
    s.start()
    c = s.conn()
    assert store_get(c, "a") == (0, va)
    assert os.path.getsize(path) == clean
    # New records go after the repaired tail and survive a crash.
    assert store_put(c, "c", b"new") == 0
    s.kill9()
    s.start()
    c = s.conn()
    assert store_get(c, "c") == (0, b"new")
    assert store_get(c, "b") == (0, vb)


def test_corrupt_records_are_never_served(storages):
    s = storages()
    c = s.conn()
    vals = [pattern(100_000, i) for i in range(3)]
    for i, v in enumerate(vals):
        assert store_put(c, "r%d" % i, v) == 0
    assert store_put(c, "r0", b"second version of r0") == 0  # the tail record
    c.close()
    s.stop()
    path = s.data_files()[-1]
    rec = 48 + 2 + 100_000
    with open(path, "r+b") as f:
        # Flip one byte inside r1's value (a record in the middle)...
        f.seek(rec + 48 + 2 + 5000)
        b = f.read(1)
        f.seek(rec + 48 + 2 + 5000)
        f.write(bytes([b[0] ^ 0x55]))
        # ...and one inside the last record's value.
        f.seek(3 * rec + 48 + 2 + 3)
        b = f.read(1)
        f.seek(3 * rec + 48 + 2 + 3)
        f.write(bytes([b[0] ^ 0x55]))
    s.start()
    c = s.conn()
    assert store_get(c, "r1")[0] == E["NOTFOUND"]
    assert store_get(c, "r2") == (0, vals[2])
    # The damaged newest r0 is dropped; the older, intact one is served.
    assert store_get(c, "r0") == (0, vals[0])
    log = s.log_text()
    assert "checksum mismatch" in log


def test_compaction_reclaims_space(storages):
    s = storages(extra=["--file-size", "4M"])
    c = s.conn()
    vals = {("c%02d" % i): pattern(1_000_000, 100 + i) for i in range(24)}
    for k, v in vals.items():
        assert store_put(c, k, v) == 0
    before = store_stat(c)
    assert before["files"] >= 5
    keep = {k: v for i, (k, v) in enumerate(sorted(vals.items())) if i % 6 == 0}
    for k in vals:
        if k not in keep:
            assert c.call(MSG["STORE_DELETE"], pack_str(k))[0] == 0
    deadline = time.time() + 60
    stat = store_stat(c)
    while stat["bytes_on_disk"] > stat["bytes_live"] * 2 and time.time() < deadline:
        time.sleep(0.05)
        stat = store_stat(c)
    assert stat["compactions"] > 0
    assert stat["bytes_on_disk"] < before["bytes_on_disk"] // 2
    assert len(s.data_files()) < before["files"]
    for k, v in keep.items():
        assert store_get(c, k) == (0, v)
    c.close()
    s.kill9()
    s.start()
    c = s.conn()
    for k, v in vals.items():
        st, got = store_get(c, k)
        if k in keep:
            assert (st, got) == (0, v)
        else:
            assert st == E["NOTFOUND"], k  # deleted stays deleted after compaction
    assert store_stat(c)["values"] == len(keep)


# ---------------------------------------------------------------- bad input

@pytest.fixture
def bad_input_storage(storages):
    """A storage with a second client connected throughout, checked after each case."""
    s = storages(extra=["--io-timeout", "2"])
    other = s.conn()
    assert store_put(other, "known", b"value") == 0

    def still_fine():
        assert s.daemon.alive()
        assert store_get(other, "known") == (0, b"value")
        assert store_put(other, "known2", b"v2") == 0
        fresh = s.conn()
        assert fresh.call(MSG["PING"], b"p") == (0, b"p")
        fresh.close()

    return s, still_fine


def raw(s):
    return socket.create_connection(("127.0.0.1", s.port), timeout=30)


def read_frame(sock):
    """(type, flags, status, request_id, payload) of the next frame on a raw socket."""
    _magic, _version, flags, mtype, status, _res, rid, plen = read_response_header(sock)
    return mtype, flags, status, rid, recv_exact(sock, plen)


def expect_error_then_close(sock, status):
    mtype, flags, st, _rid, msg = read_frame(sock)
    assert flags & 1
    assert st == status, (st, msg)
    assert msg  # a human-readable message
    try:
        rest = sock.recv(1)
    except ConnectionResetError:
        rest = b""
    assert rest == b""  # then the daemon closes this connection
    return mtype


def test_bad_magic_version_reserved_flags(bad_input_storage):
    s, still_fine = bad_input_storage
    cases = [
        (struct.pack("<IBBHiIQQ", 0xDEADBEEF, 1, 0, MSG["PING"], 0, 0, 1, 0), E["PROTO"]),
        (struct.pack("<IBBHiIQQ", 0x31535050, 9, 0, MSG["PING"], 0, 0, 1, 0), E["UNSUPPORTED"]),
        (struct.pack("<IBBHiIQQ", 0x31535050, 1, 0, MSG["PING"], 0, 7, 1, 0), E["PROTO"]),
        (struct.pack("<IBBHiIQQ", 0x31535050, 1, 0x80, MSG["PING"], 0, 0, 1, 0), E["PROTO"]),
        (struct.pack("<IBBHiIQQ", 0x31535050, 1, 1, MSG["PING"], 0, 0, 1, 0), E["PROTO"]),  # a response
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", E["PROTO"]),
    ]
    for frame, status in cases:
        sock = raw(s)
        sock.sendall(frame)
        assert expect_error_then_close(sock, status) == MSG["ERROR"]
        sock.close()
        still_fine()
    assert "malformed frame header" in s.log_text()


def test_over_limit_lengths_refused_before_receiving(bad_input_storage):
    s, still_fine = bad_input_storage
    for mtype, plen in ((MSG["STORE_GET"], 1 << 40), (MSG["STORE_DELETE"], 4 + 1024 + 1),
                        (MSG["STORE_PUT"], 4 + 1024 + (4 << 30) + 1), (MSG["STORE_PUT"], U64_MAX),
                        (MSG["PING"], 1 << 30), (MSG["STORE_STAT"], 1 << 20)):
        sock = raw(s)
        # Only the header is sent: the answer must come without the payload.
        sock.sendall(header(mtype, plen, request_id=9))
        assert expect_error_then_close(sock, E["TOOBIG"]) == mtype
        sock.close()
        still_fine()
    assert "over the" in s.log_text()


def test_unknown_type(bad_input_storage):
    s, still_fine = bad_input_storage
    c = s.conn()
    rid = c.send(0x02FF, b"0123456789")
    mtype, flags, st, rrid, msg = c.recv()
    assert (mtype, st, rrid) == (MSG["ERROR"], E["UNSUPPORTED"], rid)
    assert b"0x02ff" in msg
    # Its payload was consumed: the same connection goes on.
    assert c.call(MSG["PING"], b"after") == (0, b"after")
    # An unknown type with a huge payload: answered, then closed.
    sock = raw(s)
    sock.sendall(header(0x7777, 1 << 40))
    assert expect_error_then_close(sock, E["UNSUPPORTED"]) == MSG["ERROR"]
    still_fine()


def test_garbage_payloads(bad_input_storage):
    s, still_fine = bad_input_storage
    c = s.conn()
    cases = [
        (MSG["STORE_GET"], os.urandom(10), E["PROTO"]),
        (MSG["STORE_GET"], struct.pack("<I", 500) + b"abc" + b"\0" * 16, E["PROTO"]),
        (MSG["STORE_GET"], pack_str("known") + struct.pack("<Q", 0), E["PROTO"]),  # short
        (MSG["STORE_GET"], pack_str("known") + struct.pack("<QQ", 0, 1) + b"x", E["PROTO"]),
        (MSG["STORE_GET"], pack_str("kn\0wn") + struct.pack("<QQ", 0, 1), E["PROTO"]),
        (MSG["STORE_PUT"], b"\x01", E["PROTO"]),
        (MSG["STORE_PUT"], struct.pack("<I", 0) + b"value", E["PROTO"]),
        (MSG["STORE_PUT"], struct.pack("<I", 100) + b"short", E["PROTO"]),
        (MSG["STORE_PUT"], struct.pack("<I", 2000) + b"x" * 3000, E["TOOBIG"]),
        (MSG["STORE_DELETE"], pack_str("known") + b"trailing", E["PROTO"]),
        (MSG["STORE_DELETE"], b"", E["PROTO"]),
    ]
    for mtype, payload, status in cases:
        st, msg = c.call(mtype, payload)
        assert st == status, (mtype, payload[:20], st, msg)
        assert msg
        # The connection stays in step after each refused request.
        assert c.call(MSG["PING"], b"x") == (0, b"x")
    assert store_get(c, "known") == (0, b"value")
    assert store_stat(c)["values"] == 1
    still_fine()


def test_disconnect_mid_put_stores_nothing(bad_input_storage):
    s, still_fine = bad_input_storage
    before = store_stat(s.conn())
    sock = raw(s)
    sock.sendall(header(MSG["STORE_PUT"], 4 + 4 + (64 << 20)) + pack_str("torn") + b"q" * (8 << 20))
    time.sleep(0.2)
    sock.close()
    c = s.conn()
    deadline = time.time() + 30
    while store_stat(c)["put_aborts"] == before["put_aborts"] and time.time() < deadline:
        time.sleep(0.05)
    after = store_stat(c)
    assert after["put_aborts"] == before["put_aborts"] + 1
    assert store_get(c, "torn")[0] == E["NOTFOUND"]
    assert after["values"] == before["values"]
    assert after["bytes_on_disk"] == before["bytes_on_disk"]  # the partial record was cut off
    assert "peer disconnected" in s.log_text()
    still_fine()
    # Disconnect in the middle of the key, and in the middle of a header.
    sock = raw(s)
    sock.sendall(header(MSG["STORE_PUT"], 4 + 100 + 10) + struct.pack("<I", 100) + b"k" * 30)
    sock.close()
    sock = raw(s)
    sock.sendall(header(MSG["PING"], 0)[:13])
    sock.close()
    still_fine()
    s.restart()
    c = s.conn()
    assert store_get(c, "torn")[0] == E["NOTFOUND"]
    assert store_get(c, "known") == (0, b"value")


def test_stalled_put_is_dropped(bad_input_storage):
    s, still_fine = bad_input_storage
    sock = raw(s)
    sock.sendall(header(MSG["STORE_PUT"], 4 + 5 + 1000) + pack_str("stall") + b"s" * 100)
    # The daemon runs with --io-timeout 2: it gives up on this peer.
    sock.settimeout(30)
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        data = b""
    assert data == b""
    c = s.conn()
    assert store_get(c, "stall")[0] == E["NOTFOUND"]
    assert store_stat(c)["put_aborts"] >= 1
    assert "stalled" in s.log_text()
    still_fine()


def test_disconnect_mid_get(bad_input_storage):
    s, still_fine = bad_input_storage
    c = s.conn()
    big = big_pattern(64 << 20, 3)
    assert store_put(c, "big", big) == 0
    for _ in range(3):
        sock = raw(s)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.sendall(header(MSG["STORE_GET"], 4 + 3 + 16) + pack_str("big") + struct.pack("<QQ", 0, U64_MAX))
        recv_exact(sock, 32 + (1 << 20))
        sock.close()
    still_fine()
    assert store_get(c, "big", 12345, 1 << 20) == (0, big[12345:12345 + (1 << 20)])
    deadline = time.time() + 30
    while "STORE_GET 'big'" not in s.log_text() and time.time() < deadline:
        time.sleep(0.05)
    assert "STORE_GET 'big'" in s.log_text()


def test_many_connections(storages):
    s = storages()
    conns = [s.conn() for _ in range(100)]
    for i, c in enumerate(conns):
        assert store_put(c, "m%d" % i, b"%d" % i) == 0
    for i, c in enumerate(conns):
        assert store_get(c, "m%d" % ((i + 1) % 100)) == (0, b"%d" % ((i + 1) % 100))
    assert store_stat(conns[0])["connections"] >= 100
    for c in conns:
        c.close()


def test_sendfile_send_path(storages):
    """The --send-path sendfile variant serves the same bytes as the default."""
    s = storages(extra=["--send-path", "sendfile"])
    c = s.conn()
    v = big_pattern(20 << 20, 21)
    assert store_put(c, "v", v) == 0
    assert store_get(c, "v") == (0, v)
    assert store_get(c, "v", 7, 5_000_001) == (0, v[7:5_000_008])
    assert store_get(c, "v", len(v)) == (0, b"")
    # A reader that goes away in the middle does not disturb the daemon.
    sock = raw(s)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sock.sendall(header(MSG["STORE_GET"], 4 + 1 + 16) + pack_str("v") + struct.pack("<QQ", 0, U64_MAX))
    recv_exact(sock, 32 + 4096)
    sock.close()
    assert store_get(c, "v", 1 << 20, 100) == (0, v[1 << 20:(1 << 20) + 100])
    assert "sendfile" in s.log_text()
    r = subprocess.run([binary("storage"), str(free_port()), "--send-path", "carrier-pigeon"],
                       capture_output=True, timeout=30)
    assert r.returncode == 2 and b"--send-path" in r.stderr


# ---------------------------------------------------------------- peer limits

def test_half_frame_stallers_are_dropped_and_new_clients_served(storages):
    """Peers that send half a frame header and go quiet are dropped after
    --io-timeout, so they cannot keep --max-conns full; idle connections
    are kept; one over the limit is told PPS_EBUSY."""
    s = storages(extra=["--max-conns", "5", "--io-timeout", "3"])
    check_half_frame_stallers(s.port, 5)
    assert "stalled" in s.log_text()


def test_port_in_use_is_said_once_and_creates_no_directory(tmp_path):
    """Regression: a port in use read "resource busy", after the data
    directory had been created."""
    data = tmp_path / "never-created"
    rc, out = run_on_used_port(lambda port: [binary("storage"), port, "--dir", data])
    assert rc != 0
    assert out.count("address already in use") == 1, out
    assert "resource busy" not in out, out
    assert not data.exists()
