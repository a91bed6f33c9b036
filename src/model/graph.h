/* graph: the in-memory description of a model (the contract between the
 * model library, the batcher, the serializer and the executor).
 *
 * A model is an ordered list of nodes. Each node is one operation named and
 * parameterised after its ONNX (opset 17) definition, reads activations
 * (value ids) and parameters (param ids), and produces exactly one new value.
 * Values 0..ninputs-1 are the model inputs; node i produces value
 * ninputs + i. Nodes only read values produced earlier, so the node order is
 * an execution order.
 *
 * Parameters are float32 tensors stored in parameter batches: param->batch
 * says which batch holds it and param->offset where (512-byte aligned) in
 * that batch. node->wait_batch is the batch the executor must have before it
 * runs the node: the highest batch among the node's own parameters, or for a
 * node without parameters the wait_batch of the node before it (-1 before the
 * first parameter). Precisely: max(own parameters' batches, previous node's
 * wait_batch), so a parameter shared with an earlier node (GPT-2's tied
 * embedding, used again by the final projection) does not lower it. It never
 * decreases along the node list, which is what lets layer group i run while
 * batch i+1 is still in flight.
 *
 * Deviations from ONNX, kept small on purpose (the ONNX importer folds the
 * ONNX form into these):
 *  - Gemm accepts A of rank >= 2 and flattens its leading dimensions
 *    ([.., K] x B -> [.., N]), so a transformer's Linear is one Gemm with
 *    transB=1 and the weight in PyTorch's [out, in] layout.
 *  - Reshape takes its target shape as the "shape" ints attribute (0 copies
 *    the input dimension, -1 is inferred), not as a tensor input.
 *  - Constant operands (a scalar scale, a causal mask) are parameters: they
 *    travel in a batch like weights.
 *  - Gelu is the exact (erf) GELU; attribute "approximate" = 1 selects tanh.
 *  - Gather's indices must be in [0, dim) (an embedding lookup, as in
 *    PyTorch): a negative index is an error, not a count from the end.
 *    Operands: (data, indices) with int64 or float indices (a constant
 *    index tensor is a parameter, so float); but an int64 activation
 *    followed by a float operand is (indices, data): an embedding lookup.
 *  - Constant (no ONNX inputs): zero inputs, one parameter; its value is
 *    the parameter. The importer uses it where a constant must come before
 *    an activation (Sub(c, x)), so every other op keeps "inputs, then params".
 *  - Parameters are float32 only: int64 and bool constants become
 *    attributes (below) or float tensors (Where's condition: 0/1).
 *  - Attributes that ONNX takes as tensor inputs (opset 13+):
 *    Slice "starts"/"ends"/"axes"/"steps", Reduce* "axes", Expand "shape",
 *    Tile "repeats", Pad "pads" ([begin..., end...]), Clip floats "min"/"max"
 *    (absent = unbounded), Resize "sizes". Pad's int "mode": 0 constant,
 *    1 reflect, 2 edge; float "value". Reduce*: "axes" absent = all axes,
 *    "keepdims" default 1.
 *  - Resize: int "mode" 0 nearest, 1 linear, 2 cubic (float "cubic_a",
 *    default -0.75; int "exclude_outside") on every resized axis; ints "sizes" = the full output shape, where 0 keeps the
 *    input's dimension (the batch); the scale of an axis is out/in, or
 *    (ONNX's scales input, which need not be out/in: 0.6 of 4 is 2) the
 *    float32 whose bit pattern is in ints "scales_bits" (one per axis). Int
 *    "coord" (coordinate_transformation_mode): 0 half_pixel, 1 asymmetric,
 *    2 align_corners, 3 pytorch_half_pixel; int "nearest" (nearest_mode):
 *    0 round_prefer_floor, 1 round_prefer_ceil, 2 floor, 3 ceil.
 *  - ConvTranspose: weight param [Cin, Cout/group, k...], optional bias;
 *    explicit "pads" (auto_pad and output_shape resolved by the importer),
 *    "strides", "dilations", "output_padding", "group".
 *  - Cast: int "to" = the ONNX TensorProto type, 1 (float) or 7 (int64);
 *    float to int64 truncates toward zero.
 *  - Equal/Less/Greater/Not/And/Or give float 0/1 (the graph's outputs and
 *    most operands are float); their inputs may be float32 or int64
 *    (nonzero = true). Mod takes float operands; int "fmod" 1 is C's fmod,
 *    0 (default) takes the divisor's sign (Python's %).
 *  - Max/Min are binary (the importer chains variadic ones).
 */
