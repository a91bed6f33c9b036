"""pipeps up / down: a whole cluster from a cluster file, health-checked,
serving a request through the balancer, and stopped without leaving a
process or a shared-memory segment behind; a daemon that cannot start stops
the whole `up`; --host starts one host's share; and, as root, the cluster as
separate hosts in network namespaces joined by veth pairs."""
import os
import re
import shutil
import socket
import subprocess
import uuid

import pytest

from pipeps_testlib import binary, free_port

PIPEPS = binary("pipeps")


def cluster_file(path, ports, hosts=None, machines=("127.0.0.2", "127.0.0.3"), addrs=None):
    """A two-storage, two-machine cluster of tiny_mlp and inception_v3.
    hosts: section -> host name; addrs: section -> address."""
    hosts = hosts or {}
    addrs = addrs or {}

    def common(section, default_addr="127.0.0.1"):
        lines = ["addr = %s" % addrs.get(section, default_addr)]
        if section in hosts:
            lines.append("host = %s" % hosts[section])
        return "\n".join(lines) + "\n"

    text = ("# test cluster\n[cluster]\nmodels = tiny_mlp inception_v3\n"
            "distribution = all\nmax_batch_size = 4M\n\n")
    text += "[metadata]\n" + common("metadata") + "port = %d\n\n" % ports["meta"]
    for i in range(2):
        text += "[storage s%d]\n" % i + common("s%d" % i) + "port = %d\n\n" % ports["s%d" % i]
    text += ("[balancer]\n" + common("balancer") +
             "client_port = %d\nserver_port = %d\ncache_port = %d\nhttp_port = off\npolicy = basic\n\n"
             % (ports["lb"], ports["lb_server"], ports["lb_cache"]))
    for name, addr in zip("ab", machines):
        text += ("[machine %s]\n" % name + common(name, addr) +
                 "cache_port = %d\nserver_port = %d\ncache_size = 128M\ncache_block = 1M\n"
                 "servers = 1\nserver_options = --threads 1 --memory 512M --reserve 0\n\n"
                 % (ports["cache"], ports["server"]))
    with open(path, "w") as f:
        f.write(text)
    return path


def new_ports():
    return {k: free_port() for k in ("meta", "s0", "s1", "lb", "lb_server", "lb_cache", "cache", "server")}


def up(args, timeout=300):
    return subprocess.run([PIPEPS, "up"] + args, capture_output=True, text=True, timeout=timeout)


