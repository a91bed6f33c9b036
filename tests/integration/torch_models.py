"""PyTorch side of the model library, for correctness tests and benchmarks.

Written from docs/formats.md and docs/models.md, independently of the C
code:
  - read kv.bin (mmap, values used in place) and parse the METADATA blob;
  - gather a model's parameters into a name -> tensor dict (param name,
    batch, offset, dims from the blob);
  - build the same architecture in PyTorch (torchvision for the CNNs, the
    modules below for BERT and GPT-2) and load the weights with strict=True;
  - run_graph: a small reference interpreter of the graph itself (one torch
    call per node), which checks that the C graph means what the PyTorch
    model computes and lets an executor be compared node by node.

Use Debian's /usr/bin/python3 (torch 1.13, torchvision 0.14).
"""
import math
import mmap
import os
import struct
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- kv.bin ----

ALIGN = 512
_FILE_HEADER = struct.Struct("<8sHHIQ32sQ")
_ENTRY_HEADER = struct.Struct("<4sHHQQQ")


def _up(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


class KvBin:
    """Read-only view of a kv.bin: models[name] = {key: memoryview}."""

    def __init__(self, path):
        self._f = open(path, "rb")
        self._map = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        data = self._map
        magic, version, _, nmodels, size, _, _ = _FILE_HEADER.unpack_from(data, 0)
        if magic != b"PPSKVBIN" or version != 1 or size != len(data):
            raise ValueError("%s: not a version-1 kv.bin" % path)
        self.models = OrderedDict()
        self.totals = {}
        view = memoryview(data)
        off = ALIGN
        for _ in range(nmodels):
            magic, nlen, _, total, counts, _ = _ENTRY_HEADER.unpack_from(data, off)
            assert magic == b"KVMD"
            name = bytes(data[off + 32:off + 32 + nlen]).decode()
            nrecords = counts >> 32
            off = _up(off + 32 + nlen)
            recs = OrderedDict()
            for _ in range(nrecords):
                magic, klen, _, vlen, _, _ = _ENTRY_HEADER.unpack_from(data, off)
                assert magic == b"KVRC"
                key = bytes(data[off + 32:off + 32 + klen]).decode()
                voff = _up(off + 32 + klen)
                recs[key] = view[voff:voff + vlen]
                off = _up(voff + vlen)
            self.models[name] = recs
            self.totals[name] = total
        self._view = view

    def metadata(self, model):
        return parse_metadata(bytes(self.models[model][model + "-METADATA"]))

    def batch(self, model, i):
        return self.models[model]["%s-BATCH-%d" % (model, i)]

    def close(self):
        self.models = None
        self._view.release()
        self._map.close()
        self._f.close()


# ---------------------------------------------------------- METADATA blob ----

OPS = {1: "Conv", 2: "BatchNormalization", 3: "Relu", 4: "MaxPool", 5: "AveragePool",
       6: "GlobalAveragePool", 7: "Concat", 8: "Add", 9: "Sub", 10: "Mul", 11: "Div",
       12: "Gemm", 13: "MatMul", 14: "Flatten", 15: "Reshape", 16: "Transpose",
       17: "Gather", 18: "LayerNormalization", 19: "Softmax", 20: "Gelu", 21: "Erf",
       22: "Tanh", 23: "Where", 24: "Slice", 25: "Sigmoid", 26: "Sqrt", 27: "Pow",
       28: "Identity"}
DTYPES = {1: "float32", 2: "int64"}
BLOB_MAGIC = 0x444D5050  # "PPMD"


class _Reader:
    def __init__(self, data):
        self.d = data
        self.p = 0

    def fixed(self, fmt):
        v = struct.unpack_from(fmt, self.d, self.p)
        self.p += struct.calcsize(fmt)
        return v[0]

    def uvar(self):
        v, shift = 0, 0
        while True:
            b = self.d[self.p]
            self.p += 1
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7

    def var(self):
        u = self.uvar()
        return (u >> 1) ^ -(u & 1)

    def str8(self):
        n = self.d[self.p]
        s = self.d[self.p + 1:self.p + 1 + n].decode()
        self.p += 1 + n
        return s


def parse_metadata(blob):
    """The METADATA blob as plain dicts (docs/formats.md, "METADATA blob")."""
    import ctypes
    import ctypes.util
    lib = ctypes.CDLL(ctypes.util.find_library("xxhash") or "libxxhash.so.0")
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    if lib.XXH3_64bits(blob[:-8], len(blob) - 8) != struct.unpack_from("<Q", blob, len(blob) - 8)[0]:
        raise ValueError("METADATA checksum mismatch")
    r = _Reader(blob)
    magic, version, flags = r.fixed("<I"), r.fixed("<H"), r.fixed("<H")
    if magic != BLOB_MAGIC or version != 1:
        raise ValueError("not a version-1 METADATA blob")
    if flags & 2:
        raise ValueError("METADATA of a prepared (native) model: its weights are in kernel layouts; "
                         "this reader needs generate_file --target portable")
    if flags & ~1:
        raise ValueError("METADATA flags 0x%x not understood" % flags)
    m = {"name": r.str8(), "max_batch_size": r.uvar()}
    nin, nout, nparams, nbatches, nnodes = (r.uvar() for _ in range(5))

    def io(with_value):
        d = {"name": r.str8(), "dtype": DTYPES[r.uvar()]}
        d["dims"] = [r.var() for _ in range(r.uvar())]
        if with_value:
            d["value"] = r.var()
        return d

    m["inputs"] = []
    for i in range(nin):
        d = io(False)
        d["value"] = i
        d["optional"], d["fill"] = (r.uvar(), r.var()) if flags & 1 else (0, 0)
        m["inputs"].append(d)
    m["outputs"] = [io(True) for _ in range(nout)]
    m["params"] = []
    for _ in range(nparams):
        p = {"name": r.str8()}
        p["dims"] = [r.var() for _ in range(r.uvar())]
        p["batch"] = r.var()
        p["offset"] = r.uvar()
        m["params"].append(p)
    m["batches"] = [{"nbytes": r.uvar(), "first_param": r.uvar(), "nparams": r.uvar()}
                    for _ in range(nbatches)]
    m["nodes"] = []
    for _ in range(nnodes):
        n = {"op": OPS[r.uvar()], "name": r.str8()}
        n["inputs"] = [r.var() for _ in range(r.uvar())]
        n["params"] = [r.var() for _ in range(r.uvar())]
        attrs = {}
        for _ in range(r.uvar()):
            name, kind = r.str8(), r.uvar()
            if kind == 1:
                attrs[name] = r.var()
            elif kind == 2:
                attrs[name] = r.fixed("<f")
            else:
                attrs[name] = [r.var() for _ in range(r.uvar())]
        n["attrs"] = attrs
        n["wait_batch"] = r.var()
        m["nodes"].append(n)
    assert r.p == len(blob) - 8, "trailing bytes in METADATA"
    return m


def load_params(kv, model, meta=None):
    """name -> float32 tensor (a copy) for every parameter of model."""
    meta = meta or kv.metadata(model)
    out = OrderedDict()
    batches = {}
    for p in meta["params"]:
        b = p["batch"]
        if b not in batches:
            batches[b] = np.frombuffer(kv.batch(model, b), dtype=np.float32)
        n = int(np.prod(p["dims"])) if p["dims"] else 1
        start = p["offset"] // 4
        arr = batches[b][start:start + n].reshape(p["dims"])
        out[p["name"]] = torch.from_numpy(arr.copy())
    return out


def base_name(model):
    return model.split("-alter-")[0]


# ----------------------------------------------------- PyTorch modules ----

class BertSelfAttention(nn.Module):
    def __init__(self, hidden=768, heads=12):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x, mask_add=None):
        n, s, h = x.shape

        def split(t):
            return t.view(n, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if mask_add is not None:
            scores = scores + mask_add
        probs = torch.softmax(scores, dim=-1)
        return torch.matmul(probs, v).transpose(1, 2).reshape(n, s, h)


class BertSelfOutput(nn.Module):
    def __init__(self, hidden=768, eps=1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, h, x):
        return self.LayerNorm(self.dense(h) + x)


class BertAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self = BertSelfAttention()
        self.output = BertSelfOutput()

    def forward(self, x, mask_add=None):
        return self.output(self.self(x, mask_add), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden=768, ffn=3072):
        super().__init__()
        self.dense = nn.Linear(hidden, ffn)

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact (erf) GELU, as HF "gelu"


class BertOutput(nn.Module):
    def __init__(self, hidden=768, ffn=3072, eps=1e-12):
        super().__init__()
        self.dense = nn.Linear(ffn, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, f, h):
        return self.LayerNorm(self.dense(f) + h)


class BertLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = BertAttention()
        self.intermediate = BertIntermediate()
        self.output = BertOutput()

    def forward(self, x, mask_add=None):
        h = self.attention(x, mask_add)
        return self.output(self.intermediate(h), h)


class BertEmbeddings(nn.Module):
    def __init__(self, vocab=30522, hidden=768, positions=512, types=2, eps=1e-12):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ids, token_type_ids=None):
        s = ids.shape[1]
        pos = torch.arange(s, device=ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(ids)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class BertEncoder(nn.Module):
    def __init__(self, layers=12):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer() for _ in range(layers)])

    def forward(self, x, mask_add=None):
        for layer in self.layer:
            x = layer(x, mask_add)
        return x


