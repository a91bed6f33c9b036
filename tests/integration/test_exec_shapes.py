"""Every model at every shape class against the PyTorch oracle, and what
transformer users send (issue 11).

- The transformers at sequence lengths 1, 2, 3, 17 and 128, batch 1..4, and
  the CNNs at batch 1..4: `pipeps run --input/--output` against
  torch_models.py with the same weights, max relative error <= 1e-3.
  Sequence length 1 at batch 1 is the case where every leading dimension of
  the attention's views is 1 (GPT-2 once returned logits off by 3.1 there).
- bert_base's optional inputs: attention_mask and token_type_ids given
  (`--input2`, `--input3`) against the oracle (HuggingFace's additive
  mask); left out they equal all ones / all zeros bit for bit; a padded
  batch's outputs at each sequence's real positions equal the unpadded
  sequence run alone (at its own sequence length) and the oracle's.
- Token ids outside [0, V), negative ones included, and mask or token type
  values other than 0/1 are refused with an error naming the position.

kv.bin files: bert_base at every sequence length plus the CNNs once for
the module ("bert_base-alter-s17, 17" lines); GPT-2 one sequence length at a
time, deleted after use, so the disk never holds more than ~3 GB.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import torch_models as tm  # noqa: E402
from pipeps_testlib import BIN  # noqa: E402

torch.set_num_threads(2)
PIPEPS = os.path.join(BIN, "pipeps")
SEQS = [1, 2, 3, 17, 128]
BATCHES = [1, 2, 3, 4]
CNNS = ["resnet152", "inception_v3", "densenet201"]


def name(base, seq):
    return "%s-alter-s%d" % (base, seq)


def generate(path, lines):
    lst = path + ".list"
    with open(lst, "w") as f:
        f.write("model_name[, seq_len]\n" + "".join(l + "\n" for l in lines))
    # portable: the test loads the same weights into PyTorch
    res = subprocess.run([os.path.join(BIN, "generate_file"), lst, path, "--target", "portable"],
                         capture_output=True, text=True, timeout=900)
    os.unlink(lst)
    assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def kv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shapes")
    path = str(tmp / "kv.bin")
    generate(path, CNNS + ["%s, %d" % (name("bert_base", s), s) for s in SEQS])
    k = tm.KvBin(path)
    yield path, k, tmp
    k.close()
    os.unlink(path)


def run(path, model, inputs, tmp, tag, extra=()):
    """pipeps run with inputs (list of arrays, None = left out) -> (rc, output, stderr)."""
    args = [PIPEPS, "run", path, model, "--repeat", "0"]
    files = []
    for i, x in enumerate(inputs):
        if x is None:
            continue
        f = str(tmp / ("%s-in%d.npy" % (tag, i)))
        np.save(f, x)
        files.append(f)
        args += ["--input" if i == 0 else "--input%d" % (i + 1), f]
    out = str(tmp / ("%s-out.npy" % tag))
    res = subprocess.run(args + ["--output", out] + list(extra), capture_output=True, text=True,
                         timeout=900)
    y = np.load(out) if res.returncode == 0 else None
    for f in files:
        os.unlink(f)
    if os.path.exists(out):
        os.unlink(out)
    return res.returncode, y, res.stderr


def rel_err(y, ref):
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def check_model_batches(path, k, tmp, model):
    net, meta, _ = tm.load_model(k, model)
    for batch in BATCHES:
        x = tm.make_input(meta, batch, seed=100 + batch)
        rc, y, err = run(path, model, [x.numpy()], tmp, "%s-%d" % (model, batch))
        assert rc == 0, err
        with torch.no_grad():
            ref = net(x).numpy()
        assert y.shape == ref.shape and y.dtype == np.float32
        rel = rel_err(y, ref)
        print("%s batch %d: max relative error vs PyTorch %.2e" % (model, batch, rel))
        assert rel <= 1e-3, "%s batch %d" % (model, batch)
        if meta["outputs"][0]["dims"][-1] == 50257:  # the LM head: the next token agrees
            same = (y.argmax(-1) == ref.argmax(-1)).mean()
            assert same >= 0.99, "%s batch %d: argmax agrees on %.3f" % (model, batch, same)


@pytest.mark.parametrize("model", CNNS)
def test_cnn_batches(kv, model):
    path, k, tmp = kv
    check_model_batches(path, k, tmp, model)


@pytest.mark.parametrize("seq", SEQS)
def test_bert_shapes(kv, seq):
    path, k, tmp = kv
    check_model_batches(path, k, tmp, name("bert_base", seq))


@pytest.mark.parametrize("seq", SEQS)
def test_gpt2_shapes(tmp_path, seq):
    path = str(tmp_path / "gpt2.bin")
    model = name("gpt2", seq)
    generate(path, ["%s, %d" % (model, seq)])
    k = tm.KvBin(path)
    try:
        check_model_batches(path, k, tmp_path, model)
        if seq == 17:
            ids = tm.make_input(k.metadata(model), 2, seed=5).numpy()
            ids[1, 5] = -1
            rc, _, err = run(path, model, [ids], tmp_path, "neg")
            assert rc != 0 and "input 'input_ids' at [1, 5] is -1, out of range [0, 50257)" in err, err
    finally:
        k.close()
        os.unlink(path)


def bert_inputs(lengths, seq, seed):
    """A padded batch: row i has lengths[i] real tokens (random ids, token
    types 0 then 1 from the middle), then padding (id 0, mask 0, type 0)."""
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    ids = torch.zeros(n, seq, dtype=torch.int64)
    mask = torch.zeros(n, seq, dtype=torch.int64)
    types = torch.zeros(n, seq, dtype=torch.int64)
    for i, L in enumerate(lengths):
        ids[i, :L] = torch.randint(1, 30522, (L,), generator=g)
        mask[i, :L] = 1
        types[i, L // 2:L] = 1
    return ids, mask, types


@pytest.mark.parametrize("seq,lengths", [(17, [17, 3, 1, 2]), (128, [128, 17, 3])])
def test_bert_padded_batch(kv, seq, lengths):
    """The padded batch against the oracle, and each sequence's real
    positions against the sequence run alone at its own length."""
    path, k, tmp = kv
    model = name("bert_base", seq)
    net, meta, params = tm.load_model(k, model)
    ids, mask, types = bert_inputs(lengths, seq, seed=seq)
    rc, y, err = run(path, model, [ids.numpy(), mask.numpy(), types.numpy()], tmp, "padded")
    assert rc == 0, err
    with torch.no_grad():
        ref = net(ids, mask, types).numpy()
        if seq == 17:  # the graph interpreter means the same (cheap at 17)
            (g,) = tm.run_graph(meta, params, [ids, mask, types])
            assert rel_err(g.numpy(), ref) < 1e-4
    rel = rel_err(y, ref)
    print("bert_base S=%d padded %s: max relative error vs PyTorch %.2e" % (seq, lengths, rel))
    assert rel <= 1e-3
    scale = np.abs(ref).max()
    for i, L in enumerate(lengths):
        alone_ids, alone_types = ids[i:i + 1, :L], types[i:i + 1, :L]
        rc, alone, err = run(path, name("bert_base", L), [alone_ids.numpy(), None,
                                                           alone_types.numpy()], tmp, "alone")
        assert rc == 0, err
        with torch.no_grad():
            alone_ref = net(alone_ids, None, alone_types).numpy()
        assert rel_err(alone, alone_ref) <= 1e-3
        d = float(np.abs(y[i, :L] - alone[0]).max()) / scale
        print("  row %d (%d real tokens) vs run alone: %.2e" % (i, L, d))
        assert d <= 1e-4, "row %d: padded outputs differ from the sequence run alone" % i
        # The padding really is ignored: other padding ids change nothing there.
    ids2 = ids.clone()
    ids2[mask == 0] = 7
    rc, y2, err = run(path, model, [ids2.numpy(), mask.numpy(), types.numpy()], tmp, "padded2")
    assert rc == 0, err
    for i, L in enumerate(lengths):
        assert np.array_equal(y2[i, :L], y[i, :L])


def test_bert_optional_inputs_default(kv):
    """Left out, attention_mask is all ones and token_type_ids all zeros,
    bit for bit; token types given change the output as the oracle's do."""
    path, k, tmp = kv
    model = name("bert_base", 17)
    net, meta, _ = tm.load_model(k, model)
    assert [(i["name"], i["optional"], i["fill"]) for i in meta["inputs"]] == [
        ("input_ids", 0, 0), ("attention_mask", 1, 1), ("token_type_ids", 1, 0)]
    ids = tm.make_input(meta, 3, seed=9).numpy()
    ones, zeros = np.ones_like(ids), np.zeros_like(ids)
    _, y0, _ = run(path, model, [ids], tmp, "d0")
    rc, y1, err = run(path, model, [ids, ones, zeros], tmp, "d1")
    assert rc == 0, err
    assert y0.tobytes() == y1.tobytes()
    _, y2, _ = run(path, model, [ids, None, zeros], tmp, "d2")
    assert y0.tobytes() == y2.tobytes()
    types = (np.arange(ids.size).reshape(ids.shape) % 2).astype(np.int64)
    rc, y3, err = run(path, model, [ids, None, types], tmp, "d3")
    assert rc == 0, err
    with torch.no_grad():
        ref = net(torch.from_numpy(ids), None, torch.from_numpy(types)).numpy()
    assert rel_err(y3, ref) <= 1e-3
    assert np.abs(y3 - y0).max() > 1e-2  # token types matter


