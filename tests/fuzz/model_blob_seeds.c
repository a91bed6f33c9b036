/* Writes the METADATA blobs of the five zoo models (small sequence length,
 * a few batching limits) into a directory: seeds for fuzz_model_blob. */
#include <stdio.h>

#include "common/buf.h"
#include "model/batching.h"
#include "model/model_blob.h"
#include "model/zoo.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: model_blob_seeds DIR\n");
        return 2;
    }
    static const uint64_t limits[2] = {0, 32768000};
    for (int i = 0; i < zoo_count(); i++)
        for (int l = 0; l < 2; l++) {
            struct zoo_model m;
            struct zoo_options o = {.seq_len = zoo_is_transformer(zoo_name(i)) ? 4 : 0};
            char err[256], path[4096];
            if (zoo_build(&m, zoo_name(i), &o, err, sizeof err) != 0) return 1;
            batching_apply(&m.g, limits[l]);
            struct wbuf wb;
            wbuf_init(&wb);
            model_blob_encode(&m.g, &wb);
            snprintf(path, sizeof path, "%s/%s-%d.blob", argv[1], zoo_name(i), l);
            FILE *f = fopen(path, "wb");
            if (!f || fwrite(wb.data, 1, wb.len, f) != wb.len || fclose(f) != 0) return 1;
            wbuf_free(&wb);
            zoo_free(&m);
        }
    return 0;
}
