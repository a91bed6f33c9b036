/* gc: deletes deploy generations that no location record references (see
 * gc.h).
 *
 * Order matters: every storage and the metadata storage are listed first,
 * the location records are read after, so a deploy that publishes while gc
 * runs has its new record seen (its generation is kept), and its previous
 * generation, which deploy_file deletes itself, may be deleted twice (a
 * missing key is fine).
 *
 * The one thing easy to get wrong: "unreferenced" must never include a
 * generation a deploy is still pushing, whose record does not exist yet.
 * Generations are deploy start times in milliseconds, so only those older
 * than --min-age are deleted; one in the future (a clock set back) is never
 * old enough. */
#include "deploy/gc.h"
#include "common/args.h"
#include "common/err.h"
#include "common/net.h"
#include "deploy/deploy_plan.h"
#include "formats/location.h"
#include "metadata/meta_client.h"
#include "storage/storage_client.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_MIN_AGE_S 3600
#define ERRLEN 1024

/* A value or description of one generation of one model. */
struct candidate {
    char *key;              /* as stored */
    char *model;
    uint64_t generation;
    uint64_t size;          /* storage values only */
    int storage;            /* index in the storage list; -1: the metadata storage */
};

struct candidates {
    struct candidate *v;
    size_t n, cap;
};

/* What a model's location record says. */
enum model_state { MODEL_UNPUBLISHED, MODEL_PUBLISHED, MODEL_UNKNOWN };

struct model_ref {
    char *model;
    enum model_state state;
    uint64_t generation;    /* MODEL_PUBLISHED */
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* "<digits>" into *out; 0, or -1 if empty, not digits or over 64 bits. */
static int parse_generation(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

/* key = "<model><infix><digits>@<generation>" (storage values: infix
 * "-BATCH-" and a batch index) or "<model><infix>@<generation>"
 * (descriptions: infix "-METADATA", no digits). On a match, *model is
 * malloc'd. */
static int split_key(const char *key, const char *infix, int index_digits, char **model, uint64_t *generation)
{
    const char *at = strrchr(key, '@');
    if (!at || parse_generation(at + 1, generation) != 0)
        return -1;
    const char *end = at;
    if (index_digits) {
        const char *d = end;
        while (d > key && d[-1] >= '0' && d[-1] <= '9')
            d--;
        if (d == end)
            return -1;
        end = d;
    }
    size_t ilen = strlen(infix);
    if ((size_t)(end - key) <= ilen || memcmp(end - ilen, infix, ilen) != 0)
        return -1;
    size_t mlen = (size_t)(end - key) - ilen;
    *model = pps_xmalloc(mlen + 1);
    memcpy(*model, key, mlen);
    (*model)[mlen] = '\0';
    return 0;
}

static void add_candidate(struct candidates *cs, const char *key, char *model, uint64_t generation, uint64_t size,
                          int storage)
{
    if (cs->n == cs->cap) {
        cs->cap = cs->cap ? cs->cap * 2 : 256;
        cs->v = pps_xrealloc(cs->v, cs->cap * sizeof *cs->v);
    }
    struct candidate *c = &cs->v[cs->n++];
    c->key = pps_xmalloc(strlen(key) + 1);
    strcpy(c->key, key);
    c->model = model;
    c->generation = generation;
    c->size = size;
    c->storage = storage;
}

/* The model's entry in refs (n of them), NULL if none yet. */
static struct model_ref *find_ref(struct model_ref *refs, size_t n, const char *model)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(refs[i].model, model) == 0)
            return &refs[i];
    return NULL;
}

/* "90", "90s", "15m", "2h", "1d" into milliseconds. */
static int parse_age(const char *text, uint64_t *ms)
{
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || *text == '-')
        return -1;
    uint64_t unit = 1000;
    if (*end == 'm')
        unit = 60000;
    else if (*end == 'h')
        unit = 3600000;
    else if (*end == 'd')
        unit = 86400000;
    else if (*end != 's' && *end != '\0')
        return -1;
    if (*end && end[1])
        return -1;
    if (v > UINT64_MAX / unit)
        return -1;
    *ms = (uint64_t)v * unit;
    return 0;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pipeps gc STORAGE_LIST [--min-age AGE] [--dry-run]\n"
            "\n"
            "Delete deploy generations that no location record references: storage values\n"
            "\"<model>-BATCH-<i>@<generation>\" on every storage of STORAGE_LIST (deploy_file's\n"
            "list: metadata storage first) and descriptions \"<model>-METADATA@<generation>\"\n"
            "whose model's \"<model>-LOCATION\" names another generation or is missing.\n"
            "  --min-age AGE  only generations older than AGE (seconds, or with s/m/h/d;\n"
            "                 default 1h): a younger one may be a deploy still pushing\n"
            "  --dry-run      print what would be deleted, delete nothing\n"
            "Prints one line per deleted key; exit status 1 if a daemon could not be read\n"
            "or a delete failed.\n");
}

