/* executor: plans, gates, the preparer thread and the run loop (see
 * executor.h for the model's life cycle).
 *
 * Concurrency: m->mu guards the batch table, the gate counter and the
 * failure code; the preparer thread is the only writer of prepared weights
 * and publishes them by advancing m->prepared under m->mu, which is what
 * makes them visible to a run that waited on the gate. m->run_mu serialises
 * runs (a plan's arena is used by one run at a time) and the plan cache.
 *
 * Deferred relayout: with persistent parameters a backend may run a step on
 * its parameters in place (a slower layout, no preparation) and reorder
 * them afterwards. Once every batch is prepared, the preparer (only while no
 * run is active) or exec_finish_layout relays the steps one by one; the
 * next run, or exec_finish_layout, commits the switch under run_mu and drops
 * the plans, which are rebuilt for the new layouts.
 *
 * The easy thing to get wrong: a step may only be run once every batch
 * holding one of its parameters is prepared; gates open strictly in batch
 * order, so "gate i open" means batches 0..i are prepared. */
#include "exec/executor.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "exec/cpu/cpu_backend.h"
#include "exec/exec_mem.h"
#include "exec/fuse.h"
#include "exec/memplan.h"
#include "exec/shape.h"

#define ARENA_ALIGN 64

enum root_kind { ROOT_ARENA = 0, ROOT_INPUT = 1 };

struct exec_plan {
    int64_t batch;
    struct exec_tensor *vals;        /* [nvalues] shapes and layouts */
    struct exec_node_plan *np;       /* [nsteps] */
    int *prepared_ok;                /* [nsteps] node_prepare succeeded (for freeing) */
    int32_t *vroot;                  /* [nvalues] root index of each value's buffer */
    int nroots;
    struct memplan_buf *roots;       /* [nroots + nsteps]: value roots, then step scratch */
    uint8_t *root_kind;              /* [nroots] */
    int32_t *root_input;             /* [nroots] model input index for ROOT_INPUT */
    uint8_t *arena;                  /* exec_mem block */
    uint64_t arena_bytes, arena_block;
    void **vptr;                     /* [nvalues] addresses for the current run */
    void **fill;                     /* [ninputs] optional inputs' fill-value buffers (NULL: required) */
    struct exec_plan *next;
};

struct exec_model {
    struct graph g;                  /* own deep copy */
    struct exec_backend *be;
    struct exec_options opt;
    int nsteps;
    struct exec_step *steps;
    void **step_state;               /* [nsteps] backend's model-level state */
    struct exec_tensor *shape1;      /* [nvalues] shapes at batch 1 (or the fixed batch) */
    int64_t *in_rows;                /* [ninputs] rows of the tables Gathers index with
                                      * int64 input i (the smallest), 0: none */
    int32_t *prep_first, *prep_list; /* CSR: steps prepared with each batch */
    uint8_t *warena;                 /* prepared weights of all steps (exec_mem block) */
    uint64_t warena_bytes, warena_block;
    uint64_t *woff;                  /* [nsteps] each step's region in warena */
    uint64_t *wfront;                /* [nsteps] bytes of each region written before its gate
                                      * opens (the rest only by a deferred relayout) */
    int pf_step;                     /* idle prefault cursor: step, offset in its front part; */
    uint64_t pf_off;                 /* guarded by mu; pf_step == nsteps: done */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    const void **batch_data;         /* [nbatches], guarded by mu */
    int32_t prepared;                /* gates 0..prepared-1 are open; guarded by mu */
    int32_t claimed;                 /* batches 0..claimed-1 taken for preparation; guarded by mu */
    uint8_t *done;                   /* [nbatches] batch prepared; guarded by mu */
    int running;                     /* a run (or exec_wait_prepared) is active; guarded by mu */
    int relayout_next;               /* next step to relayout; guarded by mu */
    int relayout_busy;               /* relayouts in progress; guarded by mu */
    int relayout_did;                /* steps relaid; guarded by mu */
    int relayout_failed;             /* a relayout failed: stay in place; guarded by mu */
    int relayout_committed;          /* final layouts in use (or nothing deferred); guarded by mu */
    int failed;                      /* sticky PPS_E* code; guarded by mu */
    int stop;
    pthread_t preparer;
    int preparer_started;

