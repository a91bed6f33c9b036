"""ONNX backend node tests (Debian's libonnx-testdata) through the importer
and the executor: for every node test whose operators PipePS claims, the
model goes through a model list (`t, file=/abs/model.onnx`), generate_file
and `pipeps run`, and each output is compared with the expected one (rtol
1e-3, atol 1e-5, same shape).

A test outside the claim is skipped with the reason class that puts it out
of scope, decided from the model alone (an operator not claimed, a bool or
string tensor, a rank-0 input, training mode, ...). An operand PipePS
keeps as an attribute (Reshape's shape, Slice's starts, Resize's sizes,
...) is a runtime input in the node tests and a constant in exported
models: it is frozen into an initializer with the data set's value before
import. Everything inside the claim runs, and a wrong value,
a refused import or a crash fails.

Script mode writes the conformance table (docs/onnx-conformance.md):
    /usr/bin/python3 tests/integration/test_onnx_conformance.py --table docs/onnx-conformance.md
runs every claimed test (two at a time) and lists, per operator, passed /
total and why each other test failed or was skipped.

The easy thing to get wrong: a claim derived from the importer itself can
never fail, so the claim is the list below; test_claim_matches_the_importer
checks that `pipeps import --json` agrees with it."""
import concurrent.futures
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipeps_testlib as T  # noqa: E402

NODE_DIR = "/usr/include/onnx/backend/test/data/node"
RTOL, ATOL = 1e-3, 1e-5
MAX_IO = 4  # pipeps run takes --input..--input4, --output..--output4

# The ONNX operators (default domain) the importer maps to graph ops or
# folds away (docs/onnx.md). Kept in sync with src/onnx/onnx_import.c by
# test_claim_matches_the_importer.
CLAIMED_OPS = {
    # existing graph ops
    "Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Add",
    "Sub", "Mul", "Div", "Gemm", "MatMul", "Flatten", "Reshape", "Transpose", "Gather", "LayerNormalization",
    "Softmax", "Gelu", "Erf", "Tanh", "Where", "Slice", "Sigmoid", "Sqrt", "Pow", "Identity",
    # ops added for ONNX import
    "Constant", "Neg", "Abs", "Exp", "Log", "Reciprocal", "LeakyRelu", "PRelu", "Clip", "HardSigmoid",
    "HardSwish", "Elu", "Selu", "Softplus", "LogSoftmax", "InstanceNormalization", "GlobalMaxPool",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "Expand", "Pad", "Resize", "ConvTranspose", "Cast",
    "Max", "Min", "Tile",
    # rewritten or folded at import
    "Split", "Squeeze", "Unsqueeze", "Dropout", "Shape", "ConstantOfShape", "Range",
}

# Operand positions the graph form takes as attributes or parameters: they
# are constants (initializers or folded) in exported models; the node tests
# feed them as runtime inputs, so the test freezes them (frozen_inputs).
CONSTANT_OPERANDS = {
    "Reshape": {1}, "Expand": {1}, "Slice": {1, 2, 3, 4}, "Pad": {1, 2, 3}, "Tile": {1},
    "Resize": {1, 2, 3}, "Squeeze": {1}, "Unsqueeze": {1}, "Split": {1}, "ReduceSum": {1},
    "ReduceMean": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "Clip": {1, 2}, "ConstantOfShape": {0},
    "Range": {0, 1, 2}, "Dropout": {1, 2},
    # weights: parameters of their consumer in the graph form
    "Conv": {1, 2}, "ConvTranspose": {1, 2}, "BatchNormalization": {1, 2, 3, 4},
    "InstanceNormalization": {1, 2}, "LayerNormalization": {1, 2}, "Gemm": {1, 2},
}

DTYPE_NAMES = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}


def snake(op):
    """ONNX test names spell an op in snake case: LayerNormalization ->
    layer_normalization, ReduceSum -> reduce_sum, PRelu -> prelu."""
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", op)
    return s.lower()