class BertBase(nn.Module):
    """HuggingFace BertModel (no pooler): ids [N, S] and the optional
    attention_mask (1 attend, 0 padding) and token_type_ids -> last hidden
    state [N, S, 768]. The mask is applied as HF's get_extended_attention_mask
    does: (1 - mask[:, None, None, :]) * finfo(float32).min added to the
    scaled scores. Same state_dict names as HF's BertModel minus the pooler
    and the position_ids buffer."""

    def __init__(self):
        super().__init__()
        self.embeddings = BertEmbeddings()
        self.encoder = BertEncoder()

    def forward(self, ids, attention_mask=None, token_type_ids=None):
        mask_add = None
        if attention_mask is not None:
            m = attention_mask[:, None, None, :].to(torch.float32)
            mask_add = (1.0 - m) * torch.finfo(torch.float32).min
        return self.encoder(self.embeddings(ids, token_type_ids), mask_add)


class GPT2Attention(nn.Module):
    def __init__(self, hidden=768, heads=12):
        super().__init__()
        self.heads, self.head_dim, self.hidden = heads, hidden // heads, hidden
        self.c_attn = nn.Linear(hidden, 3 * hidden)  # [out, in]; HF Conv1D is [in, out]
        self.c_proj = nn.Linear(hidden, hidden)

    def forward(self, x):
        n, s, h = x.shape
        q, k, v = self.c_attn(x).split(self.hidden, dim=2)

        def split(t):
            return t.view(n, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        w = torch.where(causal, w, torch.tensor(torch.finfo(w.dtype).min, dtype=w.dtype))
        w = torch.softmax(w, dim=-1)
        return self.c_proj(torch.matmul(w, v).transpose(1, 2).reshape(n, s, h))


class GPT2MLP(nn.Module):
    def __init__(self, hidden=768, ffn=3072):
        super().__init__()
        self.c_fc = nn.Linear(hidden, ffn)
        self.c_proj = nn.Linear(ffn, hidden)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # HF "gelu_new"


class GPT2Block(nn.Module):
    def __init__(self, hidden=768, eps=1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=eps)
        self.attn = GPT2Attention()
        self.ln_2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = GPT2MLP()

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """HuggingFace GPT2LMHeadModel (GPT-2 small) with the tied LM head:
    ids [N, S] -> logits [N, S, 50257]. Names are GPT2Model's; linear
    weights are nn.Linear [out, in] (transpose of HF's Conv1D)."""

    def __init__(self, vocab=50257, positions=1024, hidden=768, layers=12, eps=1e-5):
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(positions, hidden)
        self.h = nn.ModuleList([GPT2Block() for _ in range(layers)])
        self.ln_f = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)