struct gc_run {
    struct deploy_storage_list sl;
    const char *sl_path;
    struct meta_client *meta;
    struct storage_client *stores[DEPLOY_MAX_STORAGES]; /* NULL: unreachable */
    struct candidates cs;
    struct model_ref *refs;
    size_t nrefs;
    int failed;
};

static int list_storages(struct gc_run *g)
{
    for (uint32_t i = 0; i < g->sl.nstorages; i++) {
        const struct deploy_endpoint *ep = &g->sl.storages[i];
        int rc = storage_client_connect(&g->stores[i], ep->addr, ep->port);
        if (rc) {
            fprintf(stderr, "gc: storage %u %s:%u unreachable: %s; its values are not collected\n", i, ep->addr,
                    ep->port, pps_strerror(rc));
            g->stores[i] = NULL;
            g->failed = 1;
            continue;
        }
        struct storage_list_entry *v;
        uint32_t n;
        rc = storage_list(g->stores[i], "", &v, &n);
        if (rc) {
            const char *why = storage_client_error(g->stores[i]);
            fprintf(stderr, "gc: storage %u %s:%u: listing keys: %s%s%s%s\n", i, ep->addr, ep->port,
                    pps_strerror(rc), *why ? " (" : "", why, *why ? ")" : "");
            storage_client_close(g->stores[i]);
            g->stores[i] = NULL;
            g->failed = 1;
            continue;
        }
        for (uint32_t k = 0; k < n; k++) {
            char *model;
            uint64_t gen;
            if (split_key(v[k].key, "-BATCH-", 1, &model, &gen) == 0)
                add_candidate(&g->cs, v[k].key, model, gen, v[k].size, (int)i);
        }
        storage_list_free(v, n);
    }
    return 0;
}

static int list_descriptions(struct gc_run *g)
{
    char **keys;
    uint32_t n;
    int rc = meta_list(g->meta, "", &keys, &n);
    if (rc) {
        fprintf(stderr, "gc: metadata storage %s:%u: listing keys: %s\n", g->sl.meta.addr, g->sl.meta.port,
                pps_strerror(rc));
        return rc;
    }
    for (uint32_t k = 0; k < n; k++) {
        char *model;
        uint64_t gen;
        if (split_key(keys[k], "-METADATA", 0, &model, &gen) == 0)
            add_candidate(&g->cs, keys[k], model, gen, 0, -1);
    }
    meta_free_list(keys, n);
    return 0;
}

/* The location record of every model that has a candidate, read after the
 * listings. */
static int read_locations(struct gc_run *g)
{
    g->refs = pps_xcalloc(g->cs.n ? g->cs.n : 1, sizeof *g->refs);
    for (size_t i = 0; i < g->cs.n; i++) {
        const char *model = g->cs.v[i].model;
        if (find_ref(g->refs, g->nrefs, model))
            continue;
        struct model_ref *ref = &g->refs[g->nrefs++];
        ref->model = g->cs.v[i].model; /* owned by the candidate */
        char key[LOCATION_NAME_MAX + 64];
        if (strlen(model) > LOCATION_NAME_MAX) {
            ref->state = MODEL_UNKNOWN; /* deploy_file never made such a name */
            continue;
        }
        location_key_name(model, key, sizeof key);
        uint8_t *val;
        uint64_t len;
        int rc = meta_get(g->meta, key, &val, &len);
        if (rc == PPS_ENOTFOUND) {
            ref->state = MODEL_UNPUBLISHED;
            continue;
        }
        if (rc) {
            fprintf(stderr, "gc: reading %s: %s\n", key, pps_strerror(rc));
            return rc; /* the connection is likely gone: stop before deleting anything */
        }
        struct location_record rec;
        rc = location_decode(val, len, &rec);
        free(val);
        if (rc) {
            fprintf(stderr, "gc: %s is undecodable (%s); nothing of %s is deleted\n", key, pps_strerror(rc),
                    model);
            ref->state = MODEL_UNKNOWN;
            g->failed = 1;
            continue;
        }
        ref->state = MODEL_PUBLISHED;
        ref->generation = rec.generation;
        location_free(&rec);
    }
    return 0;
}