_ALL_OPS = sorted({s.name for s in onnx.defs.get_all_schemas()} | CLAIMED_OPS, key=lambda o: -len(snake(o)))
_SPECIAL = {"prelu": "PRelu", "leakyrelu": "LeakyRelu", "hardswish": "HardSwish", "hardsigmoid": "HardSigmoid",
            "logsoftmax": "LogSoftmax", "globalaveragepool": "GlobalAveragePool", "globalmaxpool": "GlobalMaxPool",
            "averagepool": "AveragePool", "maxpool": "MaxPool", "convtranspose": "ConvTranspose",
            "instancenorm": "InstanceNormalization", "batchnorm": "BatchNormalization",
            "layer_normalization": "LayerNormalization", "matmul": "MatMul", "constantofshape": "ConstantOfShape",
            "reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax",
            "reduce_min": "ReduceMin", "softplus": "Softplus", "basic_conv": "Conv", "conv": "Conv",
            "gather": "Gather", "gemm": "Gemm", "resize": "Resize", "clip": "Clip", "pow": "Pow",
            "constant_pad": "Pad", "mvn": "MeanVarianceNormalization", "nllloss": "NegativeLogLikelihoodLoss",
            "sce": "SoftmaxCrossEntropyLoss"}


def node_test_operator(name, model):
    """The operator a node test is about (its table row): the op whose name
    (underscores aside) is the longest prefix of the test name
    (test_blackmanwindow_expanded -> BlackmanWindow, test_castlike_... ->
    CastLike), else the first node's op."""
    base = name[len("test_"):].replace("_", "")
    best = None
    for op in _ALL_OPS:
        key = op.lower()
        if base.startswith(key) and (best is None or len(key) > len(best.lower())):
            best = op
    for key, op in _SPECIAL.items():
        k = key.replace("_", "")
        if base.startswith(k) and (best is None or len(k) > len(best)):
            best = op
    if best:
        return best
    return model.graph.node[0].op_type if model.graph.node else "?"


def _value_type(vi):
    t = vi.type
    kind = t.WhichOneof("value")
    if kind != "tensor_type":
        return kind or "unknown", None
    tt = t.tensor_type
    rank = len(tt.shape.dim) if tt.HasField("shape") else None
    return DTYPE_NAMES.get(tt.elem_type, str(tt.elem_type)), rank


def _all_nodes(graph):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            for g in a.graphs:
                yield from _all_nodes(g)


def _leading_dim(vi):
    dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
    if not dims:
        return None
    return dims[0].dim_value if dims[0].HasField("dim_value") else dims[0].dim_param


def frozen_inputs(model):
    """Names of the runtime inputs the test turns into initializers:
    - those feeding an operand the graph form keeps as an attribute
      (Reshape's shape, Slice's starts, Resize's sizes, ...) or a parameter
      (Conv's weights, BatchNormalization's statistics, ...): constants in
      exported models;
    - float inputs after the first whose first dimension is not the first
      input's: PipePS batches every input along dim 0, so a broadcast
      operand of another leading size ([5] added to [3, 4, 5]) can only be
      a constant in a servable model."""
    g = model.graph
    init = {i.name for i in g.initializer}
    names = set()
    for n in g.node:
        for pos in CONSTANT_OPERANDS.get(n.op_type, ()):
            if pos < len(n.input) and n.input[pos] and n.input[pos] not in init:
                names.add(n.input[pos])
    runtime = [vi for vi in g.input if vi.name not in init and vi.name not in names]
    if runtime:
        batch = _leading_dim(runtime[0])
        for vi in runtime[1:]:
            if len(vi.type.tensor_type.shape.dim) == 0 or _leading_dim(vi) != batch:
                names.add(vi.name)
    graph_inputs = {vi.name for vi in g.input}
    return names & graph_inputs


