"""Black-box tests of the clients (client_one, client, client_concurrent) and
the workload generator, run as commands against a real loopback cluster: a
metadata storage and two storages filled by deploy_file, the load balancer,
and two "machines" (127.0.0.2 and 127.0.0.3), each with a cache and a server
(the cluster of test_lb.py, with only the five seed models and tiny_mlp).

The clients' outputs (--dump-dir) are compared byte for byte with
`pipeps run` on the same inputs; their printed lines and --csv rows are
parsed with the formats README "Clients and workloads" documents. No test
asserts on a duration beyond a generous bound on how late an open-loop send
may be."""
import csv
import os
import re
import subprocess

import numpy as np
import pytest

import pipeps_testlib as T
import test_lb as L

SEEDS = ["resnet152", "inception_v3", "densenet201", "bert_base", "gpt2"]
# One batch per model (an --input-dir npy fixes a model's batch); both 1 and 2 occur.
BATCH = {"resnet152": 1, "inception_v3": 2, "densenet201": 1, "bert_base": 2, "gpt2": 1}
CSV_COLUMNS = ["id", "send_s", "sched_s", "model", "batch", "status", "latency_ms", "server", "lb_queue_ms",
               "server_queue_ms", "wait_ms", "compute_ms", "server_total_ms", "source", "attempts"]
OK_LINE = re.compile(r"^(\d+) (\S+) batch (\d+) (\d+\.\d{3}) ms server (\S+) source (resident|cache|storage) "
                     r"\(queue (\d+\.\d{3}) \+ (\d+\.\d{3}) ms, wait (\d+\.\d{3}) ms, compute (\d+\.\d{3}) ms\)$")
ERR_LINE = re.compile(r"^(\d+) (\S+) batch (\d+) ERROR (PPS_[A-Z]+): (.*)$")
SUMMARY = re.compile(r"^summary: (\d+) requests, (\d+) ok, (\d+) errors, (\d+) timeouts in (\d+\.\d\d) s: "
                     r"(\d+\.\d\d) req/s$")
LATENCY = re.compile(r"^latency ms: mean \S+ \(stdev \S+\) p50 \S+ p90 \S+ p99 \S+ max \S+$")
BY_SOURCE = re.compile(r"^by source: resident (\d+) \(p50 \S+ ms\), cache (\d+) \(p50 \S+ ms\), "
                       r"storage (\d+) \(p50 \S+ ms\)$")
LATENESS = re.compile(r"^send lateness ms: mean \S+ max \S+$")
HEADER = "model_name, batch_size, send_interval\n"


