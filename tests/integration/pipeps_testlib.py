"""Shared helpers for PipePS black-box tests.

Starts real daemons from build/bin on loopback with ephemeral ports and
temporary directories, and speaks the wire protocol (docs/protocol.md) with a
small independent Python implementation, so the tests check the C code
against the documentation rather than against itself.
"""
import os
import signal
import socket
import struct
import subprocess
import time

BIN = os.environ.get("PIPEPS_BIN", os.path.join(os.path.dirname(__file__), "../../build/bin"))
BUILD = os.environ.get("PIPEPS_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))

MAGIC = 0x31535050
VERSION = 1
FLAG_RESPONSE = 1
HEADER = struct.Struct("<IBBHiIQQ")  # magic, version, flags, type, status, reserved, request_id, payload_len
assert HEADER.size == 32

MSG = {
    "PING": 0x0001, "ERROR": 0x0002, "STAT": 0x0003,
    "META_GET": 0x0101, "META_PUT": 0x0102, "META_DELETE": 0x0103, "META_LIST": 0x0104,
    "STORE_PUT": 0x0201, "STORE_GET": 0x0202, "STORE_DELETE": 0x0203, "STORE_STAT": 0x0204,
}

# A subset of src/common/err.h, for assertions.
E = {"OK": 0, "NOMEM": -1, "IO": -2, "INVAL": -3, "NOTFOUND": -4, "EXISTS": -5, "PROTO": -6,
     "TOOBIG": -7, "CLOSED": -8, "TIMEOUT": -9, "CORRUPT": -10, "TRUNCATED": -11,
     "UNSUPPORTED": -12, "NOSPACE": -13, "CONNECT": -14, "BUSY": -15, "RANGE": -16,
     "SHAPE": -17, "FETCH": -18}


_ports_given = set()


def free_port():
    """A free loopback port, never one this process was given before: the
    kernel may hand the same ephemeral port to two calls in a row, and two
    daemons told the same port would look alike to a readiness check."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def pack_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<I", len(b)) + b


def header(msg_type, payload_len, request_id=1, status=0, flags=0, magic=MAGIC, version=VERSION):
    return HEADER.pack(magic, version, flags, msg_type, status, 0, request_id, payload_len)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


class Conn:
    """One persistent connection speaking PipePS frames."""

    def __init__(self, port, host="127.0.0.1", timeout=30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.next_id = 1

    def close(self):
        self.sock.close()

    def send(self, msg_type, payload=b"", request_id=None):
        if request_id is None:
            request_id = self.next_id
            self.next_id += 1
        self.sock.sendall(header(msg_type, len(payload), request_id) + payload)
        return request_id

    def recv(self):
        """Returns (type, flags, status, request_id, payload)."""
        magic, version, flags, mtype, status, _res, rid, plen = HEADER.unpack(recv_exact(self.sock, 32))
        assert magic == MAGIC and version == VERSION
        return mtype, flags, status, rid, recv_exact(self.sock, plen)

    def call(self, msg_type, payload=b""):
        rid = self.send(msg_type, payload)
        mtype, flags, status, rrid, body = self.recv()
        assert flags & FLAG_RESPONSE and rrid == rid
        return status, body


class Daemon:
    """A PipePS daemon process; stops it (SIGTERM, then SIGKILL) on stop()."""

    def __init__(self, args, port, log_path, env=None, cwd=None):
        self.args = args
        self.port = port
        self.log_path = log_path
        self.log = open(log_path, "ab")
        full_env = dict(os.environ)
        full_env.setdefault("PIPEPS_LOG", "info")
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
                                     cwd=cwd)
        wait_for_port(port, self.proc, log_path)

    def alive(self):
        return self.proc.poll() is None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return self.proc.returncode

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def wait_for_port(port, proc=None, log_path=None, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            text = open(log_path, "rb").read().decode(errors="replace") if log_path else ""
            raise RuntimeError("daemon exited with %s before listening:\n%s" % (proc.returncode, text))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d never opened" % port)


def binary(name):
    return os.path.join(BIN, name)


# ---- metadata storage (0x01xx) ----

class MetaConn(Conn):
    """A persistent connection to metadata_storage; methods return (status, body)."""

    def put(self, key, value):
        return self.call(MSG["META_PUT"], pack_str(key) + value)

    def get(self, key):
        return self.call(MSG["META_GET"], pack_str(key))

    def delete(self, key):
        return self.call(MSG["META_DELETE"], pack_str(key))

    def list(self, prefix=""):
        status, body = self.call(MSG["META_LIST"], pack_str(prefix))
        if status != 0:
            return status, body
        return status, unpack_str_list(body)

    def stat(self):
        status, body = self.call(MSG["STAT"])
        assert status == 0, body
        return parse_stat(body)


def unpack_str_list(body):
    (n,) = struct.unpack_from("<I", body, 0)
    pos, out = 4, []
    for _ in range(n):
        (k,) = struct.unpack_from("<I", body, pos)
        out.append(body[pos + 4:pos + 4 + k].decode())
        pos += 4 + k
    assert pos == len(body), "trailing bytes in a string list"
    return out


def parse_stat(body):
    """STAT text ("name value" lines) -> dict of str -> int/float/str."""
    out = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(" ")
        try:
            out[name] = int(value)
        except ValueError:
            try:
                out[name] = float(value)
            except ValueError:
                out[name] = value
    return out


def start_metadata(data_dir, log_path, port=None, extra=(), cwd=None):
    """Start build/bin/metadata_storage on a free loopback port; returns the Daemon."""
    port = port or free_port()
    args = [binary("metadata_storage"), str(port)]
    if data_dir is not None:
        args += ["--dir", str(data_dir)]
    args += [str(a) for a in extra]
    return Daemon(args, port, str(log_path), cwd=cwd)


# ---- storage (0x02xx) ----

U64_MAX = 2**64 - 1


def store_put(conn, key, value):
    """Returns the status (0 on success)."""
    status, _body = conn.call(MSG["STORE_PUT"], pack_str(key) + value)
    return status


def store_get(conn, key, offset=0, length=U64_MAX):
    """Returns (status, bytes or error message)."""
    return conn.call(MSG["STORE_GET"], pack_str(key) + struct.pack("<QQ", offset, length))


def store_stat(conn):
    status, body = conn.call(MSG["STORE_STAT"])
    assert status == 0, body
    return parse_stat(body)


def start_storage(data_dir, log_path, port=None, extra=()):
    """Start build/bin/storage on a free port with data in data_dir."""
    port = port or free_port()
    return Daemon([binary("storage"), str(port), "--dir", str(data_dir)] + list(extra), port,
                  str(log_path))


# ---- cache (0x03xx) and its load-balancer link (0x05xx) ----

MSG.update({
    "CACHE_HELLO": 0x0301, "CACHE_SUBSCRIBE": 0x0302, "CACHE_META": 0x0303,
    "CACHE_BATCH": 0x0304, "CACHE_DONE": 0x0305, "CACHE_UNPIN": 0x0306,
    "CACHE_IN": 0x0307, "CACHE_OUT": 0x0308, "CACHE_LIST": 0x0309,
    "LB_CACHE_REGISTER": 0x0501, "LB_CACHE_EVENT": 0x0502,
})
E.update({"CANCELED": -19, "INTERNAL": -20})

LOCATION_MAGIC = 0x4C535050  # "PPSL", src/formats/location.h


def encode_location(model, generation, total_size, metadata_key, keys):
    """The "<model>-LOCATION" record (src/formats/location.h).
    keys: [(key, size, [(offset, size, addr, port, storage_key), ...]), ...]"""
    out = struct.pack("<IHH", LOCATION_MAGIC, 1, 0) + pack_str(model)
    out += struct.pack("<QQ", generation, total_size) + pack_str(metadata_key)
    out += struct.pack("<I", len(keys))
    for key, size, slices in keys:
        out += pack_str(key) + struct.pack("<QI", size, len(slices))
        for off, sz, addr, port, skey in slices:
            out += struct.pack("<QQ", off, sz) + pack_str(addr) + struct.pack("<H", port)
            out += pack_str(skey)
    return out


def slice_plan(length, nstorages):
    """Equal slices, a multiple of 512 bytes each, the last one shorter
    (the rule of deploy_file)."""
    if length == 0:
        return [(0, 0)]
    per = -(-length // nstorages)
    per = -(-per // 512) * 512
    out, off = [], 0
    while off < length:
        out.append((off, min(per, length - off)))
        off += per
    return out


def deploy_synthetic(meta_port, storage_ports, model, batch_sizes, seed=1, generation=1,
                     metadata=None):
    """Deploy a model without deploy_file: random batches cut into slices over
    the given storages (STORE_PUT), the description and the location record
    (META_PUT, record last). Returns {"batches": [bytes], "metadata": bytes}."""
    import random
    rng = random.Random(seed)
    batches = [rng.randbytes(n) for n in batch_sizes]
    if metadata is None:
        metadata = ("description of %s: %d batches\n" % (model, len(batches))).encode() * 7
    conns = [Conn(p) for p in storage_ports]
    keys = []
    try:
        for i, data in enumerate(batches):
            key = "%s-BATCH-%d" % (model, i)
            skey = "%s@%d" % (key, generation)
            slices = []
            for j, (off, sz) in enumerate(slice_plan(len(data), len(storage_ports))):
                st, body = conns[j].call(MSG["STORE_PUT"], pack_str(skey) + data[off:off + sz])
                assert st == 0, body
                slices.append((off, sz, "127.0.0.1", storage_ports[j], skey))
            keys.append((key, len(data), slices))
    finally:
        for c in conns:
            c.close()
    mkey = "%s-METADATA@%d" % (model, generation)
    meta = Conn(meta_port)
    try:
        for k, v in ((mkey, metadata), ("%s-SIZE" % model, struct.pack("<Q", sum(batch_sizes))),
                     ("%s-LOCATION" % model,
                      encode_location(model, generation, sum(batch_sizes), mkey, keys))):
            st, body = meta.call(MSG["META_PUT"], pack_str(k) + v)
            assert st == 0, body
    finally:
        meta.close()
    return {"batches": batches, "metadata": metadata}


class CacheConn(Conn):
    """A server's connection to the cache (docs/protocol.md, "Cache")."""

    def hello(self):
        st, body = self.call(MSG["CACHE_HELLO"])
        assert st == 0, body
        version, = struct.unpack_from("<I", body, 0)
        n, = struct.unpack_from("<I", body, 4)
        name = body[8:8 + n].decode()
        pool_size, block_size = struct.unpack_from("<QQ", body, 8 + n)
        return {"version": version, "shm_name": name, "pool_size": pool_size,
                "block_size": block_size}

    def subscribe(self, model):
        return self.send(MSG["CACHE_SUBSCRIBE"], pack_str(model))

    def event(self):
        """The next frame as a dict: kind meta/batch/done/error/other."""
        mtype, flags, status, rid, body = self.recv()
        ev = {"rid": rid, "type": mtype, "status": status, "flags": flags}
        if mtype == MSG["CACHE_META"]:
            n, = struct.unpack_from("<I", body, 0)
            ev.update(kind="meta", model=body[4:4 + n].decode())
            (ev["generation"], ev["total_size"], ev["nbatches"], ev["offset"],
             ev["len"]) = struct.unpack_from("<QQIQQ", body, 4 + n)
        elif mtype == MSG["CACHE_BATCH"]:
            ev["kind"] = "batch"
            ev["index"], ev["offset"], ev["len"] = struct.unpack("<IQQ", body)
        elif mtype == MSG["CACHE_DONE"]:
            ev["kind"] = "done"
            ev["nbatches"], ev["hit"] = struct.unpack("<IB", body)
        elif status < 0:
            ev.update(kind="error", message=body.decode(errors="replace"))
        else:
            ev.update(kind="other", body=body)
        return ev

    def follow(self, rid, on_event=None):
        """Events of subscription rid up to done/error (others are not expected)."""
        events = []
        while True:
            ev = self.event()
            assert ev["rid"] == rid, ev
            events.append(ev)
            if on_event:
                on_event(ev)
            if ev["kind"] in ("done", "error"):
                return events

    def unpin(self, rid):
        return self.call(MSG["CACHE_UNPIN"], struct.pack("<Q", rid))

    def cache_in(self, model):
        return self.call(MSG["CACHE_IN"], pack_str(model))

    def cache_out(self, model):
        return self.call(MSG["CACHE_OUT"], pack_str(model))

    def cache_list(self):
        """CACHE_LIST: [(model, generation, total_size, nbatches, meta offset, meta len)]."""
        st, body = self.call(MSG["CACHE_LIST"])
        assert st == 0, body
        (n,) = struct.unpack_from("<I", body, 0)
        pos, out = 4, []
        for _ in range(n):
            (k,) = struct.unpack_from("<I", body, pos)
            name = body[pos + 4:pos + 4 + k].decode()
            pos += 4 + k
            out.append((name,) + struct.unpack_from("<QQIQQ", body, pos))
            pos += 36
        assert pos == len(body), "trailing bytes in CACHE_LIST"
        return out

    def stat(self):
        st, body = self.call(MSG["STAT"])
        assert st == 0, body
        out = {}
        for line in body.decode().splitlines():
            name, _, value = line.partition(" ")
            try:
                out[name] = int(value)
            except ValueError:
                try:
                    out[name] = float(value)
                except ValueError:
                    out[name] = value
        return out


def decode_cache_register(body):
    pos = 0

    def s():
        nonlocal pos
        n, = struct.unpack_from("<I", body, pos)
        v = body[pos + 4:pos + 4 + n].decode()
        pos += 4 + n
        return v
    addr = s()
    port, = struct.unpack_from("<H", body, pos)
    pos += 2
    shm = s()
    capacity, block_size, used, n = struct.unpack_from("<QQQI", body, pos)
    pos += 28
    models = []
    for _ in range(n):
        name = s()
        size, = struct.unpack_from("<Q", body, pos)
        pos += 8
        models.append((name, size))
    assert pos == len(body)
    return {"server_addr": addr, "server_port": port, "shm_name": shm, "capacity": capacity,
            "block_size": block_size, "used": used, "models": models}


def decode_cache_event(body):
    kind = body[0]
    n, = struct.unpack_from("<I", body, 1)
    model = body[5:5 + n].decode()
    size, used, capacity = struct.unpack_from("<QQQ", body, 5 + n)
    return {"kind": {1: "loaded", 2: "evicted", 3: "failed"}[kind], "model": model,
            "size": size, "used": used, "capacity": capacity}


def start_cache(meta_port, lb_port, shm_name, shm_size, block_size, log_path, port=None,
                extra=()):
    port = port or free_port()
    args = [binary("cache"), "127.0.0.1", str(port), "127.0.0.1", str(meta_port), "127.0.0.1",
            str(lb_port), shm_name, str(shm_size), str(block_size)] + [str(a) for a in extra]
    return Daemon(args, port, str(log_path))


class FakeLB:
    """Plays the load balancer for cache (and server) tests: accepts
    connections, answers registrations with status 0, records registrations
    and one-way events, and sends requests (CACHE_IN/OUT) to the most recent
    peer, returning its answer."""

    def __init__(self, port=None):
        import threading
        self.port = port or free_port()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(16)
        self.cv = threading.Condition()
        self.peers = []
        self.registrations = []   # (msg type, payload)
        self.events = []          # (msg type, payload)
        self.responses = {}
        self.next_id = 1000
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.cv:
                self.peers.append(s)
                self.cv.notify_all()
            threading.Thread(target=self._read, args=(s,), daemon=True).start()

    def _read(self, s):
        try:
            while True:
                magic, version, flags, mtype, status, _r, rid, plen = HEADER.unpack(recv_exact(s, 32))
                body = recv_exact(s, plen)
                with self.cv:
                    if flags & FLAG_RESPONSE:
                        self.responses[rid] = (mtype, status, body)
                    elif mtype in (MSG["LB_CACHE_EVENT"],):
                        self.events.append((mtype, body))
                    else:
                        self.registrations.append((mtype, body))
                        s.sendall(header(mtype, 0, rid, flags=FLAG_RESPONSE))
                    self.cv.notify_all()
        except (ConnectionError, OSError):
            pass

    def wait(self, pred, timeout=30):
        with self.cv:
            ok = self.cv.wait_for(pred, timeout)
        assert ok, "FakeLB: condition not met in %ss" % timeout

    def wait_registrations(self, n, timeout=30):
        self.wait(lambda: len(self.registrations) >= n, timeout)
        return self.registrations[n - 1]

    def request(self, mtype, payload, timeout=60):
        with self.cv:
            self.next_id += 1
            rid = self.next_id
            peer = self.peers[-1]
        peer.sendall(header(mtype, len(payload), rid) + payload)
        self.wait(lambda: rid in self.responses, timeout)
        return self.responses.pop(rid)

    def drop_peers(self):
        with self.cv:
            for p in self.peers:
                try:
                    p.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                p.close()
            self.peers = []

    def stop(self):
        self.lsock.close()
        self.drop_peers()


# ---- server (0x04xx) and its load-balancer link (0x0503/0x0504) ----

MSG.update({"INFER": 0x0401, "MODEL_INFO": 0x0402,
            "LB_SERVER_REGISTER": 0x0503, "LB_SERVER_EVENT": 0x0504})

INFER_TIMING_FIELDS = [
    ("queue_us", "Q"), ("wait_us", "Q"), ("compute_us", "Q"), ("total_us", "Q"),
    ("source", "B"), ("mode", "B"), ("nbatches", "I"), ("batches_at_start", "I"),
    ("meta_us", "Q"), ("exec_start_us", "Q"), ("first_batch_us", "Q"), ("last_batch_us", "Q"),
    ("load_us", "Q"), ("plan_us", "Q"), ("exec_end_us", "Q"),
]
INFER_SOURCES = {0: "resident", 1: "cache", 2: "storage"}


def encode_tensor(offset, arr):
    """One tensor of an INFER payload whose bytes so far number `offset`
    (docs/protocol.md, "Server"): header, zero padding to 64, C-order data."""
    import numpy as np
    arr = np.ascontiguousarray(arr)
    dtype = {np.dtype("<f4"): 1, np.dtype("<i8"): 2}[arr.dtype]
    out = struct.pack("<BB6x", dtype, arr.ndim) + struct.pack("<%dq" % arr.ndim, *arr.shape)
    out += struct.pack("<Q", arr.nbytes)
    pad = (-(offset + len(out))) % 64
    return out + b"\0" * pad + arr.tobytes()


def encode_infer(model, arrays, flags=0):
    out = pack_str(model) + struct.pack("<II", flags, len(arrays))
    for a in arrays:
        out += encode_tensor(len(out), a)
    return out


def decode_tensor(body, pos):
    import numpy as np
    dtype, ndims = struct.unpack_from("<BB", body, pos)
    pos += 8
    dims = struct.unpack_from("<%dq" % ndims, body, pos)
    pos += 8 * ndims
    (nbytes,) = struct.unpack_from("<Q", body, pos)
    pos += 8
    pos += (-pos) % 64
    np_dtype = {1: "<f4", 2: "<i8"}[dtype]
    arr = np.frombuffer(body[pos:pos + nbytes], dtype=np_dtype).reshape(dims)
    return arr, pos + nbytes


LB_MAGIC = 0x31424C50


def decode_lb_block(b):
    """The load balancer's 64-byte block at the end of a relayed timing
    block (docs/protocol.md, "Load balancer: client link"), or None."""
    magic, attempts, rule, placed = struct.unpack_from("<IBBBx", b, 0)
    if magic != LB_MAGIC:
        return None
    q, tot, sid, mid = struct.unpack_from("<QQII", b, 8)
    return {"attempts": attempts, "rule": rule, "placed": placed, "lb_queue_us": q, "lb_total_us": tot,
            "server_id": sid, "machine_id": mid, "server": b[32:64].split(b"\0", 1)[0].decode()}


def decode_infer_response(body):
    """-> (timing dict, [numpy arrays])."""
    (tlen,) = struct.unpack_from("<I", body, 0)
    timing, pos = {}, 4
    for name, code in INFER_TIMING_FIELDS:
        size = struct.calcsize("<" + code)
        if pos + size > 4 + tlen:
            break
        (timing[name],) = struct.unpack_from("<" + code, body, pos)
        pos += size
    if tlen >= 64:
        lb = decode_lb_block(body[4 + tlen - 64:4 + tlen])
        if lb:
            timing["lb"] = lb
    pos = 4 + tlen
    (n,) = struct.unpack_from("<I", body, pos)
    pos += 4
    outs = []
    for _ in range(n):
        arr, pos = decode_tensor(body, pos)
        outs.append(arr)
    assert pos == len(body), "trailing bytes in an INFER response"
    return timing, outs


class ServerConn(Conn):
    def infer(self, model, arrays):
        """-> (status, timing or error text, outputs)."""
        status, body = self.call(MSG["INFER"], encode_infer(model, arrays))
        if status != 0:
            return status, body.decode(errors="replace"), None
        timing, outs = decode_infer_response(body)
        return status, timing, outs

    def stat(self):
        status, body = self.call(MSG["STAT"])
        assert status == 0, body
        return parse_stat(body)


def start_server(cache_port, lb_port, log_path, port=None, extra=()):
    """build/bin/server on a free loopback port (LB_PORT 0: no load balancer)."""
    port = port or free_port()
    args = [binary("server"), "127.0.0.1", str(port), "127.0.0.1", str(cache_port), "127.0.0.1",
            str(lb_port)] + [str(a) for a in extra]
    return Daemon(args, port, str(log_path))


def decode_lb_server_register(body):
    pos = 0

    def s():
        nonlocal pos
        (k,) = struct.unpack_from("<I", body, pos)
        v = body[pos + 4:pos + 4 + k].decode()
        pos += 4 + k
        return v

    out = {"client_addr": s()}
    (out["client_port"],) = struct.unpack_from("<H", body, pos)
    pos += 2
    out["cache_addr"] = s()
    (out["cache_port"],) = struct.unpack_from("<H", body, pos)
    pos += 2
    (out["memory_capacity"], out["memory_used"], out["threads"], out["mode"],
     n) = struct.unpack_from("<QQIBI", body, pos)
    pos += struct.calcsize("<QQIBI")
    out["models"] = {}
    for _ in range(n):
        name = s()
        (out["models"][name],) = struct.unpack_from("<Q", body, pos)
        pos += 8
    assert pos == len(body)
    return out


def decode_lb_server_event(body):
    (kind,) = struct.unpack_from("<B", body, 0)
    (k,) = struct.unpack_from("<I", body, 1)
    model = body[5:5 + k].decode()
    nbytes, used, cap = struct.unpack_from("<QQQ", body, 5 + k)
    assert 5 + k + 24 == len(body)
    return {"kind": {1: "resident", 2: "evicted"}[kind], "model": model, "bytes": nbytes,
            "used": used, "capacity": cap}


# ---- peer limits every daemon shares (--io-timeout, --max-conns) ----

def sanitizer_build():
    """True when the binaries under test were built with PIPEPS_SANITIZE (their
    allocator keeps freed memory in quarantine, so resident-memory checks do
    not apply)."""
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            return any(line.startswith("PIPEPS_SANITIZE:") and line.strip().endswith("=ON")
                       for line in f)
    except OSError:
        return False


def ping(sock, request_id=1, payload=b"ping"):
    """One PING on a raw socket; returns (status, body)."""
    sock.sendall(header(MSG["PING"], len(payload), request_id) + payload)
    _m, _v, flags, _t, status, _r, rid, plen = HEADER.unpack(recv_exact(sock, 32))
    body = recv_exact(sock, plen)
    assert flags & FLAG_RESPONSE and rid == request_id
    return status, body


def wait_closed(sock, timeout=60):
    """Read until the daemon closes the connection (EOF or reset)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def wait_connections(port, want, timeout=30):
    """Poll STAT until the daemon counts `want` connections (this one included)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        deadline = time.time() + timeout
        while True:
            s.sendall(header(MSG["STAT"], 0, 1))
            _m, _v, _f, _t, status, _r, _rid, plen = HEADER.unpack(recv_exact(s, 32))
            got = parse_stat(recv_exact(s, plen)).get("connections")
            if got == want or time.time() > deadline:
                return got
            time.sleep(0.05)


def check_half_frame_stallers(port, max_conns):
    """For a daemon started with --max-conns max_conns and a short --io-timeout:
    an idle connection plus max_conns - 1 peers that send half a frame header
    fill it; one more is refused with PPS_EBUSY (type ERROR) and closed; the
    stallers are dropped after the timeout; then a new client is served, and
    the idle connection, quiet between frames all along, still works."""
    assert wait_connections(port, 1) == 1  # start-up probes are gone
    idle = socket.create_connection(("127.0.0.1", port), timeout=60)
    assert ping(idle, 1) == (0, b"ping")
    stallers = []
    for _ in range(max_conns - 1):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(header(MSG["PING"], 4, 7)[:16])
        stallers.append(s)
    extra = socket.create_connection(("127.0.0.1", port), timeout=60)
    _m, _v, flags, mtype, status, _r, _rid, plen = HEADER.unpack(recv_exact(extra, 32))
    body = recv_exact(extra, plen)
    assert (mtype, status) == (MSG["ERROR"], E["BUSY"]), body
    assert b"--max-conns" in body
    wait_closed(extra)
    for s in stallers:
        wait_closed(s)
        s.close()
    fresh = socket.create_connection(("127.0.0.1", port), timeout=60)
    assert ping(fresh, 3) == (0, b"ping")
    fresh.close()
    assert ping(idle, 2) == (0, b"ping")
    idle.close()
    extra.close()


def run_on_used_port(make_args, timeout=60):
    """Start a daemon on a port another socket listens on; it must fail.
    make_args(port) -> argv. Returns (exit status, stdout + stderr)."""
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    hold.listen(1)
    port = hold.getsockname()[1]
    env = dict(os.environ)
    env.setdefault("PIPEPS_LOG", "info")
    try:
        p = subprocess.run([str(a) for a in make_args(port)], capture_output=True, text=True,
                           timeout=timeout, env=env)
    finally:
        hold.close()
    return p.returncode, p.stdout + p.stderr
