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
    # portable: the same weights are loaded into PyTorch
    res = subprocess.run([os.path.join(BIN, "generate_file"), str(lst), path, str(MAX_BATCH),
                          "--target", "portable"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    k = tm.KvBin(path)
    yield path, k, tmp
    k.close()


@pytest.fixture(scope="module")
def kv_native(kv):
    """The same models in the native format (generate_file's default)."""
    _, _, tmp = kv
    path = str(tmp / "native.kv.bin")
    res = subprocess.run([os.path.join(BIN, "generate_file"), str(tmp / "model_list.txt"), path,
                          str(MAX_BATCH)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    return path


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


def _out(tmp, path, model, batch, tag, extra=(), env=None):
    """Output bytes of `pipeps run` for the deterministic generated input."""
    y = str(tmp / ("%s-%d-%s.npy" % (model, batch, tag)))
    res = subprocess.run([PIPEPS, "run", path, model, "--batch", str(batch), "--output", y,
                          "--repeat", "0"] + list(extra), capture_output=True, text=True,
                         timeout=900, env=env)
    assert res.returncode == 0, res.stderr
    with open(y, "rb") as f:
        data = f.read()
    os.unlink(y)
    return data, res


@pytest.mark.parametrize("model", MODELS)
def test_native_format_bit_identical_to_portable(kv, kv_native, model):
    """Weights prepared offline (BN folded, blocked layouts, used in place)
    give exactly the portable format's bits, resident and pipelined."""
    path, _, tmp = kv
    insp = subprocess.run([PIPEPS, "inspect", kv_native], capture_output=True, text=True)
    assert "format: native, prepared for onednn-" in insp.stdout, insp.stdout
    for batch in (1, 3):
        ref, _ = _out(tmp, path, model, batch, "portable")
        got, res = _out(tmp, kv_native, model, batch, "native")
        assert got == ref, "%s batch %d: native resident output differs" % (model, batch)
        assert "want other layouts" not in res.stderr
        got, _ = _out(tmp, kv_native, model, batch, "native-pipe",
                      ["--pipelined-delay-ms", "10"])  # the same seed: the same input
        assert got == ref, "%s batch %d: native pipelined output differs" % (model, batch)


def test_foreign_target_falls_back_and_repack_restores(kv, tmp_path):
    """A kv.bin prepared for another CPU (here: oneDNN limited to AVX2, whose
    kernels want 8-wide blocks, not AVX-512's 16) is served correctly by
    re-preparing at load, and the log says so once per model; `pipeps
    repack` turns it into this machine's native format, byte for byte what
    generate_file writes here."""
    path, _, tmp = kv
    lst = tmp_path / "list.txt"
    lst.write_text("model_name[, seq_len]\ninception_v3\nbert_base, 16\n")
    env = dict(os.environ, DNNL_MAX_CPU_ISA="AVX2")
    foreign = str(tmp_path / "avx2.kv.bin")
    res = subprocess.run([os.path.join(BIN, "generate_file"), str(lst), foreign, str(MAX_BATCH)],
                         capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr
    insp = subprocess.run([PIPEPS, "inspect", foreign], capture_output=True, text=True)
    assert "prepared for onednn-" in insp.stdout and "/avx2 " in insp.stdout, insp.stdout
    native = str(tmp_path / "native.kv.bin")
    res = subprocess.run([os.path.join(BIN, "generate_file"), str(lst), native, str(MAX_BATCH)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    here = subprocess.run([PIPEPS, "inspect", native], capture_output=True, text=True)
    if "/avx2 " in here.stdout:
        pytest.skip("this machine's kernels are AVX2 ones: nothing foreign to test")
    portable = str(tmp_path / "portable.kv.bin")
    res = subprocess.run([os.path.join(BIN, "generate_file"), str(lst), portable, str(MAX_BATCH),
                          "--target", "portable"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    for model in ("inception_v3", "bert_base"):
        for batch in (1, 3):
            ref, _ = _out(tmp_path, portable, model, batch, "p")
            got, res = _out(tmp_path, foreign, model, batch, "f")
            assert got == ref, "%s batch %d: fallback output differs" % (model, batch)
            warn = [l for l in res.stderr.splitlines() if "want other layouts" in l]
            assert len(warn) == 1 and model in warn[0] and "/avx2" in warn[0], res.stderr
    repacked = str(tmp_path / "repacked.kv.bin")
    res = subprocess.run([PIPEPS, "repack", foreign, repacked], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr
    with open(repacked, "rb") as a, open(native, "rb") as b:
        assert a.read() == b.read(), "repack of a foreign kv.bin differs from generate_file's native"
    got, res = _out(tmp_path, repacked, "bert_base", 3, "r")
    assert "want other layouts" not in res.stderr
