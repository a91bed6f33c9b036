/* Unit tests for the model zoo: registry and names, the five architectures'
 * sizes (parameter counts and element totals from torchvision's state_dict
 * and our BERT/GPT-2 modules, tests/integration/torch_models.py), graph
 * validity under batching, and the deterministic weight generator. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/batching.h"
#include "model/zoo.h"

static void test_registry_and_names(void **state)
{
    (void)state;
    char base[GRAPH_NAME_MAX + 1], known[256];
    assert_int_equal(zoo_count(), 6);
    assert_string_equal(zoo_name(0), "resnet152");
    assert_string_equal(zoo_name(5), "tiny_mlp");
    assert_null(zoo_name(6));
    assert_int_equal(zoo_base_name("resnet152", base, sizeof base), 0);
    assert_string_equal(base, "resnet152");
    assert_int_equal(zoo_base_name("gpt2-alter-00000042", base, sizeof base), 0);
    assert_string_equal(base, "gpt2");
    assert_int_equal(zoo_base_name("gpt3", base, sizeof base), PPS_ENOTFOUND);
    assert_int_equal(zoo_base_name("gpt2-alter-", base, sizeof base), PPS_EINVAL);
    assert_int_equal(zoo_base_name("", base, sizeof base), PPS_EINVAL);
    assert_true(zoo_is_transformer("bert_base"));
    assert_false(zoo_is_transformer("densenet201"));
    zoo_known_list(known, sizeof known);
    assert_string_equal(known, "resnet152, inception_v3, densenet201, bert_base, gpt2, tiny_mlp");

    struct zoo_model m;
    char err[512];
    assert_int_equal(zoo_build(&m, "alexnet", NULL, err, sizeof err), PPS_ENOTFOUND);
    assert_non_null(strstr(err, "alexnet"));
    assert_non_null(strstr(err, "inception_v3"));
    struct zoo_options bad_seq = {.seq_len = 513};
    assert_int_equal(zoo_build(&m, "bert_base", &bad_seq, err, sizeof err), PPS_EINVAL);
    struct zoo_options cnn_seq = {.seq_len = 16};
    assert_int_equal(zoo_build(&m, "resnet152", &cnn_seq, err, sizeof err), PPS_EINVAL);
}

struct expect {
    const char *name;
    int nparams;
    uint64_t elems; /* without the graph's "const.*" operands */
    int ninput_dims;
    int64_t in1;    /* inputs[0].dims[1] */
};

static const struct expect expected[] = {
    {"resnet152", 777, 60344232, 4, 3},
    {"inception_v3", 472, 23869000, 4, 3},
    {"densenet201", 1006, 20242984, 4, 3},
    {"bert_base", 197 + 2, 108891648, 2, ZOO_DEFAULT_SEQ},
    {"gpt2", 148 + 2, 124439808, 2, ZOO_DEFAULT_SEQ},
};

static void test_architectures(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        const struct expect *e = &expected[i];
        struct zoo_model m;
        char err[512];
        assert_int_equal(zoo_build(&m, e->name, NULL, err, sizeof err), 0);
        assert_string_equal(m.g.name, e->name);
        assert_int_equal(graph_validate(&m.g, err, sizeof err), 0);
        assert_int_equal(m.g.nparams, e->nparams);
        uint64_t elems = 0;
        for (int p = 0; p < m.g.nparams; p++) {
            if (strncmp(m.g.params[p].name, "const.", 6) == 0) continue;
            elems += graph_param_elems(&m.g.params[p]);
            /* Names are unique. */
            for (int q = 0; q < p; q++) assert_string_not_equal(m.g.params[p].name, m.g.params[q].name);
        }
        assert_true(elems == e->elems);
        assert_int_equal(m.g.inputs[0].ndims, e->ninput_dims);
        assert_int_equal(m.g.inputs[0].dims[0], -1);
        assert_int_equal(m.g.inputs[0].dims[1], e->in1);
        assert_int_equal(m.g.noutputs, 1);
        if (strcmp(e->name, "bert_base") == 0) {
            /* input_ids, then the optional attention_mask (default all
             * ones) and token_type_ids (default zeros), same shape. */
            assert_int_equal(m.g.ninputs, 3);
            assert_int_equal(graph_required_inputs(&m.g), 1);
            assert_string_equal(m.g.inputs[1].name, "attention_mask");
            assert_int_equal(m.g.inputs[1].fill, 1);
            assert_string_equal(m.g.inputs[2].name, "token_type_ids");
            assert_int_equal(m.g.inputs[2].fill, 0);
            for (int k = 1; k < 3; k++) {
                assert_int_equal(m.g.inputs[k].optional, 1);
                assert_int_equal(m.g.inputs[k].dtype, GRAPH_I64);
                assert_int_equal(m.g.inputs[k].ndims, 2);
                assert_int_equal(m.g.inputs[k].dims[1], e->in1);
            }
        } else {
            assert_int_equal(m.g.ninputs, 1);
        }

        /* Nodes that bring a parameter no earlier node used: with limit 0
         * each starts a batch (GPT-2's lm_head reuses wte and shared
         * constants are placed once, so those nodes do not). */
        char *seen = calloc((size_t)m.g.nparams, 1);
        int fresh_nodes = 0;
        for (int n = 0; n < m.g.nnodes; n++) {
            int fresh = 0;
            for (int k = 0; k < m.g.nodes[n].nparams; k++) {
                int32_t pid = m.g.nodes[n].params[k];
                fresh |= !seen[pid];
                seen[pid] = 1;
            }
            fresh_nodes += fresh;
        }
        free(seen);
        assert_int_equal(batching_apply(&m.g, BATCHING_DEFAULT_MAX), 0);
        assert_int_equal(graph_validate(&m.g, err, sizeof err), 0);
        for (int b = 0; b < m.g.nbatches; b++)
            if (m.g.batches[b].nparams > 1) assert_true(m.g.batches[b].nbytes <= BATCHING_DEFAULT_MAX);
        assert_int_equal(batching_apply(&m.g, UINT64_MAX), 0);
        assert_int_equal(m.g.nbatches, 1);
        assert_true(m.g.batches[0].nbytes == graph_total_padded(&m.g));
        assert_int_equal(batching_apply(&m.g, 0), 0);
        assert_int_equal(graph_validate(&m.g, err, sizeof err), 0);
        assert_int_equal(m.g.nbatches, fresh_nodes);
        assert_true(m.g.nbatches > 50);
        zoo_free(&m);
    }
}

