#!/usr/bin/env python3
"""kv.bin writer and reader in Python, written from docs/formats.md only.

Tests use it to produce kv.bin files independently of the C writer, so the C
reader (deploy_file, pipeps inspect) is checked against the documented
format rather than against its own writer. XXH3-64 comes from the system's
libxxhash through ctypes (Debian's Python has no xxhash module).

Command line:
  kvbin_py.py OUT [--seed N] [--scale K]   two synthetic models (alpha, beta)
  kvbin_py.py --extract KV_BIN DIR         write each record's value to DIR/<key>
  kvbin_py.py --seed-corpus DIR             small seed files for the fuzzer
"""
import ctypes
import ctypes.util
import os
import random
import struct
import sys

ALIGN = 512
FILE_HEADER = struct.Struct("<8sHHIQ32sQ")   # magic, version, reserved, nmodels, file_size, reserved, checksum
ENTRY_HEADER = struct.Struct("<4sHHQQQ")     # magic, name_len, reserved, size, counts/value checksum, checksum
assert FILE_HEADER.size == 64 and ENTRY_HEADER.size == 32

_lib = ctypes.CDLL(ctypes.util.find_library("xxhash") or "libxxhash.so.0")
_lib.XXH3_64bits.restype = ctypes.c_uint64
_lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def xxh3(data):
    data = bytes(data)
    return _lib.XXH3_64bits(data, len(data))


def _pad(n):
    return b"\0" * ((-n) % ALIGN)


def _entry(magic, name, size, counts):
    nb = name.encode()
    head = ENTRY_HEADER.pack(magic, len(nb), 0, size, counts, 0) + nb
    csum = xxh3(head)
    head = ENTRY_HEADER.pack(magic, len(nb), 0, size, counts, csum) + nb
    return head + _pad(len(head))


def encode(models):
    """models: list of (name, total_size, nbatches, [(key, value bytes), ...]).
    Returns the file's bytes."""
    body = bytearray()
    for name, total, nbatches, records in models:
        body += _entry(b"KVMD", name, total, nbatches | (len(records) << 32))
        for key, value in records:
            body += _entry(b"KVRC", key, len(value), xxh3(value))
            body += value
            body += _pad(len(value))
    size = ALIGN + len(body)
    head = FILE_HEADER.pack(b"PPSKVBIN", 1, 0, len(models), size, b"\0" * 32, 0)
    head = FILE_HEADER.pack(b"PPSKVBIN", 1, 0, len(models), size, b"\0" * 32, xxh3(head))
    return head + _pad(len(head)) + bytes(body)


def model(name, batches, metadata):
    """A deployable model: METADATA first, then BATCH-0..n-1."""
    records = [(name + "-METADATA", metadata)]
    records += [("%s-BATCH-%d" % (name, i), b) for i, b in enumerate(batches)]
    return (name, sum(len(b) for b in batches), len(batches), records)


def write(path, models):
    """Write like the C writer: a temporary file, fsync, rename."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(encode(models))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read(path):
    """Minimal reader: [(name, total, nbatches, [(key, header_offset, value_offset, value)])].
    Trusts the file (tests only use it on files they wrote)."""
    data = open(path, "rb").read()
    magic, version, _, nmodels, size, _, _ = FILE_HEADER.unpack_from(data, 0)
    assert magic == b"PPSKVBIN" and version == 1 and size == len(data)
    off = ALIGN
    out = []
    for _ in range(nmodels):
        _, nlen, _, total, counts, _ = ENTRY_HEADER.unpack_from(data, off)
        name = data[off + 32:off + 32 + nlen].decode()
        nbatches, nrecords = counts & 0xFFFFFFFF, counts >> 32
        off += 32 + nlen
        off += (-off) % ALIGN
        records = []
        for _ in range(nrecords):
            _, klen, _, vlen, _, _ = ENTRY_HEADER.unpack_from(data, off)
            key = data[off + 32:off + 32 + klen].decode()
            voff = off + 32 + klen
            voff += (-voff) % ALIGN
            records.append((key, off, voff, data[voff:voff + vlen]))
            off = voff + vlen + (-vlen) % ALIGN
        out.append((name, total, nbatches, records))
    return out


def synthetic(seed=1, scale=1, names=("alpha", "beta")):
    """Two models with random batches. Sizes exercise the slicing: 512-byte
    multiples, one odd size (not a multiple of 512), and a batch smaller
    than one slice per storage. scale multiplies the big batch sizes."""
    rng = random.Random(seed)
    a_sizes = [1 << 20, 3 * 512 * 1000 * scale, 512, 700 * 1024 * scale + 512, 12345]
    b_sizes = [2 << 20, 512 * 37, 1000 * 1024 * scale]
    out = []
    for name, sizes in zip(names, (a_sizes, b_sizes)):
        batches = [rng.randbytes(n) for n in sizes]
        metadata = ("synthetic model %s seed %d\n" % (name, seed)).encode() + rng.randbytes(1000)
        out.append(model(name, batches, metadata))
    return out


def seed_corpus(directory):
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(7)
    small = [model("m", [rng.randbytes(n) for n in (512, 100, 0)], b"meta"),
             model("n", [rng.randbytes(1024)], b"")]
    with open(os.path.join(directory, "two-models.bin"), "wb") as f:
        f.write(encode(small))
    with open(os.path.join(directory, "empty.bin"), "wb") as f:
        f.write(encode([]))
    with open(os.path.join(directory, "one-record.bin"), "wb") as f:
        f.write(encode([("x", 0, 0, [("x-METADATA", b"hi")])]))


def main(argv):
    if len(argv) == 3 and argv[0] == "--extract":
        os.makedirs(argv[2], exist_ok=True)
        for _name, _total, _nb, records in read(argv[1]):
            for key, _hoff, _voff, value in records:
                with open(os.path.join(argv[2], key), "wb") as f:
                    f.write(value)
        return 0
    if len(argv) == 2 and argv[0] == "--seed-corpus":
        seed_corpus(argv[1])
        return 0
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    out, seed, scale = argv[0], 1, 1
    rest = argv[1:]
    while rest:
        if rest[0] == "--seed" and len(rest) > 1:
            seed = int(rest[1])
        elif rest[0] == "--scale" and len(rest) > 1:
            scale = int(rest[1])
        else:
            print("kvbin_py.py: unknown argument %s" % rest[0], file=sys.stderr)
            return 2
        rest = rest[2:]
    models = synthetic(seed, scale)
    write(out, models)
    for name, total, nbatches, _ in models:
        print("%s: %d batches, %d bytes" % (name, nbatches, total))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