class ClientCluster(L.Cluster):
    """test_lb's cluster, deploying only the seed models and tiny_mlp (no
    copies), every model on both storages."""

    def __init__(self, tmp):
        super().__init__(tmp, models=SEEDS + ["tiny_mlp"], spread=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = ClientCluster(tmp_path_factory.mktemp("clients"))
    try:
        c.start_lb("basic")
        caches = [c.start_cache(h, "3G") for h in L.MACHINES]
        for h, cache in zip(L.MACHINES, caches):
            c.start_server(h, cache)
        c.wait_registered(2, 2)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def inputs(cluster):
    """DIR/<model>.npy for the five models (batch BATCH[model]), and the
    file `pipeps run` writes for each."""
    d = cluster.tmp / "inputs"
    d.mkdir()
    refs = {}
    for i, m in enumerate(SEEDS):
        np.save(d / ("%s.npy" % m), L.make_input(m, seed=10 + i, batch=BATCH[m]))
        refs[m] = cluster.tmp / ("ref-%s.npy" % m)
        L.run([T.binary("pipeps"), "run", cluster.kv, m, "--input", d / ("%s.npy" % m), "--output", refs[m],
               "--repeat", "0"])
    return d, refs


def client(cluster, cmd, list_path, *extra, n=None, timeout=600, check=None):
    """Run a client command; -> CompletedProcess (text)."""
    args = [T.binary(cmd)] + ([str(n)] if n is not None else []) + \
        [str(list_path), "127.0.0.1", str(cluster.lb_ports[0])] + [str(a) for a in extra]
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert p.returncode == check, "%s exited %d:\n%s\n%s" % (cmd, p.returncode, p.stdout, p.stderr)
    return p


def parse_output(stdout):
    """-> ({id: match of a request line}, summary dict)."""
    lines, summary = {}, {}
    for line in stdout.splitlines():
        m = OK_LINE.match(line) or ERR_LINE.match(line)
        if m:
            assert int(m.group(1)) not in lines, "request %s printed twice" % m.group(1)
            lines[int(m.group(1))] = m
            continue
        m = SUMMARY.match(line)
        if m:
            summary.update(zip(("n", "ok", "errors", "timeouts"), map(int, m.groups()[:4])))
            continue
        m = BY_SOURCE.match(line)
        if m:
            summary["by_source"] = tuple(map(int, m.groups()))
            continue
        assert LATENCY.match(line) or LATENESS.match(line), "unexpected output line: %r" % line
    return lines, summary


def write_list(path, rows, header=HEADER):
    path.write_text(header + "".join("%s, %d, %f\n" % r for r in rows))
    return path


def read_csv(path):
    with open(path, newline="") as f:
        r = csv.reader(f)
        header = next(r)
        assert header == CSV_COLUMNS
        return [dict(zip(header, row)) for row in r]


@pytest.mark.parametrize("cmd,n", [("client_one", None), ("client", None), ("client_concurrent", 3)])
def test_every_client_output_equals_pipeps_run(cluster, inputs, tmp_path, cmd, n):
    """The five seed models, each cold(ish) then warm, through the balancer:
    every dumped output equals `pipeps run` on the same input, byte for byte."""
    in_dir, refs = inputs
    rows = [(m, BATCH[m], 0.05) for m in SEEDS] + [(m, BATCH[m], 0.05) for m in reversed(SEEDS)]
    lst = write_list(tmp_path / "list.txt", rows)
    dump = tmp_path / "dump"
    p = client(cluster, cmd, lst, "--input-dir", in_dir, "--dump-dir", dump, "--csv", tmp_path / "r.csv",
               n=n, check=0)
    lines, summary = parse_output(p.stdout)
    assert sorted(lines) == list(range(1, len(rows) + 1)), p.stdout
    assert summary["n"] == summary["ok"] == len(rows) and summary["errors"] == summary["timeouts"] == 0
    assert sum(summary["by_source"]) == len(rows)
    for i, (model, batch, _iv) in enumerate(rows, 1):
        m = lines[i]
        assert OK_LINE.match(m.group(0)), m.group(0)
        assert (m.group(2), int(m.group(3))) == (model, batch)
        assert m.group(5).rsplit(":", 1)[0] in L.MACHINES
        out = dump / ("%d-%s.npy" % (i, model))
        assert out.read_bytes() == refs[model].read_bytes(), "%s differs from pipeps run" % out.name
    assert sorted(os.listdir(dump)) == sorted("%d-%s.npy" % (i, r[0]) for i, r in enumerate(rows, 1))
    recs = read_csv(tmp_path / "r.csv")
    assert [int(r["id"]) for r in recs] == list(range(1, len(rows) + 1))
    assert all(r["status"] == "0" and r["attempts"] == "1" for r in recs), recs
    if cmd != "client":
        # Closed loops send when a loop is free: the schedule is the send.
        assert all(r["send_s"] == r["sched_s"] for r in recs), recs


def test_open_loop_follows_the_schedule_and_writes_a_csv_row_per_request(cluster, tmp_path):
    intervals = [0.0, 0.05, 0.2, 0.0, 0.1, 0.3, 0.05, 0.0, 0.15, 0.1, 0.0, 0.25]
    rows = [("tiny_mlp" if i % 3 else "densenet201", 1 + i % 2, iv) for i, iv in enumerate(intervals)]
    lst = write_list(tmp_path / "list.txt", rows)
    p = client(cluster, "client", lst, "--csv", tmp_path / "r.csv", check=0)
    lines, summary = parse_output(p.stdout)
    assert summary["n"] == summary["ok"] == len(rows)
    assert any(LATENESS.match(l) for l in p.stdout.splitlines()), p.stdout
    recs = read_csv(tmp_path / "r.csv")
    assert len(recs) == len(rows)
    sched = 0.0
    for i, (r, (model, batch, iv)) in enumerate(zip(recs, rows), 1):
        assert int(r["id"]) == i
        assert (r["model"], int(r["batch"])) == (model, batch)
        # Request i leaves at the sum of the intervals before it.
        assert abs(float(r["sched_s"]) - sched) < 1e-5, (i, r["sched_s"], sched)
        late = float(r["send_s"]) - float(r["sched_s"])
        assert -1e-3 <= late < 0.5, (i, late)
        sched += iv
        assert r["status"] == "0"
        assert float(r["latency_ms"]) > 0
        assert r["server"].rsplit(":", 1)[0] in L.MACHINES
        assert r["source"] in ("resident", "cache", "storage")
        for col in ("lb_queue_ms", "server_queue_ms", "wait_ms", "compute_ms", "server_total_ms"):
            assert float(r[col]) >= 0, (col, r)
        assert float(r["server_total_ms"]) >= float(r["compute_ms"])
        assert r["attempts"] == "1"
        # The printed line says the same.
        m = lines[i]
        assert (m.group(2), int(m.group(3)), m.group(4), m.group(5), m.group(6)) == \
            (model, batch, "%.3f" % float(r["latency_ms"]), r["server"], r["source"])


def test_unknown_model_is_an_error_line_and_the_rest_is_served(cluster, inputs, tmp_path):
    in_dir, _refs = inputs
    rows = [("tiny_mlp", 1, 0.01), ("nosuch_model", 1, 0.01), ("densenet201", 1, 0.01), ("tiny_mlp", 2, 0.01)]
    lst = write_list(tmp_path / "list.txt", rows)
    for cmd, n in (("client_one", None), ("client", None), ("client_concurrent", 2)):
        p = client(cluster, cmd, lst, "--input-dir", in_dir, "--csv", tmp_path / ("%s.csv" % cmd), n=n,
                   timeout=300, check=1)
        lines, summary = parse_output(p.stdout)
        assert sorted(lines) == [1, 2, 3, 4], p.stdout
        bad = lines[2]
        assert ERR_LINE.match(bad.group(0)) and bad.group(2) == "nosuch_model", bad.group(0)
        assert bad.group(4) == "PPS_ENOTFOUND", bad.group(0)
        assert "nosuch_model" in bad.group(5), bad.group(0)
        for i in (1, 3, 4):
            assert OK_LINE.match(lines[i].group(0)), lines[i].group(0)
        assert (summary["n"], summary["ok"], summary["errors"], summary["timeouts"]) == (4, 3, 1, 0)
        recs = read_csv(tmp_path / ("%s.csv" % cmd))
        assert [r["status"] for r in recs] == ["0", "PPS_ENOTFOUND", "0", "0"]
        assert recs[1]["server"] == "" and recs[1]["source"] == ""
    # With an input for it, the request reaches the balancer, which refuses it.
    np.save(in_dir / "nosuch_model.npy", np.zeros((1, 4), np.float32))
    try:
        p = client(cluster, "client_one", lst, "--input-dir", in_dir, timeout=300, check=1)
    finally:
        os.unlink(in_dir / "nosuch_model.npy")
    lines, summary = parse_output(p.stdout)
    assert lines[2].group(4) == "PPS_ENOTFOUND" and "nosuch_model" in lines[2].group(5), p.stdout
    assert (summary["ok"], summary["errors"]) == (3, 1)


def test_quiet_prints_only_the_summary(cluster, tmp_path):
    rows = [("tiny_mlp", 1 + i % 3, 0.01) for i in range(25)] + [("densenet201", 1, 0.01)] * 3
    lst = write_list(tmp_path / "list.txt", rows)
    for cmd, n in (("client_one", None), ("client", None), ("client_concurrent", 4)):
        p = client(cluster, cmd, lst, "--quiet", "--csv", tmp_path / "q.csv", n=n, check=0)
        out = p.stdout.splitlines()
        assert SUMMARY.match(out[0]) and LATENCY.match(out[1]) and BY_SOURCE.match(out[2]), p.stdout
        assert len(out) == (4 if cmd == "client" else 3), p.stdout
        if cmd == "client":
            assert LATENESS.match(out[3])
        lines, summary = parse_output(p.stdout)
        assert lines == {}
        assert (summary["n"], summary["ok"], summary["errors"], summary["timeouts"]) == (len(rows), len(rows), 0, 0)
        assert sum(summary["by_source"]) == len(rows)
        recs = read_csv(tmp_path / "q.csv")
        assert len(recs) == len(rows)
        by_source = [sum(r["source"] == s for r in recs) for s in ("resident", "cache", "storage")]
        assert tuple(by_source) == summary["by_source"]
        assert p.stderr == "", p.stderr  # no progress line when stderr is not a terminal


def test_seed_request_list_as_written(cluster, tmp_path):
    """`client_one request_list.txt LB_ADDR LB_PORT` with the seed's file,
    no options: generated inputs, batch 8."""
    (tmp_path / "request_list.txt").write_text(
        "model_name, batch_size, send_interval\nresnet152, 8, 0.100000\ndensenet201, 8, 0.100000\n")
    p = subprocess.run([T.binary("client_one"), "request_list.txt", "127.0.0.1", str(cluster.lb_ports[0])],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    lines, summary = parse_output(p.stdout)
    assert [(lines[i].group(2), lines[i].group(3)) for i in (1, 2)] == [("resnet152", "8"), ("densenet201", "8")]
    assert (summary["n"], summary["ok"]) == (2, 2)


def test_client_argument_and_list_errors(cluster, tmp_path):
    lb = str(cluster.lb_ports[0])
    good = write_list(tmp_path / "good.txt", [("tiny_mlp", 1, 0.0)])
    for args in (["client_one", str(good), "127.0.0.1"],                 # too few
                 ["client", str(good), "127.0.0.1", lb, "extra"],        # too many
                 ["client_one", str(good), "127.0.0.1", "notaport"],
                 ["client_concurrent", "0", str(good), "127.0.0.1", lb],
                 ["client_concurrent", str(good), "127.0.0.1", lb],
                 ["client_one", str(good), "127.0.0.1", lb, "--timeout", "0"],
                 ["client_one", str(good), "127.0.0.1", lb, "--nosuch-option"]):
        p = subprocess.run([T.binary(args[0])] + args[1:], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert p.stderr.strip(), args
    # --help: usage on stdout, status 0, every option listed.
    p = subprocess.run([T.binary("client"), "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    for opt in ("--input ", "--input-dir", "--seed", "--csv", "--dump-dir", "--quiet", "--timeout"):
        assert opt in p.stdout, opt
    # A bad list: file:line, exit 1, nothing sent.
    bad = tmp_path / "bad.txt"
    bad.write_text(HEADER + "tiny_mlp, 1, 0\ntiny_mlp, two, 0\n")
    p = client(cluster, "client_one", bad, timeout=60, check=1)
    assert "%s:3: bad batch_size 'two'" % bad in p.stderr
    nohdr = write_list(tmp_path / "nohdr.txt", [("tiny_mlp", 1, 0.0)], header="")
    p = client(cluster, "client", nohdr, timeout=60, check=1)
    assert "%s:1: the first line must be the header" % nohdr in p.stderr
    p = client(cluster, "client_one", tmp_path / "missing.txt", timeout=60, check=1)
    assert "missing.txt" in p.stderr
    # Nobody listening: an error, not a hang.
    p = subprocess.run([T.binary("client"), str(good), "127.0.0.1", str(T.free_port())], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "cannot connect" in p.stderr, p.stderr


# ---- workload ---------------------------------------------------------------

def workload(*args, timeout=60):
    return subprocess.run([T.binary("workload")] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture()
def model_list(tmp_path):
    path = tmp_path / "models.txt"
    path.write_text("model_name\nresnet152\ninception_v3\ndensenet201\nbert_base, 16\ngpt2, 16\n")
    return path


def test_workload_same_seed_same_bytes(model_list, tmp_path):
    for seed_args in ([], ["--seed", "7"]):
        a, b = tmp_path / "a.txt", tmp_path / "b.txt"
        assert workload(model_list, a, 300, 2, "zipf", 0.9, 20, "exponential", *seed_args).returncode == 0
        assert workload(model_list, b, 300, 2, "zipf", 0.9, 20, "exponential", *seed_args).returncode == 0
        assert a.read_bytes() == b.read_bytes()
    c = tmp_path / "c.txt"
    p = workload(model_list, c, 300, 2, "zipf", 0.9, 20, "exponential", "--seed", "8")
    assert p.returncode == 0
    assert c.read_bytes() != a.read_bytes()
    assert "300 requests over 5 models" in p.stderr and "seed 8" in p.stderr, p.stderr
    text = a.read_text().splitlines()
    assert text[0] == "model_name, batch_size, send_interval"
    assert len(text) == 301
    names = {l.split(", ")[0] for l in text[1:]}
    assert names <= {"resnet152", "inception_v3", "densenet201", "bert_base", "gpt2"}
    assert all(l.split(", ")[1] == "8" for l in text[1:])  # the original's batch
    assert not os.path.exists(str(a) + ".tmp")


def test_workload_loop_uniform_rounding_and_copies(model_list, tmp_path):
    out = tmp_path / "w.txt"
    # 10 requests in groups of 4: 3 draws, 12 rows.
    p = workload(model_list, out, 10, 4, "loop", 0, 4, "uniform", "--batch", "2")
    assert p.returncode == 0, p.stderr
    rows = [l.split(", ") for l in out.read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["resnet152"] * 4 + ["inception_v3"] * 4 + ["densenet201"] * 4
    assert all(r[1:] == ["2", "0.250000"] for r in rows), rows
    p = workload(model_list, out, 7, 1, "loop", 0, 3, "uniform", "--copies", "3")
    assert p.returncode == 0, p.stderr
    rows = [l.split(", ") for l in out.read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["resnet152-alter-0000000%d" % i for i in (1, 2, 3)] + \
        ["inception_v3-alter-0000000%d" % i for i in (1, 2, 3)] + ["densenet201-alter-00000001"]
    assert all(r[2] == "0.333333" for r in rows)
    p = workload(model_list, out, 5000, 5, "zipf", 1.0, 100, "uniform", "--copies", "3", "--seed", "3")
    names = {l.split(", ")[0] for l in out.read_text().splitlines()[1:]}
    assert len(names) == 15 and all(re.fullmatch(r"\w+-alter-0000000[123]", n) for n in names), names


def test_workload_bad_arguments(model_list, tmp_path):
    out = tmp_path / "w.txt"
    good = [model_list, out, 10, 1, "zipf", 0.9, 10, "uniform"]
    cases = [
        (good[:4] + ["other"] + good[5:], "'loop' or 'zipf', not 'other'"),
        (good[:6] + [0] + good[7:], "bad RATE '0'"),
        (good[:6] + [-3] + good[7:], "bad RATE '-3'"),
        (good[:7] + ["other"], "'uniform' or 'exponential', not 'other'"),
        (good[:2] + [0] + good[3:], "bad NUM_REQUESTS '0'"),
        (good[:3] + [0] + good[4:], "bad GROUP '0'"),
        (good[:5] + ["x"] + good[6:], "bad Zipf exponent S 'x'"),
        (good + ["--seed", "abc"], "bad --seed 'abc'"),
        (good + ["--batch", "0"], "bad --batch '0'"),
        (good + ["--copies", "0"], "bad --copies '0'"),
        (good[:7], "usage: workload"),
        ([], "usage: workload"),
        (good + ["extra"], "usage: workload"),
    ]
    for args, want in cases:
        p = workload(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert want in p.stderr, (args, p.stderr)
        assert not out.exists()
    # A model list it cannot use: exit 1, file:line, nothing written.
    bad = tmp_path / "bad_models.txt"
    bad.write_text("model_name\nresnet152\n, 16\n")
    p = workload(bad, out, 10, 1, "loop", 0, 10, "uniform")
    assert p.returncode == 1 and "%s:3:" % bad in p.stderr, p.stderr
    p = workload(tmp_path / "nosuch.txt", out, 10, 1, "loop", 0, 10, "uniform")
    assert p.returncode == 1 and "nosuch.txt" in p.stderr
    assert not out.exists()
    p = workload("--help")
    assert p.returncode == 0 and "--copies K" in p.stdout


def test_workload_output_drives_the_open_loop_client(cluster, tmp_path):
    (tmp_path / "models.txt").write_text("model_name\ntiny_mlp\n")
    lst = tmp_path / "w.txt"
    assert workload(tmp_path / "models.txt", lst, 20, 2, "zipf", 0.9, 50, "exponential",
                    "--batch", "1").returncode == 0
    p = client(cluster, "client", lst, "--csv", tmp_path / "w.csv", check=0)
    lines, summary = parse_output(p.stdout)
    assert (summary["n"], summary["ok"]) == (20, 20)
    intervals = [float(l.split(", ")[2]) for l in lst.read_text().splitlines()[1:]]
    recs = read_csv(tmp_path / "w.csv")
    for r, s in zip(recs, np.cumsum([0.0] + intervals[:-1])):
        assert abs(float(r["sched_s"]) - s) < 1e-5


# ---- a peer that fails: the run still ends ----------------------------------

class FailingPeer:
    """Plays a balancer that breaks: accepts connections and reads frames;
    on the first one it closes the connection ("close"), never answers
    ("silent") or sends half a frame header and stalls ("half")."""

    def __init__(self, mode):
        import socket
        import threading
        self.mode = mode
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        try:
            while True:
                hdr = T.recv_exact(s, 32)
                T.recv_exact(s, T.HEADER.unpack(hdr)[7])
                if self.mode == "close":
                    s.shutdown(2)
                    s.close()
                    return
                if self.mode == "half":
                    s.sendall(T.header(T.MSG["INFER"], 100, T.HEADER.unpack(hdr)[6], flags=1)[:16])
        except (ConnectionError, OSError):
            pass

    def stop(self):
        self.lsock.close()
        for s in self.conns:
            s.close()


@pytest.mark.parametrize("mode", ["close", "silent", "half"])
def test_open_loop_ends_at_once_when_the_peer_fails(tmp_path, mode):
    """The first request's connection breaks (or stays silent, or stalls in
    a frame, past --timeout) while the next send is ten minutes off: the
    client reports both and exits; it does not sleep until the next
    scheduled send (a bug: it did), nor block in a half-read frame."""
    peer = FailingPeer(mode)
    try:
        np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
        lst = write_list(tmp_path / "list.txt", [("tiny_mlp", 1, 600.0), ("tiny_mlp", 1, 0.0)])
        p = subprocess.run([T.binary("client"), str(lst), "127.0.0.1", str(peer.port), "--input",
                            str(tmp_path / "x.npy"), "--timeout", "1"],
                           capture_output=True, text=True, timeout=120)
    finally:
        peer.stop()
    assert p.returncode == 1, p.stdout + p.stderr
    lines, summary = parse_output(p.stdout)
    assert sorted(lines) == [1, 2] and all(ERR_LINE.match(m.group(0)) for m in lines.values()), p.stdout
    assert (summary["n"], summary["ok"], summary["errors"]) == (2, 0, 2)
    want = "PPS_ETIMEOUT" if mode == "silent" else "PPS_ECLOSED"
    assert lines[1].group(4) == want, p.stdout
    assert summary["timeouts"] == (1 if mode == "silent" else 0)


def test_a_silent_balancer_does_not_hang_the_clients(tmp_path):
    """Inputs are built from the balancer's MODEL_INFO: a peer that never
    answers it costs --timeout per model, then every request is an error
    (a bug: the clients waited forever)."""
    peer = FailingPeer("silent")
    try:
        lst = write_list(tmp_path / "list.txt", [("tiny_mlp", 1, 0.0), ("densenet201", 1, 0.0),
                                                 ("tiny_mlp", 1, 0.0)])
        for cmd, n in (("client_one", None), ("client", None), ("client_concurrent", 2)):
            args = [T.binary(cmd)] + ([str(n)] if n else []) + [str(lst), "127.0.0.1", str(peer.port),
                                                                "--timeout", "1"]
            p = subprocess.run(args, capture_output=True, text=True, timeout=120)
            assert p.returncode == 1, (cmd, p.stdout, p.stderr)
            lines, summary = parse_output(p.stdout)
            assert sorted(lines) == [1, 2, 3], p.stdout
            assert all(m.group(4) == "PPS_ETIMEOUT" for m in lines.values()), p.stdout
            assert (summary["n"], summary["errors"], summary["timeouts"]) == (3, 3, 3)
    finally:
        peer.stop()
