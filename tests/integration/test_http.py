"""Black-box tests of the load balancer's HTTP front end (--http-port): the
KServe v2 / Open Inference Protocol REST API with the binary tensor data
extension, /metrics, /status.json and the status page, on a real loopback
cluster (test_lb.py's: a metadata storage, two storages filled by
deploy_file, the balancer, two machines 127.0.0.2 and 127.0.0.3 with a cache
and a server each), serving the five seed models and tiny_mlp.

The README's curl examples (section "HTTP API (KServe v2)") are run here
with bash, word for word (a test checks each one is in README.md), and their
outputs compared with `pipeps run` on the same inputs: JSON floats exactly
after np.float32 (9 significant digits round-trip), binary tensors byte for
byte. The status page is rendered by headless Chromium (Debian's). No test
asserts on a duration; the slow client is checked by ordering."""
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import pipeps_testlib as T
import test_lb as L

SEEDS = ["resnet152", "inception_v3", "densenet201", "bert_base", "gpt2"]
MODELS = SEEDS + ["tiny_mlp"]
README = Path(__file__).resolve().parents[2] / "README.md"
HTTP_LINE = re.compile(r"HTTP \(.*\) on http://([\d.]+):(\d+)/")
TIMEOUT = 600  # a hang guard only

# ---- the README's examples, run word for word ---------------------------------

NPY2JSON = """npy2json() {  # npy2json INPUT_NAME FILE.npy: a KServe v2 JSON request body
  python3 -c 'import json, sys, numpy as np
x = np.load(sys.argv[2])
t = {"name": sys.argv[1], "shape": x.shape, "datatype": {"float32": "FP32", "int64": "INT64"}[x.dtype.name]}
print(json.dumps({"inputs": [dict(t, data=x.ravel().tolist())]}))' "$@"
}"""

GPT2_IDS = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 383, 3290, 318, 407, 16931, 13]

EXAMPLES = {
    # name: (commands, what the test compares)
    "health": [
        "curl -s -o /dev/null -w '%{http_code}\\n' $LB/v2/health/live",
        "curl -s -o /dev/null -w '%{http_code}\\n' $LB/v2/health/ready",
        "curl -s -w '\\n' $LB/v2",
        "curl -s -w '\\n' $LB/v2/models/bert_base",
        "curl -s -o /dev/null -w '%{http_code}\\n' $LB/v2/models/gpt2/ready",
    ],
    "tiny_mlp_json": [
        "curl -s $LB/v2/models/tiny_mlp/infer -d '{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 64], "
        "\"datatype\": \"FP32\", \"data\": ['$(seq -s, 64)']}]}'",
    ],
    "npy_json": [
        "npy2json input densenet201.npy > densenet201.json",
        "curl -s $LB/v2/models/densenet201/infer --data-binary @densenet201.json -o densenet201.out",
        "head -c 150 densenet201.out; echo",
        "npy2json input_ids bert_base.npy > bert_base.json",
        "curl -s $LB/v2/models/bert_base/infer --data-binary @bert_base.json -o bert_base.out",
        "head -c 150 bert_base.out; echo",
    ],
    "binary": [
        "H='{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 3, 224, 224], \"datatype\": \"FP32\", "
        "\"parameters\": {\"binary_data_size\": 602112}}], \"parameters\": {\"binary_data_output\": true}}'",
        "{ printf %s \"$H\"; tail -c 602112 resnet152.npy; } | curl -s $LB/v2/models/resnet152/infer "
        "-H \"Inference-Header-Content-Length: ${#H}\" --data-binary @- -D head.txt -o resnet152.out",
        "N=$(sed -n 's/^inference-header-content-length: *\\([0-9]*\\).*/\\1/Ip' head.txt)",
        "head -c $N resnet152.out; echo",
        "tail -c +$((N + 1)) resnet152.out > resnet152.raw",
    ],
    "binary_batch4": [
        "H='{\"inputs\": [{\"name\": \"input\", \"shape\": [4, 3, 299, 299], \"datatype\": \"FP32\", "
        "\"parameters\": {\"binary_data_size\": 4291248}}], \"parameters\": {\"binary_data_output\": true}}'",
        "{ printf %s \"$H\"; tail -c 4291248 inception_v3.npy; } | curl -s $LB/v2/models/inception_v3/infer "
        "-H \"Inference-Header-Content-Length: ${#H}\" --data-binary @- -D head.txt -o inception_v3.out",
        "N=$(sed -n 's/^inference-header-content-length: *\\([0-9]*\\).*/\\1/Ip' head.txt)",
        "head -c $N inception_v3.out; echo",
        "tail -c +$((N + 1)) inception_v3.out > inception_v3.raw",
    ],
    "binary_output": [
        "curl -s $LB/v2/models/gpt2/infer -D head.txt -o gpt2.out -d '{\"inputs\": [{\"name\": \"input_ids\", "
        "\"shape\": [1, 16], \"datatype\": \"INT64\", \"data\": [%s]}], "
        "\"outputs\": [{\"name\": \"logits\", \"parameters\": {\"binary_data\": true}}]}'"
        % ", ".join(map(str, GPT2_IDS)),
        "N=$(sed -n 's/^inference-header-content-length: *\\([0-9]*\\).*/\\1/Ip' head.txt)",
        "head -c $N gpt2.out; echo",
        "tail -c +$((N + 1)) gpt2.out > gpt2.raw",
    ],
}

# ---- the cluster ----------------------------------------------------------------


