/* run_cmd: `pipeps run` (see run_cmd.h).
 *
 * Feeding modes (how parameter batches reach the executor):
 *   default                 every batch is handed over before the first run;
 *                           "load" includes preparing all weights.
 *   --pipelined-delay-ms D  a feeder thread hands batch i over after a
 *                           random pause of 0..D ms (seeded by --seed), while
 *                           the first run is already executing: the output
 *                           must be bit-identical to the default mode's.
 *   --feed-gbps G           a feeder thread hands batch i over when a link of
 *                           G GB/s would have delivered it (bytes of batches
 *                           0..i / G after the first); reports the time from
 *                           "first batch available" to the output.
 * The kv.bin mapping is read once before a feeding thread starts, so the
 * simulated arrival is not slowed by the disk.
 *
 * The easy thing to get wrong: a kv.bin whose batches do not match the
 * description (count, sizes) must be refused before anything runs, since
 * the executor reads parameters at the offsets the description gives. */
#include "exec/run_cmd.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/args.h"
#include "common/err.h"
#include "exec/executor.h"
#include "exec/shape.h"
#include "formats/kvbin.h"
#include "formats/npy.h"
#include "model/model_blob.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* CPU time of the whole process (all threads), to see the work apart from
 * waiting for a busy machine's cores. */
static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_until(double t_ms)
{
    for (;;) {
        double d = t_ms - now_ms();
        if (d <= 0) return;
        struct timespec ts = {(time_t)(d / 1e3), (long)(fmod(d, 1e3) * 1e6)};
        nanosleep(&ts, NULL);
    }
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pipeps run KV_BIN MODEL [options]\n"
            "  --batch N                batch size (default 1, or the input's first dimension)\n"
            "  --input x.npy            input tensor (float32 or int64, C order); default: generated\n"
            "  --input2 .. --input4 F   the model's inputs 2..4 in its input order (bert_base:\n"
            "                           attention_mask, token_type_ids); an optional input left\n"
            "                           out takes its default, a required one is generated\n"
            "  --output y.npy           write the output tensor\n"
            "  --output2 .. --output4 F write the model's outputs 2..4 (multi-output models)\n"
            "  --threads T              compute threads (default 2)\n"
            "  --repeat R               warm runs after the first (default 10)\n"
            "  --pipelined-delay-ms D   feed batches from a thread with random 0..D ms pauses\n"
            "  --feed-gbps G            feed batches as a G GB/s link would deliver them\n"
            "  --seed S                 seed of the generated input and the delays (default 1)\n"
            "  --verify                 check every value's checksum in kv.bin first\n"
            "  --no-fusion              run every node on its own (debugging)\n"
            "  --profile                print time per operation type\n"
            "  --prefault               fault in the prepared-weights memory at model creation\n"
            "  --eager-layout           reorder every weight before the first run (default: matmul\n"
            "                           weights run in place first, reordered after the first run)\n"
            "  --cold-runs K            with a feeding thread: K cold cycles (create, feed, run,\n"
            "                           destroy) in one process; later ones reuse freed memory\n");
}

struct feeder {
    struct exec_model *m;
    const struct kvbin_model *km;
    const uint8_t **data;
    const uint64_t *len;
    int nbatches;
    double delay_ms;     /* > 0: random pauses */
    double gbps;         /* > 0: link simulation */
    uint64_t seed;
    double t_first;      /* when batch 0 was handed over */
    double t_last;
    int rc;
};

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *feeder_main(void *arg)
{
    struct feeder *f = arg;
    uint64_t s = f->seed * 0x9E3779B97F4A7C15ull + 1;
    double t0 = now_ms(), sent = 0;
    for (int i = 0; i < f->nbatches; i++) {
        if (f->delay_ms > 0) {
            double pause = f->delay_ms * (double)(xorshift(&s) % 1000001) / 1e6;
            sleep_until(now_ms() + pause);
        } else if (f->gbps > 0 && i > 0) {
            sleep_until(t0 + sent / (f->gbps * 1e6));
        }
        if (i == 0) f->t_first = t0 = now_ms();
        sent += (double)f->len[i];
        int rc = exec_batch_arrived(f->m, i, f->data[i], f->len[i]);
        if (rc && !f->rc) f->rc = rc;
    }
    f->t_last = now_ms();
    return NULL;
}

/* The vocabulary an int64 input indexes: rows of the table a Gather reads
 * with it (0 if no Gather uses the input directly). */
