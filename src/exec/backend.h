/* backend: the interface between the executor and a compute backend
 * (ggml-style: a small struct of function pointers; the CPU backend on
 * oneDNN lives in cpu/, a CUDA one would sit beside it).
 *
 * The executor owns the graph analysis (shapes, which nodes fuse into one
 * step, liveness, memory) and the pipelining (gates, the preparer thread);
 * a backend owns kernels, data layouts and prepared weights. Work happens at
 * three times:
 *   - model creation: step_init per step, with the step's shapes at the
 *     canonical batch size 1. The backend fixes here everything prepared
 *     weights depend on (their layout), so prepared weights never depend on
 *     which batch size ran first or when parameters arrived.
 *   - parameter arrival (preparer thread): step_weights turns the raw
 *     parameters of a step into its prepared form (BN folded into the conv,
 *     reordered to the kernel's layout), or, where the kernel also takes the
 *     raw layout, uses them in place and defers the reorder: the cold run
 *     then waits for no preparation, and step_relayout does it afterwards.
 *   - plan build per batch size: node_prepare picks kernels for the actual
 *     shapes and input layouts, says how big the output is in its layout and
 *     how much scratch it needs; node_run executes it.
 * The easy thing to get wrong: node_prepare runs before the step's
 * parameters may have arrived, so it must never read parameter values; only
 * node_run (after the executor's gate opened) and step_weights may. */
#ifndef PIPEPS_EXEC_BACKEND_H
#define PIPEPS_EXEC_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "model/graph.h"

/* A value as a step sees it. */
struct exec_tensor {
    enum graph_dtype dtype;
    int ndims;
    int64_t dims[GRAPH_MAX_DIMS];   /* logical shape, ONNX order */
    const void *layout;             /* backend's layout; NULL = plain C order */
    uint64_t nbytes;                /* bytes of storage in that layout */
};

/* An operation fused after a step's primary node. */
enum exec_post_kind {
    EXEC_POST_UNARY = 1,  /* Relu, Gelu, Tanh, Sigmoid applied to the result */
    EXEC_POST_SUM = 2,    /* Add of another activation of the same shape */
    EXEC_POST_SCALAR = 3, /* Add/Sub/Mul/Div by a one-element parameter */
    EXEC_POST_PERMUTE = 4, /* Transpose of the result: written in transposed order; always last */
};

struct exec_post {
    enum exec_post_kind kind;
    int32_t node;   /* the fused graph node */
    int operand;    /* SUM: index into step->inputs; SCALAR: index into step->params */
};

#define EXEC_STEP_MAX_POST 4
#define EXEC_STEP_MAX_INPUTS (GRAPH_MAX_INPUTS + EXEC_STEP_MAX_POST)
#define EXEC_STEP_MAX_PARAMS (2 * GRAPH_MAX_PARAMS + EXEC_STEP_MAX_POST)

/* One unit of execution: a primary node plus the nodes fused into it. It
 * runs at the position of its last node and produces that node's value. */
struct exec_step {
    int32_t node;        /* primary node */
    int32_t bn_node;     /* BatchNormalization folded into the Conv's weights, or -1 */
    int npost;
    struct exec_post post[EXEC_STEP_MAX_POST];
    int32_t last_node;
    int32_t output;      /* value id produced */
    int ninputs;         /* the primary node's inputs (same order), then SUM operands */
    int32_t inputs[EXEC_STEP_MAX_INPUTS];
    int nparams;         /* the primary node's params (same order), then the BN's, then SCALAR operands */
    int32_t params[EXEC_STEP_MAX_PARAMS];
    int32_t gate;        /* parameter batch to wait for before running (-1: none) */
    int32_t prep_batch;  /* highest batch among params (-1: nothing to prepare) */
};

/* What node_prepare decides for one step at one batch size. */
struct exec_node_plan {
    void *state;             /* backend's; freed by node_free */
    uint64_t scratch_bytes;  /* temporary memory for the duration of node_run */
    int alias_input;         /* >= 0: the output lives in that input's buffer
                              * (a view, or an in-place update the executor allowed) */
};

/* step_weights flags. */
#define EXEC_W_PERSIST 1u      /* params stay valid until the model is destroyed */
#define EXEC_W_DEFER_LAYOUT 2u /* with PERSIST: a step may run on parameters in place in
                                * a slower layout and relayout later (step_relayout) */

/* A step's prepared tensor, as written into a loading-optimized ("native")
 * model by src/exec/prepack.c. */
enum exec_prepared_kind {
    EXEC_PREPARED_WEIGHTS = 1, /* the primary node's weight param, in layout */
    EXEC_PREPARED_BIAS = 2,    /* a Conv's bias with its BatchNormalization folded in (plain) */
};