class TinyMLP(nn.Module):
    """zoo_tiny.c: Linear 64->256, ReLU, Linear 256->10."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def build_torch(model):
    """The PyTorch model for a zoo model name (eval mode, random weights)."""
    import torchvision
    base = base_name(model)
    if base == "resnet152":
        m = torchvision.models.resnet152()
    elif base == "inception_v3":
        m = torchvision.models.inception_v3(aux_logits=False, init_weights=False,
                                            transform_input=False)
    elif base == "densenet201":
        m = torchvision.models.densenet201()
    elif base == "bert_base":
        m = BertBase()
    elif base == "gpt2":
        m = GPT2()
    elif base == "tiny_mlp":
        m = TinyMLP()
    else:
        raise KeyError(model)
    return m.eval()


def state_dict_for(module, params):
    """The kv.bin parameters as a state_dict for module: constants
    ("const.*", graph-only operands such as the attention scale) are left
    out; BatchNorm's num_batches_tracked (not stored: no effect in eval) is
    filled with 0."""
    sd = OrderedDict((k, v) for k, v in params.items() if not k.startswith("const."))
    for k, v in module.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros_like(v)
    return sd


def load_model(kv, model):
    """(PyTorch module with kv.bin's weights loaded strictly, metadata, params)."""
    meta = kv.metadata(model)
    params = load_params(kv, model, meta)
    m = build_torch(model)
    m.load_state_dict(state_dict_for(m, params), strict=True)
    return m, meta, params


def make_input(meta, batch, seed=0):
    """A deterministic input for the model's first input."""
    inp = meta["inputs"][0]
    dims = [batch] + inp["dims"][1:]
    g = torch.Generator().manual_seed(seed)
    if inp["dtype"] == "int64":
        vocab = 30522 if meta["name"].startswith("bert_base") else 50257
        return torch.randint(0, vocab, dims, generator=g, dtype=torch.int64)
    return torch.randn(dims, generator=g)


# ---------------------------------------------------- graph interpreter ----

def _pads2d(attrs):
    p = attrs.get("pads", [0, 0, 0, 0])
    return p[0], p[1], p[2], p[3]  # h_begin, w_begin, h_end, w_end


def _pool(op, x, a):
    k = a["kernel_shape"]
    s = a.get("strides", [1, 1])
    hb, wb, he, we = _pads2d(a)
    ceil = bool(a.get("ceil_mode", 0))
    if hb == he and wb == we:
        if op == "MaxPool":
            return F.max_pool2d(x, k, s, (hb, wb), ceil_mode=ceil)
        return F.avg_pool2d(x, k, s, (hb, wb), ceil_mode=ceil,
                            count_include_pad=bool(a.get("count_include_pad", 0)))
    raise NotImplementedError("asymmetric pool pads")


def _gemm(a_, b_, c_, at):
    if at.get("transA", 0):
        a_ = a_.transpose(-1, -2)
    if at.get("transB", 0):
        b_ = b_.transpose(-1, -2)
    y = torch.matmul(a_, b_) * at.get("alpha", 1.0)
    if c_ is not None:
        y = y + c_ * at.get("beta", 1.0)
    return y


def run_node(n, ops):
    """One node: ops are the activations followed by the parameters."""
    op, a = n["op"], n["attrs"]
    x = ops[0] if ops else None
    if op == "Conv":
        hb, wb, he, we = _pads2d(a)
        if hb != he or wb != we:
            x = F.pad(x, (wb, we, hb, he))
            hb = wb = 0
        return F.conv2d(x, ops[1], ops[2] if len(ops) > 2 else None, a.get("strides", [1, 1]),
                        (hb, wb), a.get("dilations", [1, 1]), a.get("group", 1))
    if op == "BatchNormalization":
        return F.batch_norm(x, ops[3], ops[4], ops[1], ops[2], False, 0.0, a.get("epsilon", 1e-5))
    if op in ("MaxPool", "AveragePool"):
        return _pool(op, x, a)
    if op == "GlobalAveragePool":
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    if op == "Relu":
        return torch.relu(x)
    if op == "Concat":
        return torch.cat(ops, dim=a["axis"])
    if op == "Add":
        return ops[0] + ops[1]
    if op == "Sub":
        return ops[0] - ops[1]
    if op == "Mul":
        return ops[0] * ops[1]
    if op == "Div":
        return ops[0] / ops[1]
    if op == "Pow":
        return torch.pow(ops[0], ops[1])
    if op == "Gemm":
        return _gemm(ops[0], ops[1], ops[2] if len(ops) > 2 else None, a)
    if op == "MatMul":
        return torch.matmul(ops[0], ops[1])
    if op == "Flatten":
        ax = a.get("axis", 1)
        return x.reshape(int(np.prod(x.shape[:ax])), -1)
    if op == "Reshape":
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(a["shape"])]
        return x.reshape(shape)
    if op == "Transpose":
        return x.permute(a["perm"])
    if op == "Gather":  # indices are the activation, data the parameter
        return torch.index_select(ops[1], a.get("axis", 0), x.reshape(-1)).reshape(
            list(x.shape) + list(ops[1].shape[1:]))
    if op == "LayerNormalization":
        axis = a.get("axis", -1) % x.dim()
        return F.layer_norm(x, x.shape[axis:], ops[1], ops[2] if len(ops) > 2 else None,
                            a.get("epsilon", 1e-5))
    if op == "Softmax":
        return torch.softmax(x, dim=a.get("axis", -1))
    if op == "Gelu":
        return F.gelu(x, approximate="tanh" if a.get("approximate", 0) else "none")
    if op == "Erf":
        return torch.erf(x)
    if op == "Tanh":
        return torch.tanh(x)
    if op == "Sigmoid":
        return torch.sigmoid(x)
    if op == "Sqrt":
        return torch.sqrt(x)
    if op == "Identity":
        return x
    if op == "Where":
        return torch.where(ops[0] != 0, ops[1], ops[2])
    if op == "Slice":
        y = x
        steps = a.get("steps", [1] * len(a["starts"]))
        for st, en, ax, sp in zip(a["starts"], a["ends"], a["axes"], steps):
            y = y.narrow(ax, st, min(en, y.shape[ax]) - st)[::1] if sp == 1 else \
                torch.index_select(y, ax, torch.arange(st, min(en, y.shape[ax]), sp))
        return y
    raise NotImplementedError(op)


def run_graph(meta, params, inputs, keep=False):
    """Interpret the graph on torch tensors. inputs: list of tensors for the
    model inputs; optional inputs left out (trailing, or None) hold their
    fill value. Returns the outputs (and all values if keep)."""
    values = list(inputs) + [None] * (len(meta["inputs"]) - len(inputs))
    for i, spec in enumerate(meta["inputs"]):
        if values[i] is None:
            assert spec["optional"], "input %s is required" % spec["name"]
            shape = [values[0].shape[0]] + spec["dims"][1:]
            values[i] = torch.full(shape, spec["fill"], dtype=torch.int64)
    plist = [params[p["name"]] for p in meta["params"]]
    for n in meta["nodes"]:
        ops = [values[i] for i in n["inputs"]] + [plist[i] for i in n["params"]]
        values.append(run_node(n, ops))
    outs = [values[o["value"]] for o in meta["outputs"]]
    return (outs, values) if keep else outs
