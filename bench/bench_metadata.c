/* bench_metadata: small-value GET and PUT rates of metadata_storage from
 * concurrent clients, each with its own persistent connection (meta_client).
 *
 *   bench_metadata [ADDR:PORT] [--threads 8] [--put-ops 20000] [--get-ops 100000]
 *                  [--size 100] [--keys 1000] [--reps 5] [--dir DIR]
 *
 * Without ADDR:PORT it starts build/bin/metadata_storage itself (next to this
 * program) on a free port with a fresh data directory (--dir, default a
 * temporary one under $TMPDIR or /tmp, removed afterwards), so PUT figures
 * include the real fdatasync of that file system. Each repetition runs: PUT
 * from 1 client (the fsync-per-request baseline), PUT from N clients (group
 * commit), GET from N clients. Prints ops/s min/median over the repetitions
 * and the ratio N-client/1-client PUT. A benchmark, not a test: nothing is
 * asserted. */
#include "common/args.h"
#include "lib/bench_util.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/net.h"
#include "metadata/meta_client.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 256
#define MAX_REPS 100

struct bench {
    char host[256];
    uint16_t port;
    int threads;
    uint64_t put_ops, get_ops;
    uint32_t size, keys;
    pthread_barrier_t barrier;
};

struct worker {
    struct bench *b;
    int id;
    int nthreads; /* threads in this phase */
    int put;      /* 1 = PUT, 0 = GET */
    uint64_t ops;
    double t_start, t_end;
    int rc;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct bench *b = w->b;
    struct meta_client *c = NULL;
    uint8_t *value = malloc(b->size ? b->size : 1);
    for (uint32_t i = 0; i < b->size; i++)
        value[i] = (uint8_t)(i * 31 + (uint32_t)w->id);
    w->rc = meta_client_connect(&c, b->host, b->port);
    pthread_barrier_wait(&b->barrier);
    w->t_start = bench_now_s();
    char key[64];
    for (uint64_t i = 0; i < w->ops && !w->rc; i++) {
        /* Keys are spread per thread, so threads never contend on one key. */
        snprintf(key, sizeof key, "bench-%03d-%06llu", w->id,
                 (unsigned long long)(i % (b->keys / (uint32_t)w->nthreads + 1)));
        if (w->put) {
            w->rc = meta_put(c, key, value, b->size);
        } else {
            uint8_t *v;
            uint64_t n;
            w->rc = meta_get(c, key, &v, &n);
            if (!w->rc)
                free(v);
        }
    }
    w->t_end = bench_now_s();
    meta_client_close(c);
    free(value);
    return NULL;
}

/* Run one phase; returns ops/s, or -1 on error. */
static double run_phase(struct bench *b, int nthreads, int put, uint64_t total_ops)
{
    struct worker w[MAX_THREADS];
    pthread_t t[MAX_THREADS];
    pthread_barrier_init(&b->barrier, NULL, (unsigned)nthreads);
    for (int i = 0; i < nthreads; i++) {
        w[i] = (struct worker){.b = b, .id = i, .nthreads = nthreads, .put = put,
                               .ops = total_ops / (uint64_t)nthreads};
        pthread_create(&t[i], NULL, worker_main, &w[i]);
    }
    double start = 1e300, end = 0;
    uint64_t done = 0;
    int rc = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(t[i], NULL);
        if (w[i].rc && !rc)
            rc = w[i].rc;
        start = w[i].t_start < start ? w[i].t_start : start;
        end = w[i].t_end > end ? w[i].t_end : end;
        done += w[i].ops;
    }
    pthread_barrier_destroy(&b->barrier);
    if (rc) {
        fprintf(stderr, "bench_metadata: %s failed: %s\n", put ? "PUT" : "GET", pps_strerror(rc));
        return -1;
    }
    return (double)done / (end - start);
}

static void report(const char *name, double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    double med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    printf("%-28s min %10.0f  median %10.0f  max %10.0f ops/s\n", name, v[0], med, v[n - 1]);
}

