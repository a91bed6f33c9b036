/* generate: generate_file (see generate.h and the README section
 * "generate_file").
 *
 * Batches are produced one at a time into one reusable buffer and streamed
 * to the kv.bin writer, so memory stays at the largest batch, not the
 * model. The writer writes "<kv.bin>.tmp" and renames at the end: a failed
 * or interrupted run leaves the old kv.bin untouched. */
#include "model/generate.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/args.h"
#include "common/err.h"
#include "common/log.h"
#include "formats/kvbin.h"
#include "exec/prepack.h"
#include "model/batching.h"
#include "model/model_blob.h"
#include "onnx/onnx_import.h"

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

/* The folder of the list file ("." if none), for file= paths. */
static void list_dir(const char *list_path, char *dir, size_t cap)
{
    snprintf(dir, cap, "%s", list_path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, cap, ".");
}

/* One data line (trimmed, not blank, not a comment) into e. prev holds the
 * entries read so far (an -alter- copy of an imported name copies its
 * file). Checks only what the line itself says; duplicates are the
 * caller's. */
static int parse_entry(char *s, const char *path, int lineno, const struct generate_entry *prev,
                       int nprev, struct generate_entry *e, char *err, size_t errlen)
{
    memset(e, 0, sizeof *e);
    char *fields[4];
    int nf = 0;
    fields[nf++] = s;
    for (char *c = s; *c; c++)
        if (*c == ',') {
            if (nf == 4)
                return pps_fail(err, errlen, PPS_EINVAL,
                                "%s:%d: expected 'model_name[, seq_len]' or 'name, file=PATH.onnx[, seq=N]'", path, lineno);
            *c = '\0';
            fields[nf++] = c + 1;
        }
    char *name = trim(fields[0]);
    if (strlen(name) > GRAPH_NAME_MAX || strlen(name) == 0)
        return pps_fail(err, errlen, PPS_EINVAL, "%s:%d: model name empty or longer than %d bytes", path,
                        lineno, GRAPH_NAME_MAX);
    /* the name becomes kv.bin keys ("<name>-BATCH-0"): check it here, where
     * the line is known, not when the writer refuses the key */
    if (!kvbin_name_ok(name))
        return pps_fail(err, errlen, PPS_EINVAL,
                        "%s:%d: bad model name '%s' (printable ASCII without spaces)", path, lineno, name);
    strcpy(e->name, name);
    const char *file = NULL, *seq = NULL, *zoo_seq = NULL;
    for (int i = 1; i < nf; i++) {
        char *f = trim(fields[i]);
        if (strncmp(f, "file=", 5) == 0 && !file) file = trim(f + 5);
        else if (strncmp(f, "seq=", 4) == 0 && !seq) seq = trim(f + 4);
        else if (i == 1 && nf == 2 && *f) zoo_seq = f;
        else
            return pps_fail(err, errlen, PPS_EINVAL, "%s:%d: unexpected field '%s' (expected file=PATH.onnx or seq=N)",
                            path, lineno, f);
    }
    if (file) {
        if (!*file) return pps_fail(err, errlen, PPS_EINVAL, "%s:%d: empty file=", path, lineno);
        if (seq && (args_parse_int(seq, 1, 1 << 20, &e->opt.seq_len) != 0))
            return pps_fail(err, errlen, PPS_EINVAL, "%s:%d: bad seq '%s'", path, lineno, seq);
        e->onnx_seq = e->opt.seq_len;
        e->opt.seq_len = 0;
        char dir[1024];
        list_dir(path, dir, sizeof dir);
        size_t cap = strlen(dir) + strlen(file) + 2;
        e->file = pps_xmalloc(cap);
        if (file[0] == '/') snprintf(e->file, cap, "%s", file);
        else snprintf(e->file, cap, "%s/%s", dir, file);
        return 0;
    }
    if (seq) return pps_fail(err, errlen, PPS_EINVAL, "%s:%d: seq= goes with file=", path, lineno);
    /* an -alter- copy of an imported model listed earlier */
    const char *alter = strstr(e->name, "-alter-");
    if (alter) {
        for (int i = 0; i < nprev; i++)
            if (prev[i].file && strlen(prev[i].name) == (size_t)(alter - e->name) &&
                strncmp(prev[i].name, e->name, (size_t)(alter - e->name)) == 0) {
                if (zoo_seq)
                    return pps_fail(err, errlen, PPS_EINVAL, "%s:%d: a copy of '%s' takes its sequence length", path,
                                    lineno, prev[i].name);
                e->file = pps_xstrdup(prev[i].file);
                e->onnx_seq = prev[i].onnx_seq;
                return 0;
            }
    }
    char base[GRAPH_NAME_MAX + 1];
    int brc = zoo_base_name(e->name, base, sizeof base);
    if (brc) {
        char known[256];
        zoo_known_list(known, sizeof known);
        return pps_fail(err, errlen, brc == PPS_ENOTFOUND ? PPS_ENOTFOUND : PPS_EINVAL,
                        "%s:%d: unknown model '%s' (known: %s, optionally followed by -alter-<suffix>; "
                        "or 'name, file=PATH.onnx' to import one)", path, lineno, e->name, known);
    }
    if (zoo_seq) {
        if (!zoo_is_transformer(base))
            return pps_fail(err, errlen, PPS_EINVAL, "%s:%d: %s takes no sequence length", path, lineno,
                            e->name);
        if (args_parse_int(zoo_seq, 1, 1 << 20, &e->opt.seq_len) != 0)
            return pps_fail(err, errlen, PPS_EINVAL, "%s:%d: bad sequence length '%s'", path, lineno, zoo_seq);
    }
    return 0;
}

