"""Regression tests for command-line papercuts (issue 11, defect 6): each
command says what went wrong, with file:line where a file is at fault.

  cache-get with a name the cache cannot take       -> the reason on stderr
  fetch --out DIR with DIR missing                  -> DIR is created
  stat storage refused over --max-conns (PPS_EBUSY) -> reported as busy, not as a malformed frame
  deploy_file with the metadata storage again as a storage -> refused at its line
  generate_file: a missing header, a NUL byte, a name with a space -> file:line messages
"""
import os
import socket
import subprocess
import time

import pytest

import pipeps_testlib as T


def run(args, timeout=120):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------- cache-get


def test_cache_get_prints_why_a_model_name_is_refused(tmp_path):
    meta = T.start_metadata(tmp_path / "meta", tmp_path / "meta.log")
    name = "pipeps-test-papercut-%d" % os.getpid()
    cache = T.start_cache(meta.port, T.free_port(), name, "16M", "64K", tmp_path / "cache.log",
                          extra=["--lb-backoff-max", "300"])
    try:
        addr = "127.0.0.1:%d" % cache.port
        p = run([T.binary("pipeps"), "cache-get", addr, "bad name"])
        assert p.returncode == 1
        assert "cache-get: bad model name 'bad name'" in p.stderr, p.stderr
        assert "no spaces" in p.stderr
        # a name the cache takes but does not know: the cache's own message
        p = run([T.binary("pipeps"), "cache-get", addr, "nosuch_model"])
        assert p.returncode == 1
        assert p.stderr.startswith("cache-get: ") and "nosuch_model" in p.stderr and "not deployed" in p.stderr, \
            p.stderr
    finally:
        cache.stop()
        meta.stop()


# ----------------------------------------------------------------- fetch


def test_fetch_out_creates_the_directory(tmp_path):
    meta = T.start_metadata(tmp_path / "meta", tmp_path / "meta.log")
    store = T.start_storage(tmp_path / "s0", tmp_path / "s0.log")
    try:
        model = T.deploy_synthetic(meta.port, [store.port], "alpha", [3000, 700])
        out = tmp_path / "not-yet-there"
        assert not out.exists()
        p = run([T.binary("pipeps"), "fetch", "127.0.0.1:%d" % meta.port, "alpha", "--out", out])
        assert p.returncode == 0, p.stderr
        assert (out / "alpha-BATCH-0").read_bytes() == model["batches"][0]
        assert (out / "alpha-BATCH-1").read_bytes() == model["batches"][1]
        assert (out / "alpha-METADATA").read_bytes() == model["metadata"]
        # a path that cannot be a directory is named
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        p = run([T.binary("pipeps"), "fetch", "127.0.0.1:%d" % meta.port, "alpha", "--out", blocker / "sub"])
        assert p.returncode == 1
        assert "cannot create %s" % (blocker / "sub") in p.stderr, p.stderr
    finally:
        store.stop()
        meta.stop()


# ----------------------------------------------------------------- stat


def hold_the_only_connection(port):
    """A connection the storage serves (a PING answered), once the probe
    connections of the start-up check are gone."""
    deadline = time.time() + 30
    while True:
        c = T.Conn(port, timeout=10)
        try:
            status, body = c.call(T.MSG["PING"], b"hi")
            if status == 0 and body == b"hi":
                return c
        except (AssertionError, ConnectionError, OSError):
            pass
        c.close()
        assert time.time() < deadline, "the storage never served a connection"
        time.sleep(0.05)


def test_stat_storage_reports_a_busy_refusal(tmp_path):
    store = T.start_storage(tmp_path / "s0", tmp_path / "s0.log", extra=["--max-conns", "1"])
    held = hold_the_only_connection(store.port)
    try:
        # another connection is refused with a well-formed ERROR frame
        c = T.Conn(store.port)
        try:
            mtype, _flags, status, rid, body = c.recv()
        finally:
            c.close()
        assert (mtype, status, rid) == (T.MSG["ERROR"], T.E["BUSY"], 0), body
        p = run([T.binary("pipeps"), "stat", "storage", "127.0.0.1:%d" % store.port])
        assert p.returncode == 1
        assert "malformed" not in p.stderr, p.stderr
        assert "resource busy" in p.stderr and "--max-conns 1" in p.stderr, p.stderr
    finally:
        held.close()
        store.stop()


# ----------------------------------------------------------------- deploy_file


def test_deploy_file_refuses_the_metadata_storage_as_a_storage(tmp_path):
    sl = tmp_path / "storage_list.txt"
    sl.write_text("address, port\n127.0.0.1, 7001\n127.0.0.1, 7002\n127.0.0.1, 7001\n")
    dl = tmp_path / "model_distribution_list.txt"
    dl.write_text("model, storages\nalpha, 0\n")
    p = run([T.binary("deploy_file"), sl, dl, tmp_path / "kv.bin"])
    assert p.returncode == 1
    assert "%s:4: 127.0.0.1:7001 is the metadata storage (line 2)" % sl in p.stderr, p.stderr


# ----------------------------------------------------------------- generate_file


def generate(tmp_path, text):
    lst = tmp_path / "model_list.txt"
    lst.write_bytes(text)
    kv = tmp_path / "kv.bin"
    p = run([T.binary("generate_file"), lst, kv, "--quiet"])
    return p, lst, kv


def test_generate_file_refuses_a_missing_header(tmp_path):
    p, lst, kv = generate(tmp_path, b"resnet152\ninception_v3\n")
    assert p.returncode == 1
    assert "%s:1: the first line is a header" % lst in p.stderr, p.stderr
    assert not kv.exists()
    # a comment or a header that is not a model is fine (nothing is built: an unknown name on line 2)
    p, lst, _ = generate(tmp_path, b"model_name, seq_len\nnosuch\n")
    assert "%s:2: unknown model 'nosuch'" % lst in p.stderr, p.stderr


def test_generate_file_names_a_nul_byte(tmp_path):
    p, lst, _ = generate(tmp_path, b"model_name\nresnet152\x00x\n")
    assert p.returncode == 1
    assert "%s:2: NUL byte in a text file" % lst in p.stderr, p.stderr
    assert "too long" not in p.stderr
    p, lst, _ = generate(tmp_path, b"model_name\n" + b"r" * 2000 + b"\n")
    assert p.returncode == 1 and "%s:2: line too long" % lst in p.stderr, p.stderr


@pytest.mark.parametrize("name", ["resnet152-alter-a b", "resnet152-alter-\x7f"])
def test_generate_file_bad_model_name_names_its_line(tmp_path, name):
    p, lst, kv = generate(tmp_path, ("model_name\n\n%s\n" % name).encode())
    assert p.returncode == 1
    assert "%s:3: bad model name" % lst in p.stderr, p.stderr
    assert "writing kv.bin" not in p.stderr
    assert not kv.exists()