def test_bert_bad_inputs_refused(kv):
    path, k, tmp = kv
    model = name("bert_base", 17)
    ids = tm.make_input(k.metadata(model), 2, seed=4).numpy()
    bad = ids.copy()
    bad[1, 16] = -1
    rc, _, err = run(path, model, [bad], tmp, "neg")
    assert rc != 0 and "input 'input_ids' at [1, 16] is -1, out of range [0, 30522)" in err, err
    bad[1, 16] = 30522
    rc, _, err = run(path, model, [bad], tmp, "big")
    assert rc != 0 and "input 'input_ids' at [1, 16] is 30522" in err, err
    mask = np.ones_like(ids)
    mask[0, 3] = 2
    rc, _, err = run(path, model, [ids, mask], tmp, "mask")
    assert rc != 0 and "input 'attention_mask' at [0, 3] is 2, out of range [0, 2)" in err, err
    mask[0, 3] = -1
    rc, _, err = run(path, model, [ids, mask], tmp, "mask")
    assert rc != 0 and "input 'attention_mask' at [0, 3] is -1" in err, err
    types = np.zeros_like(ids)
    types[1, 0] = 2
    rc, _, err = run(path, model, [ids, None, types], tmp, "types")
    assert rc != 0 and "input 'token_type_ids' at [1, 0] is 2, out of range [0, 2)" in err, err
    # A mask of another batch size or length is refused too.
    rc, _, err = run(path, model, [ids, np.ones((3, 17), dtype=np.int64)], tmp, "mask3")
    assert rc != 0 and "batch size" in err, err
    rc, _, err = run(path, model, [ids, np.ones((2, 16), dtype=np.int64)], tmp, "mask16")
    assert rc != 0 and "attention_mask" in err, err