void generate_free_list(struct generate_entry *list, int count)
{
    for (int i = 0; i < count; i++) free(list[i].file);
    free(list);
}

#define LIST_LINE_MAX 1024

int generate_read_list(const char *path, struct generate_entry **out, int *count, char *err,
                       size_t errlen)
{
    *out = NULL;
    *count = 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        int rc = pps_from_errno(errno);
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return rc;
    }
    char *line = NULL;
    size_t linecap = 0;
    ssize_t n;
    int lineno = 0, cap = 0, rc = 0;
    struct generate_entry *v = NULL;
    while ((n = getline(&line, &linecap, f)) >= 0) {
        lineno++;
        /* getline counts the bytes, so a NUL cannot pass for a line end */
        if (memchr(line, '\0', (size_t)n)) {
            rc = pps_fail(err, errlen, PPS_EINVAL, "%s:%d: NUL byte in a text file", path, lineno);
            break;
        }
        if (n > LIST_LINE_MAX) {
            rc = pps_fail(err, errlen, PPS_EINVAL, "%s:%d: line too long (over %d bytes)", path, lineno,
                          LIST_LINE_MAX);
            break;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#') continue;
        struct generate_entry e;
        if (lineno == 1) {
            /* the header; one that reads as a model means it was forgotten and
             * that model would silently be left out (deploy_file's lists
             * refuse the same) */
            char scratch[8];
            int hrc = parse_entry(s, path, lineno, v, *count, &e, scratch, sizeof scratch);
            free(e.file);
            if (hrc == 0) {
                rc = pps_fail(err, errlen, PPS_EINVAL,
                              "%s:1: the first line is a header (e.g. \"model_name[, seq_len]\") but this one "
                              "is data; add a header line above it",
                              path);
                break;
            }
            continue;
        }
        rc = parse_entry(s, path, lineno, v, *count, &e, err, errlen);
        if (rc) {
            free(e.file);
            break;
        }
        for (int i = 0; i < *count && !rc; i++)
            if (strcmp(v[i].name, e.name) == 0)
                rc = pps_fail(err, errlen, PPS_EINVAL, "%s:%d: model '%s' listed twice", path, lineno, e.name);
        if (rc) {
            free(e.file);
            break;
        }
        if (*count == cap) {
            cap = cap ? cap * 2 : 16;
            v = pps_xrealloc(v, (unsigned long)cap * sizeof *v);
        }
        v[(*count)++] = e;
    }
    free(line);
    if (!rc && ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        rc = PPS_EIO;
    }
    fclose(f);
    if (rc) {
        generate_free_list(v, *count);
        *count = 0;
        return rc;
    }
    *out = v;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The native form of a zoo model: every batch generated into memory, then
 * prepared by the executor (prepack). Consecutive "-alter-" copies of one
 * base share it (same architecture, same weights): the cache keeps the last. */
struct generate_cache {
    char key[2 * GRAPH_NAME_MAX + 16]; /* base name, sequence length, batch limit */
    struct prepack *pp;
    void *raw;                          /* the portable batches pp was made from */
};

static int prepare_native(struct zoo_model *m, const struct generate_entry *e,
                          struct generate_cache *cache, char *err, size_t errlen)
{
    char key[sizeof cache->key];
    snprintf(key, sizeof key, "%s/%d/%llu", m->base, e->opt.seq_len,
             (unsigned long long)m->g.max_batch_size);
    if (cache->pp && strcmp(cache->key, key) == 0) return 0;
    prepack_free(cache->pp);
    free(cache->raw);
    cache->pp = NULL;
    cache->raw = NULL;
    uint64_t total = graph_total_padded(&m->g);
    if (posix_memalign(&cache->raw, GRAPH_PARAM_ALIGN, total ? total : GRAPH_PARAM_ALIGN) != 0) {
        cache->raw = NULL;
        return pps_fail(err, errlen, PPS_ENOMEM, "%s: cannot allocate %llu bytes", e->name,
                        (unsigned long long)total);
    }
    const void **bptr = pps_xmalloc((unsigned long)(m->g.nbatches ? m->g.nbatches : 1) * sizeof *bptr);
    uint64_t off = 0;
    for (int b = 0; b < m->g.nbatches; b++) {
        bptr[b] = (uint8_t *)cache->raw + off;
        zoo_fill_batch(m, b, (void *)bptr[b]);
        off += m->g.batches[b].nbytes;
    }
    int rc = prepack_model(&m->g, bptr, &cache->pp, err, errlen);
    free(bptr);
    if (rc) return rc;
    snprintf(cache->key, sizeof cache->key, "%s", key);
    return 0;
}

static void cache_free(struct generate_cache *cache)
{
    prepack_free(cache->pp);
    free(cache->raw);
    memset(cache, 0, sizeof *cache);
}

int generate_model(struct kvbin_writer *w, const struct generate_entry *e,
                   uint64_t max_batch_size, enum generate_target target, struct generate_cache *cache,
                   int progress, char *err, size_t errlen)
{
    struct zoo_model m;
    int rc = zoo_build(&m, e->name, &e->opt, err, errlen);
    if (rc) return rc;
    rc = batching_apply(&m.g, max_batch_size);
    PPS_ASSERT(rc == 0); /* zoo models use every parameter */
    struct graph native;
    const struct graph *g = &m.g;
    if (target == GENERATE_NATIVE) {
        rc = prepare_native(&m, e, cache, err, errlen);
        if (rc) {
            zoo_free(&m);
            return rc;
        }
        native = *prepack_graph(cache->pp); /* shallow: only the name differs */
        snprintf(native.name, sizeof native.name, "%s", e->name);
        g = &native;
    }
    struct wbuf blob;
    wbuf_init(&blob);
    rc = model_blob_encode(g, &blob);
    PPS_ASSERT(rc == 0);

    uint64_t total = graph_total_padded(g), biggest = 0;
    for (int b = 0; b < g->nbatches; b++)
        if (g->batches[b].nbytes > biggest) biggest = g->batches[b].nbytes;
    void *buf = NULL;
    if (biggest && posix_memalign(&buf, GRAPH_PARAM_ALIGN, biggest) != 0) {
        snprintf(err, errlen, "%s: cannot allocate %llu bytes for a batch", e->name,
                 (unsigned long long)biggest);
        wbuf_free(&blob);
        zoo_free(&m);
        return PPS_ENOMEM;
    }
    char key[KVBIN_NAME_MAX + 1];
    rc = kvbin_writer_model(w, e->name, total, (uint32_t)g->nbatches, (uint32_t)g->nbatches + 1);
    if (!rc) {
        snprintf(key, sizeof key, "%s-METADATA", e->name);
        rc = kvbin_writer_record(w, key, blob.data, blob.len);
    }
    uint64_t done = 0;
    double t0 = now_s();
    for (int b = 0; b < g->nbatches && !rc; b++) {
        if (g == &m.g) zoo_fill_batch(&m, b, buf);
        else prepack_fill_batch(cache->pp, b, buf);
        snprintf(key, sizeof key, "%s-BATCH-%d", e->name, b);
        rc = kvbin_writer_record(w, key, buf, g->batches[b].nbytes);
        done += g->batches[b].nbytes;
        if (progress)
            fprintf(stderr, "\r%-32s batch %d/%d  %7.1f / %.1f MiB", e->name, b + 1, g->nbatches,
                    (double)done / 1048576.0, (double)total / 1048576.0);
    }
    if (rc)
        snprintf(err, errlen, "%s: writing kv.bin: %s", e->name, pps_strerror(rc));
    else if (progress)
        fprintf(stderr, "  %.2f s\n", now_s() - t0);
    log_info("%s: %d nodes, %d params, %d batches, %llu bytes, METADATA %zu bytes%s%s", e->name,
             g->nnodes, g->nparams, g->nbatches, (unsigned long long)total, blob.len,
             g->target[0] ? ", prepared for " : "", g->target);
    free(buf);
    wbuf_free(&blob);
    zoo_free(&m);
    return rc;
}

int generate_parse_target(const char *s, enum generate_target *out)
{
    if (strcmp(s, "native") == 0) *out = GENERATE_NATIVE;
    else if (strcmp(s, "portable") == 0) *out = GENERATE_PORTABLE;
    else return PPS_EINVAL;
    return 0;
}

/* A deep copy of an imported graph (batching rewrites params and nodes). */
static void graph_copy(struct graph *dst, const struct graph *src)
{
    *dst = *src;
    dst->nodes = pps_xmalloc((unsigned long)(src->nnodes ? src->nnodes : 1) * sizeof *dst->nodes);
    dst->params = pps_xmalloc((unsigned long)(src->nparams ? src->nparams : 1) * sizeof *dst->params);
    if (src->nnodes) memcpy(dst->nodes, src->nodes, (size_t)src->nnodes * sizeof *dst->nodes);
    if (src->nparams) memcpy(dst->params, src->params, (size_t)src->nparams * sizeof *dst->params);
    dst->node_cap = src->nnodes;
    dst->param_cap = src->nparams;
    dst->batches = NULL;
    dst->nbatches = 0;
}

int generate_onnx_model(struct kvbin_writer *w, const struct generate_entry *e,
                        const struct onnx_model *om, uint64_t max_batch_size, int progress, char *err,
                        size_t errlen)
{
    const struct graph *src = onnx_model_graph(om);
    struct graph g;
    graph_copy(&g, src);
    snprintf(g.name, sizeof g.name, "%s", e->name);
    int rc = batching_apply(&g, max_batch_size);
    /* The importer creates parameters in first-use order, so batching keeps
     * their ids and onnx_model_param(id) is still the right data. */
    for (int p = 0; !rc && p < g.nparams; p++)
        if (strcmp(g.params[p].name, src->params[p].name) != 0 || g.params[p].nbytes != src->params[p].nbytes)
            rc = PPS_EINTERNAL;
    if (rc) {
        graph_free(&g);
        return pps_fail(err, errlen, rc, "%s: batching the imported graph failed (%s)", e->name, pps_strerror(rc));
    }
    struct wbuf blob;
    wbuf_init(&blob);
    if ((rc = model_blob_encode(&g, &blob))) {
        char why[256];
        graph_validate(&g, why, sizeof why);
        wbuf_free(&blob);
        graph_free(&g);
        return pps_fail(err, errlen, rc, "%s: the imported graph is not valid: %s", e->name, why);
    }
    uint64_t total = graph_total_padded(&g), biggest = 0;
    for (int b = 0; b < g.nbatches; b++)
        if (g.batches[b].nbytes > biggest) biggest = g.batches[b].nbytes;
    void *buf = NULL;
    if (biggest && posix_memalign(&buf, GRAPH_PARAM_ALIGN, biggest) != 0) {
        wbuf_free(&blob);
        graph_free(&g);
        return pps_fail(err, errlen, PPS_ENOMEM, "%s: cannot allocate %llu bytes for a batch", e->name,
                        (unsigned long long)biggest);
    }
    char key[KVBIN_NAME_MAX + 1];
    rc = kvbin_writer_model(w, e->name, total, (uint32_t)g.nbatches, (uint32_t)g.nbatches + 1);
    if (!rc) {
        snprintf(key, sizeof key, "%s-METADATA", e->name);
        rc = kvbin_writer_record(w, key, blob.data, blob.len);
    }
    uint64_t done = 0;
    double t0 = now_s();
    for (int b = 0; b < g.nbatches && !rc; b++) {
        const struct graph_batch *gb = &g.batches[b];
        memset(buf, 0, gb->nbytes);
        for (int32_t p = gb->first_param; p < gb->first_param + gb->nparams; p++)
            memcpy((char *)buf + g.params[p].offset, onnx_model_param(om, p), g.params[p].nbytes);
        snprintf(key, sizeof key, "%s-BATCH-%d", e->name, b);
        rc = kvbin_writer_record(w, key, buf, gb->nbytes);
        done += gb->nbytes;
        if (progress)
            fprintf(stderr, "\r%-32s batch %d/%d  %7.1f / %.1f MiB", e->name, b + 1, g.nbatches,
                    (double)done / 1048576.0, (double)total / 1048576.0);
    }
    if (rc)
        snprintf(err, errlen, "%s: writing kv.bin: %s", e->name, pps_strerror(rc));
    else if (progress)
        fprintf(stderr, "  %.2f s\n", now_s() - t0);
    log_info("%s: imported, %d nodes, %d params, %d batches, %llu bytes, METADATA %zu bytes", e->name, g.nnodes,
             g.nparams, g.nbatches, (unsigned long long)total, blob.len);
    free(buf);
    wbuf_free(&blob);
    graph_free(&g);
    return rc;
}

static void usage(FILE *out)
{
    char known[256];
    zoo_known_list(known, sizeof known);
    fprintf(out,
            "usage: generate_file MODEL_LIST KV_BIN [MAX_BATCH_SIZE] [--target native|portable] [--quiet]\n"
            "  MODEL_LIST      header line, then 'model_name[, seq_len]' or\n"
            "                  'name, file=PATH.onnx[, seq=N]' lines (PATH relative to the list)\n"
            "  KV_BIN          output file (written to KV_BIN.tmp, then renamed)\n"
            "  MAX_BATCH_SIZE  bytes per parameter batch, K/M/G suffixes allowed\n"
            "                  (default 32768000; 0 = one layer per batch)\n"
            "  --target T      native (default): weights stored ready for this machine's\n"
            "                  kernels (BatchNorm folded, blocked layouts), used in place by\n"
            "                  servers; portable: plain float32 tensors as the model defines\n"
            "                  them (any machine prepares them at load)\n"
            "  --quiet         no progress line\n"
            "models: %s (add -alter-<suffix> for a copy with the same weights)\n",
            known);
}

int generate_file_main(int argc, char **argv)
{
    struct args_option opts[] = {{"quiet", 0, NULL}, {"target", 1, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 2, &a, &help) != 0 || a.npositional < 2 || a.npositional > 3) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    uint64_t max_batch = BATCHING_DEFAULT_MAX;
    if (a.npositional == 3 && args_parse_size(a.positional[2], &max_batch) != 0) {
        fprintf(stderr, "generate_file: bad MAX_BATCH_SIZE '%s'\n", a.positional[2]);
        return 2;
    }
    int progress = !opts[0].value && isatty(STDERR_FILENO);
    enum generate_target target = GENERATE_NATIVE;
    if (opts[1].value && generate_parse_target(opts[1].value, &target) != 0) {
        fprintf(stderr, "generate_file: --target must be native or portable, not '%s'\n", opts[1].value);
        return 2;
    }
    char err[1024];
    struct generate_entry *list;
    int n;
    int rc = generate_read_list(a.positional[0], &list, &n, err, sizeof err);
    if (rc) {
        fprintf(stderr, "generate_file: %s\n", err);
        return 1;
    }
    if (n == 0) {
        fprintf(stderr, "generate_file: %s lists no models\n", a.positional[0]);
        generate_free_list(list, n);
        return 1;
    }
    struct kvbin_writer *w;
    rc = kvbin_writer_open(&w, a.positional[1]);
    if (rc) {
        fprintf(stderr, "generate_file: cannot create %s: %s\n", a.positional[1], pps_strerror(rc));
        generate_free_list(list, n);
        return 1;
    }
    double t0 = now_s();
    struct generate_cache cache = {0};
    /* consecutive entries of the same file (its -alter- copies) share one import */
    struct onnx_model *om = NULL;
    const struct generate_entry *om_entry = NULL;
    for (int i = 0; i < n && !rc; i++) {
        const struct generate_entry *e = &list[i];
        if (!e->file) {
            rc = generate_model(w, e, max_batch, target, &cache, progress, err, sizeof err);
            continue;
        }
        if (!om || strcmp(om_entry->file, e->file) != 0 || om_entry->onnx_seq != e->onnx_seq) {
            onnx_model_free(om);
            om = NULL;
            struct onnx_import_options io;
            onnx_import_options_default(&io);
            io.seq_len = e->onnx_seq;
            if ((rc = onnx_import_file(e->file, &io, &om, err, sizeof err))) break;
            om_entry = e;
        }
        rc = generate_onnx_model(w, e, om, max_batch, progress, err, sizeof err);
    }
    onnx_model_free(om);
    cache_free(&cache);
    if (rc) {
        kvbin_writer_abort(w);
        fprintf(stderr, "generate_file: %s\n", err);
        generate_free_list(list, n);
        return 1;
    }
    rc = kvbin_writer_close(w);
    if (rc) {
        fprintf(stderr, "generate_file: writing %s: %s\n", a.positional[1], pps_strerror(rc));
        generate_free_list(list, n);
        return 1;
    }
    printf("generate_file: wrote %d model%s to %s in %.2f s\n", n, n == 1 ? "" : "s",
           a.positional[1], now_s() - t0);
    generate_free_list(list, n);
    return 0;
}