static void print_server_stat(struct bench *b)
{
    int fd;
    if (net_connect(b->host, b->port, 5000, &fd))
        return;
    uint8_t *resp = NULL;
    uint64_t len;
    if (frame_call(fd, MSG_STAT, NULL, 0, &resp, &len, 1 << 20) == 0) {
        printf("server STAT (selected):\n");
        const char *want[] = {"keys", "puts", "gets", "fsyncs", "fsync_avg_us", "batch_avg",
                              "batch_max", "compactions", "log_bytes"};
        for (char *line = strtok((char *)resp, "\n"); line; line = strtok(NULL, "\n"))
            for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
                if (strncmp(line, want[i], strlen(want[i])) == 0 && line[strlen(want[i])] == ' ')
                    printf("  %s\n", line);
    }
    free(resp);
    close(fd);
}

/* One numeric STAT field of the server, or -1. */
static double server_stat(struct bench *b, const char *name)
{
    int fd;
    double v = -1;
    if (net_connect(b->host, b->port, 5000, &fd))
        return v;
    uint8_t *resp = NULL;
    uint64_t len;
    if (frame_call(fd, MSG_STAT, NULL, 0, &resp, &len, 1 << 20) == 0) {
        size_t n = strlen(name);
        for (char *line = strtok((char *)resp, "\n"); line; line = strtok(NULL, "\n"))
            if (strncmp(line, name, n) == 0 && line[n] == ' ')
                v = strtod(line + n + 1, NULL);
    }
    free(resp);
    close(fd);
    return v;
}

/* ---- spawning the server ---- */

