"""Bad .onnx files through `pipeps import` and generate_file: each is
refused with a non-zero exit and a message naming the problem, never a
crash (no signal, no sanitizer report). The files are built here with
onnx.helper from a small valid model (Conv + Relu + MatMul with
initializers) so each case breaks exactly one thing.

Also the > 2 GB case: a MatMul weight stored as external data at an offset
past 2^31 in a sparse file (no real disk used), read by `pipeps import`,
imported by generate_file and run, equal to numpy."""
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipeps_testlib as T  # noqa: E402

OPSET = 17


def sanitizer_report(text):
    return any(s in text for s in ("AddressSanitizer", "runtime error:", "LeakSanitizer",
                                   "UndefinedBehaviorSanitizer"))


def run(args, timeout=120):
    p = subprocess.run([str(a) for a in args], capture_output=True, timeout=timeout)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def valid_graph(weight_w=None):
    """x [N, 3, 8, 8] -> Conv(W, B) -> Relu -> Flatten -> MatMul(M) -> y [N, 4]."""
    rng = np.random.RandomState(0)
    w = weight_w if weight_w is not None else rng.randn(2, 3, 3, 3).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(rng.randn(2).astype(np.float32), "B"),
             numpy_helper.from_array(rng.randn(2 * 6 * 6, 4).astype(np.float32), "M")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv0"),
             helper.make_node("Relu", ["c"], ["r"], name="relu0"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat0"),
             helper.make_node("MatMul", ["f", "M"], ["y"], name="mm0")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    return nodes, inits, [x], [y]


def make_model(nodes, inits, inputs, outputs, check=True):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pipeps-test")
    m.ir_version = 8
    if check:
        onnx.checker.check_model(m)
    return m


def write(tmp, name, model_or_bytes):
    p = tmp / name
    if isinstance(model_or_bytes, bytes):
        p.write_bytes(model_or_bytes)
    else:
        p.write_bytes(model_or_bytes.SerializeToString())
    return p


def refused(tmp, path, *must_mention, seq=None):
    """`pipeps import` and generate_file both refuse path: non-zero exit (not
    a signal), no sanitizer report, and each of must_mention (case
    insensitive) in the message. Returns the two messages."""
    texts = []
    args = [T.binary("pipeps"), "import", path] + (["--seq", str(seq)] if seq else [])
    rc, text = run(args)
    assert rc > 0, "pipeps import %s: exit %d (a signal if negative)\n%s" % (path, rc, text)
    assert not sanitizer_report(text), text
    texts.append(text)
    lst = tmp / ("list-%s.txt" % os.path.basename(str(path)))
    lst.write_text("model_name\nm, file=%s%s\n" % (os.path.abspath(str(path)), (", seq=%d" % seq) if seq else ""))
    rc, text = run([T.binary("generate_file"), lst, tmp / "kv.bin", "--quiet"])
    assert rc > 0, "generate_file on %s: exit %d\n%s" % (path, rc, text)
    assert not sanitizer_report(text), text
    texts.append(text)
    for text in texts:
        assert text.strip(), "no message"
        if os.environ.get("PIPEPS_SHOW_MESSAGES"):
            print("\n%s: %s" % (os.path.basename(str(path)), text.strip()))
        for word in must_mention:
            assert word.lower() in text.lower(), "message does not mention %r:\n%s" % (word, text)
    return texts


def test_the_valid_model_imports_runs_and_matches_numpy(tmp_path):
    """The base of every case below is itself fine (so each refusal is due to
    the one thing broken)."""
    p = write(tmp_path, "ok.onnx", make_model(*valid_graph()))
    rc, text = run([T.binary("pipeps"), "import", p])
    assert rc == 0, text
    (tmp_path / "list.txt").write_text("model_name\nm, file=ok.onnx\n")
    rc, text = run([T.binary("generate_file"), tmp_path / "list.txt", tmp_path / "kv.bin", "--quiet"])
    assert rc == 0, text
    x = np.random.RandomState(1).randn(2, 3, 8, 8).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rc, text = run([T.binary("pipeps"), "run", tmp_path / "kv.bin", "m", "--input", tmp_path / "x.npy",
                    "--output", tmp_path / "y.npy", "--repeat", "0"])
    assert rc == 0, text
    import torch
    nodes, inits, _, _ = valid_graph()
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in inits}
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), w["W"], w["B"])).flatten(1) @ w["M"]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("keep", [0, 1, 7, 40, 0.5, 0.9, -1])
def test_truncated_file(tmp_path, keep):
    data = make_model(*valid_graph()).SerializeToString()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    p = write(tmp_path, "trunc.onnx", data[:n])
    refused(tmp_path, p, "trunc.onnx")