struct exec_prepared {
    enum exec_prepared_kind kind;
    const void *bytes;
    uint64_t nbytes;
    struct graph_layout layout; /* WEIGHTS: the kernel's layout; BIAS: plain (ndims 0) */
};

struct exec_backend {
    const char *name;
    void *ctx;

    /* Whether this backend can run node (op and attributes) of g. */
    int (*supports)(struct exec_backend *be, const struct graph *g, const struct graph_node *n);
    /* Whether post (of the given kind) may be fused after primary, which
     * already has npost_before fused operations. */
    int (*supports_post)(struct exec_backend *be, const struct graph *g,
                         const struct graph_node *primary, const struct graph_node *post,
                         enum exec_post_kind kind, int npost_before);
    /* Nonzero: a BatchNormalization right after a Conv may be folded into it. */
    int folds_batchnorm;

    /* Per-thread execution context (a oneDNN stream); threads is the
     * compute thread count the context runs with. */
    void *(*context_create)(struct exec_backend *be, int threads);
    void (*context_begin)(struct exec_backend *be, void *context);  /* on the running thread */
    void (*context_free)(struct exec_backend *be, void *context);

    /* Model level. in[] are the step's inputs, out its output, at batch 1
     * (layout NULL). flags: the EXEC_W_* step_weights will get (a deferred
     * relayout is decided here, before any plan is built). */
    int (*step_init)(struct exec_backend *be, const struct graph *g, const struct exec_step *st,
                     const struct exec_tensor *in, const struct exec_tensor *out, unsigned flags,
                     void **state, char *err, size_t errlen);
    /* Bytes of prepared data step_weights will write for this step (its
     * region). persist: see step_weights. */
    uint64_t (*step_prepared_bytes)(struct exec_backend *be, const void *state, int persist);
    /* Prepare the step's weights from its raw parameters (params[k] points
     * at the bytes of st->params[k]) into region (step_prepared_bytes long,
     * 64-byte aligned, owned by the executor). flags: EXEC_W_*. Without
     * EXEC_W_PERSIST the bytes go away after the call and the backend must
     * copy what it keeps. */
    int (*step_weights)(struct exec_backend *be, void *context, void *state,
                        const void *const *params, unsigned flags, void *region);
    /* Bytes at the end of the step's region that only step_relayout writes
     * (0 if nothing is deferred); the executor faults in the rest early. */
    uint64_t (*step_deferred_bytes)(struct exec_backend *be, const void *state);
    /* Deferred relayout (EXEC_W_DEFER_LAYOUT), on the preparer thread, possibly
     * while runs execute: write the final layout of what step_weights left
     * in place into the region, without changing what node_run reads.
     * Returns 1 if it did work, 0 if nothing was deferred, or an error. */
    int (*step_relayout)(struct exec_backend *be, void *context, void *state);
    /* Switch node_run to the relaid weights. Called with no run active; the
     * executor rebuilds every plan afterwards (node_prepare depends on it). */
    void (*step_relayout_commit)(struct exec_backend *be, void *state);
    void (*step_free)(struct exec_backend *be, void *state);
    /* The step's prepared tensors once step_weights (and any relayout) ran:
     * up to max entries, weights first; 0 if the step keeps none a kernel
     * could read in place from a file. */
    int (*step_export)(struct exec_backend *be, void *state, struct exec_prepared *out, int max);
    /* 1 if the step's weights are stored prepared (graph_param.layout) in a
     * layout other than the one its kernel wants here: step_weights then
     * re-prepares them from the stored layout. */
    int (*step_stored_mismatch)(struct exec_backend *be, const void *state);
    /* What prepared layouts made here are for ("onednn-2.6.3/avx512_core"). */
    const char *(*target)(struct exec_backend *be);

    /* Plan level. inplace_mask bit k: input k dies at this step and its
     * buffer may be overwritten (then alias_input = k is allowed for a write).
     * out_plain: the output must be plain (a model output). Fills out->layout
     * (owned by the node state) and out->nbytes. */
    int (*node_prepare)(struct exec_backend *be, void *step_state, const struct exec_tensor *in,
                        unsigned inplace_mask, int out_plain, struct exec_tensor *out,
                        struct exec_node_plan *plan, char *err, size_t errlen);
    int (*node_run)(struct exec_backend *be, void *context, void *step_state, void *node_state,
                    void *const *in, void *out, void *scratch);
    void (*node_free)(struct exec_backend *be, void *node_state);

    void (*destroy)(struct exec_backend *be);
};

#endif
