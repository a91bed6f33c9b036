"""Black-box tests of `pipeps inspect` on kv.bin files written by the
independent Python writer (kvbin_py.py, from docs/formats.md): listing,
--verify, and errors naming the offset for truncated and corrupt files."""
import os
import re
import struct
import subprocess

import pytest

import kvbin_py
from pipeps_testlib import binary


def inspect(path, *extra):
    p = subprocess.run([binary("pipeps"), "inspect", path, *extra], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def sample(tmp_path):
    path = str(tmp_path / "kv.bin")
    models = kvbin_py.synthetic(seed=3)
    kvbin_py.write(path, models)
    return path, models


def test_inspect_lists_models_keys_and_sizes(sample):
    path, models = sample
    rc, out, err = inspect(path)
    assert rc == 0, err
    assert "%s: kv.bin version 1, %d bytes, 2 models" % (path, os.path.getsize(path)) in out
    for name, total, nbatches, records in models:
        assert re.search(r"^model %s: total_size %d \(.*\), %d batches, %d records" % (name, total, nbatches,
                                                                                   len(records)), out, re.M)
        for key, value in records:
            line = re.search(r"^  %s +(\d+) bytes +offset +(\d+) +xxh3 ([0-9a-f]{16})$" % re.escape(key), out, re.M)
            assert line, key
            assert int(line.group(1)) == len(value)
            assert int(line.group(2)) % 512 == 0
            assert int(line.group(3), 16) == kvbin_py.xxh3(value)


def test_verify_passes_and_catches_a_flipped_value_byte(sample):
    path, _ = sample
    rc, out, err = inspect(path, "--verify")
    assert rc == 0, err
    assert "verify: all 2 models complete, all checksums match" in out
    layout = kvbin_py.read(path)
    key, header_off, value_off, value = layout[1][3][2]  # beta-BATCH-1
    with open(path, "r+b") as f:
        f.seek(value_off + len(value) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))
    rc, out, err = inspect(path)
    assert rc == 0  # structure intact; values are only checked with --verify
    rc, out, err = inspect(path, "--verify")
    assert rc == 1
    assert re.search(r"^  %s .*CHECKSUM MISMATCH$" % key, out, re.M)
    assert "model beta: record %s at offset %d: value checksum mismatch" % (key, header_off) in err
    assert "verify: 1 of 2 models FAILED" in out


def test_truncated_file_names_record_and_offset(sample):
    path, _ = sample
    layout = kvbin_py.read(path)
    key, header_off, value_off, value = layout[0][3][2]  # alpha-BATCH-1, record 2 of alpha
    cut = value_off + 1000
    with open(path, "r+b") as f:
        f.truncate(cut)
    rc, out, err = inspect(path)
    assert rc == 1
    assert ("%s: record 2 of model alpha at offset %d: length %d beyond end of file (size %d)"
            % (path, header_off, len(value), cut)) in err


def test_truncated_between_models(sample):
    path, _ = sample
    layout = kvbin_py.read(path)
    beta_header = layout[0][3][-1][2] + len(layout[0][3][-1][3])
    beta_header += (-beta_header) % 512
    with open(path, "r+b") as f:
        f.truncate(beta_header)
    rc, out, err = inspect(path)
    assert rc == 1
    assert "model 1 of 2 at offset %d: header beyond end of file (size %d)" % (beta_header, beta_header) in err


def test_bad_magic_version_and_header_checksum(tmp_path):
    good = kvbin_py.encode([kvbin_py.model("m", [b"\1" * 512], b"meta")])
    path = str(tmp_path / "kv.bin")

    def run_with(data):
        with open(path, "wb") as f:
            f.write(data)
        return inspect(path)

    rc, _, err = run_with(b"not a kv.bin file at all")
    assert rc == 1 and "offset 0: bad magic, not a kv.bin file" in err
    v2 = bytearray(good)
    struct.pack_into("<H", v2, 8, 2)
    rc, _, err = run_with(bytes(v2))
    assert rc == 1 and "offset 8: unsupported kv.bin version 2" in err
    bad_name = bytearray(good)
    bad_name[512 + 32] ^= 1  # model name byte: header checksum no longer matches
    rc, _, err = run_with(bytes(bad_name))
    assert rc == 1 and "model 0 of 1 at offset 512: header checksum mismatch" in err
    rc, _, err = run_with(good + b"\0" * 512)
    assert rc == 1 and "offset %d: 512 unexpected bytes after the last model" % len(good) in err
    rc, out, err = run_with(good)
    assert rc == 0, err


def test_incomplete_model_fails_verify(tmp_path):
    path = str(tmp_path / "kv.bin")
    # nbatches says 2 but only BATCH-0 is there (and the total is wrong)
    kvbin_py.write(path, [("m", 1024, 2, [("m-METADATA", b"x"), ("m-BATCH-0", b"\0" * 512)])])
    rc, out, err = inspect(path, "--verify")
    assert rc == 1
    assert "model m at offset 512: has 2 records, expected 3" in err


def test_usage_errors(tmp_path):
    p = subprocess.run([binary("pipeps"), "inspect"], capture_output=True, text=True)
    assert p.returncode == 2 and "usage: pipeps inspect" in p.stderr
    rc, _, err = inspect(str(tmp_path / "missing.bin"))
    assert rc == 1 and "cannot open" in err
