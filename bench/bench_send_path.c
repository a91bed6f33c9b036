/* bench_send_path: ways a storage GET can move a value from its data file
 * (in the page cache) to a loopback socket, each received with recv()
 * straight into one pre-faulted buffer, as storage_get does:
 *
 *   plain-hot    send() of one 1 MiB buffer over and over (iperf3-like)
 *   plain-cold   send() of a buffer as large as the value, 1 MiB per call
 *   sendfile     sendfile() from the file (what storage_server.c does)
 *   mmap+send    send() from a read-only mapping of the file, 1 MiB per call
 *   pread+send   pread() 1 MiB into a buffer, then send() it
 *   map-per-get  like mmap+send, but the file is mapped for this request
 *                only (page tables built by faults while sending)
 *   map+populate the same with madvise(MADV_POPULATE_READ) first
 *
 *   bench_send_path [--size 240M] [--reps 7] [--dir DIR] [--chunk 1M] [--sndbuf SIZE]
 *
 * --sndbuf sets SO_SNDBUF on the sending socket (default: autotuned).
 * Every repetition runs each way once, in turn. Prints min and median
 * MB/s. A benchmark, not a test: nothing is asserted. */
#include "common/args.h"
#include "lib/bench_util.h"
#include "common/err.h"
#include "common/net.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPS 50
#define NWAYS 7

static const char *const way_names[NWAYS] = {"plain-hot",  "plain-cold",    "sendfile",
                                             "mmap+send",  "pread+send",    "map-per-get",
                                             "map+populate"};

struct sender {
    int listen_fd;
    int file;
    uint64_t size;
    size_t chunk;
    uint8_t *cold;  /* size bytes */
    uint8_t *hot;   /* chunk bytes */
    uint8_t *map;   /* the file, mapped */
    int sndbuf;     /* 0: autotuned */
};

static int send_way(struct sender *s, int fd, int way)
{
    uint64_t off = 0;
    uint8_t *buf = way == 4 ? malloc(s->chunk) : NULL;
    uint8_t *map = NULL;
    if (way >= 5) {
        map = mmap(NULL, s->size, PROT_READ, MAP_SHARED, s->file, 0);
        if (map == MAP_FAILED)
            return PPS_EIO;
        if (way == 6)
            madvise(map, s->size, MADV_POPULATE_READ);
    }
    int rc = 0;
    while (off < s->size && !rc) {
        size_t n = s->size - off < s->chunk ? (size_t)(s->size - off) : s->chunk;
        switch (way) {
        case 0: rc = net_write_full(fd, s->hot, n); break;
        case 1: rc = net_write_full(fd, s->cold + off, n); break;
        case 2: {
            off_t pos = (off_t)off;
            ssize_t w = sendfile(fd, s->file, &pos, s->size - off);
            if (w <= 0)
                rc = PPS_EIO;
            else
                n = (size_t)w;
            break;
        }
        case 3: rc = net_write_full(fd, s->map + off, n); break;
        case 5: case 6: rc = net_write_full(fd, map + off, n); break;
        case 4:
            if (pread(s->file, buf, n, (off_t)off) != (ssize_t)n)
                rc = PPS_EIO;
            else
                rc = net_write_full(fd, buf, n);
            break;
        }
        off += n;
    }
    free(buf);
    if (map)
        munmap(map, s->size);
    return rc;
}

static void *sender_main(void *arg)
{
    struct sender *s = arg;
    for (;;) {
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0)
            break;
        if (s->sndbuf)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &s->sndbuf, sizeof s->sndbuf);
        uint8_t way;
        if (net_read_full(fd, &way, 1) || way >= NWAYS) {
            close(fd);
            break;
        }
        send_way(s, fd, way);
        close(fd);
    }
    return NULL;
}

/* CPU seconds (user + system) used by this process so far: both ends. */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