static pid_t spawn_server(const char *dir, char *host, size_t hostlen, uint16_t *port)
{
    char exe[PATH_MAX], server[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0)
        return -1;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    *slash = '\0';
    snprintf(server, sizeof server, "%s/metadata_storage", exe);
    if (access(server, X_OK) != 0)
        snprintf(server, sizeof server, "%s/../bin/metadata_storage", exe);
    int pipefd[2];
    if (pipe(pipefd) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(pipefd[1], STDOUT_FILENO);
        close(pipefd[0]);
        close(pipefd[1]);
        setenv("PIPEPS_LOG", "warn", 0);
        execl(server, "metadata_storage", "0", "--dir", dir, (char *)NULL);
        fprintf(stderr, "bench_metadata: cannot run %s: %s\n", server, strerror(errno));
        _exit(127);
    }
    close(pipefd[1]);
    FILE *f = fdopen(pipefd[0], "r");
    char line[1024];
    int ok = 0;
    while (f && fgets(line, sizeof line, f)) {
        char *p = strstr(line, "listening on ");
        if (p) {
            char *hp = p + strlen("listening on ");
            char *comma = strchr(hp, ',');
            if (comma)
                *comma = '\0';
            ok = net_parse_hostport(hp, host, hostlen, port) == 0;
            break;
        }
    }
    if (f)
        fclose(f);
    if (!ok) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

int main(int argc, char **argv)
{
    struct args_option opts[] = {
        {"threads", 1, NULL}, {"put-ops", 1, NULL}, {"get-ops", 1, NULL}, {"size", 1, NULL},
        {"keys", 1, NULL},    {"reps", 1, NULL},    {"dir", 1, NULL},
    };
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 7, &a, &help) || a.npositional > 1) {
        fprintf(help ? stdout : stderr,
                "usage: bench_metadata [ADDR:PORT] [--threads 8] [--put-ops 20000] "
                "[--get-ops 100000] [--size 100] [--keys 1000] [--reps 5] [--dir DIR]\n");
        return help ? 0 : 2;
    }
    struct bench b = {.threads = 8, .put_ops = 20000, .get_ops = 100000, .size = 100, .keys = 1000};
    int reps = 5, v;
    uint64_t u;
    if (opts[0].value && (args_parse_int(opts[0].value, 1, MAX_THREADS, &v) || !(b.threads = v)))
        return 2;
    if (opts[1].value && (args_parse_u64(opts[1].value, &b.put_ops) || !b.put_ops))
        return 2;
    if (opts[2].value && (args_parse_u64(opts[2].value, &b.get_ops) || !b.get_ops))
        return 2;
    if (opts[3].value && (args_parse_size(opts[3].value, &u) || u > META_MAX_VALUE))
        return 2;
    if (opts[3].value)
        b.size = (uint32_t)u;
    if (opts[4].value && (args_parse_int(opts[4].value, 1, 10000000, &v) || !(b.keys = (uint32_t)v)))
        return 2;
    if (opts[5].value && (args_parse_int(opts[5].value, 1, MAX_REPS, &reps)))
        return 2;

    pid_t server = 0;
    char tmpdir[PATH_MAX] = "";
    if (a.npositional == 1) {
        if (net_parse_hostport(a.positional[0], b.host, sizeof b.host, &b.port)) {
            fprintf(stderr, "bench_metadata: bad address %s\n", a.positional[0]);
            return 2;
        }
    } else {
        const char *dir = opts[6].value;
        if (!dir) {
            const char *t = getenv("TMPDIR");
            snprintf(tmpdir, sizeof tmpdir, "%s/bench-metadata-XXXXXX", t && *t ? t : "/tmp");
            if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 1;
            }
            dir = tmpdir;
        }
        server = spawn_server(dir, b.host, sizeof b.host, &b.port);
        if (server < 0) {
            fprintf(stderr, "bench_metadata: could not start metadata_storage\n");
            return 1;
        }
        printf("started metadata_storage on %s:%u, data directory %s\n", b.host, b.port, dir);
    }
    printf("%d client threads, %u-byte values, %u keys, %llu PUTs / %llu GETs per phase, %d reps\n",
           b.threads, b.size, b.keys, (unsigned long long)b.put_ops,
           (unsigned long long)b.get_ops, reps);
    fflush(stdout);

    double put1[MAX_REPS], putn[MAX_REPS], getn[MAX_REPS], batch[MAX_REPS];
    int rc = 0;
    /* Fill every key first, so GETs always hit. */
    if (run_phase(&b, b.threads, 1, (uint64_t)b.keys + (uint64_t)b.threads) < 0)
        rc = 1;
    for (int r = 0; r < reps && !rc; r++) {
        put1[r] = run_phase(&b, 1, 1, b.put_ops / 4 ? b.put_ops / 4 : 1);
        double f0 = server_stat(&b, "fsyncs"), p0 = server_stat(&b, "puts");
        putn[r] = run_phase(&b, b.threads, 1, b.put_ops);
        double f1 = server_stat(&b, "fsyncs"), p1 = server_stat(&b, "puts");
        batch[r] = f1 > f0 ? (p1 - p0) / (f1 - f0) : 0;
        getn[r] = run_phase(&b, b.threads, 0, b.get_ops);
        if (put1[r] < 0 || putn[r] < 0 || getn[r] < 0)
            rc = 1;
        else
            printf("rep %d: PUT 1 client %.0f/s, PUT %d clients %.0f/s (%.2f writes per fsync), "
                   "GET %d clients %.0f/s\n",
                   r + 1, put1[r], b.threads, putn[r], batch[r], b.threads, getn[r]);
        fflush(stdout);
    }
    if (!rc) {
        char name[64];
        printf("\n");
        double m1 = bench_median(put1, reps), mn = bench_median(putn, reps);
        report("PUT, 1 client (fsync each)", put1, reps);
        snprintf(name, sizeof name, "PUT, %d clients", b.threads);
        report(name, putn, reps);
        snprintf(name, sizeof name, "GET, %d clients", b.threads);
        report(name, getn, reps);
        printf("group commit gain (median PUT %d clients / 1 client): %.2fx; "
               "median %.2f writes per fsync with %d clients\n",
               b.threads, mn / m1, bench_median(batch, reps), b.threads);
        print_server_stat(&b);
    }
    if (server > 0) {
        kill(server, SIGTERM);
        waitpid(server, NULL, 0);
        if (tmpdir[0])
            bench_rm_rf(tmpdir);
    }
    return rc;
}
