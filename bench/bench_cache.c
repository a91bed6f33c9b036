/* bench_cache: how fast the cache fills its pool from the storages, against a
 * plain loopback TCP stream of the same size measured in the same run.
 *
 *   bench_cache [--size-mb 240] [--reps 5] [--block 64K] [--depth 2]
 *               [--fetch-threads 1] [--dir DIR] [--keep] [--kv KV_BIN --models ONE,TWO]
 *               [--storage-opt 'OPTION VALUE']
 *
 * Starts build/bin/metadata_storage, two build/bin/storage and build/bin/cache
 * (next to this program) on free loopback ports with data under --dir
 * (default: a fresh directory under $TMPDIR or /tmp, removed afterwards),
 * deploys a synthetic ResNet-152-sized model (8 batches, the seed's 32 MB
 * batching) twice: once whole on storage 0, once sliced over both storages.
 * With --kv, deploy_file deploys two models of a real kv.bin instead (ONE
 * on storage 0, TWO over both; e.g. resnet152 and resnet152-alter-1 from
 * generate_file, which share their weights).
 * Each repetition then, for the one-storage model, the two-storage model and
 * the baselines:
 *   - the same storage GETs the cache makes for the one-storage model, made
 *     by this process into private memory (the storage's share of the time);
 *   - sends CACHE_IN and, at the same moment, SUBSCRIBEs on a second
 *     connection (cache_client, as a server would): time to "batch 0 ready"
 *     and to the CACHE_IN answer (the whole model in the pool);
 *   - CACHE_OUT, so the next repetition fetches again;
 *   - baseline: one TCP connection over loopback, a sender thread writing
 *     1 MiB at a time, the receiver reading into pre-faulted memory, the
 *     same number of bytes; once resending one hot 1 MiB buffer (the
 *     fastest plain stream: the ratios are against it), once sending from a
 *     buffer as large as the model (data at rest in memory, as a storage's
 *     page cache is).
 * Prints min/median seconds, throughput and the ratio of the cache's median
 * throughput to the baseline's. A benchmark, not a test: nothing is asserted. */
#include "cache/cache_client.h"
#include "cache/cache_proto.h"
#include "common/args.h"
#include "lib/bench_util.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/net.h"
#include "formats/kvbin.h"
#include "formats/location.h"
#include "metadata/meta_client.h"
#include "storage/storage_client.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPS 50
#define NBATCH_MAX 64

/* ---- daemons ---- */

struct proc {
    pid_t pid;
    uint16_t port;
};

static char bindir[PATH_MAX];

static uint16_t pick_port(void)
{
    int fd;
    uint16_t port = 0;
    if (net_listen(NULL, 0, &fd) == 0) {
        net_local_port(fd, &port);
        close(fd);
    }
    return port;
}

static int start_proc(struct proc *p, const char *log, char *const argv[], int wait_port)
{
    p->pid = fork();
    if (p->pid < 0)
        return PPS_EIO;
    if (p->pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    if (!wait_port)
        return 0;
    for (int i = 0; i < 600; i++) {
        int fd;
        if (net_connect(NULL, p->port, 200, &fd) == 0) {
            close(fd);
            return 0;
        }
        int st;
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
            fprintf(stderr, "bench_cache: %s exited early; see %s\n", argv[0], log);
            p->pid = 0;
            return PPS_EIO;
        }
        usleep(50000);
    }
    return PPS_ETIMEOUT;
}

static void stop_proc(struct proc *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGTERM);
        waitpid(p->pid, NULL, 0);
        p->pid = 0;
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* ---- deployment ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static void fill_random(uint8_t *p, uint64_t n)
{
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        memcpy(p + i, &rng_state, 8);
    }
    for (; i < n; i++)
        p[i] = (uint8_t)i;
}

/* Put model's batches (cut into one slice per listed storage, deploy_file's
 * rule) and publish its location record. */
