/* bench_storage: GET throughput of the storage daemon over loopback against
 * a plain loopback TCP stream of the same size measured in the same run,
 * and PUT throughput (with fdatasync) against a local write + fdatasync.
 *
 *   bench_storage [ADDR:PORT] [--reps 7] [--value 32M] [--slice 30M]
 *                 [--slices 8] [--put-size 256M] [--dir DIR] [--sockbuf SIZE]
 *                 [--send-path mmap|sendfile]
 *
 * Without ADDR:PORT it starts build/bin/storage (next to this program) on a
 * free port with a fresh data directory (--dir, default a temporary one
 * under $TMPDIR or /tmp, removed afterwards), passing it --send-path.
 *
 * Each repetition of the GET phase measures, interleaved so that drift hits
 * both alike:
 *   - plain TCP, one value's size: a sender thread writes the bytes with
 *     1 MiB send()s after a 1-byte request; the receiver recv()s straight
 *     into a pre-faulted buffer (the same receive path as storage_get);
 *   - storage GET of one value (default 32 MiB) with storage_get into a
 *     pre-faulted buffer, request to last byte;
 *   - plain TCP, a whole model's size (slices x slice), from the hot
 *     buffer, and again from a buffer as big as the model (its bytes come
 *     from memory, as a storage's come from the page cache);
 *   - storage GET of the model's slices (default 8 x 30 MiB = 240 MiB), all
 *     requests pipelined on one connection (storage_get_send, then
 *     storage_get_recv into consecutive parts of one buffer), as a cache
 *     fetching from one storage would;
 * Then each repetition of the PUT phase: a PUT of --put-size bytes under a
 * new key (acknowledged after fdatasync) and a local pwrite + fdatasync of
 * the same size into the same directory.
 * Prints min and median throughput and the ratios storage / plain. A
 * benchmark, not a test: nothing is asserted. */
#include "common/args.h"
#include "lib/bench_util.h"
#include "common/err.h"
#include "common/net.h"
#include "storage/storage_client.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPS 100
#define SEND_CHUNK (1u << 20)

/* CPU seconds (user + system) of this process: the plain stream's both
 * ends, or a storage GET's receiving end. */
static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* CPU seconds of another process (the storage daemon), or 0. */
static double proc_cpu_s(pid_t pid)
{
    if (pid <= 0)
        return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_storage: %s: %s\n", what, pps_strerror(rc));
    exit(1);
}

/* ---- plain loopback TCP stream ---- */

struct plain {
    int listen_fd;
    uint16_t port;
    uint64_t nbytes; /* per request, set before each request */
    int sockbuf;
    pthread_t thread;
    uint8_t *src;    /* SEND_CHUNK bytes, hot in the CPU caches */
    uint8_t *cold;   /* as many bytes as the biggest request */
};

/* Serve one connection: each request is a u64 byte count, whose top bit
 * asks for the bytes from the big cold buffer instead of one hot 1 MiB
 * buffer; send them in 1 MiB writes. */