def test_corrupted_bytes_never_crash(tmp_path):
    """Single-byte corruptions all over the file: whatever the importer
    makes of each (some still parse), it exits cleanly."""
    data = bytearray(make_model(*valid_graph()).SerializeToString())
    rng = np.random.RandomState(7)
    positions = sorted(set(rng.randint(0, len(data), size=40).tolist()) | set(range(0, 24)))
    for i, pos in enumerate(positions):
        bad = bytearray(data)
        bad[pos] ^= 0xFF if i % 2 else 0x80 | rng.randint(1, 127)
        p = write(tmp_path, "corrupt.onnx", bytes(bad))
        rc, text = run([T.binary("pipeps"), "import", p])
        assert rc >= 0 and not sanitizer_report(text), "byte %d: rc %d\n%s" % (pos, rc, text)
        if rc != 0:
            assert text.strip(), "byte %d: refused without a message" % pos


def test_garbage_length_prefix_is_refused(tmp_path):
    """A field whose length prefix runs past the end of the file."""
    data = make_model(*valid_graph()).SerializeToString()
    bad = data[:2] + b"\xff\xff\xff\xff\x0f" + data[2:]
    refused(tmp_path, write(tmp_path, "badlen.onnx", bad), "badlen.onnx")


def test_not_an_onnx_file(tmp_path):
    refused(tmp_path, write(tmp_path, "text.onnx", b"this is not a protobuf\n" * 10), "text.onnx")


def test_graph_with_a_cycle(tmp_path):
    nodes, inits, ins, outs = valid_graph()
    # relu0 now reads the MatMul's output: conv0 -> relu0 -> flat0 -> mm0 -> relu0
    nodes = [helper.make_node("Add", ["x", "back"], ["x2"], name="add_cycle"),
             helper.make_node("Relu", ["x2"], ["back"], name="relu_cycle"),
             helper.make_node("Conv", ["back", "W", "B"], ["c"], name="conv0")] + nodes[1:]
    refused(tmp_path, write(tmp_path, "cycle.onnx", make_model(nodes, inits, ins, outs, check=False)), "cycle")


def test_missing_initializer(tmp_path):
    nodes, inits, ins, outs = valid_graph()
    inits = [i for i in inits if i.name != "M"]
    refused(tmp_path, write(tmp_path, "noinit.onnx", make_model(nodes, inits, ins, outs, check=False)), "'M'")


def test_dangling_output_name(tmp_path):
    nodes, inits, ins, _ = valid_graph()
    outs = [helper.make_tensor_value_info("nobody_makes_this", TensorProto.FLOAT, ["batch", 4])]
    refused(tmp_path, write(tmp_path, "dangling.onnx", make_model(nodes, inits, ins, outs, check=False)),
            "nobody_makes_this")


def test_dangling_node_input(tmp_path):
    nodes, inits, ins, outs = valid_graph()
    nodes[2] = helper.make_node("Flatten", ["ghost_value"], ["f"], name="flat0")
    refused(tmp_path, write(tmp_path, "ghost.onnx", make_model(nodes, inits, ins, outs, check=False)),
            "ghost_value")


@pytest.mark.parametrize("dims", [[1, 3, 1 << 40, 1 << 40], [1, 3, -5, 8], [1] * 40])
def test_absurd_input_dims(tmp_path, dims):
    nodes, inits, _, outs = valid_graph()
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
    refused(tmp_path, write(tmp_path, "dims.onnx", make_model(nodes, inits, ins, outs, check=False)), "'x'")


def test_initializer_dims_disagree_with_its_data(tmp_path):
    nodes, inits, ins, outs = valid_graph()
    t = onnx.TensorProto()
    t.name, t.data_type = "M", TensorProto.FLOAT
    t.dims.extend([1 << 31, 1 << 31])
    t.raw_data = np.zeros(8, np.float32).tobytes()
    inits = [i for i in inits if i.name != "M"] + [t]
    refused(tmp_path, write(tmp_path, "initdims.onnx", make_model(nodes, inits, ins, outs, check=False)), "M")


def test_unsupported_op_names_node_op_and_opset(tmp_path):
    nodes, inits, ins, outs = valid_graph()
    nodes.insert(2, helper.make_node("Hardmax", ["r"], ["h"], name="weird_node"))
    nodes[3] = helper.make_node("Flatten", ["h"], ["f"], name="flat0")
    p = write(tmp_path, "unsup.onnx", make_model(nodes, inits, ins, outs))
    rc, text = run([T.binary("pipeps"), "import", p])
    assert rc == 1, "pipeps import: exit %d\n%s" % (rc, text)
    assert "weird_node" in text and "Hardmax" in text and str(OPSET) in text, text
    assert not sanitizer_report(text)
    refused(tmp_path, p, "weird_node", "Hardmax")


def test_unknown_domain_is_unsupported(tmp_path):
    nodes, inits, ins, outs = valid_graph()
    nodes[1] = helper.make_node("Relu", ["c"], ["r"], name="custom_relu", domain="com.example")
    m = make_model(nodes, inits, ins, outs, check=False)
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    refused(tmp_path, write(tmp_path, "domain.onnx", m), "custom_relu")


# ---- external data ------------------------------------------------------------

