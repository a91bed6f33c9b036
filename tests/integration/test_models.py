"""Black-box tests of generate_file and the five built-in models.

generate_file writes kv.bin; the test reads it back with its own reader
(torch_models.py, written from docs/formats.md), and for every model checks
that:
  - the METADATA blob parses, its batches match the kv.bin records, and the
    parameter batching follows the seed's rule (re-derived here);
  - every parameter of the PyTorch architecture (torchvision's state_dict
    for the CNNs, our BERT/GPT-2 modules) exists with the same shape, and
    the weights load with strict=True;
  - the PyTorch model's outputs at batch 1 and 2 are finite and not
    degenerate (softmax neither one-hot nor uniform, outputs depend on the
    input);
  - the graph itself, interpreted op by op in PyTorch, computes what the
    PyTorch model computes (so the C graph is the architecture it claims).
"""
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import torch_models as tm  # noqa: E402
from pipeps_testlib import BIN  # noqa: E402

torch.set_num_threads(2)
GEN = os.path.join(BIN, "generate_file")
MODELS = ["resnet152", "inception_v3", "densenet201", "bert_base", "gpt2", "tiny_mlp"]
DEFAULT_MAX = 32768000


def generate(tmp, lines, max_batch=None, header="model_name[, seq_len]"):
    lst = os.path.join(tmp, "model_list.txt")
    with open(lst, "w") as f:
        f.write(header + "\n" + "\n".join(lines) + "\n")
    out = os.path.join(tmp, "kv.bin")
    # portable: the test reads the weights back and checks them against the recipe
    argv = [GEN, lst, out] + ([str(max_batch)] if max_batch is not None else []) + ["--target", "portable"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    return res, out


@pytest.fixture(scope="module")
def kv(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("models"))
    res, out = generate(tmp, MODELS + ["densenet201-alter-00000001", "bert_base-alter-00000002, 32"])
    assert res.returncode == 0, res.stderr
    print(res.stdout)
    k = tm.KvBin(out)
    yield k
    k.close()


def expected_batching(meta, limit):
    """The seed's rule, re-derived: {param index: (batch, offset)}, sizes."""
    placed, sizes = {}, []
    for n in meta["nodes"]:
        fresh = [p for p in dict.fromkeys(n["params"]) if p not in placed]
        if not fresh:
            continue
        add = sum(tm._up(4 * prod(meta["params"][p]["dims"])) for p in fresh)
        if not sizes or sizes[-1] + add > limit:
            sizes.append(0)
        for p in fresh:
            placed[p] = (len(sizes) - 1, sizes[-1])
            sizes[-1] += tm._up(4 * prod(meta["params"][p]["dims"]))
    return placed, sizes


def prod(dims):
    r = 1
    for d in dims:
        r *= d
    return r


def check_structure(kv, model, limit):
    meta = kv.metadata(model)
    recs = kv.models[model]
    nb = len(meta["batches"])
    assert set(recs) == {model + "-METADATA"} | {"%s-BATCH-%d" % (model, i) for i in range(nb)}
    assert meta["max_batch_size"] == limit
    for i, b in enumerate(meta["batches"]):
        assert len(kv.batch(model, i)) == b["nbytes"]
    assert kv.totals[model] == sum(b["nbytes"] for b in meta["batches"])
    placed, sizes = expected_batching(meta, limit)
    assert sizes == [b["nbytes"] for b in meta["batches"]]
    for i, p in enumerate(meta["params"]):
        assert (p["batch"], p["offset"]) == placed[i], p["name"]
    # wait_batch: max over own params and the previous node's.
    prev = -1
    for n in meta["nodes"]:
        want = max([prev] + [meta["params"][p]["batch"] for p in n["params"]])
        assert n["wait_batch"] == want, n["name"]
        prev = want
    return meta


def assert_nondegenerate(y, y1, model):
    assert torch.isfinite(y).all()
    assert y.std() > 0.1
    # Batch 1 gives the first sample of batch 2.
    assert torch.allclose(y1[0], y[0], rtol=1e-4, atol=1e-4 * y.abs().max().item())
    # Outputs depend on the input.
    assert (y[0] - y[1]).abs().max() > 1e-2 * y.abs().max()
    p = torch.softmax(y, dim=-1)
    pmax = p.max(dim=-1).values
    classes = y.shape[-1]
    print("%s: output %s std %.3f, softmax max %.4f (uniform %.5f)"
          % (model, tuple(y.shape), y.std().item(), pmax.max().item(), 1.0 / classes))
    if model != "bert_base":  # BERT's output is a hidden state, not logits
        assert pmax.max() < 0.5          # not one-hot
        assert pmax.min() > 2.0 / classes  # not uniform


@pytest.mark.parametrize("model", MODELS)
def test_model(kv, model):
    meta = check_structure(kv, model, DEFAULT_MAX)
    params = tm.load_params(kv, model, meta)
    net = tm.build_torch(model)
    theirs = {k: tuple(v.shape) for k, v in net.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    ours = {k: tuple(v.shape) for k, v in params.items() if not k.startswith("const.")}
    assert sorted(set(theirs) - set(ours)) == []
    assert sorted(set(ours) - set(theirs)) == []
    for k in theirs:
        assert theirs[k] == ours[k], k
    net.load_state_dict(tm.state_dict_for(net, params), strict=True)

    x = tm.make_input(meta, 2)
    with torch.no_grad():
        y = net(x)
        y1 = net(x[:1])
        (g,) = tm.run_graph(meta, params, [x])
    assert list(y.shape) == [2] + meta["outputs"][0]["dims"][1:]
    assert_nondegenerate(y, y1, model)
    rel = ((g - y).abs().max() / y.abs().max()).item()
    print("%s: graph interpreter vs PyTorch model: max rel err %.2e" % (model, rel))
    assert rel < 1e-4


def test_alter_copy_shares_weights(kv):
    base, copy = "densenet201", "densenet201-alter-00000001"
    mb, mc = kv.metadata(base), kv.metadata(copy)
    assert mc["name"] == copy and mb["name"] == base
    mc["name"] = base
    assert mb == mc
    for i in range(len(mb["batches"])):
        assert bytes(kv.batch(base, i)) == bytes(kv.batch(copy, i))


def test_sequence_length_option(kv):
    model = "bert_base-alter-00000002"
    meta = check_structure(kv, model, DEFAULT_MAX)
    assert meta["inputs"][0]["dims"] == [-1, 32]
    assert meta["outputs"][0]["dims"] == [-1, 32, 768]
    net, meta, params = tm.load_model(kv, model)
    base = tm.load_params(kv, "bert_base")
    for k, v in params.items():
        assert torch.equal(v, base[k]), k
    x = tm.make_input(meta, 1)
    with torch.no_grad():
        y = net(x)
        (g,) = tm.run_graph(meta, params, [x])
    assert list(y.shape) == [1, 32, 768]
    assert ((g - y).abs().max() / y.abs().max()).item() < 1e-4


@pytest.mark.parametrize("limit", ["0", "8M"])
def test_max_batch_size(tmp_path, limit):
    res, out = generate(str(tmp_path), ["inception_v3"], max_batch=limit)
    assert res.returncode == 0, res.stderr
    k = tm.KvBin(out)
    try:
        value = 0 if limit == "0" else 8 << 20
        meta = check_structure(k, "inception_v3", value)
        if value == 0:
            nodes_with_params = sum(1 for n in meta["nodes"] if n["params"])
            assert len(meta["batches"]) == nodes_with_params
        else:
            assert all(b["nbytes"] <= value for b in meta["batches"])
    finally:
        k.close()


def test_unknown_model_lists_known(tmp_path):
    res, out = generate(str(tmp_path), ["resnet152", "resnet50"])
    assert res.returncode != 0
    assert "unknown model 'resnet50'" in res.stderr
    for m in MODELS:
        assert m in res.stderr
    assert ":3:" in res.stderr  # names the line
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")


@pytest.mark.parametrize("line,msg", [
    ("resnet152, 128", "takes no sequence length"),
    ("gpt2, 0", "sequence length"),
    ("gpt2, 2000", "out of range"),
    ("gpt2, x", "bad sequence length"),
    ("gpt2, 16, 3", "expected"),
])
def test_bad_lines(tmp_path, line, msg):
    res, out = generate(str(tmp_path), [line])
    assert res.returncode != 0
    assert msg in res.stderr, res.stderr
    assert not os.path.exists(out)


def test_duplicate_and_empty(tmp_path):
    res, _ = generate(str(tmp_path), ["gpt2, 8", "# a comment", "", "gpt2, 16"])
    assert res.returncode != 0 and "listed twice" in res.stderr
    res, _ = generate(str(tmp_path), ["# nothing"])
    assert res.returncode != 0 and "lists no models" in res.stderr


def test_usage():
    res = subprocess.run([GEN], capture_output=True, text=True)
    assert res.returncode == 2 and "usage: generate_file" in res.stderr