static void *plain_sender(void *arg)
{
    struct plain *p = arg;
    int fd = accept(p->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    net_set_nodelay(fd);
    if (p->sockbuf)
        net_set_bufsize(fd, p->sockbuf);
    for (;;) {
        uint8_t req[8];
        if (net_read_full(fd, req, sizeof req))
            break;
        uint64_t n;
        memcpy(&n, req, sizeof n);
        int cold = (n >> 63) != 0;
        n &= ~(1ull << 63);
        uint64_t off = 0;
        while (off < n) {
            size_t m = n - off < SEND_CHUNK ? (size_t)(n - off) : SEND_CHUNK;
            if (net_write_full(fd, cold ? p->cold + off : p->src, m))
                goto out;
            off += m;
        }
    }
out:
    close(fd);
    return NULL;
}

static double plain_once(int fd, uint8_t *dst, uint64_t n, int cold)
{
    double t0 = bench_now_s();
    uint64_t req = n | (cold ? 1ull << 63 : 0);
    int rc = net_write_full(fd, &req, sizeof req);
    if (!rc)
        rc = net_read_full(fd, dst, (size_t)n);
    if (rc)
        die("plain TCP stream", rc);
    return (double)n / (bench_now_s() - t0);
}

/* ---- the storage daemon ---- */

static pid_t spawn_storage(const char *dir, uint16_t *port, int sockbuf, const char *send_path)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    *slash = '\0';
    char server[PATH_MAX + 16];
    snprintf(server, sizeof server, "%s/storage", exe);
    int lfd;
    if (net_listen(NULL, 0, &lfd) || net_local_port(lfd, port))
        return -1;
    close(lfd);
    char portbuf[16], logpath[PATH_MAX], sb[32];
    snprintf(portbuf, sizeof portbuf, "%u", *port);
    snprintf(logpath, sizeof logpath, "%s/storage.log", dir);
    snprintf(sb, sizeof sb, "%d", sockbuf);
    pid_t pid = fork();
    if (pid == 0) {
        int log = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (log >= 0) {
            dup2(log, 1);
            dup2(log, 2);
        }
        char datadir[PATH_MAX];
        snprintf(datadir, sizeof datadir, "%s/data", dir);
        if (sockbuf)
            execl(server, "storage", portbuf, "--dir", datadir, "--send-path", send_path,
                  "--sockbuf", sb, (char *)NULL);
        else
            execl(server, "storage", portbuf, "--dir", datadir, "--send-path", send_path,
                  (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        int fd;
        if (net_connect(NULL, *port, 200, &fd) == 0) {
            close(fd);
            return pid;
        }
        usleep(25000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

/* ---- statistics ---- */

static void row(const char *name, const double *v, int n)
{
    printf("  %-38s %9.0f %9.0f\n", name, bench_minimum(v, n) / 1e6, bench_median(v, n) / 1e6);
}

/* min/min, median/median, and the median of the per-repetition ratios
 * (each pair measured back to back, so load changes hit both alike). */
static void ratio(const char *name, const double *a, const double *b, int n)
{
    double paired[MAX_REPS];
    for (int i = 0; i < n; i++)
        paired[i] = a[i] / b[i];
    printf("  %-38s %9.3f %9.3f %9.3f\n", name, bench_minimum(a, n) / bench_minimum(b, n),
           bench_median(a, n) / bench_median(b, n), bench_median(paired, n));
}

/* ---- main ---- */

static void *prefaulted(uint64_t n, uint8_t fill)
{
    uint8_t *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_storage: cannot allocate %llu bytes\n", (unsigned long long)n);
        exit(1);
    }
    memset(p, fill, n);
    return p;
}

int main(int argc, char **argv)
{
    struct args_option opts[] = {
        {"reps", 1, NULL},   {"value", 1, NULL}, {"slice", 1, NULL}, {"slices", 1, NULL},
        {"put-size", 1, NULL}, {"dir", 1, NULL}, {"sockbuf", 1, NULL}, {"send-path", 1, NULL},
    };
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 8, &a, &help) || a.npositional > 1) {
        fprintf(help ? stdout : stderr,
                "usage: bench_storage [ADDR:PORT] [--reps 7] [--value 32M] [--slice 30M]\n"
                "                     [--slices 8] [--put-size 256M] [--dir DIR] [--sockbuf SIZE]\n"
                "                     [--send-path mmap|sendfile]\n");
        return help ? 0 : 2;
    }
    int reps = 7, nslices = 8;
    uint64_t value = 32ull << 20, slice = 30ull << 20, put_size = 256ull << 20, sockbuf = 0;
    if ((opts[0].value && args_parse_int(opts[0].value, 1, MAX_REPS, &reps)) ||
        (opts[1].value && args_parse_size(opts[1].value, &value)) ||
        (opts[2].value && args_parse_size(opts[2].value, &slice)) ||
        (opts[3].value && args_parse_int(opts[3].value, 1, 64, &nslices)) ||
        (opts[4].value && args_parse_size(opts[4].value, &put_size)) ||
        (opts[6].value && (args_parse_size(opts[6].value, &sockbuf) || sockbuf > (1u << 30)))) {
        fprintf(stderr, "bench_storage: bad option value\n");
        return 2;
    }
    const char *send_path = opts[7].value ? opts[7].value : "mmap";
    net_ignore_sigpipe();

    char host[256] = "127.0.0.1";
    uint16_t port = 0;
    pid_t pid = -1;
    char tmpdir[PATH_MAX] = "";
    if (a.npositional == 1) {
        if (net_parse_hostport(a.positional[0], host, sizeof host, &port))
            die("ADDR:PORT", PPS_EINVAL);
    } else {
        const char *base = opts[5].value ? opts[5].value : getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/bench-storage-XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(tmpdir))
            die("mkdtemp", pps_from_errno(errno));
        pid = spawn_storage(tmpdir, &port, (int)sockbuf, send_path);
        if (pid < 0)
            die("starting build/bin/storage", PPS_ECONNECT);
    }

    uint64_t model = slice * (uint64_t)nslices;
    uint64_t biggest = model > value ? model : value;
    uint8_t *src = prefaulted(biggest > put_size ? biggest : put_size, 0);
    for (uint64_t i = 0; i < (biggest > put_size ? biggest : put_size); i += 4096)
        src[i] = (uint8_t)(i >> 12);
    uint8_t *dst = prefaulted(biggest, 1);

    struct storage_client *c;
    int rc = storage_client_connect(&c, host, port);
    if (rc)
        die("connecting to the storage", rc);
    if (sockbuf)
        net_set_bufsize(storage_client_fd(c), (int)sockbuf);

    /* Load the values the GETs read. */
    char key[64];
    if ((rc = storage_put(c, "bench-value", src, value)) != 0)
        die("PUT bench-value", rc);
    for (int i = 0; i < nslices; i++) {
        snprintf(key, sizeof key, "bench-model-slice-%d", i);
        if ((rc = storage_put(c, key, src + (uint64_t)i * slice, slice)) != 0)
            die("PUT model slice", rc);
    }

    /* The plain stream: a sender thread on its own loopback connection. */
    struct plain pl = {.sockbuf = (int)sockbuf};
    pl.src = prefaulted(SEND_CHUNK, 7);
    pl.cold = src; /* the model's bytes, not touched since they were PUT */
    if (net_listen(NULL, 0, &pl.listen_fd) || net_local_port(pl.listen_fd, &pl.port))
        die("plain listener", PPS_EIO);
    pthread_create(&pl.thread, NULL, plain_sender, &pl);
    int pfd;
    if ((rc = net_connect(NULL, pl.port, 5000, &pfd)) != 0)
        die("plain connect", rc);
    if (sockbuf)
        net_set_bufsize(pfd, (int)sockbuf);

    /* Local write + fdatasync target for the PUT baseline. */
    char localpath[PATH_MAX + 32];
    int lfd = -1;
    if (tmpdir[0]) {
        snprintf(localpath, sizeof localpath, "%s/local-write", tmpdir);
        lfd = open(localpath, O_RDWR | O_CREAT | O_TRUNC, 0644);
    }

    double plain_v[MAX_REPS], get_v[MAX_REPS], plain_m[MAX_REPS], get_m[MAX_REPS];
    double plain_c[MAX_REPS];
    double put_v[MAX_REPS], local_v[MAX_REPS];
    /* CPU spent moving the GET bytes: plain stream (both ends, this
     * process) and storage GETs (this process receiving + the daemon). */
    double cpu_plain = 0, cpu_get = 0, bytes_plain = 0, bytes_get = 0;
    /* One untimed round warms up both paths (page cache, TCP windows). */
    for (int r = -1; r < reps; r++) {
        double t0, c0 = self_cpu_s();
        uint64_t got = 0;
        double x = plain_once(pfd, dst, value, 0);
        double c1 = self_cpu_s(), d1 = proc_cpu_s(pid);

        t0 = bench_now_s();
        rc = storage_get(c, "bench-value", 0, UINT64_MAX, dst, value, &got);
        if (rc || got != value)
            die("GET bench-value", rc ? rc : PPS_ETRUNCATED);
        double y = (double)value / (bench_now_s() - t0);
        if (memcmp(dst + value / 2, src + value / 2, 4096) != 0)
            die("GET bench-value returned other bytes", PPS_ECORRUPT);

        double c2 = self_cpu_s(), d2 = proc_cpu_s(pid);
        double xm = plain_once(pfd, dst, model, 0);
        double xc = plain_once(pfd, dst, model, 1);
        double c3 = self_cpu_s(), d3 = proc_cpu_s(pid);

        t0 = bench_now_s();
        for (int i = 0; i < nslices; i++) {
            snprintf(key, sizeof key, "bench-model-slice-%d", i);
            if ((rc = storage_get_send(c, key, 0, slice)) != 0)
                die("GET send", rc);
        }
        for (int i = 0; i < nslices; i++) {
            rc = storage_get_recv(c, dst + (uint64_t)i * slice, slice, &got);
            if (rc || got != slice)
                die("GET model slice", rc ? rc : PPS_ETRUNCATED);
        }
        double ym = (double)model / (bench_now_s() - t0);
        double c4 = self_cpu_s(), d4 = proc_cpu_s(pid);
        if (memcmp(dst + model - 4096, src + model - 4096, 4096) != 0)
            die("GET model returned other bytes", PPS_ECORRUPT);
        if (r >= 0) {
            cpu_plain += (c1 - c0) + (c3 - c2);
            bytes_plain += (double)value + 2.0 * (double)model;
            cpu_get += (c2 - c1) + (d2 - d1) + (c4 - c3) + (d4 - d3);
            bytes_get += (double)value + (double)model;
        }

        if (r >= 0) {
            plain_v[r] = x;
            get_v[r] = y;
            plain_m[r] = xm;
            plain_c[r] = xc;
            get_m[r] = ym;
        }
    }

    /* PUTs after all GETs, each under its own key: an overwrite would leave
     * dead bytes and start a compaction that competes with what is being
     * measured. */
    for (int r = -1; r < reps; r++) {
        snprintf(key, sizeof key, "bench-put-%d", r + 1);
        double t0 = bench_now_s();
        if ((rc = storage_put(c, key, src, put_size)) != 0)
            die("PUT", rc);
        double z = (double)put_size / (bench_now_s() - t0);

        double w = 0;
        if (lfd >= 0) {
            t0 = bench_now_s();
            uint64_t off = 0;
            while (off < put_size) {
                size_t m = put_size - off < (4u << 20) ? (size_t)(put_size - off) : (4u << 20);
                if (pwrite(lfd, src + off, m, (off_t)off) != (ssize_t)m)
                    die("local write", pps_from_errno(errno));
                off += m;
            }
            if (fdatasync(lfd) < 0)
                die("local fdatasync", pps_from_errno(errno));
            w = (double)put_size / (bench_now_s() - t0);
            /* Like a PUT to a fresh place: the next write is not an overwrite. */
            if (ftruncate(lfd, 0) < 0)
                die("local truncate", pps_from_errno(errno));
        }
        if (r >= 0) {
            put_v[r] = z;
            local_v[r] = w;
        }
    }

    char label[96];
    printf("storage benchmark: loopback, %d repetitions (after one warm-up), MB/s = 1e6 bytes/s,"
           " GETs sent with %s\n", reps, pid > 0 ? send_path : "(the running storage's setting)");
    printf("  %-38s %9s %9s\n", "", "min", "median");
    snprintf(label, sizeof label, "plain TCP stream %llu MiB",
             (unsigned long long)(value >> 20));
    row(label, plain_v, reps);
    snprintf(label, sizeof label, "storage GET %llu MiB value", (unsigned long long)(value >> 20));
    row(label, get_v, reps);
    snprintf(label, sizeof label, "plain TCP stream %llu MiB", (unsigned long long)(model >> 20));
    row(label, plain_m, reps);
    snprintf(label, sizeof label, "plain TCP %llu MiB, from a cold buffer",
             (unsigned long long)(model >> 20));
    row(label, plain_c, reps);
    snprintf(label, sizeof label, "storage GET model %d x %llu MiB", nslices,
             (unsigned long long)(slice >> 20));
    row(label, get_m, reps);
    snprintf(label, sizeof label, "storage PUT %llu MiB (fdatasync)",
             (unsigned long long)(put_size >> 20));
    row(label, put_v, reps);
    if (lfd >= 0) {
        snprintf(label, sizeof label, "local write+fdatasync %llu MiB",
                 (unsigned long long)(put_size >> 20));
        row(label, local_v, reps);
    }
    printf("  ratios %31s %9s %9s %9s\n", "", "min/min", "med/med", "paired");
    ratio("GET value / plain stream", get_v, plain_v, reps);
    ratio("GET model / plain stream", get_m, plain_m, reps);
    ratio("GET model / plain from cold buffer", get_m, plain_c, reps);
    if (lfd >= 0)
        ratio("PUT / local write+fdatasync", put_v, local_v, reps);

    if (pid > 0)
        printf("  CPU s/GB moved (user+system): plain stream %.3f (both ends), storage GET %.3f"
               " (daemon + client)\n",
               cpu_plain / (bytes_plain / 1e9), cpu_get / (bytes_get / 1e9));
    char *stat = NULL;
    if (storage_stat(c, &stat) == 0) {
        char *line = strstr(stat, "bytes_sent");
        if (line)
            printf("  server: %.*s\n", (int)strcspn(line, "\n"), line);
        free(stat);
    }
    for (int r = 0; r <= reps; r++) {
        snprintf(key, sizeof key, "bench-put-%d", r);
        storage_delete(c, key);
    }
    storage_client_close(c);
    close(pfd);
    pthread_join(pl.thread, NULL);
    close(pl.listen_fd);
    if (lfd >= 0)
        close(lfd);
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        bench_rm_rf(tmpdir);
    }
    free(src);
    free(dst);
    free(pl.src);
    return 0;
}