int main(int argc, char **argv)
{
    struct args_option opts[] = {
        {"size", 1, NULL}, {"reps", 1, NULL}, {"dir", 1, NULL}, {"chunk", 1, NULL},
        {"sndbuf", 1, NULL}};
    struct args a;
    int help = 0, reps = 7;
    uint64_t size = 240ull << 20, chunk = 1u << 20, sndbuf = 0;
    if (args_split(argc, argv, opts, 5, &a, &help) || a.npositional ||
        (opts[4].value && (args_parse_size(opts[4].value, &sndbuf) || sndbuf > (1u << 30))) ||
        (opts[0].value && args_parse_size(opts[0].value, &size)) ||
        (opts[1].value && args_parse_int(opts[1].value, 1, MAX_REPS, &reps)) ||
        (opts[3].value && (args_parse_size(opts[3].value, &chunk) || chunk < 4096))) {
        fprintf(help ? stdout : stderr,
                "usage: bench_send_path [--size 240M] [--reps 7] [--dir DIR] [--chunk 1M]"
                " [--sndbuf SIZE]\n");
        return help ? 0 : 2;
    }
    const char *dir = opts[2].value ? opts[2].value : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    net_ignore_sigpipe();
    struct sender s = {.size = size, .chunk = (size_t)chunk, .sndbuf = (int)sndbuf};
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/bench-send-path-XXXXXX", dir);
    s.file = mkstemp(path);
    if (s.file < 0) {
        perror("mkstemp");
        return 1;
    }
    unlink(path);
    s.cold = malloc(size);
    s.hot = malloc(chunk);
    uint8_t *dst = malloc(size);
    if (!s.cold || !s.hot || !dst) {
        fprintf(stderr, "bench_send_path: out of memory\n");
        return 1;
    }
    for (uint64_t i = 0; i < size; i++)
        s.cold[i] = (uint8_t)(i * 7 + (i >> 20));
    memset(s.hot, 3, chunk);
    memset(dst, 1, size);
    /* Written and synced: clean page-cache pages, as a storage's
     * committed values are (dirty pages under writeback cost sendfile). */
    if (pwrite(s.file, s.cold, size, 0) != (ssize_t)size || fdatasync(s.file) < 0) {
        perror("pwrite");
        return 1;
    }
    s.map = mmap(NULL, size, PROT_READ, MAP_SHARED | MAP_POPULATE, s.file, 0);
    if (s.map == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    uint16_t port;
    if (net_listen(NULL, 0, &s.listen_fd) || net_local_port(s.listen_fd, &port))
        return 1;
    pthread_t t;
    pthread_create(&t, NULL, sender_main, &s);

    double mbs[NWAYS][MAX_REPS], cpu[NWAYS][MAX_REPS];
    for (int r = -1; r < reps; r++) {
        for (int way = 0; way < NWAYS; way++) {
            int fd;
            if (net_connect(NULL, port, 5000, &fd))
                return 1;
            uint8_t w = (uint8_t)way;
            double t0 = bench_now_s(), c0 = cpu_s();
            if (net_write_full(fd, &w, 1) || net_read_full(fd, dst, size)) {
                fprintf(stderr, "bench_send_path: %s failed\n", way_names[way]);
                return 1;
            }
            double dt = bench_now_s() - t0, dc = cpu_s() - c0;
            close(fd);
            if (r >= 0) {
                mbs[way][r] = (double)size / dt / 1e6;
                cpu[way][r] = dc / ((double)size / 1e9);
            }
        }
    }
    int fd;
    if (net_connect(NULL, port, 5000, &fd) == 0) {
        uint8_t stop = 0xFF;
        net_write_full(fd, &stop, 1);
        close(fd);
    }
    pthread_join(t, NULL);
    printf("GET send path, %llu MiB file in the page cache -> loopback -> recv into one buffer, "
           "%d reps, SO_SNDBUF %s\n", (unsigned long long)(size >> 20), reps,
           sndbuf ? opts[4].value : "autotuned");
    printf("  %-12s %9s %9s %12s\n", "", "min MB/s", "median", "CPU s/GB");
    for (int way = 0; way < NWAYS; way++) {
        qsort(mbs[way], (size_t)reps, sizeof(double), bench_cmp_double);
        qsort(cpu[way], (size_t)reps, sizeof(double), bench_cmp_double);
        printf("  %-12s %9.0f %9.0f %12.3f\n", way_names[way], mbs[way][0], mbs[way][reps / 2],
               cpu[way][reps / 2]);
    }
    printf("  (CPU s/GB: median user+system seconds of both ends per 1e9 bytes)\n");
    munmap(s.map, size);
    close(s.file);
    free(s.cold);
    free(s.hot);
    free(dst);
    return 0;
}