static void human(uint64_t bytes, char *out, size_t outlen)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(out, outlen, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

static void collect(struct gc_run *g, uint64_t min_age_ms, int dry_run)
{
    uint64_t now = now_ms(), bytes = 0;
    size_t nvalues = 0, ndesc = 0, young = 0, fails = 0;
    const char *verb = dry_run ? "would delete" : "deleted";
    for (size_t i = 0; i < g->cs.n; i++) {
        const struct candidate *c = &g->cs.v[i];
        const struct model_ref *ref = find_ref(g->refs, g->nrefs, c->model);
        if (!ref || ref->state == MODEL_UNKNOWN)
            continue;
        if (ref->state == MODEL_PUBLISHED && ref->generation == c->generation)
            continue;
        if (c->generation > now || now - c->generation < min_age_ms) {
            young++;
            continue;
        }
        int rc = 0;
        if (!dry_run) {
            if (c->storage >= 0)
                rc = storage_delete(g->stores[c->storage], c->key);
            else
                rc = meta_delete(g->meta, c->key);
            if (rc == PPS_ENOTFOUND)
                rc = 0; /* gone meanwhile (a deploy's own clean-up) */
        }
        if (rc) {
            fails++;
            if (c->storage >= 0)
                fprintf(stderr, "gc: storage %d: delete %s: %s\n", c->storage, c->key, pps_strerror(rc));
            else
                fprintf(stderr, "gc: metadata storage: delete %s: %s\n", c->key, pps_strerror(rc));
            continue;
        }
        if (c->storage >= 0) {
            const struct deploy_endpoint *ep = &g->sl.storages[c->storage];
            printf("%s storage %d %s:%u %s %" PRIu64 "\n", verb, c->storage, ep->addr, ep->port, c->key, c->size);
            nvalues++;
            bytes += c->size;
        } else {
            printf("%s metadata %s\n", verb, c->key);
            ndesc++;
        }
    }
    fflush(stdout);
    char b[32];
    human(bytes, b, sizeof b);
    fprintf(stderr, "gc: %s %zu storage value%s (%s) and %zu description%s of unreferenced generations", verb,
            nvalues, nvalues == 1 ? "" : "s", b, ndesc, ndesc == 1 ? "" : "s");
    if (young)
        fprintf(stderr, "; kept %zu younger than --min-age", young);
    if (fails)
        fprintf(stderr, "; %zu delete%s failed", fails, fails == 1 ? "" : "s");
    fputc('\n', stderr);
    if (fails)
        g->failed = 1;
}

static void gc_free(struct gc_run *g)
{
    for (uint32_t i = 0; i < DEPLOY_MAX_STORAGES; i++)
        if (g->stores[i])
            storage_client_close(g->stores[i]);
    for (size_t i = 0; i < g->cs.n; i++) {
        free(g->cs.v[i].key);
        free(g->cs.v[i].model);
    }
    free(g->cs.v);
    free(g->refs);
    if (g->meta)
        meta_client_close(g->meta);
}

int gc_main(int argc, char **argv)
{
    struct args_option opts[] = {{"min-age", 1, NULL}, {"dry-run", 0, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 2, &a, &help) != 0 || a.npositional != 1) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    uint64_t min_age_ms = (uint64_t)DEFAULT_MIN_AGE_S * 1000;
    if (opts[0].value && parse_age(opts[0].value, &min_age_ms) != 0) {
        fprintf(stderr, "gc: bad --min-age '%s' (e.g. 3600, 90s, 30m, 2h, 1d)\n", opts[0].value);
        return 2;
    }
    net_ignore_sigpipe();
    struct gc_run *g = pps_xcalloc(1, sizeof *g);
    g->sl_path = a.positional[0];
    char err[ERRLEN], *text;
    size_t len;
    int rc = deploy_read_list_file(g->sl_path, &text, &len, err, sizeof err);
    if (!rc) {
        rc = deploy_parse_storage_list(text, len, g->sl_path, &g->sl, err, sizeof err);
        free(text);
    }
    if (rc) {
        fprintf(stderr, "gc: %s\n", err);
        free(g);
        return 1;
    }
    rc = meta_client_connect(&g->meta, g->sl.meta.addr, g->sl.meta.port);
    if (rc) {
        fprintf(stderr, "gc: metadata storage %s:%u (%s:%d) unreachable: %s; nothing deleted\n", g->sl.meta.addr,
                g->sl.meta.port, g->sl_path, g->sl.meta.line, pps_strerror(rc));
        g->meta = NULL;
        gc_free(g);
        free(g);
        return 1;
    }
    if (!(rc = list_storages(g)) && !(rc = list_descriptions(g)) && !(rc = read_locations(g)))
        collect(g, min_age_ms, opts[1].value != NULL);
    else
        fprintf(stderr, "gc: nothing deleted\n");
    int status = rc || g->failed ? 1 : 0;
    gc_free(g);
    free(g);
    return status;
}
