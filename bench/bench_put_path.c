/* bench_put_path: the two ways a storage PUT can move a value from a socket
 * into its data file, measured on loopback, page cache only (no fsync):
 *
 *   recv+pwrite  recv() into a bounded buffer, XXH3 over it, pwrite() it
 *                (what storage_server.c does: two copies, hash on hot data);
 *   splice       splice() socket -> pipe -> file (one copy, in the kernel),
 *                then XXH3 over the file's pages through a read-only mapping
 *                (the value's checksum must still be computed).
 *
 *   bench_put_path [--size 512M] [--chunk 1M] [--reps 5] [--dir DIR]
 *
 * A sender thread writes --size bytes with 1 MiB send()s for each
 * repetition; each path receives them into a fresh file. Prints min and
 * median MB/s and the CPU seconds per GB of the receiving thread. A
 * benchmark, not a test: nothing is asserted. */
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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define MAX_REPS 50

struct sender {
    int listen_fd;
    uint64_t size;
    int conns;
};

static double now_s(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *sender_main(void *arg)
{
    struct sender *s = arg;
    uint8_t *buf = malloc(1u << 20);
    memset(buf, 0x5A, 1u << 20);
    for (int i = 0; i < s->conns; i++) {
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0)
            break;
        uint64_t left = s->size;
        while (left) {
            size_t n = left < (1u << 20) ? (size_t)left : (1u << 20);
            if (net_write_full(fd, buf, n))
                break;
            left -= n;
        }
        close(fd);
    }
    free(buf);
    return NULL;
}

static int open_file(const char *dir, int *fd)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/bench-put-path.tmp", dir);
    *fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (*fd >= 0)
        unlink(path);
    return *fd < 0 ? pps_from_errno(errno) : 0;
}

static uint64_t via_recv(int sock, int file, uint64_t size, size_t chunk, uint8_t *buf)
{
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    uint64_t pos = 0;
    while (pos < size) {
        size_t n = size - pos < chunk ? (size_t)(size - pos) : chunk;
        if (net_read_full(sock, buf, n))
            break;
        XXH3_64bits_update(st, buf, n);
        if (pwrite(file, buf, n, (off_t)pos) != (ssize_t)n)
            break;
        pos += n;
    }
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

static uint64_t via_splice(int sock, int file, uint64_t size, size_t chunk)
{
    int p[2];
    if (pipe(p) < 0)
        return 0;
    fcntl(p[1], F_SETPIPE_SZ, (int)chunk);
    loff_t pos = 0;
    while ((uint64_t)pos < size) {
        size_t want = size - (uint64_t)pos < chunk ? (size_t)(size - (uint64_t)pos) : chunk;
        ssize_t in = splice(sock, NULL, p[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_MORE);
        if (in <= 0)
            break;
        while (in > 0) {
            ssize_t out = splice(p[0], NULL, file, &pos, (size_t)in, SPLICE_F_MOVE);
            if (out <= 0) {
                in = -1;
                break;
            }
            in -= out;
        }
        if (in < 0)
            break;
    }
    close(p[0]);
    close(p[1]);
    /* The checksum still has to be computed: from the page cache. */
    uint8_t *m = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED | MAP_POPULATE, file, 0);
    if (m == MAP_FAILED)
        return 0;
    uint64_t h = XXH3_64bits(m, (size_t)size);
    munmap(m, (size_t)size);
    return h;
}

static void report(const char *name, double *mbs, double *cpu, int n)
{
    qsort(mbs, (size_t)n, sizeof *mbs, bench_cmp_double);
    qsort(cpu, (size_t)n, sizeof *cpu, bench_cmp_double);
    printf("  %-14s %9.0f %9.0f   %7.3f\n", name, mbs[0], mbs[n / 2], cpu[n / 2]);
}

int main(int argc, char **argv)
{
    struct args_option opts[] = {
        {"size", 1, NULL}, {"chunk", 1, NULL}, {"reps", 1, NULL}, {"dir", 1, NULL}};
    struct args a;
    int help = 0;
    uint64_t size = 512ull << 20, chunk = 1u << 20;
    int reps = 5;
    if (args_split(argc, argv, opts, 4, &a, &help) || a.npositional ||
        (opts[0].value && args_parse_size(opts[0].value, &size)) ||
        (opts[1].value && (args_parse_size(opts[1].value, &chunk) || chunk < 4096 ||
                           chunk > (256u << 20))) ||
        (opts[2].value && args_parse_int(opts[2].value, 1, MAX_REPS, &reps))) {
        fprintf(help ? stdout : stderr,
                "usage: bench_put_path [--size 512M] [--chunk 1M] [--reps 5] [--dir DIR]\n");
        return help ? 0 : 2;
    }
    const char *dir = opts[3].value ? opts[3].value : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    net_ignore_sigpipe();
    struct sender s = {.size = size, .conns = 2 * reps};
    uint16_t port;
    if (net_listen(NULL, 0, &s.listen_fd) || net_local_port(s.listen_fd, &port)) {
        fprintf(stderr, "bench_put_path: cannot listen\n");
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, sender_main, &s);
    uint8_t *buf = malloc(chunk);
    memset(buf, 0, chunk);
    double mbs[2][MAX_REPS], cpu[2][MAX_REPS];
    uint64_t hashes[2] = {0, 0};
    for (int r = 0; r < reps; r++) {
        for (int way = 0; way < 2; way++) {
            int sock, file;
            if (net_connect(NULL, port, 5000, &sock) || open_file(dir, &file)) {
                fprintf(stderr, "bench_put_path: setup failed\n");
                return 1;
            }
            double t0 = now_s(CLOCK_MONOTONIC), c0 = now_s(CLOCK_THREAD_CPUTIME_ID);
            hashes[way] = way == 0 ? via_recv(sock, file, size, (size_t)chunk, buf)
                                   : via_splice(sock, file, size, (size_t)chunk);
            double dt = now_s(CLOCK_MONOTONIC) - t0, dc = now_s(CLOCK_THREAD_CPUTIME_ID) - c0;
            mbs[way][r] = (double)size / dt / 1e6;
            cpu[way][r] = dc / ((double)size / 1e9);
            close(sock);
            close(file);
        }
    }
    pthread_join(t, NULL);
    close(s.listen_fd);
    free(buf);
    printf("PUT receive path, %llu MiB over loopback into the page cache (no fsync), "
           "%llu KiB chunks, %d reps\n",
           (unsigned long long)(size >> 20), (unsigned long long)(chunk >> 10), reps);
    printf("  %-14s %9s %9s   %7s\n", "", "min MB/s", "median", "CPU s/GB (receiver, median)");
    report("recv+pwrite", mbs[0], cpu[0], reps);
    report("splice", mbs[1], cpu[1], reps);
    if (hashes[0] != hashes[1])
        printf("  (hashes differ: a path lost bytes)\n");
    return 0;
}
