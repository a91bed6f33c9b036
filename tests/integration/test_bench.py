"""`pipeps bench --quick` (issue 14): every experiment runs on its own
loopback cluster and leaves a CSV with the expected columns and rows, a PNG
and a Markdown table in --out; `netns` runs where root and `ip netns` work,
and otherwise says it is skipped and why. Nothing is asserted on a duration:
the figures are whatever this machine measures. One bench run serves every
test (module fixture), so the file stays near two minutes."""
import csv
import glob
import os
import shutil
import subprocess

import pytest

import pipeps_testlib as T

POLICIES = ["basic", "fastest_start", "round_robin", "least_loaded"]
QUICK_MODELS = ["tiny_mlp", "inception_v3", "densenet201"]
SOURCES = ["resident", "cache", "storage-pipelined", "storage-stop-and-start", "fetch-only"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(shutil.which("gnuplot") is None,
                                reason="gnuplot not installed (scripts/deps.sh installs gnuplot-nox)")


def netns_works():
    if os.geteuid() != 0:
        return False
    name = "pipeps-bench-probe-%d" % os.getpid()
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return False
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return True


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench"))
    shm_before = set(os.listdir("/dev/shm"))
    p = subprocess.run([T.binary("pipeps"), "bench", "--quick", "--out", out],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    leftovers = [n for n in set(os.listdir("/dev/shm")) - shm_before if n.startswith("pipeps-bench-")]
    assert not leftovers, leftovers
    return out, p.stdout


def rows(out, name):
    with open(os.path.join(out, name + ".csv")) as f:
        return list(csv.DictReader(f))


def check_outputs(out, name):
    with open(os.path.join(out, name + ".png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    md = open(os.path.join(out, name + ".md")).read()
    assert md.startswith("### ") and "|---" in md


def check_latency(out, name):
    r = rows(out, name)
    assert list(r[0]) == ["model", "source", "median_ms", "min_ms", "runs"]
    assert sorted((x["model"], x["source"]) for x in r) == sorted((m, s) for m in QUICK_MODELS for s in SOURCES)
    for x in r:
        assert float(x["median_ms"]) >= 0
    check_outputs(out, name)


def test_latency(bench):
    check_latency(bench[0], "latency")


def test_placement(bench):
    r = rows(bench[0], "placement")
    assert list(r[0]) == ["policy", "offered_rps", "answered", "errors", "throughput_rps", "p50_ms", "p99_ms",
                          "hit_rate", "gb_fetched"]
    assert sorted((x["policy"], float(x["offered_rps"])) for x in r) == sorted(
        (p, rate) for p in POLICIES for rate in (2.0, 6.0))
    for x in r:
        assert int(x["answered"]) > 0 and 0 <= float(x["hit_rate"]) <= 1
    check_outputs(bench[0], "placement")
    with open(os.path.join(bench[0], "placement-throughput.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_batchsize(bench):
    r = rows(bench[0], "batchsize")
    assert list(r[0]) == ["model", "max_batch_bytes", "batches", "median_ms", "min_ms"]
    assert sorted((x["model"], int(x["max_batch_bytes"])) for x in r) == sorted(
        (m, b) for m in ("tiny_mlp", "densenet201") for b in (0, 1 << 30))
    by = {(x["model"], int(x["max_batch_bytes"])): int(x["batches"]) for x in r}
    assert by[("densenet201", 0)] > by[("densenet201", 1 << 30)] == 1
    check_outputs(bench[0], "batchsize")


def test_cachesize(bench):
    r = rows(bench[0], "cachesize")
    assert list(r[0]) == ["cache_mib_per_machine", "fraction_of_model_bytes", "answered", "errors",
                          "throughput_rps", "p50_ms", "p99_ms", "hit_rate"]
    assert len(r) == 2
    assert int(r[0]["cache_mib_per_machine"]) < int(r[1]["cache_mib_per_machine"])
    check_outputs(bench[0], "cachesize")


def test_sharding(bench):
    r = rows(bench[0], "sharding")
    assert list(r[0]) == ["model", "storages", "fetch_ms", "pipelined_ms"]
    assert sorted((x["model"], int(x["storages"])) for x in r) == sorted(
        (m, n) for m in QUICK_MODELS for n in (1, 2, 4))
    check_outputs(bench[0], "sharding")


def test_netns(bench):
    out, stdout = bench
    if netns_works():
        check_latency(out, "netns")
    else:
        assert "experiment netns skipped: " in stdout
        assert os.path.exists(os.path.join(out, "netns.skipped.txt"))
        assert not glob.glob(os.path.join(out, "netns.csv"))