class HttpCluster(L.Cluster):
    """test_lb's cluster with only the five seed models and tiny_mlp, every
    model on both storages."""

    def __init__(self, tmp):
        super().__init__(tmp, models=MODELS, spread=False)


def http_base(daemon):
    """The balancer's HTTP address, from its start line on stdout."""
    def bound():
        m = HTTP_LINE.search(daemon.log_text())
        return m and "http://%s:%s" % m.groups()
    return L.wait_for(bound, 30, "the balancer's HTTP line")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = HttpCluster(tmp_path_factory.mktemp("http"))
    try:
        c.start_lb("basic", ["--http-port", "0"])
        c.url = http_base(c.lb)
        caches = [c.start_cache(h, "1536M") for h in L.MACHINES]
        c.servers = [c.start_server(h, cache) for h, cache in zip(L.MACHINES, caches)]
        c.caches = caches
        c.wait_registered(2, 2)
        yield c
        rc = c.lb.stop()
        text = c.lb.log_text()
        assert rc == 0, text[-3000:]
        assert "Sanitizer" not in text and "runtime error" not in text, text[-3000:]
    finally:
        c.stop()


@pytest.fixture(scope="module")
def empty_lb(cluster):
    """A second balancer on the same metadata storage with no server or
    cache: --queue-timeout 0.5, a 4K --http-max-body, --http-timeout 1."""
    port = T.free_port()
    args = [T.binary("load_balancer"), "basic", "127.0.0.1", str(port), "127.0.0.1", "0", "127.0.0.1", "0",
            "127.0.0.1", str(cluster.meta.port), "--queue-timeout", "0.5", "--http-max-body", "4K",
            "--http-timeout", "1", "--http-port", "0"]
    d = T.Daemon(args, port, str(cluster.tmp / "lb-empty.log"))
    d.url = http_base(d)
    yield d
    rc = d.stop()
    text = d.log_text()
    assert rc == 0 and "Sanitizer" not in text and "runtime error" not in text, text[-3000:]


def error_of(r, code):
    """Assert r is an error answer in the protocol's shape; -> its message."""
    assert r.status_code == code, (r.status_code, r.text[:500])
    assert r.headers["Content-Type"] == "application/json", r.headers
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def json_request(name, x, **extra):
    t = {"name": name, "shape": list(x.shape), "datatype": {"float32": "FP32", "int64": "INT64"}[x.dtype.name],
         "data": x.ravel().tolist()}
    t.update(extra)
    return t


def as_array(out):
    dtype = {"FP32": np.float32, "INT64": np.int64}[out["datatype"]]
    return np.array(out["data"], dtype=dtype).reshape(out["shape"])


def split_binary(r):
    """A binary-extension answer -> (JSON header, the bytes after it)."""
    n = int(r.headers["Inference-Header-Content-Length"])
    return json.loads(r.content[:n]), r.content[n:]


def tiny_input(seed, batch):
    return np.random.RandomState(seed).uniform(-1, 1, size=(batch, 64)).astype(np.float32)


# ---- curl examples ----------------------------------------------------------------


def test_readme_shows_the_tested_curl_examples():
    text = README.read_text()
    assert "## HTTP API (KServe v2)" in text
    for cmds in EXAMPLES.values():
        for cmd in cmds:
            assert cmd in text, "README lacks the tested command:\n" + cmd
    assert NPY2JSON in text


def run_example(cluster, name, workdir):
    script = "set -euo pipefail\n" + NPY2JSON + "\n" + "\n".join(EXAMPLES[name]) + "\n"
    env = dict(os.environ, LB=cluster.url[len("http://"):], PATH="/usr/bin:/bin")
    p = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 0, "%s:\n%s\n%s" % (name, p.stdout, p.stderr)
    return p.stdout


class Workdir(type(Path())):
    """The examples' directory, with the arrays of its .npy files."""

    def __new__(cls, path, inputs):
        self = super().__new__(cls, path)
        self.inputs = inputs
        return self


@pytest.fixture(scope="module")
def workdir(cluster):
    d = cluster.tmp / "curl"
    d.mkdir()
    inputs = {"densenet201": L.make_input("densenet201", seed=1), "bert_base": L.make_input("bert_base", seed=2,
                                                                                             batch=4),
              "resnet152": L.make_input("resnet152", seed=3), "inception_v3": L.make_input("inception_v3", seed=4,
                                                                                           batch=4)}
    for m, x in inputs.items():
        np.save(d / ("%s.npy" % m), x)
    return Workdir(d, inputs)


def test_curl_health_and_metadata(cluster, workdir):
    out = run_example(cluster, "health", workdir).splitlines()
    assert out[0] == "200" and out[1] == "200" and out[4] == "200", out
    server = json.loads(out[2])
    assert server["name"] == "pipeps" and "binary_tensor_data" in server["extensions"], server
    meta = json.loads(out[3])
    assert meta["name"] == "bert_base"
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]


def test_curl_json_inline(cluster, workdir):
    out = json.loads(run_example(cluster, "tiny_mlp_json", workdir))
    x = np.arange(1, 65, dtype=np.float32).reshape(1, 64)
    assert out["model_name"] == "tiny_mlp" and out["outputs"][0]["name"] == "logits"
    np.testing.assert_array_equal(as_array(out["outputs"][0]), cluster.reference("tiny_mlp", x))