# Where a runtime int64 input may go: PipePS computes in float32; int64
# inputs are token ids / indices.
INT64_CONSUMERS = {("Gather", 1), ("Cast", 0)}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def attribute_out_of_scope(node):
    """An attribute value outside what the graph form takes (docs/onnx.md)."""
    if node.op_type == "Resize":
        mode = _attr(node, "mode", b"nearest")
        if mode not in (b"nearest", b"linear"):
            return "attribute out of scope: Resize mode %s" % mode.decode()
        coord = _attr(node, "coordinate_transformation_mode", b"half_pixel")
        if coord not in (b"half_pixel", b"asymmetric", b"align_corners", b"pytorch_half_pixel"):
            return "attribute out of scope: Resize coordinate_transformation_mode %s" % coord.decode()
        if _attr(node, "antialias", 0):
            return "attribute out of scope: Resize antialias"
        if _attr(node, "keep_aspect_ratio_policy", b"stretch") != b"stretch":
            return "attribute out of scope: Resize keep_aspect_ratio_policy"
        if _attr(node, "exclude_outside", 0):
            return "attribute out of scope: Resize exclude_outside"
    if node.op_type == "Pad" and _attr(node, "mode", b"constant") not in (b"constant", b"reflect", b"edge"):
        return "attribute out of scope: Pad mode %s" % _attr(node, "mode").decode()
    return None


def out_of_scope(model, name):
    """The reason class that puts a node test outside PipePS's claim, or None."""
    g = model.graph
    init = {i.name for i in g.initializer}
    ops = []
    for n in _all_nodes(g):
        if n.domain not in ("", "ai.onnx"):
            return "operator not claimed: %s (domain %s)" % (n.op_type, n.domain)
        ops.append(n.op_type)
    missing = sorted({o for o in ops if o not in CLAIMED_OPS})
    if missing:
        return "operator not claimed: " + ", ".join(missing)
    if "training" in name:
        return "training mode"
    for n in g.node:
        if n.op_type == "BatchNormalization":
            for a in n.attribute:
                if a.name == "training_mode" and a.i:
                    return "training mode"
            if len([o for o in n.output if o]) > 1:
                return "training mode"
    for n in g.node:
        why = attribute_out_of_scope(n)
        if why:
            return why
    frozen = frozen_inputs(model)
    runtime_inputs = [i for i in g.input if i.name not in init and i.name not in frozen]
    for vi in runtime_inputs:
        dtype, rank = _value_type(vi)
        if dtype in ("sequence_type", "optional_type", "map_type", "sparse_tensor_type"):
            return "%s input" % dtype.replace("_type", "")
        if dtype == "string":
            return "string tensor"
        if dtype not in ("float", "int64"):
            return "%s input" % dtype
        if rank == 0:
            return "rank-0 input"
    int64_inputs = {vi.name for vi in runtime_inputs if _value_type(vi)[0] == "int64"}
    for n in g.node:
        for pos, name in enumerate(n.input):
            if name in int64_inputs and (n.op_type, pos) not in INT64_CONSUMERS:
                return "int64 operand of %s (int64 inputs are indices; PipePS computes in float32)" % n.op_type
    for vi in g.output:
        dtype, _ = _value_type(vi)
        if dtype == "string":
            return "string tensor"
        if dtype != "float":
            return "%s output" % dtype
    if len(runtime_inputs) > MAX_IO or len(g.output) > MAX_IO:
        return "more than %d inputs or outputs" % MAX_IO
    if not runtime_inputs:
        return "no runtime input (a constant model)"
    return None


def data_out_of_scope(model, ins):
    """Scope decided by a data set's values: a Resize scale that is not
    output / input size (the graph form keeps Resize's output sizes, so the
    coordinate mapping uses output / input; ONNX maps with the scale)."""
    g = model.graph
    init = {i.name for i in g.initializer}
    values = dict(zip([vi.name for vi in g.input if vi.name not in init], ins))
    for n in g.node:
        if n.op_type != "Resize" or len(n.input) < 3 or n.input[2] not in values or n.input[0] not in values:
            continue
        scales, shape = values[n.input[2]], values[n.input[0]].shape
        if scales.size != len(shape):
            continue
        for size, scale in zip(shape, scales.tolist()):
            out = int(np.floor(size * scale))
            if abs(out / size - scale) > 1e-6:
                return "attribute out of scope: Resize scale %g is not output/input size (%d/%d)" % (scale, out, size)
    return None


def load_case(test_dir):
    name = os.path.basename(test_dir.rstrip("/"))
    model = onnx.load(os.path.join(test_dir, "model.onnx"), load_external_data=False)
    return name, model


