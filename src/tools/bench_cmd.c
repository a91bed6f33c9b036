/* bench_cmd: `pipeps bench [EXPERIMENT ...] [--out DIR] [--quick]`.
 *
 * The experiments are tooling, not serving path: they live in
 * bench/pipeps_bench.py and run under Debian's /usr/bin/python3. This entry
 * only finds the script and the directory of the programs it starts, and
 * execs. The easy thing to get wrong: the binaries the driver starts must be
 * the ones next to this pipeps (a build tree), not whatever is on PATH, so
 * --bin is this executable's directory (from /proc/self/exe).
 *
 * The script is PIPEPS_BENCH_SCRIPT when set, else the source tree's copy
 * (the path CMake compiled in). */
#include "tools/bench_cmd.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef PIPEPS_SOURCE_DIR
#define PIPEPS_SOURCE_DIR "."
#endif

#define BENCH_PYTHON "/usr/bin/python3"

int bench_cmd_main(int argc, char **argv)
{
    char script[PATH_MAX];
    const char *env = getenv("PIPEPS_BENCH_SCRIPT");
    if (env && *env)
        snprintf(script, sizeof script, "%s", env);
    else
        snprintf(script, sizeof script, "%s/bench/pipeps_bench.py", PIPEPS_SOURCE_DIR);
    if (access(script, R_OK) != 0) {
        fprintf(stderr, "pipeps bench: cannot read %s: %s (set PIPEPS_BENCH_SCRIPT)\n", script,
                strerror(errno));
        return 1;
    }

    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        fprintf(stderr, "pipeps bench: /proc/self/exe: %s\n", strerror(errno));
        return 1;
    }
    exe[n] = '\0';
    const char *bindir = dirname(exe);

    /* python3 SCRIPT --bin BINDIR ARGS... (a later --bin in ARGS wins). */
    char **args = calloc((size_t)argc + 5, sizeof *args);
    if (!args) {
        fprintf(stderr, "pipeps bench: out of memory\n");
        return 1;
    }
    int k = 0;
    args[k++] = BENCH_PYTHON;
    args[k++] = script;
    args[k++] = "--bin";
    args[k++] = (char *)bindir;
    for (int i = 1; i < argc; i++)
        args[k++] = argv[i];
    args[k] = NULL;
    execv(BENCH_PYTHON, args);
    fprintf(stderr, "pipeps bench: exec %s: %s (scripts/deps.sh installs it)\n", BENCH_PYTHON,
            strerror(errno));
    free(args);
    return 1;
}