#ifndef PIPEPS_GRAPH_H
#define PIPEPS_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#define GRAPH_MAX_DIMS 8
#define GRAPH_MAX_INPUTS 8     /* activation inputs per node */
#define GRAPH_MAX_PARAMS 8     /* parameters per node */
#define GRAPH_MAX_ATTRS 8
#define GRAPH_MAX_ATTR_INTS 16 /* Pad on rank 8: 16; the blob stores the count */
#define GRAPH_NAME_MAX 95      /* names are at most this many bytes */
#define GRAPH_MAX_FIXED_BATCH (1 << 20) /* the executor's batch limit */
#define GRAPH_PARAM_ALIGN 512  /* every parameter is padded to this in a batch */

/* Operation list; the name string is the ONNX op_type. Append only: the
 * numeric value is stored in the METADATA blob. */
#define GRAPH_OP_LIST(X)                                                      \
    X(CONV, 1, "Conv")                                                        \
    X(BATCHNORM, 2, "BatchNormalization")                                     \
    X(RELU, 3, "Relu")                                                        \
    X(MAXPOOL, 4, "MaxPool")                                                  \
    X(AVGPOOL, 5, "AveragePool")                                              \
    X(GLOBALAVGPOOL, 6, "GlobalAveragePool")                                  \
    X(CONCAT, 7, "Concat")                                                    \
    X(ADD, 8, "Add")                                                          \
    X(SUB, 9, "Sub")                                                          \
    X(MUL, 10, "Mul")                                                         \
    X(DIV, 11, "Div")                                                         \
    X(GEMM, 12, "Gemm")                                                       \
    X(MATMUL, 13, "MatMul")                                                   \
    X(FLATTEN, 14, "Flatten")                                                 \
    X(RESHAPE, 15, "Reshape")                                                 \
    X(TRANSPOSE, 16, "Transpose")                                             \
    X(GATHER, 17, "Gather")                                                   \
    X(LAYERNORM, 18, "LayerNormalization")                                    \
    X(SOFTMAX, 19, "Softmax")                                                 \
    X(GELU, 20, "Gelu")                                                       \
    X(ERF, 21, "Erf")                                                         \
    X(TANH, 22, "Tanh")                                                       \
    X(WHERE, 23, "Where")                                                     \
    X(SLICE, 24, "Slice")                                                     \
    X(SIGMOID, 25, "Sigmoid")                                                 \
    X(SQRT, 26, "Sqrt")                                                       \
    X(POW, 27, "Pow")                                                         \
    X(IDENTITY, 28, "Identity")                                               \
    X(CONSTANT, 29, "Constant")                                               \
    X(NEG, 30, "Neg")                                                         \
    X(ABS, 31, "Abs")                                                         \
    X(EXP, 32, "Exp")                                                         \
    X(LOG, 33, "Log")                                                         \
    X(RECIPROCAL, 34, "Reciprocal")                                           \
    X(LEAKYRELU, 35, "LeakyRelu")                                             \
    X(PRELU, 36, "PRelu")                                                     \
    X(CLIP, 37, "Clip")                                                       \
    X(HARDSIGMOID, 38, "HardSigmoid")                                         \
    X(HARDSWISH, 39, "HardSwish")                                             \
    X(ELU, 40, "Elu")                                                         \
    X(SELU, 41, "Selu")                                                       \
    X(SOFTPLUS, 42, "Softplus")                                               \
    X(LOGSOFTMAX, 43, "LogSoftmax")                                           \
    X(INSTANCENORM, 44, "InstanceNormalization")                              \
    X(GLOBALMAXPOOL, 45, "GlobalMaxPool")                                     \
    X(REDUCEMEAN, 46, "ReduceMean")                                           \
    X(REDUCESUM, 47, "ReduceSum")                                             \
    X(REDUCEMAX, 48, "ReduceMax")                                             \
    X(REDUCEMIN, 49, "ReduceMin")                                             \
    X(EXPAND, 50, "Expand")                                                   \
    X(PAD, 51, "Pad")                                                         \
    X(RESIZE, 52, "Resize")                                                   \
    X(CONVTRANSPOSE, 53, "ConvTranspose")                                     \
    X(CAST, 54, "Cast")                                                       \
    X(MAX, 55, "Max")                                                         \
    X(MIN, 56, "Min")                                                         \
    X(TILE, 57, "Tile")                                                       \
    X(EQUAL, 58, "Equal")                                                     \
    X(LESS, 59, "Less")                                                       \
    X(GREATER, 60, "Greater")                                                 \
    X(NOT, 61, "Not")                                                         \
    X(SIN, 62, "Sin")                                                         \
    X(COS, 63, "Cos")                                                         \
    X(FLOOR, 64, "Floor")                                                     \
    X(CEIL, 65, "Ceil")                                                       \
    X(SIGN, 66, "Sign")                                                       \
    X(AND, 67, "And")                                                         \
    X(OR, 68, "Or")                                                           \
    X(MOD, 69, "Mod")

