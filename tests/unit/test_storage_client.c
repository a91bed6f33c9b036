/* Tests of the C storage client (storage_client.c) against a real storage
 * daemon (build/bin/storage, started on a free loopback port with a
 * temporary data directory): whole and range GETs received in place,
 * pipelined GETs with an error in the middle, buffer bounds, error
 * messages, and a dead server leaving the client broken, not confused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "common/net.h"
#include "storage/storage_client.h"

static pid_t daemon_pid = -1;
static uint16_t daemon_port;
static char data_dir[64];

static void start_daemon(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    *strrchr(exe, '/') = '\0';
    char bin[PATH_MAX + 32];
    snprintf(bin, sizeof bin, "%s/../bin/storage", exe);
    int lfd;
    assert_int_equal(net_listen(NULL, 0, &lfd), 0);
    assert_int_equal(net_local_port(lfd, &daemon_port), 0);
    close(lfd);
    snprintf(data_dir, sizeof data_dir, "/tmp/pps-client-test-XXXXXX");
    assert_non_null(mkdtemp(data_dir));
    char port[16], dir[128];
    snprintf(port, sizeof port, "%u", daemon_port);
    snprintf(dir, sizeof dir, "%s/data", data_dir);
    daemon_pid = fork();
    if (daemon_pid == 0) {
        if (!freopen("/dev/null", "w", stdout))
            _exit(126);
        setenv("PIPEPS_LOG", "warn", 1);
        execl(bin, "storage", port, "--dir", dir, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 400; i++) {
        int fd;
        if (net_connect(NULL, daemon_port, 100, &fd) == 0) {
            close(fd);
            return;
        }
        usleep(25000);
    }
    fail_msg("storage did not start (%s)", bin);
}

static void stop_daemon(void)
{
    if (daemon_pid > 0) {
        kill(daemon_pid, SIGTERM);
        waitpid(daemon_pid, NULL, 0);
        daemon_pid = -1;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/data", data_dir);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            char p[512];
            snprintf(p, sizeof p, "%s/%s", path, de->d_name);
            if (de->d_name[0] != '.')
                unlink(p);
        }
        closedir(d);
    }
    rmdir(path);
    rmdir(data_dir);
}

static int setup(void **state)
{
    (void)state;
    start_daemon();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    stop_daemon();
    return 0;
}

static void fill(uint8_t *p, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 131 + seed + (i >> 12));
}

static void test_put_get_in_place(void **state)
{
    (void)state;
    struct storage_client *c;
    assert_int_equal(storage_client_connect(&c, "127.0.0.1", daemon_port), 0);
    assert_true(storage_client_fd(c) >= 0);
    size_t n = 5000000;
    uint8_t *v = malloc(n);
    fill(v, n, 1);
    assert_int_equal(storage_put(c, "m-BATCH-0", v, n), 0);
    assert_string_equal(storage_client_error(c), "");

    /* Received straight into a window of a bigger buffer; the guard bytes
     * around it stay untouched. */
    uint8_t *buf = malloc(n + 200);
    memset(buf, 0xEE, n + 200);
    uint64_t got = 0;
    assert_int_equal(storage_get(c, "m-BATCH-0", 0, UINT64_MAX, buf + 100, n, &got), 0);
    assert_int_equal(got, n);
    assert_memory_equal(buf + 100, v, n);
    assert_int_equal(buf[99], 0xEE);
    assert_int_equal(buf[100 + n], 0xEE);

    assert_int_equal(storage_get(c, "m-BATCH-0", 12345, 1000, buf, 1000, &got), 0);
    assert_int_equal(got, 1000);
    assert_memory_equal(buf, v + 12345, 1000);
    assert_int_equal(storage_get(c, "m-BATCH-0", n, UINT64_MAX, buf, 10, &got), 0);
    assert_int_equal(got, 0);

    /* Errors, with the storage's message. */
    assert_int_equal(storage_get(c, "nope", 0, 1, buf, 1, &got), PPS_ENOTFOUND);
    assert_non_null(strstr(storage_client_error(c), "nope"));
    assert_int_equal(storage_get(c, "m-BATCH-0", n - 10, 11, buf, 11, &got), PPS_ERANGE);
    assert_non_null(strstr(storage_client_error(c), "5000000"));
    /* A buffer too small for the rest of the value: refused, stream kept. */
    assert_int_equal(storage_get(c, "m-BATCH-0", 0, UINT64_MAX, buf, 1000, &got), PPS_ETOOBIG);
    assert_int_equal(got, 0);
    assert_int_equal(storage_get(c, "m-BATCH-0", 0, 2000, buf, 1000, &got), PPS_EINVAL);
    assert_int_equal(storage_put(c, "", v, 1), PPS_EINVAL);
    assert_int_equal(storage_put(c, "x", v, STORAGE_MAX_VALUE + 1), PPS_ETOOBIG);
    assert_int_equal(storage_get(c, "m-BATCH-0", 1, 1, buf, 1, &got), 0);
    assert_int_equal(buf[0], v[1]);

    char *text = NULL;
    assert_int_equal(storage_stat(c, &text), 0);
    assert_non_null(strstr(text, "values 1\n"));
    assert_non_null(strstr(text, "bytes_free "));
    free(text);
    assert_int_equal(storage_delete(c, "m-BATCH-0"), 0);
    assert_int_equal(storage_delete(c, "m-BATCH-0"), PPS_ENOTFOUND);
    assert_int_equal(storage_get(c, "m-BATCH-0", 0, 1, buf, 1, &got), PPS_ENOTFOUND);
    storage_client_close(c);
    free(v);
    free(buf);
}