static int deploy(const char *model, const uint64_t *sizes, uint32_t nb, const uint16_t *ports,
                  int nstorages, uint16_t meta_port)
{
    struct storage_client *sc[2] = {NULL, NULL};
    struct meta_client *mc = NULL;
    struct location_record rec;
    memset(&rec, 0, sizeof rec);
    snprintf(rec.model, sizeof rec.model, "%s", model);
    rec.generation = 1;
    snprintf(rec.metadata_key, sizeof rec.metadata_key, "%s-METADATA@1", model);
    rec.nkeys = nb;
    rec.keys = pps_xcalloc(nb, sizeof *rec.keys);
    int rc = 0;
    for (int s = 0; s < nstorages && !rc; s++)
        rc = storage_client_connect(&sc[s], "127.0.0.1", ports[s]);
    if (!rc)
        rc = meta_client_connect(&mc, "127.0.0.1", meta_port);
    uint8_t *buf = NULL;
    for (uint32_t i = 0; i < nb && !rc; i++) {
        struct location_key *k = &rec.keys[i];
        snprintf(k->key, sizeof k->key, "%s-BATCH-%u", model, i);
        k->size = sizes[i];
        buf = realloc(buf, sizes[i]);
        fill_random(buf, sizes[i]);
        uint64_t per = (sizes[i] + (uint64_t)nstorages - 1) / (uint64_t)nstorages;
        per = (per + 511) / 512 * 512;
        k->slices = pps_xcalloc((size_t)nstorages, sizeof *k->slices);
        for (uint64_t off = 0; off < sizes[i] && !rc; off += per) {
            struct location_slice *sl = &k->slices[k->nslices];
            sl->offset = off;
            sl->size = sizes[i] - off < per ? sizes[i] - off : per;
            snprintf(sl->addr, sizeof sl->addr, "127.0.0.1");
            sl->port = ports[k->nslices];
            snprintf(sl->storage_key, sizeof sl->storage_key, "%.200s@1", k->key);
            rc = storage_put(sc[k->nslices], sl->storage_key, buf + off, sl->size);
            k->nslices++;
            rec.total_size += sl->size;
        }
    }
    free(buf);
    if (!rc) {
        const char desc[] = "synthetic model for bench_cache";
        rc = meta_put(mc, rec.metadata_key, desc, sizeof desc);
    }
    if (!rc) {
        struct wbuf wb;
        wbuf_init(&wb);
        location_encode(&rec, &wb);
        char key[300];
        location_key_name(model, key, sizeof key);
        rc = meta_put(mc, key, wb.data, wb.len);
        wbuf_free(&wb);
    }
    location_free(&rec);
    for (int s = 0; s < nstorages; s++)
        storage_client_close(sc[s]);
    meta_client_close(mc);
    return rc;
}