enum graph_op {
    GRAPH_OP_INVALID = 0,
#define GRAPH_OP_ENUM(name, value, onnx) GRAPH_OP_##name = (value),
    GRAPH_OP_LIST(GRAPH_OP_ENUM)
#undef GRAPH_OP_ENUM
    GRAPH_OP_COUNT
};

enum graph_dtype { GRAPH_F32 = 1, GRAPH_I64 = 2 };

enum graph_attr_kind { GRAPH_ATTR_INT = 1, GRAPH_ATTR_FLOAT = 2, GRAPH_ATTR_INTS = 3 };

/* One ONNX attribute: "group" = 32, "epsilon" = 1e-5, "pads" = [1,1,1,1]. */
struct graph_attr {
    char name[24];
    enum graph_attr_kind kind;
    int64_t i;
    float f;
    int nints;
    int64_t ints[GRAPH_MAX_ATTR_INTS];
};

#define GRAPH_LAYOUT_MAX_BLKS 6
#define GRAPH_TARGET_MAX 63

/* How a prepared parameter's bytes are laid out: a blocked layout in
 * oneDNN's terms (outer strides over padded dims, then inner blocks), the
 * form a kernel consumes directly. dims are the kernel's view of the tensor,
 * which may differ from the param's dims in shape but never in element
 * count (a grouped conv's [G, OC/G, IC/G, KH, KW], a Gemm's B as [K, N]
 * whatever transB says). Plain C order over the param's dims is "no
 * layout" (graph_param.layout.ndims == 0). */
struct graph_layout {
    int ndims;                              /* 0: plain C order over the param's dims */
    int64_t dims[GRAPH_MAX_DIMS];
    int64_t padded_dims[GRAPH_MAX_DIMS];    /* dims rounded up to the blocks */
    int64_t strides[GRAPH_MAX_DIMS];        /* outer strides, in elements */
    int nblks;
    int64_t blks[GRAPH_LAYOUT_MAX_BLKS];    /* inner block sizes, outermost first */
    int32_t idxs[GRAPH_LAYOUT_MAX_BLKS];    /* the dim each inner block splits */
};

struct graph_param {
    char name[GRAPH_NAME_MAX + 1]; /* torchvision state_dict name, e.g. "layer1.0.conv1.weight" */
    int ndims;
    int64_t dims[GRAPH_MAX_DIMS];
    uint64_t nbytes;               /* bytes, unpadded: float32 elements, or the layout's size */
    int32_t batch;                 /* parameter batch holding it (set by batching) */
    uint64_t offset;               /* byte offset inside that batch, 512-aligned */
    struct graph_layout layout;    /* prepared layout (a "native" kv.bin), or plain */
};

struct graph_node {
    enum graph_op op;
    char name[GRAPH_NAME_MAX + 1];
    int ninputs;
    int32_t inputs[GRAPH_MAX_INPUTS]; /* value ids */
    int nparams;
    int32_t params[GRAPH_MAX_PARAMS]; /* param ids, in the ONNX input order after the activations */
    int nattrs;
    struct graph_attr attrs[GRAPH_MAX_ATTRS];
    int32_t wait_batch;               /* see the file comment; -1 = waits for nothing */
};

/* A model input or output: dims[0] is the dynamic batch dimension (stored
 * as -1, or for inputs the fixed batch: graph_set_fixed_batch); other dims
 * are fixed. Outputs are float32; an output's ndims may
 * be 0 (shape not recorded; the executor infers it).
 *
 * An optional input (BERT's attention_mask, token_type_ids) may be left
 * out of a run: it then holds fill in every element. Optional inputs are
 * int64 and follow every required one (input 0 is always required), so a
 * request that lists inputs by position omits only trailing ones. */
struct graph_io {
    char name[GRAPH_NAME_MAX + 1];
    enum graph_dtype dtype;
    int ndims;
    int64_t dims[GRAPH_MAX_DIMS];
    int32_t value;                    /* value id (inputs: 0..ninputs-1) */
    int optional;                     /* inputs only: 1 = may be omitted */
    int64_t fill;                     /* optional inputs: the value when omitted */
};

struct graph_batch {
    uint64_t nbytes;                  /* padded size of the batch's data */
    int32_t first_param, nparams;     /* params of a batch are contiguous in id order */
};

struct graph {
    char name[GRAPH_NAME_MAX + 1];    /* model name as listed: "resnet152", "gpt2-alter-00000003" */
    int ninputs, noutputs;
    struct graph_io inputs[4];
    struct graph_io outputs[4];
    int nnodes, node_cap;
    struct graph_node *nodes;
    int nparams, param_cap;
    struct graph_param *params;
    int nbatches;                     /* 0 until graph_batch_params ran */
    struct graph_batch *batches;
    uint64_t max_batch_size;          /* the limit batching used */
    /* What prepared params (layout.ndims > 0) were prepared for, e.g.
     * "onednn-2.7.3/avx512_core" ("" if none is): a server on another target
     * re-prepares them at load (see docs/formats.md, "Prepared parameters"). */
    char target[GRAPH_TARGET_MAX + 1];
};

