"""Black-box tests of the /metrics endpoints (--metrics-port) of
metadata_storage, storage, cache and server on loopback.

A small tier (tiny_mlp, 77 KB, deployed by deploy_file on one storage) is
started with every daemon's metrics on; every body is parsed with Debian's
prometheus_client text parser, so the exposition format is checked by an
independent implementation. The tests check that the documented families
exist with their types and that counters move by exactly what the test did
(no other client talks to these daemons)."""
import os
import re
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pipeps_testlib as T

_seq = [0]


def shm_name():
    _seq[0] += 1
    return "pipeps-metrics-%d-%d" % (os.getpid(), _seq[0])


def run(args):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, "%s failed:\n%s\n%s" % (args[0], p.stdout, p.stderr)
    return p


def http(port, path="/metrics", method="GET"):
    """-> (status, headers, body text)."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


class Scrape:
    """One parsed /metrics body: families by name (prometheus_client names
    counter families without their _total) and sample lookup."""

    def __init__(self, port):
        status, headers, body = http(port)
        assert status == 200, body
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
        self.text = body
        self.families = {}
        for fam in text_string_to_metric_families(body):
            assert fam.name not in self.families, "family %s twice" % fam.name
            assert fam.name.startswith("pipeps_"), fam.name
            assert fam.documentation, "family %s has no HELP" % fam.name
            self.families[fam.name] = fam
        # every sample line belongs to a family announced by # TYPE
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
                assert any(name == f or name.startswith(f + "_") for f in self.families), line

    def family(self, name, typ):
        assert name in self.families, "no family %s in:\n%s" % (name, self.text)
        fam = self.families[name]
        assert fam.type == typ, "%s is a %s, not a %s" % (name, fam.type, typ)
        return fam

    def value(self, sample, default=None, **labels):
        """The value of the sample with exactly these labels."""
        for fam in self.families.values():
            for s in fam.samples:
                if s.name == sample and s.labels == labels:
                    return s.value
        if default is not None:
            return default
        raise AssertionError("no sample %s%s in:\n%s" % (sample, labels, self.text))

    def histogram(self, name, **labels):
        """-> ([(le, cumulative count)], sum, count) of one label set."""
        fam = self.family(name, "histogram")
        buckets, total, count = [], None, None
        for s in fam.samples:
            rest = dict(s.labels)
            le = rest.pop("le", None)
            if rest != labels:
                continue
            if s.name == name + "_bucket":
                buckets.append((float(le), s.value))
            elif s.name == name + "_sum":
                total = s.value
            elif s.name == name + "_count":
                count = s.value
        assert buckets and total is not None and count is not None, (name, labels)
        les = [b[0] for b in buckets]
        assert les == sorted(les) and les[-1] == float("inf"), les
        assert les[0] == 0.001 and 10.0 in les, les          # 1 ms .. 10 s
        counts = [b[1] for b in buckets]
        assert counts == sorted(counts), "buckets not cumulative: %s" % buckets
        assert counts[-1] == count
        return buckets, total, count


def metrics_port_of(daemon):
    """The port a daemon printed for --metrics-port 0."""
    deadline = time.time() + 30
    while time.time() < deadline:
        m = re.search(r"metrics on http://[0-9.]+:(\d+)/metrics", daemon.log_text())
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError("no metrics line in:\n" + daemon.log_text())


class Tier:
    """tiny_mlp on one storage; metadata storage, storage, cache and server
    with metrics on (fixed ports for some, port 0 for others)."""

    def __init__(self, tmp):
        self.tmp = tmp
        (tmp / "models.txt").write_text("model_name\ntiny_mlp\n")
        self.kv = tmp / "kv.bin"
        run([T.binary("generate_file"), tmp / "models.txt", self.kv, "--quiet"])
        self.daemons = []
        self.meta_mport = T.free_port()
        self.meta = T.start_metadata(tmp / "meta", tmp / "meta.log",
                                     extra=["--metrics-port", str(self.meta_mport)])
        self.daemons.append(self.meta)
        self.storage_mport = T.free_port()
        self.storage = T.start_storage(tmp / "s0", tmp / "s0.log",
                                       extra=["--metrics-port", str(self.storage_mport)])
        self.daemons.append(self.storage)
        (tmp / "storage_list.txt").write_text(
            "address, port\n127.0.0.1, %d\n127.0.0.1, %d\n" % (self.meta.port, self.storage.port))
        (tmp / "dist.txt").write_text("model, storages\ntiny_mlp, 0\n")
        run([T.binary("deploy_file"), tmp / "storage_list.txt", tmp / "dist.txt", self.kv])
        self.pool_size = 64 << 20
        self.cache = T.start_cache(self.meta.port, T.free_port(), shm_name(), self.pool_size, "64K",
                                   tmp / "cache.log", extra=["--metrics-port", "0"])
        self.daemons.append(self.cache)
        self.cache_mport = metrics_port_of(self.cache)

    def server(self, name):
        s = T.start_server(self.cache.port, 0, self.tmp / ("%s.log" % name),
                           extra=["--metrics-port", "0", "--memory", "1G", "--reserve", "0",
                                  "--threads", "1"])
        self.daemons.append(s)
        s.mport = metrics_port_of(s)
        return s

    def stop(self):
        """Stop every daemon; -> [(log path, exit status)] of those that did
        not exit 0 (a sanitizer build exits non-zero on a leak or error)."""
        bad = []
        for d in reversed(self.daemons):
            rc = d.stop()
            if rc != 0:
                bad.append((d.log_path, rc))
        return bad


@pytest.fixture(scope="module")
def tier(tmp_path_factory):
    t = Tier(tmp_path_factory.mktemp("metrics"))
    yield t
    bad = t.stop()
    assert not bad, "daemons did not stop cleanly: %s" % bad


def tiny_input(seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, size=(2, 64)).astype(np.float32)


def test_metadata_counters_move(tier):
    before = Scrape(tier.meta_mport)
    before.family("pipeps_metadata_operations", "counter")
    before.family("pipeps_metadata_fsyncs", "counter")
    before.family("pipeps_metadata_keys", "gauge")
    before.family("pipeps_metadata_log_bytes", "gauge")
    before.family("pipeps_metadata_compactions", "counter")
    conn = T.MetaConn(tier.meta.port)
    try:
        assert conn.put("metrics-test-key", b"v" * 100)[0] == 0
        for _ in range(5):
            assert conn.get("metrics-test-key")[0] == 0
        assert conn.get("metrics-test-absent")[0] == T.E["NOTFOUND"]
        assert conn.list("metrics-")[0] == 0
        assert conn.delete("metrics-test-key")[0] == 0
    finally:
        conn.close()
    after = Scrape(tier.meta_mport)

    def delta(sample, **labels):
        return after.value(sample, **labels) - before.value(sample, **labels)
    assert delta("pipeps_metadata_operations_total", op="get") == 6
    assert delta("pipeps_metadata_operations_total", op="put") == 1
    assert delta("pipeps_metadata_operations_total", op="delete") == 1
    assert delta("pipeps_metadata_operations_total", op="list") == 1
    assert delta("pipeps_metadata_operations_total", op="stat") == 0   # scrapes are not STATs
    assert delta("pipeps_metadata_misses_total") == 1
    assert delta("pipeps_metadata_fsyncs_total") >= 1                  # the put and the delete
    assert delta("pipeps_metadata_keys") == 0
    assert delta("pipeps_metadata_log_bytes") > 100                    # two records appended
    # the same numbers STAT gives
    conn = T.MetaConn(tier.meta.port)
    try:
        st = conn.stat()
    finally:
        conn.close()
    assert st["gets"] == after.value("pipeps_metadata_operations_total", op="get")
    assert st["keys"] == after.value("pipeps_metadata_keys")
    assert st["fsyncs"] == after.value("pipeps_metadata_fsyncs_total")


def test_storage_counters_move(tier):
    before = Scrape(tier.storage_mport)
    for name, typ in (("pipeps_storage_requests", "counter"), ("pipeps_storage_sent_bytes", "counter"),
                      ("pipeps_storage_received_bytes", "counter"), ("pipeps_storage_values", "gauge"),
                      ("pipeps_storage_stored_bytes", "gauge"), ("pipeps_storage_open_connections", "gauge")):
        before.family(name, typ)
    value = os.urandom(300000)
    conn = T.Conn(tier.storage.port)
    try:
        assert T.store_put(conn, "metrics-test-value", value) == 0
        for _ in range(3):
            st, body = T.store_get(conn, "metrics-test-value")
            assert st == 0 and body == value
        st, body = T.store_get(conn, "metrics-test-value", offset=1000, length=500)
        assert st == 0 and body == value[1000:1500]
    finally:
        conn.close()
    after = Scrape(tier.storage_mport)

    def delta(sample, **labels):
        return after.value(sample, **labels) - before.value(sample, **labels)
    assert delta("pipeps_storage_sent_bytes_total") == 3 * len(value) + 500
    assert delta("pipeps_storage_received_bytes_total") == len(value)
    assert delta("pipeps_storage_requests_total", kind="get") == 4
    assert delta("pipeps_storage_requests_total", kind="put") == 1
    assert delta("pipeps_storage_values") == 1
    assert delta("pipeps_storage_stored_bytes") == len(value)


def test_server_and_cache_counters_move(tier):
    srv = tier.server("server-a")
    s0, c0, st0, m0 = (Scrape(srv.mport), Scrape(tier.cache_mport), Scrape(tier.storage_mport),
                       Scrape(tier.meta_mport))
    # nothing served yet: no per-model series
    assert s0.value("pipeps_server_requests_total", default=-1, model="tiny_mlp") == -1
    s0.family("pipeps_server_requests", "counter")
    s0.family("pipeps_server_request_duration_seconds", "histogram")
    assert s0.value("pipeps_server_memory_capacity_bytes") == 1 << 30
    assert s0.value("pipeps_server_resident_bytes") == 0
    assert s0.value("pipeps_server_queue_length") == 0
    assert c0.value("pipeps_cache_pool_capacity_bytes") == tier.pool_size
    assert c0.value("pipeps_cache_pool_used_bytes") == 0
    assert c0.value("pipeps_cache_models", state="ready") == 0

    n = 4
    conn = T.ServerConn(srv.port, timeout=120)
    sources = []
    try:
        for i in range(n):
            status, timing, outs = conn.infer("tiny_mlp", [tiny_input(i)])
            assert status == 0, timing
            sources.append(T.INFER_SOURCES[timing["source"]])
        status, msg, _ = conn.infer("no_such_model", [tiny_input()])
        assert status != 0
    finally:
        conn.close()
    assert sources == ["storage"] + ["resident"] * (n - 1)

    s1 = Scrape(srv.mport)
    assert s1.value("pipeps_server_requests_total", model="tiny_mlp") == n
    assert s1.value("pipeps_server_errors_total", model="tiny_mlp") == 0
    assert s1.value("pipeps_server_served_total", model="tiny_mlp", source="storage") == 1
    assert s1.value("pipeps_server_served_total", model="tiny_mlp", source="cache") == 0
    assert s1.value("pipeps_server_served_total", model="tiny_mlp", source="resident") == n - 1
    assert s1.value("pipeps_server_requests_total", model="no_such_model") == 1
    assert s1.value("pipeps_server_errors_total", model="no_such_model") == 1
    _b, total, count = s1.histogram("pipeps_server_request_duration_seconds", model="tiny_mlp")
    assert count == n and total > 0
    _b, qtotal, qcount = s1.histogram("pipeps_server_queue_duration_seconds", model="tiny_mlp")
    assert qcount == n and 0 <= qtotal <= total
    assert s1.histogram("pipeps_server_request_duration_seconds", model="no_such_model")[2] == 1
    s1.family("pipeps_server_busy_seconds", "counter")
    assert 0 < s1.value("pipeps_server_busy_seconds_total") <= total + 1
    assert s1.value("pipeps_server_resident_models") == 1
    resident = s1.value("pipeps_server_resident_bytes")
    assert resident > 0
    assert s1.value("pipeps_server_resident_model_bytes", model="tiny_mlp") == resident
    assert s1.value("pipeps_server_queue_length") == 0
    sst = T.ServerConn(srv.port).stat()
    assert sst["memory_used"] == resident and sst["requests"] == n + 1

    # the cache fetched tiny_mlp once, from the storage
    c1 = Scrape(tier.cache_mport)
    for name, typ in (("pipeps_cache_hits", "counter"), ("pipeps_cache_misses", "counter"),
                      ("pipeps_cache_evictions", "counter"), ("pipeps_cache_fetched_bytes", "counter"),
                      ("pipeps_cache_fetch_throughput_bytes_per_second", "gauge"),
                      ("pipeps_cache_pool_used_bytes", "gauge"),
                      ("pipeps_cache_pool_capacity_bytes", "gauge"),
                      ("pipeps_cache_fetches_started", "counter"),
                      ("pipeps_cache_fetches_finished", "counter"), ("pipeps_cache_models", "gauge")):
        c1.family(name, typ)
    def cdelta(sample, **labels):
        return c1.value(sample, **labels) - c0.value(sample, **labels)
    # two misses: tiny_mlp (fetched) and no_such_model (its lookup failed)
    assert cdelta("pipeps_cache_misses_total") == 2
    assert cdelta("pipeps_cache_hits_total") == 0
    assert cdelta("pipeps_cache_fetches_started_total") == 2
    assert cdelta("pipeps_cache_fetches_finished_total", result="ok") == 1
    assert cdelta("pipeps_cache_fetches_finished_total", result="failed") == 1
    fetched = c1.value("pipeps_cache_fetched_bytes_total") - c0.value("pipeps_cache_fetched_bytes_total")
    assert fetched > 50000                       # tiny_mlp's parameters (~70 KB)
    assert c1.value("pipeps_cache_fetch_throughput_bytes_per_second") > 0
    assert c1.value("pipeps_cache_models", state="ready") == 1
    used = c1.value("pipeps_cache_pool_used_bytes")
    assert used >= fetched
    assert c1.value("pipeps_cache_model_bytes", model="tiny_mlp") <= used
    assert c1.value("pipeps_cache_subscriptions") == 1   # the resident model stays subscribed

    # ... which the storage sent, and the metadata storage described
    st1 = Scrape(tier.storage_mport)
    assert st1.value("pipeps_storage_sent_bytes_total") - st0.value("pipeps_storage_sent_bytes_total") == fetched
    m1 = Scrape(tier.meta_mport)
    assert m1.value("pipeps_metadata_operations_total", op="get") > \
        m0.value("pipeps_metadata_operations_total", op="get")

    # a second server finds the model whole in the cache: a hit, served from the cache
    srv2 = tier.server("server-b")
    conn = T.ServerConn(srv2.port, timeout=120)
    try:
        status, timing, _ = conn.infer("tiny_mlp", [tiny_input()])
    finally:
        conn.close()
    assert status == 0 and T.INFER_SOURCES[timing["source"]] == "cache"
    c2 = Scrape(tier.cache_mport)
    assert c2.value("pipeps_cache_hits_total") - c1.value("pipeps_cache_hits_total") == 1
    assert c2.value("pipeps_cache_fetched_bytes_total") == c1.value("pipeps_cache_fetched_bytes_total")
    b1 = Scrape(srv2.mport)
    assert b1.value("pipeps_server_served_total", model="tiny_mlp", source="cache") == 1
    assert b1.value("pipeps_server_requests_total", model="tiny_mlp") == 1


def test_other_paths_and_methods(tier):
    ports = [tier.meta_mport, tier.storage_mport, tier.cache_mport]
    for port in ports:
        status, _h, body = http(port, "/")
        assert status == 404, body
        assert http(port, "/metrics/extra")[0] == 404
        assert http(port, "/metrics?debug=1")[0] == 200
        status, headers, _b = http(port, "/metrics", method="POST")
        assert status == 405 and headers["Allow"] == "GET, HEAD"
        status, _h, body = http(port, "/metrics", method="HEAD")
        assert status == 200 and body == ""


def test_metrics_port_options(tier, tmp_path):
    # port 0: the chosen one is printed
    meta = T.start_metadata(tmp_path / "m0", tmp_path / "m0.log", extra=["--metrics-port", "0"])
    try:
        port = metrics_port_of(meta)
        Scrape(port).family("pipeps_metadata_keys", "gauge")
        assert "metrics on http://127.0.0.1:%d/metrics" % port in meta.log_text()
    finally:
        assert meta.stop() == 0, meta.log_text()
    # a bad value is a usage error
    for argv in ([T.binary("metadata_storage"), "0", "--dir", tmp_path / "m1", "--metrics-port", "x"],
                 [T.binary("storage"), str(T.free_port()), "--dir", tmp_path / "s1", "--metrics-port", "70000"],
                 [T.binary("server"), "127.0.0.1", "0", "127.0.0.1", "1", "127.0.0.1", "0",
                  "--metrics-port", "-1"],
                 [T.binary("cache"), "127.0.0.1", "1", "127.0.0.1", "1", "127.0.0.1", "1", shm_name(),
                  "1M", "64K", "--metrics-port", ""]):
        p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (argv, p.stdout, p.stderr)
        assert "--metrics-port" in p.stderr
    # a metrics port in use: the daemon does not start, and says why
    code, out = T.run_on_used_port(lambda port: [T.binary("storage"), T.free_port(), "--dir",
                                                 tmp_path / "s2", "--metrics-port", port])
    assert code == 1 and "metrics: cannot listen on 127.0.0.1:" in out, out
    assert not (tmp_path / "s2").exists()          # bound before the data directory is made
    code, out = T.run_on_used_port(lambda port: [T.binary("metadata_storage"), "0", "--dir",
                                                 tmp_path / "m2", "--metrics-port", port])
    assert code == 1 and "metrics: cannot listen on" in out, out
    assert not (tmp_path / "m2").exists()