static void test_pipelined_gets(void **state)
{
    (void)state;
    struct storage_client *c;
    assert_int_equal(storage_client_connect(&c, "127.0.0.1", daemon_port), 0);
    uint8_t v[4][300000];
    char key[32];
    for (int i = 0; i < 4; i++) {
        fill(v[i], sizeof v[i], (uint8_t)(i + 10));
        snprintf(key, sizeof key, "slice-%d", i);
        assert_int_equal(storage_put(c, key, v[i], sizeof v[i]), 0);
    }
    /* Five requests in flight, the third for a missing key. */
    assert_int_equal(storage_get_send(c, "slice-0", 0, UINT64_MAX), 0);
    assert_int_equal(storage_get_send(c, "slice-1", 1000, 5000), 0);
    assert_int_equal(storage_get_send(c, "missing", 0, 10), 0);
    assert_int_equal(storage_get_send(c, "slice-2", 0, 300000), 0);
    assert_int_equal(storage_get_send(c, "slice-3", 299999, UINT64_MAX), 0);
    /* Control calls wait until the GETs are collected. */
    assert_int_equal(storage_delete(c, "slice-0"), PPS_EBUSY);
    char *text = NULL;
    assert_int_equal(storage_stat(c, &text), PPS_EBUSY);
    uint8_t *out = malloc(4 * 300000);
    uint64_t got;
    assert_int_equal(storage_get_recv(c, out, 300000, &got), 0);
    assert_int_equal(got, 300000);
    assert_memory_equal(out, v[0], 300000);
    assert_int_equal(storage_get_recv(c, out, 5000, &got), 0);
    assert_memory_equal(out, v[1] + 1000, 5000);
    assert_int_equal(storage_get_recv(c, out, 10, &got), PPS_ENOTFOUND);
    assert_int_equal(storage_get_recv(c, out, 300000, &got), 0);
    assert_memory_equal(out, v[2], 300000);
    assert_int_equal(storage_get_recv(c, out, 10, &got), 0);
    assert_int_equal(got, 1);
    assert_int_equal(out[0], v[3][299999]);
    assert_int_equal(storage_get_recv(c, out, 10, &got), PPS_EINVAL); /* none outstanding */
    assert_int_equal(storage_stat(c, &text), 0);
    free(text);
    free(out);
    storage_client_close(c);
}

static void test_server_gone(void **state)
{
    (void)state;
    struct storage_client *c;
    assert_int_equal(storage_client_connect(&c, "127.0.0.1", daemon_port), 0);
    assert_int_equal(storage_put(c, "k", "v", 1), 0);
    stop_daemon();
    uint8_t b[4];
    uint64_t got;
    int rc = storage_get(c, "k", 0, 1, b, 1, &got);
    assert_true(rc == PPS_ECLOSED || rc == PPS_EIO);
    assert_int_equal(storage_get(c, "k", 0, 1, b, 1, &got), PPS_ECLOSED);
    assert_int_equal(storage_put(c, "k", "v", 1), PPS_ECLOSED);
    storage_client_close(c);
    assert_int_equal(storage_client_connect(&c, "127.0.0.1", daemon_port), PPS_ECONNECT);
    start_daemon(); /* for teardown */
}

int main(void)
{
    net_ignore_sigpipe();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_get_in_place, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_gets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_gone, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
