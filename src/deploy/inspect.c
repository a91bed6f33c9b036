/* inspect: lists a kv.bin (see inspect.h). Output is meant for people and
 * for grep: one line per model, one indented line per record. */
#include "deploy/inspect.h"
#include "common/args.h"
#include "common/err.h"
#include "formats/kvbin.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pipeps inspect KV_BIN [--verify]\n"
            "\n"
            "List the models of a kv.bin file (name, total padded size, batches) and\n"
            "their keys with sizes, offsets and checksums.\n"
            "  --verify   also check that every model is complete and every value\n"
            "             matches its checksum; exit status 1 if not\n");
}

int inspect_main(int argc, char **argv)
{
    struct args_option opts[] = {{"verify", 0, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 1, &a, &help) != 0 || a.npositional != 1) {
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