const char *graph_op_name(enum graph_op op);          /* ONNX op_type, "?" if invalid */
const char *graph_dtype_name(enum graph_dtype t);     /* "float32", "int64", "?" */
enum graph_op graph_op_from_name(const char *onnx_name); /* GRAPH_OP_INVALID if unknown */

/* Building (the model library and the ONNX importer use these). Names are
 * truncated to GRAPH_NAME_MAX. Functions abort on out-of-memory; models are
 * built from trusted code. */
void graph_init(struct graph *g, const char *name);
void graph_free(struct graph *g);
int32_t graph_add_input(struct graph *g, const char *name, enum graph_dtype dtype, int ndims,
                        const int64_t *dims);
/* A model whose shapes hold at one batch size only (an ONNX file with a
 * fixed first dimension, as the ONNX node tests are): every input's
 * dims[0] records that size instead of -1, and the executor runs it at
 * that batch size only. graph_fixed_batch is 0 for a dynamic batch. */
void graph_set_fixed_batch(struct graph *g, int64_t batch);
int64_t graph_fixed_batch(const struct graph *g);
/* Make input index optional with the given fill value (see graph_io). */
void graph_set_input_optional(struct graph *g, int index, int64_t fill);
/* Number of leading required inputs (the rest are optional). */
int graph_required_inputs(const struct graph *g);
void graph_add_output(struct graph *g, const char *name, int32_t value);
/* Record output index's shape (dims[0] is stored as -1, the batch). */
void graph_set_output_dims(struct graph *g, int index, int ndims, const int64_t *dims);
int32_t graph_add_param(struct graph *g, const char *name, int ndims, const int64_t *dims);
/* Append a node; returns its output value id. */
int32_t graph_add_node(struct graph *g, enum graph_op op, const char *name, int ninputs,
                       const int32_t *inputs, int nparams, const int32_t *params);
/* Attributes for the most recently added node. */
void graph_set_int(struct graph *g, const char *attr, int64_t v);
void graph_set_float(struct graph *g, const char *attr, float v);
void graph_set_ints(struct graph *g, const char *attr, int n, const int64_t *v);

/* Reading attributes. */
const struct graph_attr *graph_attr_find(const struct graph_node *n, const char *attr);
int64_t graph_attr_int(const struct graph_node *n, const char *attr, int64_t dflt);
float graph_attr_float(const struct graph_node *n, const char *attr, float dflt);
/* Copies up to max ints into out, returns how many the attribute has (0 if absent). */
int graph_attr_ints(const struct graph_node *n, const char *attr, int64_t *out, int max);

static inline int32_t graph_node_output(const struct graph *g, int node_index)
{
    return g->ninputs + node_index;
}
/* Total number of values: inputs plus one per node. */
static inline int32_t graph_nvalues(const struct graph *g) { return g->ninputs + g->nnodes; }

/* Param id by name, -1 if absent (linear search). */
int32_t graph_find_param(const struct graph *g, const char *name);

uint64_t graph_param_elems(const struct graph_param *p);
/* Bytes of a layout's storage (float32 over its padded dims). */
uint64_t graph_layout_bytes(const struct graph_layout *l);
/* Give param p a prepared layout (nbytes follows it). */
void graph_set_param_layout(struct graph *g, int32_t p, const struct graph_layout *l);
/* oneDNN-style name of a layout ("ABcd16b16a"; "plain" without one). */
void graph_layout_name(const struct graph_layout *l, char *buf, size_t cap);
/* nbytes rounded up to GRAPH_PARAM_ALIGN. */
uint64_t graph_param_padded(const struct graph_param *p);
/* Sum of graph_param_padded over all params (= the sum of batch sizes). */
uint64_t graph_total_padded(const struct graph *g);

/* Structural validation of a graph that came from a file or the wire: value
 * references point backwards, param ids and batches are in range, offsets
 * fit their batch without overlap, batches cover the params contiguously,
 * wait_batch is exactly the rule above (or -1 everywhere for an unbatched
 * graph, nbatches == 0), dims are positive, counts and names in range,
 * optional inputs are int64 and trail the required ones.
 * It does not check op semantics (operand counts, attribute values, shapes):
 * the executor's shape inference does. Returns 0 or PPS_ECORRUPT with a
 * message in err (may be NULL). */
int graph_validate(const struct graph *g, char *err, size_t errlen);

#endif