def test_curl_json_from_npy(cluster, workdir):
    """densenet201 batch 1 (float32) and bert_base batch 4 (int64), JSON
    both ways."""
    run_example(cluster, "npy_json", workdir)
    for m in ("densenet201", "bert_base"):
        out = json.loads((workdir / ("%s.out" % m)).read_text())
        assert out["model_name"] == m, out.get("error")
        y = as_array(out["outputs"][0])
        ref = cluster.reference(m, workdir.inputs[m])
        assert y.dtype == ref.dtype and y.shape == ref.shape
        np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("name,model,batch", [("binary", "resnet152", 1), ("binary_batch4", "inception_v3", 4)])
def test_curl_binary(cluster, workdir, name, model, batch):
    header = json.loads(run_example(cluster, name, workdir).splitlines()[0])
    out = header["outputs"][0]
    assert out["shape"] == [batch, 1000] and out["parameters"] == {"binary_data_size": batch * 4000}, header
    ref = cluster.reference(model, workdir.inputs[model])
    assert (workdir / ("%s.raw" % model)).read_bytes() == ref.astype("<f4").tobytes()


def test_curl_json_input_binary_output(cluster, workdir):
    header = json.loads(run_example(cluster, "binary_output", workdir).splitlines()[0])
    assert header["outputs"][0]["shape"] == [1, 16, 50257], header
    x = np.array([GPT2_IDS], dtype=np.int64)
    assert (workdir / "gpt2.raw").read_bytes() == cluster.reference("gpt2", x).astype("<f4").tobytes()


# ---- every endpoint with requests --------------------------------------------------