def external(tensor_name, location, offset=None, length=None, dims=(72, 4)):
    t = onnx.TensorProto()
    t.name, t.data_type = tensor_name, TensorProto.FLOAT
    t.dims.extend(dims)
    t.data_location = TensorProto.EXTERNAL
    entries = [("location", location)]
    if offset is not None:
        entries.append(("offset", str(offset)))
    if length is not None:
        entries.append(("length", str(length)))
    for k, v in entries:
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def model_with_external_m(tmp, location, offset=None, length=None, dims=(72, 4), folder="model"):
    nodes, inits, ins, outs = valid_graph()
    inits = [i for i in inits if i.name != "M"] + [external("M", location, offset, length, dims)]
    d = tmp / folder
    d.mkdir(exist_ok=True)
    return write(d, "m.onnx", make_model(nodes, inits, ins, outs, check=False))


def test_external_data_inside_the_folder_works(tmp_path):
    m = np.random.RandomState(0).randn(72, 4).astype(np.float32)
    p = model_with_external_m(tmp_path, "weights.bin", offset=4096, length=m.nbytes)
    with open(tmp_path / "model" / "weights.bin", "wb") as f:
        f.write(b"\0" * 4096 + m.tobytes())
    rc, text = run([T.binary("pipeps"), "import", p])
    assert rc == 0, text


@pytest.mark.parametrize("where", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin", "link.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, where):
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    p = model_with_external_m(tmp_path, where, offset=0, length=72 * 4 * 4)
    (tmp_path / "model" / "sub").mkdir()
    os.symlink(str(tmp_path / "outside.bin"), str(tmp_path / "model" / "link.bin"))
    refused(tmp_path, p, "'M'", where)


@pytest.mark.parametrize("offset,length", [(1 << 20, 1152), (0, 1 << 20), (100, 1152), (1 << 62, 1152)])
def test_external_data_beyond_the_file_is_refused(tmp_path, offset, length):
    p = model_with_external_m(tmp_path, "weights.bin", offset=offset, length=length)
    (tmp_path / "model" / "weights.bin").write_bytes(b"\0" * 1200)
    refused(tmp_path, p, "'M'")


def test_external_data_missing_file(tmp_path):
    p = model_with_external_m(tmp_path, "nothere.bin", offset=0, length=1152)
    refused(tmp_path, p, "nothere.bin")


def test_external_weight_past_2_gib_in_a_sparse_file(tmp_path):
    """A MatMul weight at offset 2^31 + 4096 of a sparse file: read, imported
    and run (the file's apparent size is > 2 GiB, its blocks a few KiB)."""
    rng = np.random.RandomState(3)
    w = rng.randn(16, 8).astype(np.float32)
    offset = (1 << 31) + 4096
    d = tmp_path / "big"
    d.mkdir()
    with open(d / "weights.bin", "wb") as f:
        f.seek(offset)
        f.write(w.tobytes())
        f.truncate(offset + w.nbytes + 4096)
    st = os.stat(d / "weights.bin")
    assert st.st_size > (1 << 31) and st.st_blocks * 512 < (1 << 20), "the file is not sparse here"
    t = external("W", "weights.bin", offset, w.nbytes, dims=(16, 8))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], initializer=[t])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    (d / "m.onnx").write_bytes(m.SerializeToString())
    rc, text = run([T.binary("pipeps"), "import", d / "m.onnx"])
    assert rc == 0 and not sanitizer_report(text), text
    (d / "list.txt").write_text("model_name\nbig, file=m.onnx\n")
    rc, text = run([T.binary("generate_file"), d / "list.txt", tmp_path / "kv.bin", "--quiet"])
    assert rc == 0, text
    assert os.path.getsize(tmp_path / "kv.bin") < (1 << 20)
    x = rng.randn(3, 16).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rc, text = run([T.binary("pipeps"), "run", tmp_path / "kv.bin", "big", "--input", tmp_path / "x.npy",
                    "--output", tmp_path / "y.npy", "--repeat", "0"])
    assert rc == 0, text
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), x @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["Gather", "Concat", "Unsqueeze", "Reshape", "MatMul"])
def test_node_with_too_few_operands(tmp_path, op):
    """A node missing a required operand (found by fuzz_onnx_import: a Gather
    on a shape with no indices) is refused naming the node, in the folding
    path (operands computed from Shape) and the compute path alike."""
    ins = {"Gather": ["s"], "Concat": [], "Unsqueeze": ["s"], "Reshape": ["x"], "MatMul": ["x"]}[op]
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape0"),
             helper.make_node(op, ins, ["v"], name="short_node"),
             helper.make_node("Relu", ["x"], ["y"], name="relu0")]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])]
    if op in ("Reshape", "MatMul"):
        nodes[2] = helper.make_node("Relu", ["v"], ["y"], name="relu0")
    else:
        nodes.insert(2, helper.make_node("Reshape", ["x", "v"], ["xr"], name="reshape0"))
        nodes[3] = helper.make_node("Relu", ["xr"], ["y"], name="relu0")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    m = make_model(nodes, [], [x], outs, check=False)
    refused(tmp_path, write(tmp_path, "short.onnx", m), "short_node")
