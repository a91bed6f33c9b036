/* fetch: reads a deployed model back through its location record (see
 * fetch.h). Sequential and simple on purpose: it checks deployments, it is
 * not the fast path (the cache pulls slices in parallel). */
#include "deploy/fetch.h"
#include "common/args.h"
#include "common/err.h"
#include "common/net.h"
#include "formats/kvbin.h"
#include "formats/location.h"
#include "metadata/meta_client.h"
#include "storage/storage_client.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pipeps fetch META_ADDR:PORT MODEL [--out DIR]\n"
            "\n"
            "Read MODEL back through its location record in the metadata storage and\n"
            "print each key's size and XXH3-64.\n"
            "  --out DIR   also write each value to DIR/<key> and the model\n"
            "              description to DIR/<model>-METADATA (DIR is created\n"
            "              if it does not exist)\n");
}

/* A key becomes a file name: refuse anything that could leave DIR. */
static int safe_file_name(const char *key) { return key[0] != '.' && !strchr(key, '/'); }

static int write_file(const char *dir, const char *name, const void *data, uint64_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "fetch: %s: %s\n", path, strerror(errno));
        return PPS_EIO;
    }
    const uint8_t *p = data;
    int rc = 0;
    while (len > 0 && !rc) {
        ssize_t k = write(fd, p, len > (1u << 30) ? (1u << 30) : (size_t)len);
        if (k < 0 && errno != EINTR)
            rc = pps_from_errno(errno);
        if (k > 0) {
            p += k;
            len -= (uint64_t)k;
        }
    }
    if (close(fd) != 0 && !rc)
        rc = pps_from_errno(errno);
    if (rc)
        fprintf(stderr, "fetch: writing %s: %s\n", path, pps_strerror(rc));
    return rc;
}

/* Connections by endpoint, opened on first use. */
struct endpoint_conn {
    char addr[64];
    uint16_t port;
    struct storage_client *c;
};

static struct storage_client *conn_for(struct endpoint_conn *conns, int *n, const struct location_slice *s,
                                       int *rc)
{
    for (int i = 0; i < *n; i++)
        if (conns[i].port == s->port && strcmp(conns[i].addr, s->addr) == 0)
            return conns[i].c;
    if (*n == LOCATION_MAX_SLICES * 4) {
        *rc = PPS_ETOOBIG;
        return NULL;
    }
    struct endpoint_conn *e = &conns[*n];
    *rc = storage_client_connect(&e->c, s->addr, s->port);
    if (*rc)
        return NULL;
    snprintf(e->addr, sizeof e->addr, "%s", s->addr);
    e->port = s->port;
    (*n)++;
    return e->c;
}

static int fetch_key(const struct location_key *k, struct endpoint_conn *conns, int *nconns, const char *out_dir)
{
    uint8_t *buf = malloc(k->size ? k->size : 1);
    if (!buf) {
        fprintf(stderr, "fetch: %s: cannot allocate %" PRIu64 " bytes\n", k->key, k->size);
        return PPS_ENOMEM;
    }
    int rc = 0;
    for (uint32_t s = 0; s < k->nslices && !rc; s++) {
        const struct location_slice *sl = &k->slices[s];
        struct storage_client *c = conn_for(conns, nconns, sl, &rc);
        uint64_t got = 0;
        if (c)
            rc = storage_get(c, sl->storage_key, 0, sl->size, buf + sl->offset, sl->size, &got);
        if (!rc && got != sl->size)
            rc = PPS_ETRUNCATED;
        if (rc)
            fprintf(stderr, "fetch: %s: slice %u (%s on %s:%u, %" PRIu64 " bytes): %s%s%s%s\n", k->key, s,
                    sl->storage_key, sl->addr, sl->port, sl->size, pps_strerror(rc), c ? " (" : "",
                    c ? storage_client_error(c) : "", c ? ")" : "");
    }
    if (!rc) {
        printf("%s %" PRIu64 " %016" PRIx64 " %u\n", k->key, k->size, (uint64_t)XXH3_64bits(buf, k->size),
               k->nslices);
        if (out_dir)
            rc = write_file(out_dir, k->key, buf, k->size);
    }
    free(buf);
    return rc;
}