def down(cluster_dir):
    r = subprocess.run([PIPEPS, "down", "--dir", cluster_dir], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def read_states(cluster_dir):
    daemons, shms = [], []
    for name in os.listdir(cluster_dir):
        if name.startswith("state-") and not name.endswith(".tmp"):
            with open(os.path.join(cluster_dir, name)) as f:
                for line in f:
                    parts = line.split()
                    if parts[:1] == ["daemon"]:
                        daemons.append((parts[1], int(parts[2])))
                    elif parts[:1] == ["shm"]:
                        shms.append(parts[1])
    return daemons, shms


def running(pid):
    """A live process (a zombie nobody reaped has stopped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def assert_nothing_left(cluster_dir, daemons, shms):
    left = [(n, p) for n, p in daemons if running(p)]
    assert not left, "still running after down: %s" % left
    r = subprocess.run(["pgrep", "-f", cluster_dir], capture_output=True, text=True)
    assert r.stdout.strip() == "", "processes naming %s: %s" % (cluster_dir, r.stdout)
    for name in shms:
        assert not os.path.exists("/dev/shm/" + name), name
    assert not any(n.startswith("state-") for n in os.listdir(cluster_dir))
    logs = os.path.join(cluster_dir, "logs")
    for name in os.listdir(logs):
        with open(os.path.join(logs, name), errors="replace") as f:
            text = f.read()
        assert "Sanitizer" not in text and "runtime error" not in text, "%s:\n%s" % (name, text[-3000:])


def infer(lb_addr, lb_port, model, prefix=()):
    r = subprocess.run(list(prefix) + [PIPEPS, "infer", "%s:%d" % (lb_addr, lb_port), model],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "output float32 1x" in r.stdout, r.stdout
    return r.stdout


@pytest.fixture
def cdir(tmp_path):
    d = str(tmp_path / "cluster")
    yield d
    if os.path.isdir(d):
        subprocess.run([PIPEPS, "down", "--dir", d], capture_output=True, timeout=120)


def test_up_serves_then_down_leaves_nothing(tmp_path, cdir):
    ports = new_ports()
    cf = cluster_file(str(tmp_path / "cluster.ini"), ports)
    r = up([cf, "--dir", cdir])
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "deploying over 2 storage(s)" in out
    for name in ("metadata", "storage-s0", "storage-s1", "balancer", "cache-a", "server-a0",
                 "cache-b", "server-b0"):
        assert re.search(r"^%s\s+\d+\s+\S+:\d+\s+%s/logs/%s\.log$" % (name, re.escape(os.path.realpath(cdir)), name),
                         out, re.M), out
    daemons, shms = read_states(cdir)
    assert len(daemons) == 8 and len(shms) == 2
    assert all(running(p) for _, p in daemons)
    assert all(os.path.exists("/dev/shm/" + s) for s in shms)
    # The balancer knows both machines (what `up` waited for).
    st = subprocess.run([PIPEPS, "stat", "lb", "127.0.0.1:%d" % ports["lb"]], capture_output=True,
                        text=True, check=True).stdout
    assert len(re.findall(r"^server .* ready 1 ", st, re.M)) == 2, st
    assert len(re.findall(r"^cache .* connected 1 ", st, re.M)) == 2, st
    infer("127.0.0.1", ports["lb"], "tiny_mlp")
    infer("127.0.0.1", ports["lb"], "inception_v3")
    # A second `up` on a running cluster is refused.
    r2 = up([cf, "--dir", cdir])
    assert r2.returncode != 0 and "already up" in r2.stderr
    d = down(cdir)
    assert "is down" in d.stdout
    assert_nothing_left(cdir, daemons, shms)
    # Again: the metadata storage kept the models, so nothing is deployed.
    r = up([cf, "--dir", cdir])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already deployed" in r.stdout and "deploying" not in r.stdout
    infer("127.0.0.1", ports["lb"], "tiny_mlp")
    daemons, shms = read_states(cdir)
    down(cdir)
    assert_nothing_left(cdir, daemons, shms)


def test_up_fails_on_a_taken_port_and_leaves_nothing(tmp_path, cdir):
    ports = new_ports()
    cf = cluster_file(str(tmp_path / "cluster.ini"), ports)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    blocker.bind(("127.0.0.1", ports["s1"]))
    blocker.listen(1)
    try:
        r = up([cf, "--dir", cdir, "--timeout", "30"])
    finally:
        blocker.close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "storage-s1 (127.0.0.1:%d) did not start" % ports["s1"] in r.stderr, r.stderr
    assert "last lines of %s/logs/storage-s1.log" % os.path.realpath(cdir) in r.stderr, r.stderr
    with open(os.path.join(cdir, "logs", "storage-s1.log")) as f:
        last = [line.strip() for line in f if line.strip()][-1]
    assert last in r.stderr
    assert "stopping what was started" in r.stderr
    pids = [int(p) for p in re.findall(r"ready: \S+\s+\S+\s+pid (\d+)", r.stdout)]
    assert len(pids) == 2, r.stdout
    assert_nothing_left(cdir, [("x", p) for p in pids], [])
    assert not os.path.exists(os.path.join(cdir, "state-all"))


def test_up_host_starts_only_that_hosts_daemons(tmp_path, cdir):
    ports = new_ports()
    hosts = {"metadata": "infra", "s0": "infra", "s1": "infra", "balancer": "infra", "a": "m1", "b": "m2"}
    cf = cluster_file(str(tmp_path / "cluster.ini"), ports, hosts=hosts)
    r = up([cf, "--dir", cdir, "--host", "infra"])
    assert r.returncode == 0, r.stdout + r.stderr
    daemons, shms = read_states(cdir)
    assert sorted(n for n, _ in daemons) == ["balancer", "metadata", "storage-s0", "storage-s1"]
    assert shms == []
    r = up([cf, "--dir", cdir, "--host", "m1"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already deployed" not in r.stdout and "deploying" not in r.stdout
    daemons, shms = read_states(cdir)
    assert sorted(n for n, _ in daemons) == ["balancer", "cache-a", "metadata", "server-a0",
                                             "storage-s0", "storage-s1"]
    st = subprocess.run([PIPEPS, "stat", "lb", "127.0.0.1:%d" % ports["lb"]], capture_output=True,
                        text=True, check=True).stdout
    assert len(re.findall(r"^server .* ready 1 ", st, re.M)) == 1, st
    infer("127.0.0.1", ports["lb"], "tiny_mlp")
    r = up([cf, "--dir", cdir, "--host", "nowhere"])
    assert r.returncode == 2 and "no daemon to host 'nowhere'" in r.stderr
    down(cdir)
    assert_nothing_left(cdir, daemons, shms)


def _default_ports_free():
    text = subprocess.run([PIPEPS, "up", "--print-default"], capture_output=True, text=True,
                          check=True).stdout
    ports = sorted({int(p) for p in re.findall(r"port = (\d+)", text)})
    busy = []
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemons bind
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def test_up_default_cluster(cdir):
    """No file: the built-in cluster, the five models (generated and deployed
    in a few seconds), two machines at 127.0.0.2 and 127.0.0.3."""
    busy = _default_ports_free()
    if busy:
        pytest.skip("the default cluster's ports are in use: %s" % busy)
    r = up(["--dir", cdir], timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "generating 5 model(s)" in r.stdout
    for addr in ("127.0.0.2:7420", "127.0.0.3:7420", "127.0.0.2:7421", "127.0.0.3:7421"):
        assert addr in r.stdout
    assert "http://127.0.0.1:7480/" in r.stdout
    out = infer("127.0.0.1", 7410, "bert_base")
    assert "from storage, pipelined" in out, out
    daemons, shms = read_states(cdir)
    assert len(daemons) == 8 and len(shms) == 2
    down(cdir)
    assert_nothing_left(cdir, daemons, shms)
    # The data (kv.bin, two storages' copies) is the caller's to remove.
    shutil.rmtree(cdir)


# ---- separate hosts in network namespaces -------------------------------------

def _sh(*cmd, check=True):
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=60)


def _netns_usable():
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_SYS_ADMIN"
    if not shutil.which("ip"):
        return "no ip (iproute2)"
    probe = "pps-probe-%s" % uuid.uuid4().hex[:6]
    r = _sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return "ip netns add not permitted: %s" % r.stderr.strip()
    _sh("ip", "netns", "del", probe, check=False)
    return None


def test_up_as_separate_hosts_in_network_namespaces(tmp_path, cdir):
    why = _netns_usable()
    if why:
        pytest.skip(why)
    tag = uuid.uuid4().hex[:4]
    # Four hosts: infra (metadata + balancer), two storages, two machines; a
    # bridge in the root namespace joins one veth pair per host.
    hosts = {"infra": 1, "st0": 2, "st1": 3, "m1": 4, "m2": 5}
    br = "ppsbr%s" % tag
    ns = {h: "pps-%s-%s" % (h, tag) for h in hosts}
    created = []
    try:
        _sh("ip", "link", "add", br, "type", "bridge")
        created.append(("link", br))
        _sh("ip", "addr", "add", "10.77.0.254/24", "dev", br)
        _sh("ip", "link", "set", br, "up")
        for h, n in hosts.items():
            _sh("ip", "netns", "add", ns[h])
            created.append(("netns", ns[h]))
            outer, inner = "pv%s%d" % (tag, n), "pi%s%d" % (tag, n)
            _sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            created.append(("link", outer))
            _sh("ip", "link", "set", outer, "master", br)
            _sh("ip", "link", "set", outer, "up")
            _sh("ip", "link", "set", inner, "netns", ns[h])
            _sh("ip", "-n", ns[h], "addr", "add", "10.77.0.%d/24" % n, "dev", inner)
            _sh("ip", "-n", ns[h], "link", "set", inner, "up")
            _sh("ip", "-n", ns[h], "link", "set", "lo", "up")
        addr = {h: "10.77.0.%d" % n for h, n in hosts.items()}
        ports = new_ports()
        cf = cluster_file(
            str(tmp_path / "cluster.ini"), ports,
            hosts={"metadata": "infra", "balancer": "infra", "s0": "st0", "s1": "st1", "a": "m1", "b": "m2"},
            machines=(addr["m1"], addr["m2"]),
            addrs={"metadata": addr["infra"], "balancer": addr["infra"], "s0": addr["st0"],
                   "s1": addr["st1"]})
        # Storages first, then metadata + balancer (it deploys over the storages), then machines.
        for h in ("st0", "st1", "infra", "m1", "m2"):
            r = subprocess.run(["ip", "netns", "exec", ns[h], PIPEPS, "up", cf, "--dir", cdir, "--host", h],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, "%s: %s%s" % (h, r.stdout, r.stderr)
        st = _sh("ip", "netns", "exec", ns["infra"], PIPEPS, "stat", "lb",
                 "%s:%d" % (addr["infra"], ports["lb"])).stdout
        assert len(re.findall(r"^server .* ready 1 ", st, re.M)) == 2, st
        # From a machine's namespace, the balancer is a remote host.
        prefix = ("ip", "netns", "exec", ns["m1"])
        infer(addr["infra"], ports["lb"], "inception_v3", prefix)
        infer(addr["infra"], ports["lb"], "tiny_mlp", prefix)
        st = _sh(*prefix, PIPEPS, "stat", "cache", "%s:%d" % (addr["m1"], ports["cache"])).stdout
        assert "bytes_fetched" in st
        daemons, shms = read_states(cdir)
        assert len(daemons) == 8
        down(cdir)
        assert_nothing_left(cdir, daemons, shms)
    finally:
        for kind, name in reversed(created):
            if kind == "netns":
                _sh("ip", "netns", "del", name, check=False)
            else:
                _sh("ip", "link", "del", name, check=False)
