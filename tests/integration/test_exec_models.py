"""Black-box tests of the executor through `pipeps run`.

For each of the five built-in models at batch 1 and 2: generate_file writes
kv.bin (with a small max batch size, so models have many parameter batches),
`pipeps run` computes the output for an input .npy, and PyTorch (Debian's
torch 1.13, the architecture from torch_models.py with the same weights
loaded from kv.bin) computes it too: max relative error <= 1e-3.

Pipelining: the same run with parameter batches handed over by a thread
with random pauses (--pipelined-delay-ms) gives bit-identical output.

A kv.bin whose batches do not match the model description (a batch missing,
a batch of the wrong size) is refused with an error.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import kvbin_py  # noqa: E402
import torch_models as tm  # noqa: E402
from pipeps_testlib import BIN  # noqa: E402

torch.set_num_threads(2)
PIPEPS = os.path.join(BIN, "pipeps")
MODELS = ["resnet152", "inception_v3", "densenet201", "bert_base", "gpt2"]
MAX_BATCH = 16 * 1024 * 1024  # smaller than the default: more batches, more gates


@pytest.fixture(scope="module")
def kv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exec")
    lst = tmp / "model_list.txt"
    lst.write_text("model_name[, seq_len]\n" + "\n".join(MODELS) + "\n")
    path = str(tmp / "kv.bin")
    res = subprocess.run([os.path.join(BIN, "generate_file"), str(lst), path, str(MAX_BATCH)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    k = tm.KvBin(path)
    yield path, k, tmp
    k.close()


def run(args, timeout=900):
    res = subprocess.run([PIPEPS, "run"] + args, capture_output=True, text=True, timeout=timeout)
    return res


@pytest.mark.parametrize("model", MODELS)
def test_matches_pytorch_and_pipelined_identical(kv, model):
    path, k, tmp = kv
    net, meta, _ = tm.load_model(k, model)
    assert len(meta["batches"]) > 1
    for batch in (1, 2):
        x = tm.make_input(meta, batch, seed=batch)
        xin = str(tmp / ("%s-%d-in.npy" % (model, batch)))
        yout = str(tmp / ("%s-%d-out.npy" % (model, batch)))
        np.save(xin, x.numpy())
        res = run([path, model, "--input", xin, "--output", yout, "--repeat", "1"])
        assert res.returncode == 0, res.stderr
        assert "warm latency" in res.stdout
        y = np.load(yout)
        with torch.no_grad():
            ref = net(x).numpy()
        assert y.shape == ref.shape and y.dtype == np.float32
        rel = float(np.abs(y - ref).max() / np.abs(ref).max())
        print("%s batch %d: max relative error vs PyTorch %.2e" % (model, batch, rel))
        assert rel <= 1e-3

        # Batches arriving late and at random: the same bits.
        ypipe = str(tmp / ("%s-%d-pipe.npy" % (model, batch)))
        res = run([path, model, "--input", xin, "--output", ypipe, "--repeat", "0",
                   "--pipelined-delay-ms", "15", "--seed", str(batch)])
        assert res.returncode == 0, res.stderr
        assert "waiting for parameters" in res.stdout
        assert open(ypipe, "rb").read() == open(yout, "rb").read(), "pipelined output differs"
        os.unlink(ypipe)
        os.unlink(yout)


def test_generated_input_is_deterministic(kv):
    path, _, tmp = kv
    outs = []
    for i in range(2):
        y = str(tmp / ("gen%d.npy" % i))
        res = run([path, "bert_base", "--batch", "2", "--output", y, "--repeat", "0", "--threads", "1"])
        assert res.returncode == 0, res.stderr
        outs.append(open(y, "rb").read())
    assert outs[0] == outs[1]
    assert np.load(y).shape == (2, 128, 768)


def _rewrite(src, dst, model, mutate):
    """Copy model from kv.bin src into a one-model kv.bin dst after mutate(batches)."""
    k = tm.KvBin(src)
    recs = k.models[model]
    meta = bytes(recs[model + "-METADATA"])
    n = sum(1 for key in recs if "-BATCH-" in key)
    batches = [bytes(recs["%s-BATCH-%d" % (model, i)]) for i in range(n)]
    del recs  # its memoryviews pin the mapping
    k.close()
    batches = mutate(batches)
    kvbin_py.write(dst, [kvbin_py.model(model, batches, meta)])


@pytest.mark.parametrize("case", ["missing_batch", "short_batch", "long_batch"])
def test_mismatched_parameters_rejected(kv, case):
    path, _, tmp = kv
    bad = str(tmp / ("bad-%s.bin" % case))
    model = "densenet201"
    if case == "missing_batch":
        _rewrite(path, bad, model, lambda b: b[:-1])
    elif case == "short_batch":
        _rewrite(path, bad, model, lambda b: b[:1] + [b[1][:-512]] + b[2:])
    else:
        _rewrite(path, bad, model, lambda b: [b[0] + b"\0" * 512] + b[1:])
    res = run([bad, model, "--repeat", "0"])
    assert res.returncode != 0
    assert "run:" in res.stderr and ("batch" in res.stderr or "BATCH" in res.stderr), res.stderr
    os.unlink(bad)


def test_bad_input_and_unknown_model(kv):
    path, _, tmp = kv
    res = run([path, "no_such_model"])
    assert res.returncode != 0 and "no_such_model" in res.stderr
    x = str(tmp / "wrong.npy")
    np.save(x, np.zeros((1, 3, 100, 100), dtype=np.float32))
    res = run([path, "resnet152", "--input", x])
    assert res.returncode != 0 and "input must be" in res.stderr
    np.save(x, np.full((1, 128), 40000, dtype=np.int64))  # token id beyond the vocabulary
    res = run([path, "bert_base", "--input", x])
    assert res.returncode != 0 and "range" in res.stderr
    res = subprocess.run([PIPEPS, "run"], capture_output=True, text=True)
    assert res.returncode == 2 and "usage" in res.stderr
