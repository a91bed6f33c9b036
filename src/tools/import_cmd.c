/* import_cmd: `pipeps import` (see import_cmd.h).
 *
 * The model is imported with allow_unsupported set, so a model with
 * unsupported nodes still yields its op-type table; those nodes are then
 * listed and the exit status is 1. A file that cannot be read or is not a
 * valid graph is exit status 2. The easy thing to get wrong: JSON output
 * carries names from the file, so every string goes through json_str. */
#include "tools/import_cmd.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/args.h"
#include "common/err.h"
#include "onnx/onnx_import.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pipeps import FILE.onnx [--seq N] [--json]\n"
            "  --seq N   value of every symbolic dimension other than the batch (input dim 0)\n"
            "  --json    one JSON object instead of the text report\n"
            "exit status: 0 the model can be served, 1 it has unsupported nodes (listed),\n"
            "             2 the file cannot be imported (the reason is printed)\n");
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void dims_text(FILE *f, const struct graph_io *io)
{
    if (io->ndims == 0) {
        fprintf(f, "[?]");
        return;
    }
    fprintf(f, "[");
    for (int d = 0; d < io->ndims; d++) {
        if (d == 0) fprintf(f, "batch");
        else fprintf(f, ", %" PRId64, io->dims[d]);
    }
    fprintf(f, "]");
}

static void dims_json(FILE *f, const struct graph_io *io)
{
    fprintf(f, "[");
    for (int d = 0; d < io->ndims; d++) fprintf(f, "%s%" PRId64, d ? ", " : "", io->dims[d]);
    fprintf(f, "]");
}

static void io_json(FILE *f, const struct graph_io *v, int n)
{
    fprintf(f, "[");
    for (int i = 0; i < n; i++) {
        fprintf(f, "%s{\"name\": ", i ? ", " : "");
        json_str(f, v[i].name);
        fprintf(f, ", \"dtype\": \"%s\", \"dims\": ", graph_dtype_name(v[i].dtype));
        dims_json(f, &v[i]);
        fprintf(f, "}");
    }
    fprintf(f, "]");
}

int import_main(int argc, char **argv)
{
    struct args_option opts[] = {{"seq", 1, NULL}, {"json", 0, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 2, &a, &help) != 0 || a.npositional != 1) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    struct onnx_import_options o;
    onnx_import_options_default(&o);
    o.allow_unsupported = 1;
    int seq = 0;
    if (opts[0].value && args_parse_int(opts[0].value, 1, 1 << 20, &seq) != 0) {
        fprintf(stderr, "import: bad --seq '%s'\n", opts[0].value);
        return 2;
    }
    o.seq_len = seq;
    int json = opts[1].value != NULL;
    const char *path = a.positional[0];
    char err[2048];
    struct onnx_model *m;
    int rc = onnx_import_file(path, &o, &m, err, sizeof err);
    if (rc) {
        if (json) {
            printf("{\"file\": ");
            json_str(stdout, path);
            printf(", \"servable\": false, \"error\": ");
            json_str(stdout, err);
            printf("}\n");
        } else {
            fprintf(stderr, "import: %s\n", err);
        }
        return 2;
    }
    const struct graph *g = onnx_model_graph(m);
    uint64_t pbytes = 0;
    for (int i = 0; i < g->nparams; i++) pbytes += g->params[i].nbytes;
    int nun = onnx_model_nunsupported(m);
    if (json) {
        printf("{\"file\": ");
        json_str(stdout, path);
        printf(", \"producer\": ");
        json_str(stdout, onnx_model_producer(m));
        printf(", \"opset\": %" PRId64 ", \"onnx_nodes\": %d, \"graph_nodes\": %d, \"parameters\": %d, "
               "\"parameter_bytes\": %" PRIu64 ", \"inputs\": ",
               onnx_model_opset(m), onnx_model_onnx_nodes(m), g->nnodes, g->nparams, pbytes);
        io_json(stdout, g->inputs, g->ninputs);
        printf(", \"outputs\": ");
        io_json(stdout, g->outputs, g->noutputs);
        printf(", \"op_types\": [");
        for (int i = 0; i < onnx_model_nop_types(m); i++) {
            const struct onnx_op_stat *s = onnx_model_op_type(m, i);
            printf("%s{\"op_type\": ", i ? ", " : "");
            json_str(stdout, s->op_type);
            printf(", \"domain\": ");
            json_str(stdout, s->domain);
            printf(", \"count\": %d, \"supported\": %s}", s->count, s->supported ? "true" : "false");
        }
        printf("], \"unsupported_nodes\": [");
        for (int i = 0; i < nun; i++) {
            const struct onnx_unsupported_node *u = onnx_model_unsupported(m, i);
            printf("%s{\"name\": ", i ? ", " : "");
            json_str(stdout, u->name);
            printf(", \"op_type\": ");
            json_str(stdout, u->op_type);
            printf(", \"domain\": ");
            json_str(stdout, u->domain);
            printf(", \"opset\": %" PRId64 "}", u->opset);
        }
        printf("], \"servable\": %s}\n", nun ? "false" : "true");
    } else {
        printf("%s: %d ONNX nodes, opset %" PRId64 "%s%s\n", path, onnx_model_onnx_nodes(m), onnx_model_opset(m),
               onnx_model_producer(m)[0] ? ", producer " : "", onnx_model_producer(m));
        printf("inputs:\n");
        for (int i = 0; i < g->ninputs; i++) {
            printf("  %-24s %-8s ", g->inputs[i].name, graph_dtype_name(g->inputs[i].dtype));
            dims_text(stdout, &g->inputs[i]);
            printf("\n");
        }
        printf("outputs:\n");
        for (int i = 0; i < g->noutputs; i++) {
            printf("  %-24s %-8s ", g->outputs[i].name, graph_dtype_name(g->outputs[i].dtype));
            dims_text(stdout, &g->outputs[i]);
            printf("\n");
        }
        printf("parameters: %d tensors, %" PRIu64 " bytes (float32)\n", g->nparams, pbytes);
        printf("graph nodes: %d\n", g->nnodes);
        printf("%-28s %6s  %s\n", "op type", "count", "supported");
        for (int i = 0; i < onnx_model_nop_types(m); i++) {
            const struct onnx_op_stat *s = onnx_model_op_type(m, i);
            char name[160];
            snprintf(name, sizeof name, "%s%s%s", s->domain, s->domain[0] ? "." : "", s->op_type);
            printf("%-28s %6d  %s\n", name, s->count, s->supported ? "yes" : "no");
        }
        if (nun) {
            printf("not servable: %d unsupported node(s):\n", nun);
            for (int i = 0; i < nun; i++) {
                const struct onnx_unsupported_node *u = onnx_model_unsupported(m, i);
                printf("  node '%s': %s%s%s (opset %" PRId64 ")\n", u->name, u->domain, u->domain[0] ? "." : "",
                       u->op_type, u->opset);
            }
        } else {
            printf("servable: yes\n");
        }
    }
    onnx_model_free(m);
    return nun ? 1 : 0;
}