    pthread_mutex_t run_mu;
    struct exec_plan *plans;         /* guarded by run_mu */
    void *run_ctx;                   /* backend context of the running thread */
    double *prof_ms;                 /* [nsteps] when profiling: total */
    double *prof_min;                /* [nsteps] fastest run of each step */
    int64_t *prof_runs;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void exec_options_default(struct exec_options *o)
{
    memset(o, 0, sizeof *o);
    o->threads = 2;
    o->prep_threads = 1;
    o->params_persist = 1;
}

static void graph_copy(struct graph *dst, const struct graph *src)
{
    *dst = *src;
    dst->nodes = pps_xmalloc((unsigned long)(src->nnodes ? src->nnodes : 1) * sizeof *dst->nodes);
    if (src->nnodes) memcpy(dst->nodes, src->nodes, (size_t)src->nnodes * sizeof *dst->nodes);
    dst->node_cap = src->nnodes;
    dst->params = pps_xmalloc((unsigned long)(src->nparams ? src->nparams : 1) * sizeof *dst->params);
    if (src->nparams) memcpy(dst->params, src->params, (size_t)src->nparams * sizeof *dst->params);
    dst->param_cap = src->nparams;
    dst->batches = pps_xmalloc((unsigned long)(src->nbatches ? src->nbatches : 1) * sizeof *dst->batches);
    if (src->nbatches) memcpy(dst->batches, src->batches, (size_t)src->nbatches * sizeof *dst->batches);
}

/* ---- preparation ------------------------------------------------------ */

#define PREFAULT_CHUNK (2u << 20)

/* Fault in the pages of [p, p+len) without changing their contents (another
 * thread may be writing prepared weights next to them). */
static void prefault(uint8_t *p, uint64_t len)
{
    uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, e = ((uintptr_t)p + len) & ~(uintptr_t)4095;
    if (e <= a) return;
#ifdef MADV_POPULATE_WRITE
    if (madvise((void *)a, e - a, MADV_POPULATE_WRITE) == 0) return;
#endif
    for (uintptr_t o = a; o < e; o += 4096) __atomic_fetch_or((uint8_t *)o, 0, __ATOMIC_RELAXED);
}

/* The EXEC_W_* flags of this model's steps. */
static unsigned weight_flags(const struct exec_model *m)
{
    unsigned f = 0;
    if (m->opt.params_persist) f |= EXEC_W_PERSIST;
    if (m->opt.params_persist && !m->opt.eager_layout) f |= EXEC_W_DEFER_LAYOUT;
    return f;
}

/* Prepare every step whose parameters are complete with batch b. Runs
 * without the lock: batch b was claimed by the caller, and batches 0..b
 * have arrived (claims go in order), so every parameter read is there. */
static int prepare_batch(struct exec_model *m, void *ctx, int32_t b)
{
    const void *params[EXEC_STEP_MAX_PARAMS];
    m->be->context_begin(m->be, ctx);
    for (int32_t k = m->prep_first[b]; k < m->prep_first[b + 1]; k++) {
        int s = m->prep_list[k];
        const struct exec_step *st = &m->steps[s];
        for (int p = 0; p < st->nparams; p++) {
            const struct graph_param *gp = &m->g.params[st->params[p]];
            params[p] = (const uint8_t *)m->batch_data[gp->batch] + gp->offset;
        }
        int rc = m->be->step_weights(m->be, ctx, m->step_state[s], params, weight_flags(m),
                                     m->warena + m->woff[s]);
        if (rc) {
            log_error("exec: preparing weights of node '%s' failed: %s", m->g.nodes[st->node].name,
                      pps_strerror(rc));
            return rc;
        }
    }
    return 0;
}

/* One unit of preparation work, called with m->mu held by an idle thread
 * (the preparer, or a run blocked on a gate). Claims the next arrived batch
 * and prepares it, or else faults in a chunk of the weights memory.
 * Returns 1 if it did something (the lock was dropped meanwhile), 0 if
 * there was nothing to do. */
static int help_prepare(struct exec_model *m, void *ctx)
{
    int32_t b = m->claimed;
    if (!m->failed && !m->stop && b < m->g.nbatches && m->batch_data[b]) {
        m->claimed = b + 1;
        pthread_mutex_unlock(&m->mu);
        int rc = prepare_batch(m, ctx, b);
        pthread_mutex_lock(&m->mu);
        if (rc) {
            if (!m->failed) m->failed = rc;
        } else {
            /* Two threads may finish out of order: open gates in order. */
            m->done[b] = 1;
            while (m->prepared < m->g.nbatches && m->done[m->prepared]) m->prepared++;
        }
        pthread_cond_broadcast(&m->cv);
        return 1;
    }
    while (m->pf_step < m->nsteps && m->pf_off >= m->wfront[m->pf_step]) {
        m->pf_step++;
        m->pf_off = 0;
    }
    if (!m->failed && !m->stop && m->pf_step < m->nsteps) {
        /* Nothing has arrived: fault in the pages preparation will write
         * (not those only a later relayout writes), so that preparing a
         * batch later writes at memory speed. */
        uint8_t *p = m->warena + m->woff[m->pf_step] + m->pf_off;
        uint64_t len = m->wfront[m->pf_step] - m->pf_off;
        if (len > PREFAULT_CHUNK) len = PREFAULT_CHUNK;
        m->pf_off += len;
        pthread_mutex_unlock(&m->mu);
        prefault(p, len);
        pthread_mutex_lock(&m->mu);
        return 1;
    }
    return 0;
}

/* Whether deferred relayout work remains to be handed out. Under m->mu. */
static int relayout_left(const struct exec_model *m)
{
    return m->prepared >= m->g.nbatches && !m->relayout_committed && !m->relayout_failed &&
           m->relayout_next < m->nsteps;
}

/* Relayout one slice of the next step (see the top of the file; a big
 * weight takes several). One thread at a time. Called with m->mu held once
 * every batch is prepared; returns 1 if it did a slice. */
static int relayout_one(struct exec_model *m, void *ctx)
{
    if (m->stop || m->failed || !relayout_left(m) || m->relayout_busy) return 0;
    int s = m->relayout_next;
    m->relayout_busy++;
    pthread_mutex_unlock(&m->mu);
    int rc = m->be->step_relayout(m->be, ctx, m->step_state[s]);
    pthread_mutex_lock(&m->mu);
    m->relayout_busy--;
    if (rc < 0) {
        log_warn("exec: relayout of node '%s' failed (%s): keeping its weights in place",
                 m->g.nodes[m->steps[s].node].name, pps_strerror(rc));
        m->relayout_failed = 1;
    } else if (rc != 2) {
        m->relayout_next++;     /* the step is done */
        m->relayout_did += rc == 1;
    }
    pthread_cond_broadcast(&m->cv);
    return 1;
}

/* Whether every relayout is done and ready to commit. Under m->mu. */
static int relayout_ready(const struct exec_model *m)
{
    return m->prepared >= m->g.nbatches && !m->relayout_committed && !m->relayout_failed &&
           m->relayout_next >= m->nsteps && m->relayout_busy == 0;
}

static void plans_drop(struct exec_model *m);

/* Switch every step to its relaid weights and drop the plans, once every
 * relayout is done. Called with run_mu held (no run active) and m->mu not
 * held. Returns the number of steps switched (0: not ready, or nothing). */
static int relayout_commit(struct exec_model *m)
{
    pthread_mutex_lock(&m->mu);
    int commit = relayout_ready(m);
    if (commit) m->relayout_committed = 1;
    int did = m->relayout_did;
    pthread_mutex_unlock(&m->mu);
    if (!commit || !did) return 0;
    for (int s = 0; s < m->nsteps; s++) m->be->step_relayout_commit(m->be, m->step_state[s]);
    plans_drop(m);
    log_info("exec: %s: %d steps switched to weights relaid after the cold run", m->g.name, did);
    return did;
}

/* The preparer works only while no run is active: a run prepares batches
 * itself when it reaches a gate that is not open (with all its compute
 * threads), so the two never compete for the cores. After the batches it
 * does the deferred relayouts, between runs, one step at a time. */
static void *preparer_main(void *arg)
{
    struct exec_model *m = arg;
    void *ctx = m->be->context_create(m->be, m->opt.prep_threads);
    pthread_mutex_lock(&m->mu);
    while (!m->stop && !m->failed && (m->claimed < m->g.nbatches || m->prepared < m->g.nbatches ||
                                      relayout_left(m))) {
        if (m->running || (!help_prepare(m, ctx) && !relayout_one(m, ctx)))
            pthread_cond_wait(&m->cv, &m->mu);
    }
    pthread_mutex_unlock(&m->mu);
    m->be->context_free(m->be, ctx);
    return NULL;
}

int exec_batch_arrived(struct exec_model *m, int batch, const void *bytes, uint64_t len)
{
    if (batch < 0 || batch >= m->g.nbatches || !bytes) return PPS_EINVAL;
    if (len != m->g.batches[batch].nbytes) return PPS_EINVAL;
    pthread_mutex_lock(&m->mu);
    int rc = 0;
    if (m->batch_data[batch]) {
        rc = PPS_EEXISTS;
    } else {
        m->batch_data[batch] = bytes;
        pthread_cond_broadcast(&m->cv);
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

void exec_batch_failed(struct exec_model *m, int err)
{
    pthread_mutex_lock(&m->mu);
    if (!m->failed) m->failed = err < 0 ? err : PPS_EFETCH;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

int exec_wait_prepared(struct exec_model *m)
{
    /* The caller's thread is idle until then: let it prepare too, with the
     * model's compute threads (it acts as a run, so runs are excluded). */
    pthread_mutex_lock(&m->run_mu);
    m->be->context_begin(m->be, m->run_ctx);
    pthread_mutex_lock(&m->mu);
    m->running = 1;
    while (!m->failed && !m->stop && m->prepared < m->g.nbatches)
        if (!help_prepare(m, m->run_ctx)) pthread_cond_wait(&m->cv, &m->mu);
    int rc = m->prepared >= m->g.nbatches ? 0 : (m->failed ? m->failed : PPS_ECANCELED);
    m->running = 0;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    pthread_mutex_unlock(&m->run_mu);
    return rc;
}

int exec_finish_layout(struct exec_model *m) { return exec_finish_layout_until(m, NULL, NULL); }

int exec_finish_layout_until(struct exec_model *m, int (*stop)(void *arg), void *arg)
{
    pthread_mutex_lock(&m->run_mu);
    m->be->context_begin(m->be, m->run_ctx);
    pthread_mutex_lock(&m->mu);
    int rc = m->prepared >= m->g.nbatches ? 0 : PPS_EBUSY;
    if (!rc) {
        m->running = 1; /* the preparer steps aside (after its slice in progress) */
        while (relayout_left(m) && !m->stop && !m->failed) {
            if (m->relayout_busy) {
                pthread_cond_wait(&m->cv, &m->mu);
                continue;
            }
            relayout_one(m, m->run_ctx);
            if (stop) {
                pthread_mutex_unlock(&m->mu);
                int enough = stop(arg);
                pthread_mutex_lock(&m->mu);
                if (enough) break;
            }
        }
        while (m->relayout_busy > 0) pthread_cond_wait(&m->cv, &m->mu);
        m->running = 0;
        pthread_cond_broadcast(&m->cv);
    }
    pthread_mutex_unlock(&m->mu);
    if (!rc) rc = relayout_commit(m);
    pthread_mutex_unlock(&m->run_mu);
    return rc;
}

int exec_layout_final(struct exec_model *m)
{
    pthread_mutex_lock(&m->mu);
    int fin = m->relayout_committed || !(weight_flags(m) & EXEC_W_DEFER_LAYOUT);
    pthread_mutex_unlock(&m->mu);
    return fin;
}

int exec_batches_prepared(struct exec_model *m)
{
    pthread_mutex_lock(&m->mu);
    int n = m->prepared;
    pthread_mutex_unlock(&m->mu);
    return n;
}

int exec_batch_count(const struct exec_model *m) { return m->g.nbatches; }

/* Wait until gate is open, preparing arrived batches meanwhile (with the
 * run's threads). Returns 0, or the failure code. Called with m->mu held. */
static int wait_gate(struct exec_model *m, int32_t gate, struct exec_timing *t)
{
    if (m->prepared > gate) return 0;
    double t0 = now_ms();
    while (m->prepared <= gate && !m->failed && !m->stop) {
        double p0 = now_ms();
        if (help_prepare(m, m->run_ctx)) t->prep_ms += now_ms() - p0;
        else pthread_cond_wait(&m->cv, &m->mu);
    }
    int rc = m->prepared > gate ? 0 : (m->failed ? m->failed : PPS_ECANCELED);
    t->wait_ms += now_ms() - t0;
    t->gates_waited++;
    return rc;
}

/* ---- model creation --------------------------------------------------- */

/* in_rows: for each int64 input, the rows of the smallest table a Gather
 * indexes with it directly (token ids: the vocabulary). */
static void index_ranges(struct exec_model *m)
{
    const struct graph *g = &m->g;
    m->in_rows = pps_xcalloc((unsigned long)g->ninputs, sizeof *m->in_rows);
    for (int i = 0; i < g->nnodes; i++) {
        const struct graph_node *n = &g->nodes[i];
        if (n->op != GRAPH_OP_GATHER || n->ninputs != 1 || n->nparams != 1 ||
            n->inputs[0] >= g->ninputs || g->inputs[n->inputs[0]].dtype != GRAPH_I64)
            continue;
        const struct graph_param *p = &g->params[n->params[0]];
        int axis = shape_axis(graph_attr_int(n, "axis", 0), p->ndims);
        if (axis < 0) continue; /* shape inference refused it already */
        int64_t *r = &m->in_rows[n->inputs[0]];
        if (*r == 0 || p->dims[axis] < *r) *r = p->dims[axis];
    }
}

/* Every element of int64 input idx in [0, rows): indices into a table, as
 * PyTorch's embedding requires (ONNX's Gather would let -1 mean the last
 * row; a token id of -1 is a client's bug, not a request for row V-1). The
 * error names the input, the position and the value. */
static int check_index_input(const struct exec_model *m, int idx, const int64_t *v,
                             const struct exec_tensor *t, char *err, size_t errlen)
{
    int64_t rows = m->in_rows[idx];
    uint64_t n = shape_elems(t);
    for (uint64_t k = 0; k < n; k++) {
        if (v[k] >= 0 && v[k] < rows) continue;
        char pos[128];
        size_t len = 0;
        uint64_t rest = k;
        int64_t at[GRAPH_MAX_DIMS];
        for (int d = t->ndims - 1; d >= 0; d--) {
            at[d] = (int64_t)(rest % (uint64_t)t->dims[d]);
            rest /= (uint64_t)t->dims[d];
        }
        for (int d = 0; d < t->ndims && len < sizeof pos; d++)
            len += (size_t)snprintf(pos + len, sizeof pos - len, "%s%lld", d ? ", " : "",
                                    (long long)at[d]);
        return pps_fail(err, errlen, PPS_ERANGE, "input '%s' at [%s] is %lld, out of range [0, %lld)",
                        m->g.inputs[idx].name, pos, (long long)v[k], (long long)rows);
    }
    return 0;
}

int exec_model_create(struct exec_model **out, const struct graph *g,
                      const struct exec_options *opt, char *err, size_t errlen)
{
    *out = NULL;
    int rc = graph_validate(g, err, errlen);
    if (rc) return rc;
    if (g->nparams > 0 && g->nbatches < 1)
        return pps_fail(err, errlen, PPS_EINVAL,
                        "model '%s' has parameters but no batches", g->name);
    if (g->ninputs < 1 || g->noutputs < 1)
        return pps_fail(err, errlen, PPS_EINVAL, "model '%s' needs inputs and outputs", g->name);

    struct exec_model *m = pps_xcalloc(1, sizeof *m);
    if (opt) m->opt = *opt;
    else exec_options_default(&m->opt);
    if (m->opt.threads <= 0) m->opt.threads = 2;
    if (m->opt.prep_threads <= 0) m->opt.prep_threads = 1;
    graph_copy(&m->g, g);
    m->be = cpu_backend_get();
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    pthread_mutex_init(&m->run_mu, NULL);
    m->batch_data = pps_xcalloc((unsigned long)(g->nbatches ? g->nbatches : 1), sizeof *m->batch_data);
    m->done = pps_xcalloc((unsigned long)(g->nbatches ? g->nbatches : 1), 1);

    int32_t nv = graph_nvalues(g);
    m->shape1 = pps_xcalloc((unsigned long)nv, sizeof *m->shape1);
    struct exec_tensor *shape2 = pps_xcalloc((unsigned long)nv, sizeof *shape2);
    /* Shapes at batch 1 and 2 (fusion checks what changes with the batch);
     * a fixed-batch model (graph_fixed_batch) has only its own size. */
    int64_t fixed = graph_fixed_batch(&m->g);
    rc = shape_infer(&m->g, fixed ? fixed : 1, m->shape1, err, errlen);
    if (!rc) rc = shape_infer(&m->g, fixed ? fixed : 2, shape2, err, errlen);
    if (!rc)
        rc = fuse_build(&m->g, m->be, m->shape1, shape2, !m->opt.no_fusion, &m->steps,
                        &m->nsteps, err, errlen);
    free(shape2);
    if (rc) {
        exec_model_destroy(m);
        return rc;
    }

    index_ranges(m);
    for (int i = 0; i < g->ninputs; i++) {
        const struct graph_io *io = &g->inputs[i];
        if (io->optional && m->in_rows[i] && (io->fill < 0 || io->fill >= m->in_rows[i])) {
            rc = pps_fail(err, errlen, PPS_ESHAPE, "input '%s': fill value %lld outside [0, %lld)",
                          io->name, (long long)io->fill, (long long)m->in_rows[i]);
            exec_model_destroy(m);
            return rc;
        }
    }

    m->step_state = pps_xcalloc((unsigned long)(m->nsteps ? m->nsteps : 1), sizeof *m->step_state);
    struct exec_tensor in[EXEC_STEP_MAX_INPUTS];
    for (int s = 0; s < m->nsteps && !rc; s++) {
        const struct exec_step *st = &m->steps[s];
        for (int k = 0; k < st->ninputs; k++) in[k] = m->shape1[st->inputs[k]];
        rc = m->be->step_init(m->be, &m->g, st, in, &m->shape1[st->output], weight_flags(m),
                              &m->step_state[s], err, errlen);
    }
    if (rc) {
        exec_model_destroy(m);
        return rc;
    }

    int mismatched = 0;
    for (int s = 0; s < m->nsteps; s++) mismatched += m->be->step_stored_mismatch(m->be, m->step_state[s]);
    if (mismatched)
        log_warn("exec: model '%s': %d weight tensors were prepared for %s but this machine's kernels "
                 "(%s) want other layouts: preparing them at load instead (slower cold starts; "
                 "`pipeps repack` the kv.bin on this machine to fix)",
                 g->name, mismatched, g->target[0] ? g->target : "another target", m->be->target(m->be));

    /* One block for every step's prepared weights. */
    m->woff = pps_xcalloc((unsigned long)(m->nsteps ? m->nsteps : 1), sizeof *m->woff);
    m->wfront = pps_xcalloc((unsigned long)(m->nsteps ? m->nsteps : 1), sizeof *m->wfront);
    for (int s = 0; s < m->nsteps; s++) {
        m->woff[s] = m->warena_bytes;
        uint64_t need = m->be->step_prepared_bytes(m->be, m->step_state[s], m->opt.params_persist);
        m->wfront[s] = need - m->be->step_deferred_bytes(m->be, m->step_state[s]);
        m->warena_bytes += (need + 63) & ~(uint64_t)63;
    }
    if (m->warena_bytes) {
        int faulted;
        m->warena = exec_mem_get(m->warena_bytes, &m->warena_block, &faulted);
        if (!m->warena) {
            exec_model_destroy(m);
            return pps_fail(err, errlen, PPS_ENOMEM, "cannot map %llu bytes for prepared weights",
                        (unsigned long long)m->warena_bytes);
        }
        if (faulted) m->pf_step = m->nsteps; /* a recycled block */
        if (m->opt.prefault && !faulted) {
            prefault(m->warena, m->warena_bytes);
            m->pf_step = m->nsteps;
        }
    }

    /* Steps per preparation batch. */
    int32_t nb = m->g.nbatches;
    m->prep_first = pps_xcalloc((unsigned long)nb + 2, sizeof *m->prep_first);
    m->prep_list = pps_xmalloc((unsigned long)(m->nsteps ? m->nsteps : 1) * sizeof *m->prep_list);
    for (int s = 0; s < m->nsteps; s++)
        if (m->steps[s].prep_batch >= 0) m->prep_first[m->steps[s].prep_batch + 1]++;
    for (int32_t b = 0; b < nb; b++) m->prep_first[b + 1] += m->prep_first[b];
    int32_t *fill = pps_xcalloc((unsigned long)nb + 1, sizeof *fill);
    for (int s = 0; s < m->nsteps; s++) {
        int32_t b = m->steps[s].prep_batch;
        if (b >= 0) m->prep_list[m->prep_first[b] + fill[b]++] = s;
    }
    free(fill);

    if (m->opt.profile) {
        m->prof_ms = pps_xcalloc((unsigned long)(m->nsteps ? m->nsteps : 1), sizeof *m->prof_ms);
        m->prof_min = pps_xcalloc((unsigned long)(m->nsteps ? m->nsteps : 1), sizeof *m->prof_min);
        for (int s = 0; s < m->nsteps; s++) m->prof_min[s] = 1e30;
        m->prof_runs = pps_xcalloc(1, sizeof *m->prof_runs);
    }
    m->run_ctx = m->be->context_create(m->be, m->opt.threads);
    if (nb > 0) {
        if (pthread_create(&m->preparer, NULL, preparer_main, m) != 0) {
            exec_model_destroy(m);
            return pps_fail(err, errlen, PPS_ENOMEM, "cannot start the preparer thread");
        }
        m->preparer_started = 1;
    }
    *out = m;
    return 0;
}

static void plan_free(struct exec_model *m, struct exec_plan *p)
{
    if (!p) return;
    if (p->np)
        for (int s = 0; s < m->nsteps; s++)
            if (p->prepared_ok[s]) m->be->node_free(m->be, p->np[s].state);
    free(p->np);
    free(p->prepared_ok);
    free(p->vals);
    free(p->vroot);
    free(p->roots);
    free(p->root_kind);
    free(p->root_input);
    exec_mem_put(p->arena, p->arena_block);
    free(p->vptr);
    for (int i = 0; p->fill && i < m->g.ninputs; i++) free(p->fill[i]);
    free(p->fill);
    free(p);
}

/* Free every cached plan (they are rebuilt on demand). Under run_mu. */
static void plans_drop(struct exec_model *m)
{
    while (m->plans) {
        struct exec_plan *p = m->plans;
        m->plans = p->next;
        plan_free(m, p);
    }
}

void exec_model_destroy(struct exec_model *m)
{
    if (!m) return;
    if (m->preparer_started) {
        pthread_mutex_lock(&m->mu);
        m->stop = 1;
        pthread_cond_broadcast(&m->cv);
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->preparer, NULL);
    }
    pthread_mutex_lock(&m->run_mu);
    plans_drop(m);
    pthread_mutex_unlock(&m->run_mu);
    if (m->step_state)
        for (int s = 0; s < m->nsteps; s++)
            if (m->step_state[s]) m->be->step_free(m->be, m->step_state[s]);
    if (m->run_ctx) m->be->context_free(m->be, m->run_ctx);
    free(m->step_state);
    free(m->steps);
    free(m->shape1);
    free(m->in_rows);
    exec_mem_put(m->warena, m->warena_block);
    free(m->woff);
    free(m->wfront);
    free(m->prep_first);
    free(m->prep_list);
    free(m->batch_data);
    free(m->done);
    free(m->prof_ms);
    free(m->prof_min);
    free(m->prof_runs);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->run_mu);
    graph_free(&m->g);
    free(m);
}

const struct graph *exec_model_graph(const struct exec_model *m) { return &m->g; }
int exec_model_nsteps(const struct exec_model *m) { return m->nsteps; }
const struct exec_step *exec_model_step(const struct exec_model *m, int i) { return &m->steps[i]; }

/* ---- plans ------------------------------------------------------------- */

static int plan_build(struct exec_model *m, int64_t batch, struct exec_plan **out, char *err,
                      size_t errlen)
{
    const struct graph *g = &m->g;
    int32_t nv = graph_nvalues(g);
    int ns = m->nsteps;
    struct exec_plan *p = pps_xcalloc(1, sizeof *p);
    p->batch = batch;
    p->vals = pps_xcalloc((unsigned long)nv, sizeof *p->vals);
    p->np = pps_xcalloc((unsigned long)(ns ? ns : 1), sizeof *p->np);
    p->prepared_ok = pps_xcalloc((unsigned long)(ns ? ns : 1), sizeof *p->prepared_ok);
    p->vroot = pps_xmalloc((unsigned long)nv * sizeof *p->vroot);
    p->vptr = pps_xcalloc((unsigned long)nv, sizeof *p->vptr);
    /* At most one root per input and per step, plus one scratch per step. */
    int maxroots = g->ninputs + ns;
    p->roots = pps_xcalloc((unsigned long)(maxroots + ns), sizeof *p->roots);
    p->root_kind = pps_xcalloc((unsigned long)maxroots, 1);
    p->root_input = pps_xcalloc((unsigned long)maxroots, sizeof *p->root_input);
    int rc = shape_infer(g, batch, p->vals, err, errlen);
    if (rc) {
        plan_free(m, p);
        return rc;
    }
    p->fill = pps_xcalloc((unsigned long)g->ninputs, sizeof *p->fill);
    for (int i = 0; i < g->ninputs; i++) {
        if (!g->inputs[i].optional) continue;
        uint64_t n = shape_elems(&p->vals[i]);
        int64_t *f = malloc(n * sizeof *f);
        if (!f) {
            plan_free(m, p);
            return pps_fail(err, errlen, PPS_ENOMEM, "no memory for input '%s'", g->inputs[i].name);
        }
        for (uint64_t k = 0; k < n; k++) f[k] = g->inputs[i].fill;
        p->fill[i] = f;
    }

    /* Static last use of every value, in steps (model outputs: past the end). */
    int *last = pps_xmalloc((unsigned long)nv * sizeof *last);
    for (int32_t v = 0; v < nv; v++) last[v] = -1;
    for (int s = 0; s < ns; s++)
        for (int k = 0; k < m->steps[s].ninputs; k++) last[m->steps[s].inputs[k]] = s;
    for (int i = 0; i < g->noutputs; i++) last[g->outputs[i].value] = ns;
    int *is_output = pps_xcalloc((unsigned long)nv, sizeof *is_output);
    for (int i = 0; i < g->noutputs; i++) is_output[g->outputs[i].value] = 1;

    for (int32_t v = 0; v < nv; v++) p->vroot[v] = -1;
    int nroots = 0;
    for (int i = 0; i < g->ninputs; i++) {
        p->vroot[i] = nroots;
        p->root_kind[nroots] = ROOT_INPUT;
        p->root_input[nroots] = i;
        p->roots[nroots].size = p->vals[i].nbytes;
        p->roots[nroots].start = 0;
        p->roots[nroots].end = ns;
        nroots++;
    }
    /* Latest use of any value currently living in each root. */
    int *root_last = pps_xcalloc((unsigned long)maxroots, sizeof *root_last);
    for (int r = 0; r < nroots; r++) root_last[r] = ns;

    struct exec_tensor in[EXEC_STEP_MAX_INPUTS];
    for (int s = 0; s < ns && !rc; s++) {
        const struct exec_step *st = &m->steps[s];
        unsigned mask = 0;
        for (int k = 0; k < st->ninputs; k++) {
            int32_t v = st->inputs[k];
            in[k] = p->vals[v];
            int r = p->vroot[v];
            int ok = p->root_kind[r] == ROOT_ARENA && root_last[r] == s && !is_output[v];
            for (int j = 0; j < st->ninputs && ok; j++)
                if (j != k && p->vroot[st->inputs[j]] == r) ok = 0;
            if (ok) mask |= 1u << k;
        }
        struct exec_tensor *o = &p->vals[st->output];
        rc = m->be->node_prepare(m->be, m->step_state[s], in, mask, is_output[st->output], o,
                                 &p->np[s], err, errlen);
        if (rc) break;
        p->prepared_ok[s] = 1;
        int a = p->np[s].alias_input;
        if (a >= 0) {
            PPS_ASSERT(a < st->ninputs);
            int r = p->vroot[st->inputs[a]];
            p->vroot[st->output] = r;
            if (o->nbytes > p->roots[r].size) {
                PPS_ASSERT(p->root_kind[r] == ROOT_ARENA);
                p->roots[r].size = o->nbytes;
            }
            if (last[st->output] > root_last[r]) root_last[r] = last[st->output];
        } else {
            int r = nroots++;
            p->vroot[st->output] = r;
            p->root_kind[r] = ROOT_ARENA;
            p->roots[r].size = o->nbytes;
            p->roots[r].start = s;
            root_last[r] = last[st->output] > s ? last[st->output] : s;
        }
    }
    if (rc) {
        free(last); free(is_output); free(root_last);
        plan_free(m, p);
        return rc;
    }
    for (int r = 0; r < nroots; r++) p->roots[r].end = root_last[r];
    p->nroots = nroots;
    /* Arena roots and scratch go through the planner; model-input roots are
     * the caller's memory, so give them size 0 there. */
    struct memplan_buf *plan_bufs = p->roots;
    for (int r = 0; r < nroots; r++)
        if (p->root_kind[r] == ROOT_INPUT) plan_bufs[r].size = 0;
    for (int s = 0; s < ns; s++) {
        plan_bufs[nroots + s].size = p->np[s].scratch_bytes;
        plan_bufs[nroots + s].start = s;
        plan_bufs[nroots + s].end = s;
    }
    p->arena_bytes = memplan_assign(plan_bufs, nroots + ns, ARENA_ALIGN);
    free(last);
    free(is_output);
    free(root_last);
    if (p->arena_bytes) {
        int faulted;
        p->arena = exec_mem_get(p->arena_bytes, &p->arena_block, &faulted);
        if (!p->arena) {
            plan_free(m, p);
            return pps_fail(err, errlen, PPS_ENOMEM, "cannot allocate %llu bytes of activations",
                        (unsigned long long)p->arena_bytes);
        }
        /* Fault the pages in now, off the first run's critical path. */
        if (!faulted) prefault(p->arena, p->arena_bytes);
    }
    *out = p;
    return 0;
}

static struct exec_plan *plan_find(struct exec_model *m, int64_t batch)
{
    for (struct exec_plan *p = m->plans; p; p = p->next)
        if (p->batch == batch) return p;
    return NULL;
}

int exec_input_info(struct exec_model *m, int idx, int64_t batch, struct exec_tensor *t)
{
    if (idx < 0 || idx >= m->g.ninputs || batch < 1) return PPS_EINVAL;
    *t = m->shape1[idx];
    t->dims[0] = batch;
    t->nbytes = shape_elems(t) * shape_dtype_size(t->dtype);
    return 0;
}

int exec_output_info(struct exec_model *m, int idx, int64_t batch, struct exec_tensor *t,
                     char *err, size_t errlen)
{
    if (idx < 0 || idx >= m->g.noutputs || batch < 1) return PPS_EINVAL;
    int32_t nv = graph_nvalues(&m->g);
    struct exec_tensor *vals = malloc((size_t)nv * sizeof *vals);
    if (!vals) return PPS_ENOMEM;
    int rc = shape_infer(&m->g, batch, vals, err, errlen);
    if (!rc) *t = vals[m->g.outputs[idx].value];
    free(vals);
    return rc;
}

/* ---- running ----------------------------------------------------------- */

int exec_run(struct exec_model *m, int64_t batch, const void *const *inputs,
             const uint64_t *input_bytes, void *const *outputs, struct exec_timing *timing,
             char *err, size_t errlen)
{
    struct exec_timing t;
    memset(&t, 0, sizeof t);
    double t0 = now_ms();
    if (batch < 1 || batch > (1 << 20))
        return pps_fail(err, errlen, PPS_EINVAL, "bad batch size %lld", (long long)batch);
    for (int i = 0; i < m->g.ninputs; i++) {
        struct exec_tensor ti;
        exec_input_info(m, i, batch, &ti);
        if (!inputs[i] && m->g.inputs[i].optional) continue;
        if (!inputs[i])
            return pps_fail(err, errlen, PPS_EINVAL, "input '%s' is required", m->g.inputs[i].name);
        if (input_bytes[i] != ti.nbytes)
            return pps_fail(err, errlen, PPS_ESHAPE, "input '%s': %llu bytes given, %llu expected",
                        m->g.inputs[i].name, (unsigned long long)input_bytes[i],
                        (unsigned long long)ti.nbytes);
        if (m->in_rows[i]) {
            int rc = check_index_input(m, i, inputs[i], &ti, err, errlen);
            if (rc) return rc;
        }
    }
    pthread_mutex_lock(&m->run_mu);
    (void)relayout_commit(m); /* if the preparer finished the relayout between runs */
    struct exec_plan *p = plan_find(m, batch);
    int rc = 0;
    if (!p) {
        double tp = now_ms();
        rc = plan_build(m, batch, &p, err, errlen);
        if (rc) {
            pthread_mutex_unlock(&m->run_mu);
            return rc;
        }
        p->next = m->plans;
        m->plans = p;
        t.plan_ms = now_ms() - tp;
    }
    m->be->context_begin(m->be, m->run_ctx);

    int32_t nv = graph_nvalues(&m->g);
    for (int32_t v = 0; v < nv; v++) {
        int r = p->vroot[v];
        if (r < 0) continue;
        if (p->root_kind[r] == ROOT_INPUT) {
            int i = p->root_input[r];
            p->vptr[v] = inputs[i] ? (void *)inputs[i] : p->fill[i];
        } else {
            p->vptr[v] = p->arena + p->roots[r].offset;
        }
    }
    void *in[EXEC_STEP_MAX_INPUTS];
    pthread_mutex_lock(&m->mu);
    m->running = 1;
    int32_t open = m->prepared; /* gates known open, so most steps skip the lock */
    pthread_mutex_unlock(&m->mu);
    double tc = now_ms();
    for (int s = 0; s < m->nsteps; s++) {
        const struct exec_step *st = &m->steps[s];
        if (st->gate >= 0 && st->gate >= open) {
            pthread_mutex_lock(&m->mu);
            rc = wait_gate(m, st->gate, &t);
            open = m->prepared;
            pthread_mutex_unlock(&m->mu);
            if (rc) {
                pps_fail(err, errlen, rc, "parameters for batch %d unavailable: %s", st->gate,
                     pps_strerror(rc));
                break;
            }
        }
        for (int k = 0; k < st->ninputs; k++) in[k] = p->vptr[st->inputs[k]];
        void *scratch = p->np[s].scratch_bytes ? p->arena + p->roots[p->nroots + s].offset : NULL;
        double ts = m->prof_ms ? now_ms() : 0;
        rc = m->be->node_run(m->be, m->run_ctx, m->step_state[s], p->np[s].state, in,
                             p->vptr[st->output], scratch);
        if (m->prof_ms) {
            double d = now_ms() - ts;
            m->prof_ms[s] += d;
            if (d < m->prof_min[s]) m->prof_min[s] = d;
        }
        if (rc) {
            pps_fail(err, errlen, rc, "node '%s' (%s) failed: %s", m->g.nodes[st->node].name,
                 graph_op_name(m->g.nodes[st->node].op), pps_strerror(rc));
            break;
        }
    }
    pthread_mutex_lock(&m->mu);
    m->running = 0;
    pthread_cond_broadcast(&m->cv); /* the preparer may work again */
    pthread_mutex_unlock(&m->mu);
    if (!rc) {
        for (int i = 0; i < m->g.noutputs; i++) {
            int32_t v = m->g.outputs[i].value;
            memcpy(outputs[i], p->vptr[v], shape_elems(&p->vals[v]) * shape_dtype_size(p->vals[v].dtype));
        }
        if (m->prof_runs) (*m->prof_runs)++;
    }
    pthread_mutex_unlock(&m->run_mu);
    double t1 = now_ms();
    t.total_ms = t1 - t0;
    t.compute_ms = t1 - tc - t.wait_ms;
    if (timing) *timing = t;
    return rc;
}

uint64_t exec_model_memory_bytes(const struct exec_model *m)
{
    uint64_t total = m->warena_bytes;
    pthread_mutex_lock((pthread_mutex_t *)&m->run_mu);
    for (const struct exec_plan *p = m->plans; p; p = p->next) total += p->arena_bytes;
    pthread_mutex_unlock((pthread_mutex_t *)&m->run_mu);
    return total;
}

void exec_model_trim(struct exec_model *m)
{
    pthread_mutex_lock(&m->run_mu);
    plans_drop(m);
    pthread_mutex_unlock(&m->run_mu);
}

struct prof_row {
    const char *name;
    double ms, min_ms;
    int count;
};

static int by_ms_desc(const void *a, const void *b)
{
    const struct prof_row *x = a, *y = b;
    return x->ms < y->ms ? 1 : (x->ms > y->ms ? -1 : 0);
}

void exec_profile_print(struct exec_model *m, FILE *out)
{
    if (!m->prof_ms || *m->prof_runs == 0) return;
    struct prof_row rows[GRAPH_OP_COUNT];
    memset(rows, 0, sizeof rows);
    double total = 0, total_min = 0;
    for (int s = 0; s < m->nsteps; s++) {
        enum graph_op op = m->g.nodes[m->steps[s].node].op;
        rows[op].name = graph_op_name(op);
        rows[op].ms += m->prof_ms[s];
        double mn = m->prof_min[s] < 1e29 ? m->prof_min[s] : 0; /* never ran: a failed run */
        rows[op].min_ms += mn;
        rows[op].count++;
        total += m->prof_ms[s];
        total_min += mn;
    }
    qsort(rows, GRAPH_OP_COUNT, sizeof rows[0], by_ms_desc);
    double runs = (double)*m->prof_runs;
    /* The sum of each step's fastest run is what the model costs on an idle
     * machine; the mean shows what other load on the cores added. */
    fprintf(out, "profile over %lld runs: mean %.2f ms per run, sum of per-step minimums %.2f ms\n",
            (long long)*m->prof_runs, total / runs, total_min);
    for (int i = 0; i < GRAPH_OP_COUNT && rows[i].count; i++)
        fprintf(out, "  %-20s %5d steps  mean %9.3f ms  min %9.3f ms %5.1f%%\n", rows[i].name,
                rows[i].count, rows[i].ms / runs, rows[i].min_ms,
                total_min > 0 ? 100.0 * rows[i].min_ms / total_min : 0.0);
}

int exec_model_warm(struct exec_model *m, int64_t batch, char *err, size_t errlen)
{
    if (batch < 1) return pps_fail(err, errlen, PPS_EINVAL, "batch size %lld", (long long)batch);
    pthread_mutex_lock(&m->run_mu);
    int rc = 0;
    if (!plan_find(m, batch)) {
        struct exec_plan *p = NULL;
        rc = plan_build(m, batch, &p, err, errlen);
        if (!rc) {
            p->next = m->plans;
            m->plans = p;
        }
    }
    pthread_mutex_unlock(&m->run_mu);
    return rc;
}

int exec_step_export(struct exec_model *m, int s, struct exec_prepared *out, int max)
{
    if (s < 0 || s >= m->nsteps) return 0;
    pthread_mutex_lock(&m->mu);
    int ready = m->prepared >= m->g.nbatches;
    pthread_mutex_unlock(&m->mu);
    if (!ready) return 0;
    return m->be->step_export(m->be, m->step_state[s], out, max);
}

const char *exec_target(void)
{
    struct exec_backend *be = cpu_backend_get();
    return be->target(be);
}
