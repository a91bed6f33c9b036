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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
