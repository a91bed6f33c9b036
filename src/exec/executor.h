/* executor: runs a model (struct graph) on a compute backend, starting
 * before all of its parameters have arrived.
 *
 * Life of a model:
 *   exec_model_create(graph)        shapes checked, nodes grouped into fused
 *                                   steps, weight layouts fixed, a preparer
 *                                   thread started; no parameter needed yet.
 *   exec_batch_arrived(i, bytes)    from any thread, in any order: parameter
 *                                   batch i is available. The preparer turns
 *                                   it into prepared weights (BN folding,
 *                                   reorders), in batch order, then opens
 *                                   gate i.
 *   exec_run(batch size, inputs)    runs the steps in order; before a step
 *                                   whose parameters are in batch i it waits
 *                                   on gate i. Groups whose batches are in
 *                                   compute while later batches still arrive.
 * Plans (shapes, kernels, activation memory) are built once per batch size
 * and cached; prepared weights are shared by all plans and stay in the
 * model, so a resident model re-runs without any preparation.
 *
 * Determinism: kernels, layouts and the order of operations depend only on
 * the graph, the batch size and the thread count, never on when parameters
 * arrived, so a pipelined run gives bit-identical output to a run with every
 * batch present.
 *
 * Thread safety: exec_batch_arrived/exec_batch_failed may be called from
 * any thread at any time; runs of one model are serialised by a lock. */
#ifndef PIPEPS_EXEC_EXECUTOR_H
#define PIPEPS_EXEC_EXECUTOR_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "exec/backend.h"
#include "model/graph.h"

struct exec_model;

struct exec_options {
    int threads;          /* compute threads (OpenMP, shared with oneDNN); 0 = 2 */
    int prep_threads;     /* threads of the preparer thread, which works only while no run
                           * is active (a run blocked on a gate prepares with its own
                           * threads); 0 = 1 */
    /* 1 (default): the bytes given to exec_batch_arrived stay valid until
     * exec_model_destroy and parameters that need no transformation are
     * used in place (zero copy, e.g. from a shared-memory pool).
     * 0: the bytes need only stay valid until exec_wait_prepared() returns
     * (all batches prepared); the model copies whatever it keeps. */
    int params_persist;
    int no_fusion;        /* debugging: every node its own step */
    int profile;          /* accumulate per-step times (exec_profile_print) */
    /* Fault in the prepared-weights memory inside exec_model_create (costs
     * about 0.7 ms per MB there) instead of lazily while waiting for the
     * first batches; preparing a batch then writes at memory speed. */
    int prefault;
    /* 0 (default): with params_persist, weights that the kernels also take
     * in their raw layout (matmul) are used in place for the first runs and
     * reordered into the faster layout afterwards, between runs (see
     * exec_finish_layout), so a cold model waits for no reorder. 1: reorder
     * every weight before its gate opens. */
    int eager_layout;
};
void exec_options_default(struct exec_options *o);

/* Per-run timing, in milliseconds. */
struct exec_timing {
    double total_ms;    /* the whole exec_run call */
    double plan_ms;     /* building the plan for a new batch size (0 when cached) */
    double wait_ms;     /* blocked on gates (parameters not yet prepared), including prep_ms */
    double prep_ms;     /* part of wait_ms this run spent preparing arrived batches itself */
    double compute_ms;  /* running steps */
    int gates_waited;   /* how many gates blocked */
};

/* Build a model for g (copied; g may be freed afterwards). g must pass
 * graph_validate; shapes and op attributes are checked here. backend NULL
 * selects the CPU backend. err receives a message on failure. */
int exec_model_create(struct exec_model **out, const struct graph *g,
                      const struct exec_options *opt, char *err, size_t errlen);
/* Stops the preparer (a run blocked on a gate returns PPS_ECANCELED first)
 * and frees everything. */
void exec_model_destroy(struct exec_model *m);
const struct graph *exec_model_graph(const struct exec_model *m);

/* Parameter batch i is available at bytes (len must equal the graph's batch
 * size). See exec_options.params_persist for how long bytes must stay valid.
 * Returns PPS_EINVAL for a bad index or length, PPS_EEXISTS if it arrived
 * already. */