def _read_pb(path):
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def data_sets(test_dir):
    out = []
    for ds in sorted(glob.glob(os.path.join(test_dir, "test_data_set_*"))):
        ins = [_read_pb(p) for p in sorted(glob.glob(os.path.join(ds, "input_*.pb")),
                                            key=lambda p: int(re.findall(r"(\d+)\.pb$", p)[0]))]
        outs = [_read_pb(p) for p in sorted(glob.glob(os.path.join(ds, "output_*.pb")),
                                             key=lambda p: int(re.findall(r"(\d+)\.pb$", p)[0]))]
        out.append((ds, ins, outs))
    return out


def _sanitizer_report(text):
    return "ERROR: AddressSanitizer" in text or "runtime error:" in text or "ERROR: LeakSanitizer" in text


def _run(args, timeout=300):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def _first_error_line(text):
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:200]
    return "(no message)"


def _generate(model_path, work, tag):
    """generate_file on a one-model list; returns (kv path, None) or (None, reason)."""
    lst = os.path.join(work, "models-%s.txt" % tag)
    with open(lst, "w") as f:
        f.write("model_name\nt, file=%s\n" % os.path.abspath(model_path))
    kv = os.path.join(work, "kv-%s.bin" % tag)
    rc, text = _run([T.binary("generate_file"), lst, kv, "0", "--quiet"])
    if rc < 0 or _sanitizer_report(text):
        return None, "crash in generate_file (rc %d): %s" % (rc, _first_error_line(text))
    if rc != 0:
        return None, "import refused: " + _first_error_line(text)
    return kv, None


