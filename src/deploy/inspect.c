/* inspect: lists a kv.bin (see inspect.h). Output is meant for people and
 * for grep: one line per model, one indented line per record. */
#include "deploy/inspect.h"
#include "common/args.h"
#include "common/err.h"
#include "formats/kvbin.h"
#include "model/model_blob.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pipeps inspect KV_BIN [--verify] [--params]\n"
            "\n"
            "List the models of a kv.bin file (name, total padded size, batches, how\n"
            "their parameters are stored) and their keys with sizes, offsets and checksums.\n"
            "  --params   also list every parameter: dims, layout, batch, offset, bytes\n"
            "  --verify   also check that every model is complete and every value\n"
            "             matches its checksum; exit status 1 if not\n");
}

/* "format: native, prepared for T (n of m params in kernel layouts)" and,
 * with params, one line per parameter, from the model's METADATA. */
static void print_format(const struct kvbin_model *m, int params)
{
    char key[KVBIN_NAME_MAX + 32], err[KVBIN_ERR_LEN];
    snprintf(key, sizeof key, "%s-METADATA", m->name);
    const struct kvbin_record *r = kvbin_find_record(m, key);
    if (!r) return;
    struct graph g;
    if (model_blob_decode(&g, r->data, r->len, err, sizeof err) != 0) {
        printf("  format: METADATA unreadable (%s)\n", err);
        return;
    }
    int laid = 0;
    for (int i = 0; i < g.nparams; i++) laid += g.params[i].layout.ndims > 0;
    if (g.target[0])
        printf("  format: native, prepared for %s (%d of %d params in kernel layouts)\n", g.target, laid,
               g.nparams);
    else
        printf("  format: portable (%d params, plain float32)\n", g.nparams);
    for (int i = 0; params && i < g.nparams; i++) {
        const struct graph_param *p = &g.params[i];
        char dims[96] = "", layout[64];
        size_t k = 0;
        for (int d = 0; d < p->ndims && k < sizeof dims; d++)
            k += (size_t)snprintf(dims + k, sizeof dims - k, "%s%lld", d ? "x" : "", (long long)p->dims[d]);
        graph_layout_name(&p->layout, layout, sizeof layout);
        printf("  param %-48s %-18s %-16s batch %3d offset %10" PRIu64 " %10" PRIu64 " bytes\n", p->name,
               dims, layout, p->batch, p->offset, p->nbytes);
    }
    graph_free(&g);
}

int inspect_main(int argc, char **argv)
{
    struct args_option opts[] = {{"verify", 0, NULL}, {"params", 0, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 2, &a, &help) != 0 || a.npositional != 1) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    int verify = opts[0].value != NULL;
    struct kvbin kv;
    char err[KVBIN_ERR_LEN];
    int rc = kvbin_open(&kv, a.positional[0], err, sizeof err);
    if (rc) {
        fprintf(stderr, "inspect: %s\n", err);
        return 1;
    }
    printf("%s: kv.bin version %d, %" PRIu64 " bytes, %u model%s\n", kv.path, KVBIN_VERSION, kv.map_len,
           kv.nmodels, kv.nmodels == 1 ? "" : "s");
    unsigned bad = 0;
    for (uint32_t i = 0; i < kv.nmodels; i++) {
        const struct kvbin_model *m = &kv.models[i];
        printf("model %s: total_size %" PRIu64 " (%.1f MiB), %u batches, %u records, offset %" PRIu64 "\n",
               m->name, m->total_size, (double)m->total_size / (1024.0 * 1024.0), m->nbatches, m->nrecords,
               m->header_offset);
        print_format(m, opts[1].value != NULL);
        for (uint32_t j = 0; j < m->nrecords; j++) {
            const struct kvbin_record *r = &m->records[j];
            const char *status = "";
            if (verify)
                status = kvbin_verify(r, err, sizeof err) ? "  CHECKSUM MISMATCH" : "  ok";
            printf("  %-40s %12" PRIu64 " bytes  offset %12" PRIu64 "  xxh3 %016" PRIx64 "%s\n", r->key, r->len,
                   r->file_offset, r->checksum, status);
        }
        if (verify && kvbin_check_model(&kv, m, 1, err, sizeof err) != 0) {
            fprintf(stderr, "inspect: %s\n", err);
            bad++;
        }
    }
    if (verify) {
        if (bad)
            printf("verify: %u of %u model%s FAILED\n", bad, kv.nmodels, kv.nmodels == 1 ? "" : "s");
        else
            printf("verify: all %u model%s complete, all checksums match\n", kv.nmodels, kv.nmodels == 1 ? "" : "s");
    }
    kvbin_close(&kv);
    return bad ? 1 : 0;
}