static int64_t index_range(const struct graph *g, int32_t value)
{
    for (int i = 0; i < g->nnodes; i++) {
        const struct graph_node *n = &g->nodes[i];
        if (n->op != GRAPH_OP_GATHER || n->ninputs < 1 || n->inputs[0] != value || n->nparams < 1)
            continue;
        const struct graph_param *p = &g->params[n->params[0]];
        int64_t axis = graph_attr_int(n, "axis", 0);
        if (axis < 0) axis += p->ndims;
        if (axis >= 0 && axis < p->ndims) return p->dims[axis];
    }
    return 0;
}

/* Deterministic input: float32 uniform in [-1, 1), int64 uniform in
 * [0, vocabulary) (or [0, 100) when no table bounds it), from xorshift64
 * seeded by seed and the input index. */
static void generate_input(const struct graph *g, int idx, const struct exec_tensor *t,
                           uint64_t seed, void *buf)
{
    uint64_t s = (seed + 1) * 0x9E3779B97F4A7C15ull + (uint64_t)idx * 7919 + 1;
    uint64_t n = shape_elems(t);
    if (t->dtype == GRAPH_I64) {
        int64_t range = index_range(g, g->inputs[idx].value);
        if (range <= 0) range = 100;
        int64_t *p = buf;
        for (uint64_t i = 0; i < n; i++) p[i] = (int64_t)(xorshift(&s) % (uint64_t)range);
    } else {
        float *p = buf;
        for (uint64_t i = 0; i < n; i++)
            p[i] = (float)((double)(xorshift(&s) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int run_main(int argc, char **argv)
{
    struct args_option opts[] = {
        {"batch", 1, NULL},  {"input", 1, NULL},   {"output", 1, NULL},
        {"threads", 1, NULL}, {"repeat", 1, NULL}, {"pipelined-delay-ms", 1, NULL},
        {"feed-gbps", 1, NULL}, {"seed", 1, NULL}, {"verify", 0, NULL},
        {"no-fusion", 0, NULL}, {"profile", 0, NULL}, {"prefault", 0, NULL},
        {"cold-runs", 1, NULL}, {"eager-layout", 0, NULL}, {"input2", 1, NULL},
        {"input3", 1, NULL}, {"input4", 1, NULL}, {"output2", 1, NULL},
        {"output3", 1, NULL}, {"output4", 1, NULL},
    };
    enum { O_BATCH, O_INPUT, O_OUTPUT, O_THREADS, O_REPEAT, O_DELAY, O_GBPS, O_SEED, O_VERIFY,
           O_NOFUSE, O_PROFILE, O_PREFAULT, O_COLD, O_EAGER, O_INPUT2, O_INPUT3, O_INPUT4,
           O_OUTPUT2, O_OUTPUT3, O_OUTPUT4, O_COUNT };
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, O_COUNT, &a, &help) != 0 || a.npositional != 2) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    int batch = 0, threads = 2, repeat = 10, seed = 1, cold_runs = 1;
    double delay = 0, gbps = 0;
    if ((opts[O_BATCH].value && args_parse_int(opts[O_BATCH].value, 1, 1 << 16, &batch)) ||
        (opts[O_THREADS].value && args_parse_int(opts[O_THREADS].value, 1, 1024, &threads)) ||
        (opts[O_REPEAT].value && args_parse_int(opts[O_REPEAT].value, 0, 1000000, &repeat)) ||
        (opts[O_SEED].value && args_parse_int(opts[O_SEED].value, 0, 1 << 30, &seed)) ||
        (opts[O_COLD].value && args_parse_int(opts[O_COLD].value, 1, 1000, &cold_runs))) {
        fprintf(stderr, "run: bad numeric option\n");
        return 2;
    }
    if (opts[O_DELAY].value) {
        char *end;
        delay = strtod(opts[O_DELAY].value, &end);
        if (*end || !(delay >= 0 && delay < 1e6)) {
            fprintf(stderr, "run: bad --pipelined-delay-ms\n");
            return 2;
        }
    }
    if (opts[O_GBPS].value) {
        char *end;
        gbps = strtod(opts[O_GBPS].value, &end);
        if (*end || !(gbps > 0 && gbps < 1e6)) {
            fprintf(stderr, "run: bad --feed-gbps\n");
            return 2;
        }
    }
    const char *path = a.positional[0], *name = a.positional[1];
    char err[KVBIN_ERR_LEN];
    int status = 1;
    struct graph g;
    memset(&g, 0, sizeof g);
    struct exec_model *m = NULL;
    struct npy_array in_arr[4];
    memset(in_arr, 0, sizeof in_arr);
    void *gen_in[4] = {NULL, NULL, NULL, NULL}, *outs[4] = {NULL, NULL, NULL, NULL};
    const uint8_t **bdata = NULL;
    uint64_t *blen = NULL;
    double *lat = NULL;

    double t_open = now_ms();
    struct kvbin kv;
    int rc = kvbin_open(&kv, path, err, sizeof err);
    if (rc) {
        fprintf(stderr, "run: %s\n", err);
        return 1;
    }
    const struct kvbin_model *km = kvbin_find_model(&kv, name);
    if (!km) {
        fprintf(stderr, "run: model '%s' is not in %s\n", name, path);
        goto out;
    }
    if ((rc = kvbin_check_model(&kv, km, opts[O_VERIFY].value != NULL, err, sizeof err))) {
        fprintf(stderr, "run: %s\n", err);
        goto out;
    }
    char key[KVBIN_NAME_MAX + 32];
    snprintf(key, sizeof key, "%s-METADATA", name);
    const struct kvbin_record *meta = kvbin_find_record(km, key);
    if (!meta) {
        fprintf(stderr, "run: %s has no %s\n", path, key);
        goto out;
    }
    if ((rc = model_blob_decode(&g, meta->data, meta->len, err, sizeof err))) {
        fprintf(stderr, "run: %s: %s\n", key, err);
        goto out;
    }
    /* The batches must be exactly the ones the description lays out. */
    if ((uint32_t)g.nbatches != km->nbatches || graph_total_padded(&g) != km->total_size) {
        fprintf(stderr, "run: %s: kv.bin has %u batches (%" PRIu64 " bytes), the description %d (%" PRIu64 " bytes)\n",
                name, km->nbatches, km->total_size, g.nbatches, graph_total_padded(&g));
        goto out;
    }
    bdata = calloc((size_t)g.nbatches + 1, sizeof *bdata);
    blen = calloc((size_t)g.nbatches + 1, sizeof *blen);
    if (!bdata || !blen) goto out;
    for (int i = 0; i < g.nbatches; i++) {
        snprintf(key, sizeof key, "%s-BATCH-%d", name, i);
        const struct kvbin_record *r = kvbin_find_record(km, key);
        if (!r || r->len != g.batches[i].nbytes) {
            fprintf(stderr, "run: %s: %s is %" PRIu64 " bytes, the description says %" PRIu64 "\n",
                    name, key, r ? r->len : 0, g.batches[i].nbytes);
            goto out;
        }
        bdata[i] = r->data;
        blen[i] = r->len;
    }
    double t_parsed = now_ms();

    struct exec_options eo;
    exec_options_default(&eo);
    eo.threads = threads;
    eo.no_fusion = opts[O_NOFUSE].value != NULL;
    eo.profile = opts[O_PROFILE].value != NULL;
    eo.prefault = opts[O_PREFAULT].value != NULL;
    eo.eager_layout = opts[O_EAGER].value != NULL;
    if ((rc = exec_model_create(&m, &g, &eo, err, sizeof err))) {
        fprintf(stderr, "run: %s: %s\n", name, err);
        goto out;
    }
    double t_created = now_ms();

    /* Inputs: files (all with the same batch size), generated, or left out
     * (optional ones). */
    const char *in_path[4] = {opts[O_INPUT].value, opts[O_INPUT2].value, opts[O_INPUT3].value,
                              opts[O_INPUT4].value};
    for (int i = g.ninputs; i < 4; i++)
        if (in_path[i]) {
            fprintf(stderr, "run: %s has %d input(s); --input%d is not one of them\n", name,
                    g.ninputs, i + 1);
            goto out;
        }
    const void *ins[4] = {NULL, NULL, NULL, NULL};
    uint64_t in_bytes[4] = {0, 0, 0, 0};
    for (int i = 0; i < g.ninputs; i++) {
        if (!in_path[i]) continue;
        if ((rc = npy_read_file(in_path[i], &in_arr[i], err, sizeof err))) {
            fprintf(stderr, "run: %s\n", err);
            goto out;
        }
        if (in_arr[i].ndims < 1 || (batch && in_arr[i].dims[0] != batch)) {
            fprintf(stderr, "run: %s: first dimension must be the batch size%s\n", in_path[i],
                    batch ? " (given by --batch or an earlier input)" : "");
            goto out;
        }
        batch = (int)in_arr[i].dims[0];
        struct exec_tensor ti;
        exec_input_info(m, i, batch, &ti);
        int same = (int)in_arr[i].dtype == (int)ti.dtype && in_arr[i].ndims == ti.ndims;
        for (int d = 0; same && d < ti.ndims; d++) same = in_arr[i].dims[d] == ti.dims[d];
        if (!same) {
            fprintf(stderr, "run: %s: input must be %s [%d", in_path[i],
                    graph_dtype_name(ti.dtype), batch);
            for (int d = 1; d < ti.ndims; d++) fprintf(stderr, ", %" PRId64, ti.dims[d]);
            fprintf(stderr, "] (%s)\n", g.inputs[i].name);
            goto out;
        }
        ins[i] = in_arr[i].data;
        in_bytes[i] = ti.nbytes;
    }
    if (!batch) batch = 1;
    for (int i = 0; i < g.ninputs; i++) {
        if (in_path[i] || g.inputs[i].optional) continue;
        struct exec_tensor ti;
        exec_input_info(m, i, batch, &ti);
        gen_in[i] = malloc(ti.nbytes ? ti.nbytes : 1);
        if (!gen_in[i]) goto out;
        generate_input(&g, i, &ti, (uint64_t)seed, gen_in[i]);
        ins[i] = gen_in[i];
        in_bytes[i] = ti.nbytes;
    }
    /* Outputs: every one of the model's (the executor writes them all). */
    const char *out_path[4] = {opts[O_OUTPUT].value, opts[O_OUTPUT2].value, opts[O_OUTPUT3].value,
                               opts[O_OUTPUT4].value};
    for (int i = g.noutputs; i < 4; i++)
        if (out_path[i]) {
            fprintf(stderr, "run: %s has %d output(s); --output%d is not one of them\n", name,
                    g.noutputs, i + 1);
            goto out;
        }
    struct exec_tensor tos[4];
    for (int i = 0; i < g.noutputs; i++) {
        if ((rc = exec_output_info(m, i, batch, &tos[i], err, sizeof err))) {
            fprintf(stderr, "run: %s\n", err);
            goto out;
        }
        outs[i] = malloc(tos[i].nbytes ? tos[i].nbytes : 1);
        if (!outs[i]) goto out;
    }

    /* Feed the parameters. */
    struct feeder f;
    pthread_t th;
    int threaded = delay > 0 || gbps > 0;
    double t_prepared = t_created, t_prep_cpu = 0, t_run1 = 0;
    double *cold = calloc((size_t)cold_runs, sizeof *cold);
    if (!cold) goto out;
    struct exec_timing first;
    if (threaded) {
        /* Read the mapping once so the simulated arrival is not the disk. */
        volatile uint8_t sink = 0;
        for (int i = 0; i < g.nbatches; i++)
            for (uint64_t o = 0; o < blen[i]; o += 4096) sink ^= bdata[i][o];
        (void)sink;
    }
    for (int cycle = 0; cycle < (threaded ? cold_runs : 1); cycle++) {
        if (cycle > 0) {
            /* Another cold start of the same model: what a server switching
             * models sees once it has freed a model of this size. */
            exec_model_destroy(m);
            m = NULL;
            if ((rc = exec_model_create(&m, &g, &eo, err, sizeof err))) {
                fprintf(stderr, "run: %s: %s\n", name, err);
                free(cold);
                goto out;
            }
        }
        memset(&f, 0, sizeof f);
        f.m = m;
        f.km = km;
        f.data = bdata;
        f.len = blen;
        f.nbatches = g.nbatches;
        f.delay_ms = delay;
        f.gbps = gbps;
        f.seed = (uint64_t)seed;
        if (threaded) {
            if (pthread_create(&th, NULL, feeder_main, &f) != 0) {
                fprintf(stderr, "run: cannot start the feeder thread\n");
                free(cold);
                goto out;
            }
        } else {
            t_prep_cpu = cpu_ms();
            for (int i = 0; i < g.nbatches && !rc; i++) rc = exec_batch_arrived(m, i, bdata[i], blen[i]);
            if (!rc) rc = exec_wait_prepared(m);
            if (rc) {
                fprintf(stderr, "run: preparing parameters: %s\n", pps_strerror(rc));
                free(cold);
                goto out;
            }
            t_prepared = now_ms();
            t_prep_cpu = cpu_ms() - t_prep_cpu;
        }
        rc = exec_run(m, batch, ins, in_bytes, outs, &first, err, sizeof err);
        t_run1 = now_ms();
        if (threaded) pthread_join(th, NULL);
        if (rc || f.rc) {
            fprintf(stderr, "run: %s\n", rc ? err : pps_strerror(f.rc));
            free(cold);
            goto out;
        }
        cold[cycle] = t_run1 - f.t_first;
    }

    printf("model %s: %d nodes -> %d steps, %d parameter batches, %.1f MB of parameters\n", name,
           g.nnodes, exec_model_nsteps(m), g.nbatches, (double)km->total_size / 1e6);
    printf("batch %d, %d threads%s\n", batch, threads, eo.no_fusion ? ", fusion off" : "");
    if (threaded) {
        printf("load: %.1f ms (open+parse %.1f, create %.1f); batches fed by a thread", t_created - t_open,
               t_parsed - t_open, t_created - t_parsed);
        if (delay > 0) printf(" with random 0..%.1f ms pauses\n", delay);
        else printf(" at %.2f GB/s (last batch %.1f ms after the first)\n", gbps, f.t_last - f.t_first);
        printf("first inference: %.2f ms (plan %.2f, waiting for parameters %.2f of which preparing "
               "them %.2f, compute %.2f)\n",
               first.total_ms, first.plan_ms, first.wait_ms, first.prep_ms, first.compute_ms);
        printf("first batch available -> output: %.2f ms\n", t_run1 - f.t_first);
        if (cold_runs > 1) {
            printf("cold cycles, first batch available -> output:");
            for (int c = 0; c < cold_runs; c++)
                printf(" %.2f%s", cold[c], c == 0 ? " (fresh memory)" : "");
            printf(" ms\n");
        }
    } else {
        printf("load: %.1f ms (open+parse %.1f, create %.1f, prepare weights %.1f, cpu time %.1f)\n",
               t_prepared - t_open, t_parsed - t_open, t_created - t_parsed, t_prepared - t_created,
               t_prep_cpu);
        printf("first inference: %.2f ms (plan %.2f, waiting for parameters %.2f, compute %.2f)\n",
               first.total_ms, first.plan_ms, first.wait_ms, first.compute_ms);
    }
    free(cold);
    /* Deferred relayouts (matmul weights used in place by the first run):
     * done here, between runs, as a server does when it is idle. */
    double t_rl = now_ms();
    int relaid = exec_finish_layout(m);
    if (relaid < 0) {
        rc = relaid;
        fprintf(stderr, "run: relayout: %s\n", pps_strerror(rc));
        goto out;
    }
    if (relaid > 0)
        printf("relayout after the first run: %d steps, %.1f ms\n", relaid, now_ms() - t_rl);

    if (repeat > 0) {
        lat = malloc((size_t)repeat * sizeof *lat);
        if (!lat) goto out;
        double c0 = cpu_ms();
        for (int r = 0; r < repeat; r++) {
            struct exec_timing t;
            if ((rc = exec_run(m, batch, ins, in_bytes, outs, &t, err, sizeof err))) {
                fprintf(stderr, "run: %s\n", err);
                goto out;
            }
            lat[r] = t.total_ms;
        }
        double cpu_per_run = (cpu_ms() - c0) / repeat;
        qsort(lat, (size_t)repeat, sizeof *lat, cmp_double);
        double med = repeat % 2 ? lat[repeat / 2] : 0.5 * (lat[repeat / 2 - 1] + lat[repeat / 2]);
        printf("warm latency: median %.2f ms, min %.2f ms, max %.2f ms over %d runs (cpu time %.2f ms per run)\n",
               med, lat[0], lat[repeat - 1], repeat, cpu_per_run);
    }
    printf("memory owned by the executor: %.1f MB\n", (double)exec_model_memory_bytes(m) / 1e6);
    if (eo.profile) exec_profile_print(m, stdout);

    for (int i = 0; i < g.noutputs; i++) {
        const struct exec_tensor *to = &tos[i];
        printf("output %s: %s [", g.outputs[i].name, graph_dtype_name(to->dtype));
        for (int d = 0; d < to->ndims; d++) printf("%s%" PRId64, d ? ", " : "", to->dims[d]);
        printf("]\n");
        if (!out_path[i]) continue;
        if ((rc = npy_write_file(out_path[i], (enum npy_dtype)to->dtype, to->ndims, to->dims, outs[i],
                                 shape_elems(to) * shape_dtype_size(to->dtype)))) {
            fprintf(stderr, "run: cannot write %s: %s\n", out_path[i], pps_strerror(rc));
            goto out;
        }
    }
    status = 0;
out:
    free(lat);
    exec_model_destroy(m);
    graph_free(&g);
    for (int i = 0; i < 4; i++) {
        npy_free(&in_arr[i]);
        free(gen_in[i]);
    }
    for (int i = 0; i < 4; i++) free(outs[i]);
    free(bdata);
    free(blen);
    kvbin_close(&kv);
    return status;
}