/* ONE on storage 0, TWO on storages 0 and 1, with deploy_file. */
static int deploy_kv(const char *dir, const char *kv, const char *one, const char *two,
                     uint16_t meta_port, const uint16_t *ports)
{
    char sl[PATH_MAX + 32], dl[PATH_MAX + 32], prog[PATH_MAX + 32], log[PATH_MAX + 32];
    snprintf(sl, sizeof sl, "%s/storage_list.txt", dir);
    snprintf(dl, sizeof dl, "%s/model_distribution_list.txt", dir);
    snprintf(prog, sizeof prog, "%s/deploy_file", bindir);
    snprintf(log, sizeof log, "%s/deploy.log", dir);
    FILE *f = fopen(sl, "w");
    if (!f)
        return PPS_EIO;
    fprintf(f, "address, port\n127.0.0.1, %u\n127.0.0.1, %u\n127.0.0.1, %u\n", meta_port,
            ports[0], ports[1]);
    fclose(f);
    if (!(f = fopen(dl, "w")))
        return PPS_EIO;
    fprintf(f, "model, storages\n%s, 0\n%s, 0, 1\n", one, two);
    fclose(f);
    struct proc p = {0, 0};
    char *argv[] = {prog, sl, dl, (char *)kv, NULL};
    int rc = start_proc(&p, log, argv, 0);
    int st = 0;
    if (!rc && waitpid(p.pid, &st, 0) == p.pid && WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    fprintf(stderr, "bench_cache: deploy_file failed; see %s\n", log);
    return PPS_EIO;
}

/* ---- baseline: plain loopback stream ---- */

struct sender {
    int fd;
    uint64_t bytes;
    const uint8_t *src;
    int cold;                  /* src holds all the bytes (else 1 MiB, resent) */
};

static void *send_thread(void *arg)
{
    struct sender *s = arg;
    uint64_t left = s->bytes;
    while (left) {
        size_t n = left < (1u << 20) ? (size_t)left : (1u << 20);
        if (net_write_full(s->fd, s->cold ? s->src + (s->bytes - left) : s->src, n))
            break;
        left -= n;
    }
    return NULL;
}

static double stream_once(uint64_t bytes, uint8_t *dst, const uint8_t *src, int cold)
{
    int lfd, cfd, afd;
    uint16_t port;
    if (net_listen(NULL, 0, &lfd) || net_local_port(lfd, &port) ||
        net_connect(NULL, port, 2000, &cfd))
        return -1;
    afd = accept(lfd, NULL, NULL);
    close(lfd);
    struct sender s = {.fd = cfd, .bytes = bytes, .src = src, .cold = cold};
    pthread_t th;
    double t0 = bench_now_s();
    pthread_create(&th, NULL, send_thread, &s);
    uint64_t got = 0;
    while (got < bytes) {
        ssize_t r = recv(afd, dst + got, bytes - got, 0);
        if (r <= 0)
            break;
        got += (uint64_t)r;
    }
    double dt = bench_now_s() - t0;
    pthread_join(th, NULL);
    close(cfd);
    close(afd);
    return got == bytes ? dt : -1;
}

/* ---- the storage alone: the same GETs without the cache ---- */

/* Every slice of the model's location record, fetched by this process over
 * one connection per storage with two requests in flight (what the cache
 * does, minus the cache), into dst. One connection per storage is used in
 * turn, so for a one-storage model this is exactly the cache's pattern. */
static double raw_once(uint16_t meta_port, const char *model, uint8_t *dst, uint64_t cap)
{
    struct meta_client *mc = NULL;
    uint8_t *val = NULL;
    uint64_t len = 0;
    char key[300];
    location_key_name(model, key, sizeof key);
    struct location_record rec;
    memset(&rec, 0, sizeof rec);
    if (meta_client_connect(&mc, "127.0.0.1", meta_port) || meta_get(mc, key, &val, &len) ||
        location_decode(val, len, &rec)) {
        meta_client_close(mc);
        free(val);
        return -1;
    }
    meta_client_close(mc);
    free(val);
    struct storage_client *sc = NULL;
    uint16_t port = rec.nkeys ? rec.keys[0].slices[0].port : 0;
    double dt = -1;
    if (storage_client_connect(&sc, "127.0.0.1", port) == 0) {
        double t0 = bench_now_s();
        uint64_t off = 0, got = 0;
        int rc = 0;
        /* one storage only: every slice is on `port` */
        for (uint32_t k = 0; k < rec.nkeys && !rc; k++) {
            const struct location_slice *sl = &rec.keys[k].slices[0];
            rc = storage_get_send(sc, sl->storage_key, 0, sl->size);
            if (!rc && k > 0) { /* keep two requests in flight */
                rc = storage_get_recv(sc, dst + off, cap - off, &got);
                off += got;
            }
        }
        if (!rc && rec.nkeys)
            rc = storage_get_recv(sc, dst + off, cap - off, &got);
        if (!rc)
            dt = bench_now_s() - t0;
        storage_client_close(sc);
    }
    location_free(&rec);
    return dt;
}

/* ---- one cache fetch ---- */

static int send_model_req(int fd, uint16_t type, const char *model, uint64_t rid)
{
    struct wbuf wb;
    wbuf_init(&wb);
    cache_proto_encode_model(&wb, model);
    struct frame_header h = {.type = type, .request_id = rid};
    int rc = frame_send(fd, &h, wb.data, wb.len);
    wbuf_free(&wb);
    return rc;
}

static int recv_answer(int fd, int *status)
{
    struct frame_header h;
    uint8_t *p = NULL;
    int rc = frame_recv(fd, &h, &p, 1 << 16);
    if (!rc)
        *status = h.status;
    if (!rc && h.status < 0)
        fprintf(stderr, "bench_cache: cache says: %s\n", (const char *)p);
    free(p);
    return rc;
}

/* CACHE_IN on fd and SUBSCRIBE on cc at once; *t_batch0 and *t_all from
 * the moment of the request. */
static int fetch_once(int fd, struct cache_client *cc, const char *model, double *t_batch0,
                      double *t_all)
{
    static uint64_t rid = 1;
    int status = 0;
    double t0 = bench_now_s();
    int rc = send_model_req(fd, MSG_CACHE_IN, model, rid++);
    uint64_t sub = 0;
    if (!rc)
        rc = cache_client_subscribe(cc, model, &sub);
    *t_batch0 = -1;
    while (!rc) {
        struct cache_event ev;
        rc = cache_client_next_event(cc, &ev, 120000);
        if (rc)
            break;
        if (ev.kind == CACHE_EV_BATCH && ev.index == 0)
            *t_batch0 = bench_now_s() - t0;
        if (ev.kind == CACHE_EV_ERROR) {
            fprintf(stderr, "bench_cache: %s\n", ev.message);
            rc = ev.status;
        }
        if (ev.kind == CACHE_EV_DONE || ev.kind == CACHE_EV_ERROR)
            break;
    }
    if (!rc)
        rc = recv_answer(fd, &status); /* CACHE_IN: the whole model is in */
    *t_all = bench_now_s() - t0;
    if (!rc && status < 0)
        rc = status;
    if (!rc)
        rc = cache_client_unpin(cc, sub);
    if (!rc)
        rc = send_model_req(fd, MSG_CACHE_OUT, model, rid++);
    if (!rc)
        rc = recv_answer(fd, &status);
    if (!rc && status < 0)
        rc = status;
    return rc;
}

int main(int argc, char **argv)
{
    struct args_option opts[] = {{"size-mb", 1, NULL}, {"reps", 1, NULL},
                                 {"block", 1, NULL},   {"depth", 1, NULL},
                                 {"fetch-threads", 1, NULL}, {"dir", 1, NULL},
                                 {"keep", 0, NULL},    {"kv", 1, NULL},
                                 {"models", 1, NULL},  {"storage-opt", 1, NULL}};
    struct args a;
    int help;
    int size_mb = 240, reps = 5;
    const char *block = "64K", *depth = "2", *threads = "1";
    if (args_split(argc, argv, opts, 10, &a, &help) || a.npositional ||
        (opts[7].value && (!opts[8].value || !strchr(opts[8].value, ','))) ||
        (opts[0].value && args_parse_int(opts[0].value, 1, 4096, &size_mb)) ||
        (opts[1].value && args_parse_int(opts[1].value, 1, MAX_REPS, &reps))) {
        fprintf(stderr, "usage: bench_cache [--size-mb 240] [--reps 5] [--block 64K] "
                        "[--depth 2] [--fetch-threads 1] [--dir DIR] [--keep]\n"
                        "                   [--kv KV_BIN --models ONE,TWO] [--storage-opt 'OPT VALUE']\n");
        return 2;
    }
    if (opts[2].value)
        block = opts[2].value;
    if (opts[3].value)
        depth = opts[3].value;
    if (opts[4].value)
        threads = opts[4].value;
    net_ignore_sigpipe();
    ssize_t n = readlink("/proc/self/exe", bindir, sizeof bindir - 1);
    if (n <= 0)
        return 1;
    bindir[n] = '\0';
    *strrchr(bindir, '/') = '\0';

    char dir[PATH_MAX];
    if (opts[5].value) {
        snprintf(dir, sizeof dir, "%s", opts[5].value);
        mkdir(dir, 0755);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/bench_cache.XXXXXX", tmp ? tmp : "/tmp");
        if (!mkdtemp(dir))
            return 1;
    }

    /* the seed's batching of a ResNet-152-sized model: 32,768,000-byte batches */
    uint64_t total = (uint64_t)size_mb * 1000000ull, sizes[NBATCH_MAX];
    uint32_t nb = 0;
    for (uint64_t left = total; left && nb < NBATCH_MAX; nb++) {
        uint64_t s = left < 32768000ull ? left : 31997952ull;
        sizes[nb] = s;
        left -= s;
    }
    char one[128] = "bench-one", two[128] = "bench-two";
    if (opts[7].value) {
        const char *comma = strchr(opts[8].value, ',');
        snprintf(one, sizeof one, "%.*s", (int)(comma - opts[8].value), opts[8].value);
        snprintf(two, sizeof two, "%s", comma + 1);
        struct kvbin kv;
        char err[256];
        if (kvbin_open(&kv, opts[7].value, err, sizeof err)) {
            fprintf(stderr, "bench_cache: %s\n", err);
            return 1;
        }
        const struct kvbin_model *m1 = kvbin_find_model(&kv, one), *m2 = kvbin_find_model(&kv, two);
        if (!m1 || !m2 || m1->total_size != m2->total_size || !m1->nbatches) {
            fprintf(stderr, "bench_cache: %s needs models %s and %s of the same size\n",
                    opts[7].value, one, two);
            kvbin_close(&kv);
            return 1;
        }
        total = m1->total_size;
        nb = m1->nbatches;
        sizes[0] = 0;
        for (uint32_t r = 0; r < m1->nrecords; r++) /* batch 0's size, for the report */
            if (strcmp(m1->records[r].key + strlen(one), "-BATCH-0") == 0)
                sizes[0] = m1->records[r].len;
        kvbin_close(&kv);
    }
    char path[PATH_MAX + 64], a1[32], a4[PATH_MAX + 16];
    struct proc meta = {.port = pick_port()}, st[2] = {{0, 0}, {0, 0}};
    struct proc cache = {.port = pick_port()};
    int rc = 0;
    snprintf(a1, sizeof a1, "%u", meta.port);
    snprintf(path, sizeof path, "%s/metadata_storage", bindir);
    snprintf(a4, sizeof a4, "%s/meta", dir);
    char lp[PATH_MAX + 32];
    snprintf(lp, sizeof lp, "%s/meta.log", dir);
    char *margv[] = {path, a1, "--dir", a4, NULL};
    rc = start_proc(&meta, lp, margv, 1);
    for (int s = 0; s < 2 && !rc; s++) {
        char sp[PATH_MAX + 32], sd[PATH_MAX + 16], sport[16], sl[PATH_MAX + 32];
        st[s].port = pick_port();
        snprintf(sp, sizeof sp, "%s/storage", bindir);
        snprintf(sport, sizeof sport, "%u", st[s].port);
        snprintf(sd, sizeof sd, "%s/s%d", dir, s);
        snprintf(sl, sizeof sl, "%s/storage%d.log", dir, s);
        /* --storage-opt "--send-path sendfile": one option and its value */
        char sopt[256] = "", *sval = NULL;
        if (opts[9].value) {
            snprintf(sopt, sizeof sopt, "%s", opts[9].value);
            sval = strchr(sopt, ' ');
            if (sval)
                *sval++ = '\0';
        }
        char *sargv[] = {sp, sport, "--dir", sd, opts[9].value ? sopt : NULL, sval, NULL};
        rc = start_proc(&st[s], sl, sargv, 1);
    }
    uint16_t ports[2] = {st[0].port, st[1].port};
    printf("bench_cache: model of %u batches, %.1f MB%s%s; data in %s\n", nb, total / 1e6,
           opts[7].value ? " from " : " (synthetic)", opts[7].value ? opts[7].value : "", dir);
    fflush(stdout);
    if (!rc && opts[7].value) {
        rc = deploy_kv(dir, opts[7].value, one, two, meta.port, ports);
    } else {
        if (!rc)
            rc = deploy(one, sizes, nb, ports, 1, meta.port);
        if (!rc)
            rc = deploy(two, sizes, nb, ports, 2, meta.port);
    }
    char cport[16], mport[16], lbport[16], shm[64], pool[32];
    snprintf(cport, sizeof cport, "%u", cache.port);
    snprintf(mport, sizeof mport, "%u", meta.port);
    snprintf(lbport, sizeof lbport, "%u", pick_port()); /* no load balancer: it retries */
    snprintf(shm, sizeof shm, "pipeps-bench-%d", (int)getpid());
    snprintf(pool, sizeof pool, "%lluM", (unsigned long long)(total / 1000000 + 64));
    snprintf(path, sizeof path, "%s/cache", bindir);
    snprintf(lp, sizeof lp, "%s/cache.log", dir);
    char *cargv[] = {path, "127.0.0.1", cport, "127.0.0.1", mport, "127.0.0.1", lbport, shm,
                     pool, (char *)block, "--depth", (char *)depth, "--fetch-threads",
                     (char *)threads, NULL};
    if (!rc)
        rc = start_proc(&cache, lp, cargv, 1);
    int fd = -1;
    struct cache_client *cc = NULL;
    if (!rc)
        rc = net_connect(NULL, cache.port, 2000, &fd);
    if (!rc)
        rc = cache_client_connect(&cc, "127.0.0.1", cache.port);
    if (rc) {
        fprintf(stderr, "bench_cache: setup failed: %s (logs in %s)\n", pps_strerror(rc), dir);
        goto out;
    }

    uint8_t *src = malloc(1u << 20);
    uint8_t *dst = mmap(NULL, total, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    uint8_t *cold = mmap(NULL, total, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    fill_random(src, 1u << 20);
    fill_random(cold, total);
    double t_stream[MAX_REPS], t_cold[MAX_REPS], t_one[MAX_REPS], t_two[MAX_REPS],
        b0_one[MAX_REPS], b0_two[MAX_REPS], t_raw[MAX_REPS];
    for (int r = 0; r < reps && !rc; r++) {
        t_stream[r] = stream_once(total, dst, src, 0);
        t_cold[r] = stream_once(total, dst, cold, 1);
        t_raw[r] = raw_once(meta.port, one, dst, total);
        if (t_raw[r] < 0) {
            rc = PPS_EIO;
            break;
        }
        rc = fetch_once(fd, cc, one, &b0_one[r], &t_one[r]);
        if (!rc)
            rc = fetch_once(fd, cc, two, &b0_two[r], &t_two[r]);
        if (!rc)
            printf("rep %d: stream %.3f s (cold source %.3f s), storage GETs %.3f s, one storage "
                   "%.3f s (batch 0 %.1f ms), two storages %.3f s (batch 0 %.1f ms)\n",
                   r + 1, t_stream[r], t_cold[r], t_raw[r], t_one[r], b0_one[r] * 1e3, t_two[r],
                   b0_two[r] * 1e3);
        fflush(stdout);
    }
    munmap(dst, total);
    munmap(cold, total);
    free(src);
    if (rc) {
        fprintf(stderr, "bench_cache: %s (logs in %s)\n", pps_strerror(rc), dir);
        goto out;
    }
    double ms = bench_median(t_stream, reps), m1 = bench_median(t_one, reps), m2 = bench_median(t_two, reps);
    double ns = bench_minimum(t_stream, reps), n1 = bench_minimum(t_one, reps), n2 = bench_minimum(t_two, reps);
    double mr = bench_median(t_raw, reps), nr = bench_minimum(t_raw, reps);
    double mc = bench_median(t_cold, reps), nc = bench_minimum(t_cold, reps);
    /* each repetition's cache time against the stream measured just before it */
    double p1[MAX_REPS], p2[MAX_REPS], pr[MAX_REPS], pc[MAX_REPS], q0[MAX_REPS], q1[MAX_REPS],
        q2[MAX_REPS];
    for (int r = 0; r < reps; r++) {
        q0[r] = t_stream[r] / t_cold[r];
        q1[r] = t_cold[r] / t_one[r];
        q2[r] = t_cold[r] / t_two[r];
        p1[r] = t_stream[r] / t_one[r];
        p2[r] = t_stream[r] / t_two[r];
        pr[r] = t_stream[r] / t_raw[r];
        pc[r] = t_raw[r] / t_one[r];
    }
    printf("\n%-32s %8s %8s %9s %9s %11s %11s %11s\n", "", "min s", "med s", "GB/s max",
           "GB/s med", "ratio(min)", "ratio(med)", "paired med");
    printf("%-32s %8.3f %8.3f %9.2f %9.2f %11s %11s %11s\n", "plain loopback TCP stream", ns, ms,
           total / ns / 1e9, total / ms / 1e9, "1.00", "1.00", "1.00");
    printf("%-32s %8.3f %8.3f %9.2f %9.2f %11.2f %11.2f %11.2f\n", "storage GETs alone, one storage",
           nr, mr, total / nr / 1e9, total / mr / 1e9, ns / nr, ms / mr, bench_median(pr, reps));
    printf("%-32s %8.3f %8.3f %9.2f %9.2f %11.2f %11.2f %11.2f\n", "cache fetch, one storage", n1,
           m1, total / n1 / 1e9, total / m1 / 1e9, ns / n1, ms / m1, bench_median(p1, reps));
    printf("%-32s %8.3f %8.3f %9.2f %9.2f %11.2f %11.2f %11.2f\n", "cache fetch, two storages", n2,
           m2, total / n2 / 1e9, total / m2 / 1e9, ns / n2, ms / m2, bench_median(p2, reps));
    printf("%-32s %8.1f %8.1f  (ms)\n", "request -> batch 0 ready, one", bench_minimum(b0_one, reps) * 1e3,
           bench_median(b0_one, reps) * 1e3);
    printf("%-32s %8.1f %8.1f  (ms)\n", "request -> batch 0 ready, two", bench_minimum(b0_two, reps) * 1e3,
           bench_median(b0_two, reps) * 1e3);
    printf("%-32s %8.3f %8.3f %9.2f %9.2f %11.2f %11.2f %11.2f\n",
           "plain stream, cold 240MB source", nc, mc, total / nc / 1e9, total / mc / 1e9, ns / nc,
           ms / mc, bench_median(q0, reps));
    printf("against the cold-source stream: cache one storage %.2f (medians), %.2f (paired); "
           "two storages %.2f, %.2f\n",
           mc / m1, bench_median(q1, reps), mc / m2, bench_median(q2, reps));
    printf("cache fetch / storage GETs alone (one storage): %.2f (medians), %.2f (paired median)\n",
           mr / m1, bench_median(pc, reps));
    printf("(ratio = throughput / plain-stream throughput: of the best runs, of the medians,\n"
           " and the median of each repetition's ratio; batch 0 is %.1f MB)\n", sizes[0] / 1e6);
out:
    cache_client_close(cc);
    if (fd >= 0)
        close(fd);
    stop_proc(&cache);
    stop_proc(&st[0]);
    stop_proc(&st[1]);
    stop_proc(&meta);
    if (!opts[6].value && !opts[5].value && !rc)
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc ? 1 : 0;
}