static double mean_of(const float *v, uint64_t n)
{
    double s = 0;
    for (uint64_t i = 0; i < n; i++) s += v[i];
    return s / (double)n;
}

static double std_of(const float *v, uint64_t n)
{
    double mu = mean_of(v, n), s = 0;
    for (uint64_t i = 0; i < n; i++) s += (v[i] - mu) * (v[i] - mu);
    return sqrt(s / (double)n);
}

static float *param_values(const struct zoo_model *m, const char *name, uint64_t *n)
{
    int32_t id = graph_find_param(&m->g, name);
    assert_true(id >= 0);
    *n = graph_param_elems(&m->g.params[id]);
    float *v = malloc(m->g.params[id].nbytes);
    assert_non_null(v);
    zoo_fill_param(m, id, v);
    return v;
}

static void test_weights(void **state)
{
    (void)state;
    struct zoo_model a, b, c;
    char err[256];
    assert_int_equal(zoo_build(&a, "resnet152", NULL, err, sizeof err), 0);
    assert_int_equal(zoo_build(&b, "resnet152-alter-00000001", NULL, err, sizeof err), 0);
    assert_int_equal(zoo_build(&c, "densenet201", NULL, err, sizeof err), 0);
    assert_true(a.seed == b.seed);
    assert_true(a.seed != c.seed);
    assert_string_equal(b.g.name, "resnet152-alter-00000001");

    uint64_t n, n2;
    float *w = param_values(&a, "layer3.5.conv2.weight", &n); /* [256, 256, 3, 3] */
    float *w2 = param_values(&b, "layer3.5.conv2.weight", &n2);
    assert_true(n == 256ull * 256 * 9 && n2 == n);
    assert_memory_equal(w, w2, n * sizeof(float)); /* copies share weights */
    double want = sqrt(2.0 / (256 * 9));
    assert_true(fabs(mean_of(w, n)) < 0.02 * want);
    assert_true(fabs(std_of(w, n) / want - 1.0) < 0.02);
    float lim = (float)(want * sqrt(3.0));
    for (uint64_t i = 0; i < n; i++) assert_true(w[i] >= -lim && w[i] <= lim);
    /* Different parameters of one model are different streams. */
    float *w3 = param_values(&a, "layer3.6.conv2.weight", &n2);
    assert_memory_not_equal(w, w3, 64 * sizeof(float));
    free(w);
    free(w2);
    free(w3);

    float *var = param_values(&a, "layer1.0.bn1.running_var", &n);
    for (uint64_t i = 0; i < n; i++) assert_true(var[i] >= 0.8f && var[i] < 1.25f);
    free(var);
    zoo_free(&a);
    zoo_free(&b);
    zoo_free(&c);

    struct zoo_model g;
    struct zoo_options opt = {.seq_len = 5};
    assert_int_equal(zoo_build(&g, "gpt2", &opt, err, sizeof err), 0);
    assert_int_equal(g.g.inputs[0].dims[1], 5);
    float *mask = param_values(&g, "const.causal_mask", &n);
    assert_int_equal(n, 25);
    for (int r = 0; r < 5; r++)
        for (int col = 0; col < 5; col++)
            assert_true(mask[r * 5 + col] == (col <= r ? 0.0f : -1e9f));
    free(mask);
    float *scale = param_values(&g, "const.attn_scale", &n);
    assert_true(n == 1 && scale[0] == 0.125f);
    free(scale);
    float *ln = param_values(&g, "h.3.ln_2.weight", &n);
    for (uint64_t i = 0; i < n; i++) assert_true(ln[i] >= 0.9f && ln[i] < 1.1f);
    free(ln);
    zoo_free(&g);
}

/* A batch is the concatenation of its parameters at their offsets, with
 * zero padding, whatever the batching. */
static void test_fill_batch(void **state)
{
    (void)state;
    struct zoo_model m;
    char err[256];
    assert_int_equal(zoo_build(&m, "inception_v3", NULL, err, sizeof err), 0);
    assert_int_equal(batching_apply(&m.g, 4u << 20), 0);
    for (int b = 0; b < m.g.nbatches; b += 3) {
        const struct graph_batch *bt = &m.g.batches[b];
        uint8_t *buf;
        assert_int_equal(posix_memalign((void **)&buf, 512, bt->nbytes), 0);
        memset(buf, 0xAB, bt->nbytes);
        zoo_fill_batch(&m, b, buf);
        for (int k = bt->first_param; k < bt->first_param + bt->nparams; k++) {
            const struct graph_param *p = &m.g.params[k];
            float *v = malloc(p->nbytes);
            zoo_fill_param(&m, k, v);
            assert_memory_equal(buf + p->offset, v, p->nbytes);
            for (uint64_t z = p->offset + p->nbytes; z < p->offset + graph_param_padded(p); z++)
                assert_int_equal(buf[z], 0);
            free(v);
        }
        free(buf);
    }
    zoo_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_and_names),
        cmocka_unit_test(test_architectures),
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_fill_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
