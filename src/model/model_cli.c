/* model_cli: `pipeps model` (see model_cli.h). Builds the model exactly as
 * generate_file does, so what it prints is what kv.bin holds. */
#include "model/model_cli.h"

#include <stdio.h>
#include <string.h>

#include "common/args.h"
#include "common/buf.h"
#include "common/err.h"
#include "model/batching.h"
#include "model/model_blob.h"
#include "model/zoo.h"

static void print_dims(int ndims, const int64_t *dims)
{
    putchar('[');
    for (int i = 0; i < ndims; i++) {
        if (i) fputs(", ", stdout);
        if (dims[i] < 0) putchar('N');
        else printf("%lld", (long long)dims[i]);
    }
    putchar(']');
}

static void print_node(const struct graph *g, int i)
{
    const struct graph_node *n = &g->nodes[i];
    printf("%4d %-18s %-44s in(", i, graph_op_name(n->op), n->name);
    for (int k = 0; k < n->ninputs; k++) printf("%s%d", k ? "," : "", n->inputs[k]);
    printf(") params(");
    for (int k = 0; k < n->nparams; k++) printf("%s%d", k ? "," : "", n->params[k]);
    printf(") wait %d", n->wait_batch);
    for (int k = 0; k < n->nattrs; k++) {
        const struct graph_attr *a = &n->attrs[k];
        printf(" %s=", a->name);
        if (a->kind == GRAPH_ATTR_INT) printf("%lld", (long long)a->i);
        else if (a->kind == GRAPH_ATTR_FLOAT) printf("%g", (double)a->f);
        else {
            putchar('[');
            for (int j = 0; j < a->nints; j++) printf("%s%lld", j ? "," : "", (long long)a->ints[j]);
            putchar(']');
        }
    }
    putchar('\n');
}

int model_cli_main(int argc, char **argv)
{
    struct args_option opts[] = {
        {"seq", 1, NULL}, {"max-batch-size", 1, NULL}, {"nodes", 0, NULL}, {"blob", 1, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 4, &a, &help) != 0 || a.npositional != 1) {
        char known[256];
        zoo_known_list(known, sizeof known);
        fprintf(help ? stdout : stderr,
                "usage: pipeps model MODEL [--seq S] [--max-batch-size B] [--nodes] [--blob FILE]\n"
                "  prints a built-in model's graph summary and batches (as generate_file builds it)\n"
                "  --nodes  every node: op, name, inputs, params, wait_batch, attributes\n"
                "  --blob   write its METADATA blob to FILE\n"
                "models: %s\n", known);
        return help ? 0 : 2;
    }
    struct zoo_options zo = {0};
    uint64_t max_batch = BATCHING_DEFAULT_MAX;
    if (opts[0].value && args_parse_int(opts[0].value, 1, 1 << 20, &zo.seq_len) != 0) {
        fprintf(stderr, "pipeps model: bad --seq '%s'\n", opts[0].value);
        return 2;
    }
    if (opts[1].value && args_parse_size(opts[1].value, &max_batch) != 0) {
        fprintf(stderr, "pipeps model: bad --max-batch-size '%s'\n", opts[1].value);
        return 2;
    }
    struct zoo_model m;
    char err[512];
    if (zoo_build(&m, a.positional[0], &zo, err, sizeof err) != 0) {
        fprintf(stderr, "pipeps model: %s\n", err);
        return 1;
    }
    PPS_ASSERT(batching_apply(&m.g, max_batch) == 0);
    struct graph *g = &m.g;
    printf("model %s (weights seeded by '%s')\n", g->name, m.base);
    for (int i = 0; i < g->ninputs; i++) {
        printf("  input  %-20s %-8s ", g->inputs[i].name, graph_dtype_name(g->inputs[i].dtype));
        print_dims(g->inputs[i].ndims, g->inputs[i].dims);
        if (g->inputs[i].optional)
            printf(" optional, default %lld", (long long)g->inputs[i].fill);
        putchar('\n');
    }
    for (int i = 0; i < g->noutputs; i++) {
        printf("  output %-20s %-8s ", g->outputs[i].name, graph_dtype_name(g->outputs[i].dtype));
        print_dims(g->outputs[i].ndims, g->outputs[i].dims);
        printf(" (value %d)\n", g->outputs[i].value);
    }
    uint64_t elems = 0;
    for (int i = 0; i < g->nparams; i++) elems += graph_param_elems(&g->params[i]);
    printf("  %d nodes, %d parameters (%llu values, %llu bytes padded)\n", g->nnodes, g->nparams,
           (unsigned long long)elems, (unsigned long long)graph_total_padded(g));
    printf("  ops:");
    for (int op = 1; op < GRAPH_OP_COUNT; op++) {
        int c = 0;
        for (int i = 0; i < g->nnodes; i++) c += g->nodes[i].op == (enum graph_op)op;
        if (c) printf(" %s x%d", graph_op_name((enum graph_op)op), c);
    }
    printf("\n  %d batches (max_batch_size %llu):\n", g->nbatches, (unsigned long long)max_batch);
    for (int b = 0; b < g->nbatches; b++) {
        int first = -1, last = -1;
        for (int i = 0; i < g->nnodes; i++)
            if (g->nodes[i].wait_batch == b) {
                if (first < 0) first = i;
                last = i;
            }
        if (g->nbatches <= 40 || b < 10 || b >= g->nbatches - 5)
            printf("    %4d %10llu bytes  %4d params from %-40s nodes %d..%d\n", b,
                   (unsigned long long)g->batches[b].nbytes, g->batches[b].nparams,
                   g->params[g->batches[b].first_param].name, first, last);
        else if (b == 10)
            printf("    ...\n");
    }
    if (opts[2].value)
        for (int i = 0; i < g->nnodes; i++) print_node(g, i);
    int rc = 0;
    if (opts[3].value) {
        struct wbuf wb;
        wbuf_init(&wb);
        PPS_ASSERT(model_blob_encode(g, &wb) == 0);
        FILE *f = fopen(opts[3].value, "wb");
        if (!f || fwrite(wb.data, 1, wb.len, f) != wb.len || fclose(f) != 0) {
            fprintf(stderr, "pipeps model: cannot write %s\n", opts[3].value);
            rc = 1;
        } else {
            printf("  METADATA blob: %zu bytes -> %s\n", wb.len, opts[3].value);
        }
        wbuf_free(&wb);
    }
    zoo_free(&m);
    return rc;
}
