"""Seed models for fuzz_onnx_import (tests/fuzz/build.sh): small ModelProtos
with what the node tests lack: initializers (raw and typed fields), a
symbolic batch, Constant / Shape / Gather / Unsqueeze / Concat / Reshape
folding, Squeeze, Split, and an external-data reference (refused without a
folder, which is a path too). Usage: onnx_seeds.py OUT_DIR"""
import os
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def model(nodes, inits, ins, outs, opset=17):
    g = helper.make_graph(nodes, "g", ins, outs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def main(out):
    rng = np.random.RandomState(0)
    f = TensorProto.FLOAT
    seeds = {}
    seeds["conv_relu_matmul"] = model(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["fl"]),
         helper.make_node("MatMul", ["fl", "M"], ["y"])],
        [numpy_helper.from_array(rng.randn(2, 3, 3, 3).astype(np.float32), "W"),
         helper.make_tensor("B", f, [2], [0.5, -0.5]),
         numpy_helper.from_array(rng.randn(2 * 4 * 4, 3).astype(np.float32), "M")],
        [helper.make_tensor_value_info("x", f, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("y", f, ["batch", 3])])
    seeds["shape_folding"] = model(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Constant", [], ["i0"], value=helper.make_tensor("i0v", TensorProto.INT64, [], [0])),
         helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
         helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
         helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
         helper.make_node("Reshape", ["x", "shape"], ["r"]),
         helper.make_node("Gemm", ["r", "G", "GB"], ["y"], transB=1)],
        [helper.make_tensor("ax", TensorProto.INT64, [1], [0]), helper.make_tensor("minus1", TensorProto.INT64, [1], [-1]),
         numpy_helper.from_array(rng.randn(5, 12).astype(np.float32), "G"),
         numpy_helper.from_array(rng.randn(5).astype(np.float32), "GB")],
        [helper.make_tensor_value_info("x", f, ["batch", 3, 4])],
        [helper.make_tensor_value_info("y", f, ["batch", 5])])
    seeds["text_seq"] = model(
        [helper.make_node("Gather", ["E", "ids"], ["e"], axis=0),
         helper.make_node("LayerNormalization", ["e", "S", "Bi"], ["ln"], axis=-1),
         helper.make_node("ReduceMean", ["ln"], ["m"], axes=[1], keepdims=0)],
        [numpy_helper.from_array(rng.randn(20, 6).astype(np.float32), "E"),
         numpy_helper.from_array(np.ones(6, np.float32), "S"), numpy_helper.from_array(np.zeros(6, np.float32), "Bi")],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("m", f, ["batch", 6])], opset=13)
    seeds["split_squeeze"] = model(
        [helper.make_node("Split", ["x", "sp"], ["a", "b"], axis=1),
         helper.make_node("Sub", ["a", "b"], ["d"]),
         helper.make_node("Squeeze", ["d", "ax"], ["y"])],
        [helper.make_tensor("sp", TensorProto.INT64, [2], [1, 1]), helper.make_tensor("ax", TensorProto.INT64, [1], [1])],
        [helper.make_tensor_value_info("x", f, ["batch", 2, 5])],
        [helper.make_tensor_value_info("y", f, ["batch", 5])])
    ext = TensorProto()
    ext.name, ext.data_type, ext.data_location = "M", f, TensorProto.EXTERNAL
    ext.dims.extend([4, 2])
    for k, v in (("location", "w.bin"), ("offset", "0"), ("length", "32")):
        e = ext.external_data.add()
        e.key, e.value = k, v
    seeds["external"] = model([helper.make_node("MatMul", ["x", "M"], ["y"])], [ext],
                              [helper.make_tensor_value_info("x", f, ["batch", 4])],
                              [helper.make_tensor_value_info("y", f, ["batch", 2])])
    os.makedirs(out, exist_ok=True)
    for name, m in seeds.items():
        with open(os.path.join(out, name + ".onnx"), "wb") as fh:
            fh.write(m.SerializeToString())


if __name__ == "__main__":
    main(sys.argv[1])
