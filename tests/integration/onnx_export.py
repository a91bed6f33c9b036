"""PyTorch models exported to ONNX for the import tests and the benchmark.

Every model is built with torch.manual_seed(0) (random init), put in eval
mode and exported with torch.onnx.export at a given opset, with a dynamic
batch axis named 'batch' on its input and output. The text model's
sequence length is a second symbolic axis ('seq'), fixed at import with
the model list's seq=N.

    export(name, path, opset)      write PATH, return an ExportedModel
    ExportedModel.reference(x)     the PyTorch output for x (numpy in, numpy out)
    ExportedModel.make_input(b)    a deterministic input at batch b

The easy thing to get wrong: the reference must come from the very module
that was exported (same weights), so export() keeps it; and exporting with
gradients enabled keeps nn.TransformerEncoder off its fused fast path, which
torch.onnx cannot trace.

Use Debian's /usr/bin/python3 (torch 1.13, torchvision 0.14)."""
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TORCHVISION = ["resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenet_v3_small",
               "regnet_y_400mf", "mnasnet0_5", "vit_b_16"]
TEXT = "text_encoder"
ALL = TORCHVISION + [TEXT]
TEXT_SEQ = 16
TEXT_VOCAB = 1000


class TextEncoder(nn.Module):
    """A small text classifier: token embedding + learned positions, two
    nn.TransformerEncoder layers, mean pooling over the sequence, a linear
    head. ids [N, S] int64 -> logits [N, 10]."""

    def __init__(self, vocab=TEXT_VOCAB, d_model=64, heads=4, ff=128, layers=2, classes=10, max_len=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(1, max_len, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, ids):
        x = self.embed(ids) + self.pos[:, :ids.shape[1]]
        x = self.encoder(x)
        return self.head(x.mean(dim=1))


class ExportedModel:
    def __init__(self, name, path, module, opset, seq=None):
        self.name, self.path, self.module, self.opset, self.seq = name, path, module, opset, seq

    def make_input(self, batch, seed=0):
        rng = np.random.RandomState(seed)
        if self.seq:
            return rng.randint(0, TEXT_VOCAB, size=(batch, self.seq)).astype(np.int64)
        side = 224
        return rng.uniform(-1, 1, size=(batch, 3, side, side)).astype(np.float32)

    def reference(self, x):
        with torch.no_grad():
            y = self.module(torch.from_numpy(x))
        return y.numpy()

    def list_line(self, name=None):
        """The model-list line that imports this file."""
        line = "%s, file=%s" % (name or self.name, os.path.abspath(self.path))
        return line + (", seq=%d" % self.seq if self.seq else "")


def build(name):
    """The PyTorch module (random init with seed 0, eval mode)."""
    import torchvision
    torch.manual_seed(0)
    if name == TEXT:
        m = TextEncoder()
    else:
        m = getattr(torchvision.models, name)()
    if name.startswith("vit_"):
        # torchvision zero-initialises the ViT classifier: every output would
        # be 0 and any importer would "match". A random head instead.
        nn.init.normal_(m.heads.head.weight, std=0.02)
        nn.init.normal_(m.heads.head.bias, std=0.02)
    return m.eval()


def export(name, path, opset):
    """Export model name to path at opset; returns an ExportedModel."""
    m = build(name)
    if name == TEXT:
        dummy = torch.zeros(1, TEXT_SEQ, dtype=torch.int64)
        axes = {"ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
        names = (["ids"], ["logits"])
    else:
        dummy = torch.zeros(1, 3, 224, 224)
        axes = {"input": {0: "batch"}, "output": {0: "batch"}}
        names = (["input"], ["output"])
    torch.onnx.export(m, dummy, path, opset_version=opset, input_names=names[0], output_names=names[1],
                      dynamic_axes=axes, do_constant_folding=True)
    return ExportedModel(name, path, m, opset, TEXT_SEQ if name == TEXT else None)


def export_module(module, dummy, path, opset, input_name="input", output_name="output"):
    """Any module (the built-in models' oracles) with a dynamic batch axis."""
    torch.onnx.export(module.eval(), dummy, path, opset_version=opset, input_names=[input_name],
                      output_names=[output_name],
                      dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                      do_constant_folding=True)
    return path


def max_rel_error(got, want):
    """max |got - want| / max |want| (the issue's measure), with shapes checked."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError("shape %s, expected %s" % (got.shape, want.shape))
    scale = np.max(np.abs(want))
    return float(np.max(np.abs(got - want)) / (scale if scale > 0 else 1.0))


if __name__ == "__main__":
    # onnx_export.py NAME OUT.onnx [OPSET]: export one model (for the benchmark);
    # NAME is text_encoder or any torchvision.models constructor (resnet152, ...).
    import torchvision
    if len(sys.argv) not in (3, 4) or (sys.argv[1] != TEXT and not hasattr(torchvision.models, sys.argv[1])):
        print("usage: onnx_export.py {%s|any torchvision model} OUT.onnx [OPSET]" % ",".join(ALL),
              file=sys.stderr)
        sys.exit(2)
    export(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 17)