int exec_batch_arrived(struct exec_model *m, int batch, const void *bytes, uint64_t len);
/* Parameters will not come (fetch failed, cache gone): runs blocked on a
 * gate that is not open return err (a negative PPS_E* code). */
void exec_batch_failed(struct exec_model *m, int err);
/* Block until every batch is prepared (or failure: returns its code),
 * preparing arrived batches on the calling thread with the model's compute
 * threads meanwhile (the stop-and-start mode of a server). */
int exec_wait_prepared(struct exec_model *m);
/* Finish the deferred relayouts now on the calling thread with the model's
 * compute threads (runs wait meanwhile) and switch to the final layouts.
 * Returns the number of steps switched now (0: none deferred, or switched
 * already), or PPS_EBUSY if some batch is not prepared yet. Without it the preparer
 * thread does the same work whenever no run is active. */
int exec_finish_layout(struct exec_model *m);
/* The same, in slices of about a millisecond of work: stop(arg) is asked
 * after each and a nonzero answer returns at once (0 switched; the work
 * done is kept and the next call goes on from there). */
int exec_finish_layout_until(struct exec_model *m, int (*stop)(void *arg), void *arg);
/* 1 once every step runs on its final weight layout (nothing deferred). */
int exec_layout_final(struct exec_model *m);
/* Number of open gates (batches prepared), and the total. */
int exec_batches_prepared(struct exec_model *m);
int exec_batch_count(const struct exec_model *m);

/* Shape of model input/output idx at batch size batch (layout NULL). */
int exec_input_info(struct exec_model *m, int idx, int64_t batch, struct exec_tensor *t);
int exec_output_info(struct exec_model *m, int idx, int64_t batch, struct exec_tensor *t,
                     char *err, size_t errlen);

/* Run the model at batch size batch. inputs[i] holds input i (C order,
 * input_bytes[i] bytes, checked against the shape), or NULL for an optional
 * input left out (graph_io: every element its fill value); outputs[i]
 * receives output i (exec_output_info gives its size). Blocks on gates as
 * needed. timing may be NULL. Int64 inputs that index tables (token ids,
 * token types, a mask read through a table) must be in [0, rows), negative
 * ids included: otherwise PPS_ERANGE, before anything runs, with err naming
 * the input, the position and the value. */
int exec_run(struct exec_model *m, int64_t batch, const void *const *inputs,
             const uint64_t *input_bytes, void *const *outputs, struct exec_timing *timing,
             char *err, size_t errlen);

/* Build (and cache) the plan for batch size batch now, without running:
 * its kernels are created (oneDNN JIT-compiles them and keeps them in its
 * process-wide primitive cache, so another model instance of the same
 * architecture finds them ready). Needs no parameters. */
int exec_model_warm(struct exec_model *m, int64_t batch, char *err, size_t errlen);
/* Memory this model owns: prepared weights plus the activation arenas of
 * its cached plans (parameter bytes used in place are not counted). */
uint64_t exec_model_memory_bytes(const struct exec_model *m);
/* Drop cached plans (their arenas); prepared weights stay. */
void exec_model_trim(struct exec_model *m);

/* Per-op time summary of profiled runs (options.profile). */
void exec_profile_print(struct exec_model *m, FILE *out);
/* Steps after fusion, for tests and `pipeps run --verbose`. */
int exec_model_nsteps(const struct exec_model *m);
const struct exec_step *exec_model_step(const struct exec_model *m, int i);

/* Step i's prepared tensors (see exec_backend.step_export), for writing a
 * loading-optimized model: valid until the model is destroyed, once every
 * batch is prepared and (for deferred layouts) exec_finish_layout ran.
 * Returns how many were written to out (0: the step keeps none). */
int exec_step_export(struct exec_model *m, int i, struct exec_prepared *out, int max);
/* The target this build's kernels prepare layouts for ("onednn-2.6.3/avx512_core"). */
const char *exec_target(void);

#endif