int fetch_main(int argc, char **argv)
{
    struct args_option opts[] = {{"out", 1, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 1, &a, &help) != 0 || a.npositional != 2) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    const char *out_dir = opts[0].value, *model = a.positional[1];
    char host[256], key[KVBIN_NAME_MAX + 16];
    uint16_t port;
    if (net_parse_hostport(a.positional[0], host, sizeof host, &port) != 0) {
        fprintf(stderr, "fetch: bad metadata storage address %s (expected ADDR:PORT)\n", a.positional[0]);
        return 2;
    }
    net_ignore_sigpipe();
    struct meta_client *meta;
    int rc = meta_client_connect(&meta, host, port);
    if (rc) {
        fprintf(stderr, "fetch: metadata storage %s:%u: %s\n", host, port, pps_strerror(rc));
        return 1;
    }
    location_key_name(model, key, sizeof key);
    uint8_t *val = NULL, *desc = NULL;
    uint64_t len, desc_len;
    struct location_record rec;
    int have_rec = 0;
    rc = meta_get(meta, key, &val, &len);
    if (rc) {
        fprintf(stderr, "fetch: %s: %s\n", key, pps_strerror(rc));
        goto out;
    }
    rc = location_decode(val, len, &rec);
    if (rc) {
        fprintf(stderr, "fetch: %s: undecodable location record: %s\n", key, pps_strerror(rc));
        goto out;
    }
    have_rec = 1;
    rc = meta_get(meta, rec.metadata_key, &desc, &desc_len);
    if (rc) {
        fprintf(stderr, "fetch: %s: %s\n", rec.metadata_key, pps_strerror(rc));
        goto out;
    }
    printf("model %s generation %" PRIu64 " total_size %" PRIu64 " keys %u\n", rec.model, rec.generation,
           rec.total_size, rec.nkeys);
    printf("%s %" PRIu64 " %016" PRIx64 " meta\n", rec.metadata_key, desc_len, (uint64_t)XXH3_64bits(desc, desc_len));
    if (out_dir) {
        for (uint32_t i = 0; i < rec.nkeys; i++)
            if (!safe_file_name(rec.keys[i].key)) {
                fprintf(stderr, "fetch: key %s cannot be a file name\n", rec.keys[i].key);
                rc = PPS_EINVAL;
                goto out;
            }
        snprintf(key, sizeof key, "%s-METADATA", model);
        if (!safe_file_name(key)) {
            fprintf(stderr, "fetch: model name %s cannot be a file name\n", model);
            rc = PPS_EINVAL;
            goto out;
        }
        if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
            rc = pps_from_errno(errno);
            fprintf(stderr, "fetch: cannot create %s: %s\n", out_dir, strerror(errno));
            goto out;
        }
        rc = write_file(out_dir, key, desc, desc_len);
        if (rc)
            goto out;
    }
    struct endpoint_conn conns[LOCATION_MAX_SLICES * 4];
    int nconns = 0;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < rec.nkeys && !rc; i++) {
        rc = fetch_key(&rec.keys[i], conns, &nconns, out_dir);
        sum += rec.keys[i].size;
    }
    for (int i = 0; i < nconns; i++)
        storage_client_close(conns[i].c);
    if (!rc && sum != rec.total_size) {
        fprintf(stderr, "fetch: keys add up to %" PRIu64 " bytes, the record says %" PRIu64 "\n", sum,
                rec.total_size);
        rc = PPS_ECORRUPT;
    }
out:
    if (have_rec)
        location_free(&rec);
    free(val);
    free(desc);
    meta_client_close(meta);
    return rc ? 1 : 0;
}