def test_health_and_server_metadata(cluster):
    assert requests.get(cluster.url + "/v2/health/live", timeout=TIMEOUT).status_code == 200
    assert requests.get(cluster.url + "/v2/health/ready", timeout=TIMEOUT).status_code == 200
    r = requests.get(cluster.url + "/v2", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["name"] == "pipeps" and body["version"] and "binary_tensor_data" in body["extensions"], body


def test_ready_is_503_until_a_server_registers(empty_lb):
    assert requests.get(empty_lb.url + "/v2/health/live", timeout=TIMEOUT).status_code == 200
    assert "no server" in error_of(requests.get(empty_lb.url + "/v2/health/ready", timeout=TIMEOUT), 503)
    # A known model with no server to run it is not ready; an unknown one is not found.
    assert requests.get(empty_lb.url + "/v2/models/tiny_mlp/ready", timeout=TIMEOUT).status_code == 503
    assert requests.get(empty_lb.url + "/v2/models/nosuch/ready", timeout=TIMEOUT).status_code == 404


EXPECTED_METADATA = {
    "resnet152": ([("input", "FP32", [-1, 3, 224, 224])], [("logits", "FP32", [-1, 1000])]),
    "inception_v3": ([("input", "FP32", [-1, 3, 299, 299])], [("logits", "FP32", [-1, 1000])]),
    "densenet201": ([("input", "FP32", [-1, 3, 224, 224])], [("logits", "FP32", [-1, 1000])]),
    "bert_base": ([(n, "INT64", [-1, L.SEQ]) for n in ("input_ids", "attention_mask", "token_type_ids")],
                  [("last_hidden_state", "FP32", [-1, L.SEQ, 768])]),
    "gpt2": ([("input_ids", "INT64", [-1, L.SEQ])], [("logits", "FP32", [-1, L.SEQ, 50257])]),
    "tiny_mlp": ([("input", "FP32", [-1, 64])], [("logits", "FP32", [-1, 10])]),
}


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata(cluster, model):
    """Names, datatypes and shapes (-1 for the batch). densenet201's
    METADATA blob is over 64 KiB: the balancer used to refuse the metadata
    storage's answer and drop the connection (a 503)."""
    r = requests.get(cluster.url + "/v2/models/" + model, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == model and body["versions"] == ["1"] and body["platform"] == "pipeps"
    ins, outs = EXPECTED_METADATA[model]
    assert [(t["name"], t["datatype"], t["shape"]) for t in body["inputs"]] == ins
    assert [(t["name"], t["datatype"], t["shape"]) for t in body["outputs"]] == outs
    # The versioned path is the same model.
    assert requests.get(cluster.url + "/v2/models/%s/versions/1" % model, timeout=TIMEOUT).json() == body


def test_model_metadata_unknown_model_is_404(cluster):
    assert "unknown model" in error_of(requests.get(cluster.url + "/v2/models/nosuch", timeout=TIMEOUT), 404)


def test_model_ready(cluster):
    for m in MODELS:
        assert requests.get(cluster.url + "/v2/models/%s/ready" % m, timeout=TIMEOUT).status_code == 200, m
    assert requests.get(cluster.url + "/v2/models/nosuch/ready", timeout=TIMEOUT).status_code == 404


def test_infer_json_keep_alive(cluster):
    """Several requests on one requests.Session use one connection; the id
    is echoed; batch 1 and 4."""
    url = cluster.url + "/v2/models/tiny_mlp/infer"
    with requests.Session() as s:
        for i in range(6):
            x = tiny_input(i, 1 + 3 * (i % 2))
            r = s.post(url, json={"id": "req-%d" % i, "inputs": [json_request("input", x)]}, timeout=TIMEOUT)
            assert r.status_code == 200, r.text
            assert r.headers["Content-Type"] == "application/json"
            assert r.headers.get("Connection", "").lower() != "close"
            body = r.json()
            assert body["id"] == "req-%d" % i and body["model_name"] == "tiny_mlp" and body["model_version"] == "1"
            np.testing.assert_array_equal(as_array(body["outputs"][0]), cluster.reference("tiny_mlp", x))
        pool = s.get_adapter(url).poolmanager.connection_from_url(url)
        assert pool.num_connections == 1


def test_infer_binary_input_and_output(cluster):
    url = cluster.url + "/v2/models/tiny_mlp/infer"
    x = tiny_input(10, 4)
    ref = cluster.reference("tiny_mlp", x)
    raw = x.tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": [4, 64], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    r = requests.post(url, data=head + raw, headers={"Inference-Header-Content-Length": str(len(head)),
                                                      "Content-Type": "application/octet-stream"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/octet-stream"
    header, data = split_binary(r)
    out = header["outputs"][0]
    assert out == {"name": "logits", "datatype": "FP32", "shape": [4, 10], "parameters": {"binary_data_size": 160}}
    assert data == ref.tobytes()
    # Binary input, JSON output (no binary_data_output).
    head = json.dumps({"inputs": [{"name": "input", "shape": [4, 64], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    r = requests.post(url, data=head + raw, headers={"Inference-Header-Content-Length": str(len(head))},
                      timeout=TIMEOUT)
    assert r.status_code == 200 and "Inference-Header-Content-Length" not in r.headers
    np.testing.assert_array_equal(as_array(r.json()["outputs"][0]), ref)
    # JSON input, the one output asked for by name in binary.
    r = requests.post(url, json={"inputs": [json_request("input", x)],
                                 "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]},
                      timeout=TIMEOUT)
    header, data = split_binary(r)
    assert [o["name"] for o in header["outputs"]] == ["logits"] and data == ref.tobytes()
    # Asked for by name without binary_data: JSON.
    r = requests.post(url, json={"inputs": [json_request("input", x)], "outputs": [{"name": "logits"}]},
                      timeout=TIMEOUT)
    body = r.json()
    assert [o["name"] for o in body["outputs"]] == ["logits"]
    np.testing.assert_array_equal(as_array(body["outputs"][0]), ref)


def test_infer_two_binary_inputs_in_order(cluster):
    """bert_base with input_ids and attention_mask both as binary data, one
    after the other; the mask changes the answer, so the order matters."""
    ids = L.make_input("bert_base", seed=21, batch=2)
    mask = np.ones_like(ids)
    mask[:, 12:] = 0
    head = json.dumps({"inputs": [
        {"name": "input_ids", "shape": [2, L.SEQ], "datatype": "INT64", "parameters": {"binary_data_size": ids.nbytes}},
        {"name": "attention_mask", "shape": [2, L.SEQ], "datatype": "INT64",
         "parameters": {"binary_data_size": mask.nbytes}}],
        "parameters": {"binary_data_output": True}}).encode()
    r = requests.post(cluster.url + "/v2/models/bert_base/infer", data=head + ids.tobytes() + mask.tobytes(),
                      headers={"Inference-Header-Content-Length": str(len(head))}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    header, data = split_binary(r)
    y = np.frombuffer(data, np.float32).reshape(header["outputs"][0]["shape"])
    # pipeps run takes one input; the binary protocol takes both.
    c = T.ServerConn(cluster.lb_ports[0], timeout=TIMEOUT)
    try:
        status, timing, outs = c.infer("bert_base", [ids, mask])
    finally:
        c.close()
    assert status == 0, timing
    np.testing.assert_array_equal(y, outs[0])
    assert not np.array_equal(y, cluster.reference("bert_base", ids))


def post(cluster, model, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(cluster.url + "/v2/models/%s/infer" % model, data=data, timeout=TIMEOUT, **kw)


def test_bad_requests_are_400(cluster):
    x = tiny_input(1, 1)
    good = json_request("input", x)
    cases = [
        ("malformed JSON", '{"inputs": [{"name": "input",', "not a JSON object"),
        ("not an object", "[1, 2]", "not a JSON object"),
        ("no inputs", {"outputs": []}, "'inputs'"),
        ("unknown input", {"inputs": [dict(good, name="x")]}, "unknown input 'x'"),
        ("input twice", {"inputs": [good, good]}, "at most 1 inputs"),
        ("wrong datatype", {"inputs": [dict(good, datatype="INT64")]}, "datatype must be FP32"),
        ("unknown datatype", {"inputs": [dict(good, datatype="BF16")]}, "datatype must be FP32"),
        ("wrong rank", {"inputs": [dict(good, shape=[64])]}, "shape must have 2 dimensions"),
        ("wrong dimension", {"inputs": [dict(good, shape=[1, 63], data=good["data"][:63])]}, "dimension 1 is 63"),
        ("zero batch", {"inputs": [dict(good, shape=[0, 64], data=[])]}, "dimension 0 is 0"),
        ("too few values", {"inputs": [dict(good, data=good["data"][:10])]}, "data has 10 values, the shape says 64"),
        ("too many values", {"inputs": [dict(good, data=good["data"] + [1.0])]}, "more values than the shape"),
        ("a string value", {"inputs": [dict(good, data=["a"] * 64)]}, "not a number"),
        ("no data", {"inputs": [{k: v for k, v in good.items() if k != "data"}]}, "'data' must be an array"),
        ("unknown output", {"inputs": [good], "outputs": [{"name": "nope"}]}, "unknown output 'nope'"),
    ]
    with requests.Session() as s:
        for what, body, says in cases:
            r = s.post(cluster.url + "/v2/models/tiny_mlp/infer",
                       data=body if isinstance(body, str) else json.dumps(body), timeout=TIMEOUT)
            msg = error_of(r, 400)
            assert says in msg, (what, msg)
    ids = L.make_input("bert_base", seed=1)
    # A non-integer INT64, two inputs with different batches.
    msg = error_of(post(cluster, "bert_base", {"inputs": [dict(json_request("input_ids", ids), data=[0.5] * 16)]}),
                   400)
    assert "not an integer" in msg
    two = np.concatenate([ids, ids])
    msg = error_of(post(cluster, "bert_base", {"inputs": [json_request("input_ids", ids),
                                                          json_request("attention_mask", np.ones_like(two))]}), 400)
    assert "batch 2 differs" in msg
    # A value the server refuses (a token id past the vocabulary) is relayed as 400.
    bad = ids.copy()
    bad[0, 3] = 40000
    msg = error_of(post(cluster, "bert_base", {"inputs": [json_request("input_ids", bad)]}), 400)
    assert "input_ids" in msg, msg
    # The balancer still serves.
    r = post(cluster, "tiny_mlp", {"inputs": [good]})
    np.testing.assert_array_equal(as_array(r.json()["outputs"][0]), cluster.reference("tiny_mlp", x))


def test_bad_binary_requests_are_400(cluster):
    x = tiny_input(2, 1)
    raw = x.tobytes()

    def send(inputs, body_tail, header_len=None):
        head = json.dumps({"inputs": inputs}).encode()
        n = len(head) if header_len is None else header_len
        return post(cluster, "tiny_mlp", head + body_tail, headers={"Inference-Header-Content-Length": str(n)})

    spec = {"name": "input", "shape": [1, 64], "datatype": "FP32"}
    msg = error_of(send([dict(spec, parameters={"binary_data_size": 100})], raw), 400)
    assert "binary_data_size must be 256" in msg
    msg = error_of(send([dict(spec, parameters={"binary_data_size": 256})], raw[:200]), 400)
    assert "shorter than binary_data_size" in msg
    msg = error_of(send([dict(spec, parameters={"binary_data_size": 256})], raw + b"xx"), 400)
    assert "2 bytes of binary data left over" in msg
    msg = error_of(send([dict(spec, parameters={"binary_data_size": 256})], raw, header_len=10 ** 6), 400)
    assert "Inference-Header-Content-Length" in msg
    msg = error_of(send([dict(spec, parameters={"binary_data_size": 256})], raw, header_len="12abc"), 400)
    assert "Inference-Header-Content-Length" in msg


def test_unknown_model_and_endpoint_are_404(cluster):
    x = tiny_input(3, 1)
    assert "unknown model" in error_of(post(cluster, "nosuch", {"inputs": [json_request("input", x)]}), 404)
    for path in ("/v2/nothing", "/v3", "/v2/models/tiny_mlp/stats", "/index.html"):
        error_of(requests.get(cluster.url + path, timeout=TIMEOUT), 404)
    assert requests.post(cluster.url + "/v2/models/tiny_mlp/ready", timeout=TIMEOUT).status_code >= 400
    error_of(requests.get(cluster.url + "/v2/models/tiny_mlp/infer", timeout=TIMEOUT), 405)
    error_of(requests.get(cluster.url + "/v2/models/bad%20name", timeout=TIMEOUT), 400)


def test_oversized_body_is_413(empty_lb):
    """--http-max-body 4K: a bigger body is refused on its Content-Length,
    or on the chunk size that takes a chunked body past it (libevent
    answers and closes that connection, before reading the data); the
    balancer goes on serving."""
    host = empty_lb.url[len("http://"):]
    ip, port = host.split(":")
    s = socket.create_connection((ip, int(port)), timeout=TIMEOUT)
    try:
        s.sendall(b"POST /v2/models/tiny_mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 4097\r\n\r\n")
        status, headers, _ = read_http_response(s)
        assert status == 413 and headers.get("connection") == "close", headers
    finally:
        s.close()
    s = socket.create_connection((ip, int(port)), timeout=TIMEOUT)
    try:
        s.sendall(b"POST /v2/models/tiny_mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.sendall(b"800\r\n" + b" " * 0x800 + b"\r\n")  # 2 KiB, then a chunk that would pass 4K
        s.sendall(b"801\r\n")
        status, headers, _ = read_http_response(s)
        assert status == 413
    finally:
        s.close()
    assert requests.get(empty_lb.url + "/v2/health/live", timeout=TIMEOUT).status_code == 200
    # Exactly at the limit it is read and parsed.
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 63}]})
    body += " " * (4096 - len(body))
    r = requests.post(empty_lb.url + "/v2/models/tiny_mlp/infer", data=body, timeout=TIMEOUT)
    assert "63 values" in error_of(r, 400)


def test_http_timeout_closes_stalled_and_idle_connections(empty_lb):
    """--http-timeout: a request whose body stops coming, and a keep-alive
    connection left idle, are closed by the balancer (recv sees the end)."""
    ip, port = empty_lb.url[len("http://"):].split(":")
    stalled = socket.create_connection((ip, int(port)), timeout=TIMEOUT)
    idle = socket.create_connection((ip, int(port)), timeout=TIMEOUT)
    try:
        stalled.sendall(b"POST /v2/models/tiny_mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = read_http_response(idle)
        assert status == 200
        assert stalled.recv(1) == b""
        assert idle.recv(1) == b""
    finally:
        stalled.close()
        idle.close()
    assert requests.get(empty_lb.url + "/v2/health/live", timeout=TIMEOUT).status_code == 200


def test_queue_timeout_is_504(empty_lb):
    x = tiny_input(5, 1)
    r = requests.post(empty_lb.url + "/v2/models/tiny_mlp/infer", json={"inputs": [json_request("input", x)]},
                      timeout=TIMEOUT)
    assert "no server registered" in error_of(r, 504)
    # Unknown models are answered at once, not timed out.
    r = requests.post(empty_lb.url + "/v2/models/nosuch/infer", json={"inputs": [json_request("input", x)]},
                      timeout=TIMEOUT)
    error_of(r, 404)


def http_request_bytes(host, path, body, extra=""):
    return ("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (path, host, len(body), extra)).encode() + body


class Responses:
    """HTTP/1.1 responses read one by one from a raw socket (bytes past one
    response are kept for the next)."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _fill(self, what):
        chunk = self.sock.recv(65536)
        assert chunk, "connection closed " + what
        self.buf += chunk

    def next(self):
        """-> (status, headers dict (lower-case names), body)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill("before the response header")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill("inside the response body")
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body


def read_http_response(sock):
    return Responses(sock).next()


def test_slow_client_does_not_block_others(cluster):
    """One client sends its request body a byte at a time; after each of
    its bytes, another client's whole request is answered. The slow one
    is answered correctly once its last byte is in."""
    x = tiny_input(6, 1)
    body = json.dumps({"id": "slow", "inputs": [json_request("input", x)]}).encode()
    host = cluster.url[len("http://"):]
    ip, port = host.split(":")
    slow = socket.create_connection((ip, int(port)), timeout=TIMEOUT)
    fast_x = tiny_input(7, 1)
    fast_ref = cluster.reference("tiny_mlp", fast_x)
    answered = 0
    try:
        req = http_request_bytes(host, "/v2/models/tiny_mlp/infer", body)
        head_len = len(req) - len(body)
        slow.sendall(req[:head_len])
        with requests.Session() as s:
            for i in range(len(body) - 1):
                slow.sendall(req[head_len + i:head_len + i + 1])
                if i % 8 == 0 or i < 16:
                    r = s.post(cluster.url + "/v2/models/tiny_mlp/infer",
                               json={"inputs": [json_request("input", fast_x)]}, timeout=TIMEOUT)
                    assert r.status_code == 200, r.text
                    np.testing.assert_array_equal(as_array(r.json()["outputs"][0]), fast_ref)
                    answered += 1
        # Not answered before its body is complete.
        slow.setblocking(False)
        with pytest.raises(BlockingIOError):
            slow.recv(1)
        slow.setblocking(True)
        slow.settimeout(TIMEOUT)
        slow.sendall(req[-1:])
        status, headers, got = read_http_response(slow)
    finally:
        slow.close()
    assert answered > len(body) // 8
    assert status == 200, got[:300]
    out = json.loads(got)
    assert out["id"] == "slow"
    np.testing.assert_array_equal(as_array(out["outputs"][0]), cluster.reference("tiny_mlp", x))


def test_slow_headers_and_pipelined_requests(cluster):
    """Headers trickled a byte at a time while another client is served;
    then two requests pipelined on one connection are answered in order."""
    host = cluster.url[len("http://"):]
    ip, port = host.split(":")
    xs = [tiny_input(8, 1), tiny_input(9, 2)]
    bodies = [json.dumps({"id": "p%d" % i, "inputs": [json_request("input", x)]}).encode() for i, x in enumerate(xs)]
    s = socket.create_connection((ip, int(port)), timeout=TIMEOUT)
    try:
        req = http_request_bytes(host, "/v2/models/tiny_mlp/infer", bodies[0])
        head = req[:len(req) - len(bodies[0])]
        for i in range(len(head)):
            s.sendall(head[i:i + 1])
            if i % 16 == 0:
                assert requests.get(cluster.url + "/v2/health/ready", timeout=TIMEOUT).status_code == 200
        s.sendall(bodies[0] + http_request_bytes(host, "/v2/models/tiny_mlp/infer", bodies[1]))
        answers = Responses(s)
        for i, x in enumerate(xs):
            status, _, got = answers.next()
            assert status == 200, got[:300]
            out = json.loads(got)
            assert out["id"] == "p%d" % i
            np.testing.assert_array_equal(as_array(out["outputs"][0]), cluster.reference("tiny_mlp", x))
    finally:
        s.close()


def test_client_that_hangs_up_mid_request(cluster):
    """Clients that close while their request is in the balancer (or
    before their body is complete) do not disturb the others."""
    host = cluster.url[len("http://"):]
    ip, port = host.split(":")
    x = L.make_input("densenet201", seed=11)
    body = json.dumps({"inputs": [json_request("input", x)]}).encode()
    for cut in (len(body), len(body) // 2):
        s = socket.create_connection((ip, int(port)), timeout=TIMEOUT)
        req = http_request_bytes(host, "/v2/models/densenet201/infer", body)
        s.sendall(req[:len(req) - len(body) + cut])
        s.close()
    r = post(cluster, "densenet201", body)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(as_array(r.json()["outputs"][0]), cluster.reference("densenet201", x))


def test_many_concurrent_connections(cluster):
    """32 clients at once, each on its own keep-alive connection."""
    results, errors = [], []
    lock = threading.Lock()

    def client(i):
        try:
            with requests.Session() as s:
                for k in range(3):
                    x = tiny_input(100 + i, 1 + (i + k) % 3)
                    r = s.post(cluster.url + "/v2/models/tiny_mlp/infer",
                               json={"inputs": [json_request("input", x)]}, timeout=TIMEOUT)
                    with lock:
                        results.append((x, r.status_code, r.json()))
        except Exception as e:  # noqa: BLE001 -- reported below
            with lock:
                errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors, errors[:3]
    assert len(results) == 96
    for x, code, body in results:
        assert code == 200, body
        np.testing.assert_array_equal(as_array(body["outputs"][0]), cluster.reference("tiny_mlp", x))


# ---- /metrics and /status.json ---------------------------------------------------


def scrape(cluster):
    """-> {(sample name, frozenset(labels)): value}; every family is pipeps_lb_*."""
    r = requests.get(cluster.url + "/metrics", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers
    out = {}
    for fam in text_string_to_metric_families(r.text):
        assert fam.name.startswith("pipeps_lb_"), fam.name
        assert fam.documentation, fam.name
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_metrics_parse_and_count_requests(cluster):
    before = scrape(cluster)
    names = {n for n, _ in before}
    for family in ("pipeps_lb_requests_total", "pipeps_lb_answers_ok_total", "pipeps_lb_errors_total",
                   "pipeps_lb_queue_timeouts_total", "pipeps_lb_queued_requests", "pipeps_lb_servers",
                   "pipeps_lb_request_duration_seconds_count", "pipeps_lb_queue_seconds_bucket",
                   "pipeps_lb_decisions_total", "pipeps_lb_model_requests_total",
                   "pipeps_lb_model_answers_total", "pipeps_lb_cache_capacity_bytes", "pipeps_lb_cache_used_bytes",
                   "pipeps_lb_server_outstanding_requests"):
        assert family in names, family
    assert before[("pipeps_lb_servers", frozenset())] == 2
    assert before[("pipeps_lb_cache_capacity_bytes", frozenset({("machine", "0")}))] == 1536 << 20
    tiny = frozenset({("model", "tiny_mlp")})
    n = 5
    with requests.Session() as s:
        for i in range(n):
            r = s.post(cluster.url + "/v2/models/tiny_mlp/infer",
                       json={"inputs": [json_request("input", tiny_input(200 + i, 1))]}, timeout=TIMEOUT)
            assert r.status_code == 200
        # One the server refuses (an error), one refused before the balancer (not counted).
        bad = L.make_input("bert_base", seed=3)
        bad[0, 0] = -1
        error_of(s.post(cluster.url + "/v2/models/bert_base/infer", json={"inputs": [json_request("input_ids", bad)]},
                        timeout=TIMEOUT), 400)
        error_of(s.post(cluster.url + "/v2/models/tiny_mlp/infer", data="{", timeout=TIMEOUT), 400)
    after = scrape(cluster)

    def delta(name, labels=frozenset()):
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert delta("pipeps_lb_requests_total") == n + 1
    assert delta("pipeps_lb_answers_ok_total") == n
    assert delta("pipeps_lb_errors_total") == 1
    assert delta("pipeps_lb_model_requests_total", tiny) == n
    assert delta("pipeps_lb_model_errors_total", frozenset({("model", "bert_base")})) == 1
    assert delta("pipeps_lb_request_duration_seconds_count") == n
    assert delta("pipeps_lb_model_request_duration_seconds_count", tiny) == n
    assert delta("pipeps_lb_model_answers_total", frozenset({("model", "tiny_mlp"), ("source", "resident")})) + \
        delta("pipeps_lb_model_answers_total", frozenset({("model", "tiny_mlp"), ("source", "cache")})) + \
        delta("pipeps_lb_model_answers_total", frozenset({("model", "tiny_mlp"), ("source", "storage")})) == n
    inf = frozenset({("le", "+Inf")})
    assert after[("pipeps_lb_request_duration_seconds_bucket", inf)] == \
        after[("pipeps_lb_request_duration_seconds_count", frozenset())]


def test_status_json_shows_the_cluster(cluster):
    x = tiny_input(400, 1)
    assert post(cluster, "tiny_mlp", {"inputs": [json_request("input", x)]}).status_code == 200
    r = requests.get(cluster.url + "/status.json", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    s = r.json()
    assert s["policy"] == "basic"
    caches = {m["cache"] for m in s["machines"]}
    assert caches == {"%s:%d" % (c.host, c.port) for c in cluster.caches}
    servers = {sv["addr"] for m in s["machines"] for sv in m["servers"]}
    assert servers == {"%s:%d" % (d.host, d.port) for d in cluster.servers}
    served = {m["name"]: m for m in s["models"]}
    assert served["tiny_mlp"]["requests"] > 0 and served["tiny_mlp"]["size"] > 0


# ---- the status page in a real browser -----------------------------------------------


def chromium():
    path = shutil.which("chromium")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=900,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed and could not be installed (scripts/deps.sh installs it)")
    return path


CONSOLE_ERROR = re.compile(r"Uncaught|CONSOLE\(\d+\)\].*(error|Error)|:ERROR:CONSOLE|console\.error")


def browse(tmp, url, *extra):
    """Render url in headless Chromium; -> (stdout, console lines from stderr)."""
    profile = tmp / ("chromium-%d" % len(list(tmp.glob("chromium-*"))))
    p = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=%s" % profile,
                        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"] + list(extra) + [url],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    console = [l for l in p.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    return p.stdout, console


class Devtools:
    """Headless Chromium driven over the DevTools protocol on a pipe
    (--remote-debugging-pipe: JSON messages ending in NUL, commands on fd 3,
    answers and events on fd 4): a page kept open in real time, evaluated
    and photographed, its exceptions and console errors collected."""

    def __init__(self, tmp, width=1280, height=1000):
        cmd_r, self.cmd_w = os.pipe()
        self.evt_r, evt_w = os.pipe()

        def child_fds():
            os.dup2(cmd_r, 3)
            os.dup2(evt_w, 4)

        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--user-data-dir=%s" % (tmp / "chromium-devtools"), "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4, cmd_r, evt_w), preexec_fn=child_fds, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(evt_w)
        self.buf, self.next_id, self.errors = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Runtime.enable")
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def _message(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.evt_r, 1 << 20)
            assert chunk, "chromium closed its DevTools pipe"
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if getattr(self, "session", None):
            msg["sessionId"] = self.session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._message()
            if m.get("id") == self.next_id:
                assert "error" not in m, (method, m["error"])
                return m["result"]
            if m.get("method") == "Runtime.exceptionThrown":
                self.errors.append(m["params"]["exceptionDetails"])
            elif m.get("method") == "Runtime.consoleAPICalled" and m["params"]["type"] in ("error", "assert"):
                self.errors.append(m["params"])

    def evaluate(self, expression):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression, what):
        return L.wait_for(lambda: self.evaluate(expression), TIMEOUT, what)

    def close(self):
        os.close(self.cmd_w)
        os.close(self.evt_r)
        self.proc.terminate()
        self.proc.wait(TIMEOUT)


def test_console_errors_are_seen(tmp_path):
    """The checks below are not blind: a page that throws and logs an error
    is reported on stderr, and over the DevTools protocol."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><p id="p">x</p><script>console.error("logged error");'
                    'setTimeout(() => { document.getElementById("p").textContent = "ran"; '
                    'null.boom(); }, 100);</script>')
    dom, console = browse(tmp_path, page.as_uri(), "--dump-dom")
    assert ">ran<" in dom
    assert any("Uncaught" in l for l in console), console
    assert any("logged error" in l for l in console), console
    browser = Devtools(tmp_path)
    try:
        browser.call("Page.navigate", url=page.as_uri())
        browser.wait_for('document.getElementById("p").textContent == "ran"', "the script to run")
        browser.evaluate("0")  # one more round trip: the exception's event comes before its answer
        kinds = ["exceptionId" in e and "exception" or e["type"] for e in browser.errors]
    finally:
        browser.close()
    assert kinds == ["error", "exception"], browser.errors


def test_status_page_in_chromium(cluster, tmp_path):
    # Some traffic first, so the models table has rows and a cache holds models.
    with requests.Session() as s:
        for m, x in (("tiny_mlp", tiny_input(300, 1)), ("densenet201", L.make_input("densenet201", seed=12))):
            r = s.post(cluster.url + "/v2/models/%s/infer" % m, json={"inputs": [json_request("input", x)]},
                       timeout=TIMEOUT)
            assert r.status_code == 200
    r = requests.get(cluster.url + "/", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "<script" in r.text and "src=" not in r.text and "href=" not in r.text  # no external assets
    dom, console = browse(tmp_path, cluster.url + "/", "--dump-dom")
    assert not [l for l in console if CONSOLE_ERROR.search(l)], console
    summary = re.search(r'<div id="summary"[^>]*>(.*?)</div>', dom).group(1)
    assert summary.startswith("policy basic · up "), summary  # not "loading…" nor "cannot reach"
    for c in cluster.caches:
        assert "cache %s:%d" % (c.host, c.port) in dom, dom[:3000]
    for d in cluster.servers:
        assert "server %s:%d" % (d.host, d.port) in dom
    assert "<td>tiny_mlp</td>" in dom and "<td>densenet201</td>" in dom
    # The page kept open under traffic until its second refresh shows request
    # rates: no exception or console error meanwhile; a screenshot of the live
    # cluster (PIPEPS_STATUS_SCREENSHOT=docs/status-page.png refreshes the README's).
    stop, failed = threading.Event(), []

    def traffic(model, x):
        with requests.Session() as s:
            while not stop.is_set():
                r = s.post(cluster.url + "/v2/models/%s/infer" % model,
                           json={"inputs": [json_request("input", x)]}, timeout=TIMEOUT)
                if r.status_code != 200:
                    failed.append(r.text)

    loops = [threading.Thread(target=traffic, args=a) for a in
             (("tiny_mlp", tiny_input(301, 4)), ("densenet201", L.make_input("densenet201", seed=13)),
              ("inception_v3", L.make_input("inception_v3", seed=14)))]
    for t in loops:
        t.start()
    browser = Devtools(tmp_path)
    try:
        browser.call("Page.navigate", url=cluster.url + "/")
        browser.wait_for("Array.from(document.querySelectorAll('#models tbody tr td:nth-child(4)'))"
                         ".some(td => parseFloat(td.textContent) > 0)", "the page to show request rates")
        text = browser.evaluate("document.body.innerText")
        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        assert not browser.errors, browser.errors
    finally:
        stop.set()
        for t in loops:
            t.join(TIMEOUT)
        browser.close()
    assert not failed, failed[:3]
    for c in cluster.caches:
        assert "cache %s:%d" % (c.host, c.port) in text
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 1000)
    if os.environ.get("PIPEPS_STATUS_SCREENSHOT"):
        with open(os.environ["PIPEPS_STATUS_SCREENSHOT"], "wb") as f:
            f.write(png)
