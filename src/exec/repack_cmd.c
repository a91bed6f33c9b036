/* repack_cmd: `pipeps repack` (see repack_cmd.h).
 *
 * Each model is read from the mapped input (METADATA and batches, checked
 * like `pipeps run` does), prepared by prepack and written to OUT.tmp, which
 * is renamed at the end: a failure leaves no half-written OUT. The easy
 * thing to get wrong: the input's batches must be exactly what its METADATA
 * lays out, since preparation reads parameters at those offsets. */
#include "exec/repack_cmd.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/buf.h"
#include "common/err.h"
#include "exec/executor.h"
#include "exec/prepack.h"
#include "formats/kvbin.h"
#include "model/model_blob.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pipeps repack IN_KV_BIN OUT_KV_BIN\n"
            "\n"
            "Rewrite every model of IN_KV_BIN into the native parameter format of this\n"
            "machine (%s): BatchNorm folded into convolutions, weights in the\n"
            "layouts this machine's kernels read, so servers use them in place from the\n"
            "cache. Works on portable kv.bin files and on ones prepared for another\n"
            "machine. OUT_KV_BIN is written to OUT_KV_BIN.tmp, then renamed.\n",
            exec_target());
}

/* One model of kv into w. */
static int repack_model(const struct kvbin *kv, const struct kvbin_model *km, struct kvbin_writer *w,
                        char *err, size_t errlen)
{
    int rc = kvbin_check_model(kv, km, 0, err, errlen);
    if (rc) return rc;
    char key[KVBIN_NAME_MAX + 32];
    snprintf(key, sizeof key, "%s-METADATA", km->name);
    const struct kvbin_record *meta = kvbin_find_record(km, key);
    struct graph g;
    rc = model_blob_decode(&g, meta->data, meta->len, err, errlen);
    if (rc) return rc;
    const void **batches = pps_xcalloc((unsigned long)g.nbatches + 1, sizeof *batches);
    for (int b = 0; b < g.nbatches && !rc; b++) {
        snprintf(key, sizeof key, "%s-BATCH-%d", km->name, b);
        const struct kvbin_record *r = kvbin_find_record(km, key);
        if (!r || r->len != g.batches[b].nbytes)
            rc = pps_fail(err, errlen, PPS_ECORRUPT, "%s: %s is %" PRIu64 " bytes, its METADATA says %" PRIu64,
                          km->name, key, r ? r->len : 0, g.batches[b].nbytes);
        else batches[b] = r->data;
    }
    struct prepack *pp = NULL;
    if (!rc) rc = prepack_model(&g, batches, &pp, err, errlen);
    if (!rc) {
        const struct graph *ng = prepack_graph(pp);
        struct wbuf blob;
        wbuf_init(&blob);
        rc = model_blob_encode(ng, &blob);
        uint64_t biggest = 0;
        for (int b = 0; b < ng->nbatches; b++)
            if (ng->batches[b].nbytes > biggest) biggest = ng->batches[b].nbytes;
        void *buf = NULL;
        if (!rc && posix_memalign(&buf, GRAPH_PARAM_ALIGN, biggest ? biggest : GRAPH_PARAM_ALIGN) != 0) {
            buf = NULL;
            rc = PPS_ENOMEM;
        }
        if (!rc)
            rc = kvbin_writer_model(w, km->name, graph_total_padded(ng), (uint32_t)ng->nbatches,
                                    (uint32_t)ng->nbatches + 1);
        if (!rc) {
            snprintf(key, sizeof key, "%s-METADATA", km->name);
            rc = kvbin_writer_record(w, key, blob.data, blob.len);
        }
        for (int b = 0; b < ng->nbatches && !rc; b++) {
            prepack_fill_batch(pp, b, buf);
            snprintf(key, sizeof key, "%s-BATCH-%d", km->name, b);
            rc = kvbin_writer_record(w, key, buf, ng->batches[b].nbytes);
        }
        if (rc && !err[0]) pps_fail(err, errlen, rc, "%s: writing: %s", km->name, pps_strerror(rc));
        if (!rc)
            printf("%-32s %4d params, %3d weights in kernel layouts, %3d BatchNorms folded, %3d batches, "
                   "%.1f MiB\n",
                   km->name, ng->nparams, prepack_weights_prepared(pp), prepack_bn_folded(pp), ng->nbatches,
                   (double)graph_total_padded(ng) / 1048576.0);
        free(buf);
        wbuf_free(&blob);
    }
    prepack_free(pp);
    free(batches);
    graph_free(&g);
    return rc;
}

int repack_main(int argc, char **argv)
{
    struct args a;
    int help = 0;
    if (args_split(argc, argv, NULL, 0, &a, &help) != 0 || a.npositional != 2) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    struct kvbin kv;
    char err[KVBIN_ERR_LEN] = "";
    int rc = kvbin_open(&kv, a.positional[0], err, sizeof err);
    if (rc) {
        fprintf(stderr, "repack: %s\n", err);
        return 1;
    }
    struct kvbin_writer *w;
    rc = kvbin_writer_open(&w, a.positional[1]);
    if (rc) {
        fprintf(stderr, "repack: cannot create %s: %s\n", a.positional[1], pps_strerror(rc));
        kvbin_close(&kv);
        return 1;
    }
    for (uint32_t i = 0; i < kv.nmodels && !rc; i++) {
        err[0] = '\0';
        rc = repack_model(&kv, &kv.models[i], w, err, sizeof err);
    }
    if (rc) {
        kvbin_writer_abort(w);
        fprintf(stderr, "repack: %s\n", err[0] ? err : pps_strerror(rc));
    } else if ((rc = kvbin_writer_close(w)) != 0) {
        fprintf(stderr, "repack: writing %s: %s\n", a.positional[1], pps_strerror(rc));
    } else {
        printf("repack: wrote %u model%s prepared for %s to %s\n", kv.nmodels, kv.nmodels == 1 ? "" : "s",
               exec_target(), a.positional[1]);
    }
    kvbin_close(&kv);
    return rc ? 1 : 0;
}