def _freeze(model, frozen, values, path):
    """model with the frozen inputs turned into initializers holding values."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [vi for vi in m.graph.input if vi.name not in frozen]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for name, v in values.items():
        m.graph.initializer.append(numpy_helper.from_array(v, name))
    onnx.save(m, path)


def run_case(test_dir, work):
    """Runs one node test; returns (ok, reason) where reason classifies a
    failure ('import refused: ...', 'wrong values: ...', 'crash: ...'),
    with the paths of the test and of its work folder cut out."""
    ok, reason = _run_case(test_dir, work)
    for prefix in (os.path.abspath(work) + "/", os.path.abspath(test_dir).rstrip("/") + "/"):
        reason = reason.replace(prefix, "")
    return ok, reason


def _run_case(test_dir, work):
    os.makedirs(work, exist_ok=True)
    model_path = os.path.join(test_dir, "model.onnx")
    model = onnx.load(model_path, load_external_data=False)
    frozen = frozen_inputs(model)
    input_names = [vi.name for vi in model.graph.input if vi.name not in {i.name for i in model.graph.initializer}]
    kv = None
    if not frozen:
        kv, why = _generate(model_path, work, "all")
        if not kv:
            return False, why
    for k, (ds, ins, outs) in enumerate(data_sets(test_dir)):
        if frozen:
            values = {n: x for n, x in zip(input_names, ins) if n in frozen}
            ins = [x for n, x in zip(input_names, ins) if n not in frozen]
            frozen_path = os.path.join(work, "model-%d.onnx" % k)
            _freeze(model, frozen, values, frozen_path)
            kv, why = _generate(frozen_path, work, str(k))
            if not kv:
                return False, why
        args = [T.binary("pipeps"), "run", kv, "t", "--repeat", "0"]
        for i, x in enumerate(ins):
            if x.dtype not in (np.float32, np.int64):
                return False, "input %d of %s is %s" % (i, ds, x.dtype)
            p = os.path.join(work, "in%d-%d.npy" % (k, i))
            np.save(p, np.ascontiguousarray(x))
            args += ["--input" if i == 0 else "--input%d" % (i + 1), p]
        ypaths = []
        for i in range(len(outs)):
            p = os.path.join(work, "out%d-%d.npy" % (k, i))
            if os.path.exists(p):
                os.unlink(p)
            ypaths.append(p)
            args += ["--output" if i == 0 else "--output%d" % (i + 1), p]
        rc, text = _run(args)
        if rc < 0 or _sanitizer_report(text):
            return False, "crash in pipeps run (rc %d): %s" % (rc, _first_error_line(text))
        if rc != 0:
            return False, "run refused: " + _first_error_line(text)
        for i, (want, p) in enumerate(zip(outs, ypaths)):
            if not os.path.exists(p):
                return False, "output %d not written" % i
            got = np.load(p)
            if got.shape != want.shape:
                return False, "wrong shape: output %d is %s, expected %s" % (i, got.shape, want.shape)
            want = want.astype(np.float32)
            bad = ~np.isclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True)
            if bad.any():
                err = np.nanmax(np.abs(got.astype(np.float64) - want))
                return False, "wrong values: output %d, %d of %d elements off, max abs error %.3g" % (
                    i, int(bad.sum()), bad.size, err)
    return True, "passed"


def all_cases():
    cases = []
    for d in sorted(glob.glob(os.path.join(NODE_DIR, "*/"))):
        if not os.path.exists(os.path.join(d, "model.onnx")):
            continue
        name, model = load_case(d)
        why = out_of_scope(model, name)
        if not why:
            for _ds, ins, outs in data_sets(d):
                if any(x.size == 0 for x in ins + outs):
                    why = "zero-sized tensor"
                why = why or data_out_of_scope(model, ins)
        cases.append((d, name, node_test_operator(name, model), why))
    return cases


CASES = all_cases() if os.path.isdir(NODE_DIR) else []


@pytest.mark.parametrize("test_dir", [
    pytest.param(d, id=name, marks=[pytest.mark.skip(reason=why)] if why else [])
    for d, name, _op, why in CASES])
def test_node(test_dir, tmp_path):
    ok, reason = run_case(test_dir, str(tmp_path))
    assert ok, reason


def test_node_tests_are_present():
    assert len(CASES) > 500, "libonnx-testdata's node tests are missing under " + NODE_DIR
    assert sum(1 for c in CASES if not c[3]) > 100, "fewer than 100 node tests inside the claim"


def test_claim_matches_the_importer(tmp_path):
    """Every claimed operator with an in-scope node test is reported
    supported by `pipeps import --json` on that test's model (constant
    operands frozen as in run_case): a claim the importer does not back
    fails here by name, whatever the values."""
    first = {}
    for d, name, op, why in CASES:
        if why:
            continue
        model = onnx.load(os.path.join(d, "model.onnx"), load_external_data=False)
        for n in model.graph.node:
            first.setdefault(n.op_type, (d, model))
    wrong = []
    for op, (d, model) in sorted(first.items()):
        path = os.path.join(d, "model.onnx")
        frozen = frozen_inputs(model)
        if frozen:
            _ds, ins, _outs = data_sets(d)[0]
            names = [vi.name for vi in model.graph.input]
            path = str(tmp_path / ("%s.onnx" % op))
            _freeze(model, frozen, {n: x for n, x in zip(names, ins) if n in frozen}, path)
        rc, text = _run([T.binary("pipeps"), "import", path, "--json"])
        if rc < 0 or _sanitizer_report(text):
            wrong.append("%s: pipeps import crashed on %s" % (op, d))
            continue
        try:
            report = json.loads(text[text.index("{"):text.rindex("}") + 1])
        except ValueError:
            wrong.append("%s: no JSON for %s: %s" % (op, d, text[:200]))
            continue
        entry = [e for e in report.get("op_types", []) if e.get("op_type") == op]
        if not entry or not entry[0].get("supported"):
            wrong.append("%s: not reported supported for %s (%s)" % (op, d, report.get("error", "")))
    assert len(first) > 40, sorted(first)
    assert not wrong, "\n".join(wrong)


# ---- script mode: the table -------------------------------------------------

def write_table(path, results):
    by_op = {}
    for name, op, status, reason in results:
        by_op.setdefault(op, []).append((name, status, reason))
    total = len(results)
    passed = sum(1 for r in results if r[2] == "passed")
    failed = sum(1 for r in results if r[2] == "failed")
    skipped = sum(1 for r in results if r[2] == "skipped")
    claimed_ops = sorted(op for op in by_op if op in CLAIMED_OPS)
    lines = [
        "# ONNX conformance: the backend node tests",
        "",
        "Generated by `tests/integration/test_onnx_conformance.py --table` from Debian's",
        "libonnx-testdata (ONNX %s, %s). Each node test inside PipePS's claim is imported" % (
            onnx.__version__, NODE_DIR),
        "through a model list and generate_file, run with `pipeps run`, and compared with the expected",
        "outputs (rtol %g, atol %g, same shape). The same cases run in CI as" % (RTOL, ATOL),
        "`integration.test_onnx_conformance` (one pytest case per node test).",
        "",
        "To regenerate (after a build in build/; PIPEPS_BIN points elsewhere):",
        "",
        "    /usr/bin/python3 tests/integration/test_onnx_conformance.py --table docs/onnx-conformance.md",
        "",
        "A test is *skipped* when the model alone puts it out of scope: an operator outside the claim,",
        "a bool, string, int32, double or float16 tensor (PipePS serves float32 and int64 inputs and",
        "float32 outputs), a rank-0 input (input 0's first dim is the batch), training mode, or an",
        "attribute value outside the graph form (Resize's cubic mode and tf_* coordinate modes, a Resize",
        "scale that is not output/input size: the graph form keeps output sizes).",
        "An operand the graph form keeps as an attribute (Reshape's shape, Slice's starts, Pad's pads,",
        "Resize's scales/sizes, reduction axes, Clip's bounds, ...) or a parameter (Conv/ConvTranspose/Gemm",
        "weights and bias, normalisation scales and statistics) is a runtime input in the node tests",
        "but a constant in exported models: the test turns it into an initializer holding the data",
        "set's value before importing, so those tests run too. So is an input after the first whose",
        "first dimension differs from the first input's (a broadcast operand such as `y` [5] in",
        "`test_add_bcast`): PipePS batches every input along dimension 0.",
        "",
        "Totals: %d node tests; %d passed, %d failed, %d skipped." % (total, passed, failed, skipped),
        "",
        "## Claimed operators",
        "",
        "| Operator | passed / total | run | notes |",
        "|---|---|---|---|",
    ]

    def notes(rows):
        out = []
        classes = {}
        for name, status, reason in rows:
            if status == "failed":
                out.append("`%s` failed: %s" % (name, reason.replace("|", "\\|")))
            elif status == "skipped":
                classes.setdefault(reason, []).append(name)
        for reason, names in sorted(classes.items()):
            out.append("skipped (%s): %s" % (reason.replace("|", "\\|"), ", ".join("`%s`" % n for n in names)))
        return "<br>".join(out)

    for op in claimed_ops:
        rows = by_op[op]
        p = sum(1 for r in rows if r[1] == "passed")
        ran = sum(1 for r in rows if r[1] != "skipped")
        lines.append("| %s | %d / %d | %d | %s |" % (op, p, len(rows), ran, notes(rows)))
    missing_claims = sorted(CLAIMED_OPS - set(by_op))
    if missing_claims:
        lines += ["", "Claimed operators without a node test of their own (covered inside other tests or by the",
                  "exported models): " + ", ".join(missing_claims) + "."]
    lines += ["", "## Other operators (not claimed)", "",
              "| Operator | node tests |", "|---|---|"]
    for op in sorted(op for op in by_op if op not in CLAIMED_OPS):
        lines.append("| %s | %d |" % (op, len(by_op[op])))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv):
    if len(argv) != 3 or argv[1] != "--table":
        print("usage: %s --table OUT.md" % argv[0], file=sys.stderr)
        return 2
    results = []
    todo = []
    for d, name, op, why in CASES:
        if why:
            results.append((name, op, "skipped", why))
        else:
            todo.append((d, name, op))
    with tempfile.TemporaryDirectory(prefix="onnx-conf-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futs = {pool.submit(run_case, d, os.path.join(tmp, name)): (name, op) for d, name, op in todo}
            for fut in concurrent.futures.as_completed(futs):
                name, op = futs[fut]
                try:
                    ok, reason = fut.result()
                except subprocess.TimeoutExpired:
                    ok, reason = False, "timed out"
                results.append((name, op, "passed" if ok else "failed", reason))
                if not ok:
                    print("FAIL %s: %s" % (name, reason), file=sys.stderr)
    results.sort()
    write_table(argv[2], results)
    npass = sum(1 for r in results if r[2] == "passed")
    nfail = sum(1 for r in results if r[2] == "failed")
    print("%d passed, %d failed, %d skipped; table in %s" % (npass, nfail, len(results) - npass - nfail, argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
