/* up: one command for a whole cluster. `pipeps up` reads a cluster file (or
 * the built-in default, `pipeps up --print-default`), starts the daemons it
 * assigns to this host in dependency order (metadata storage, storages,
 * load balancer, then per machine its cache and servers), generates and
 * deploys the models when the metadata storage does not know them yet, and
 * returns once every daemon answers a real health check: a PING on its port,
 * and for the machines, their servers and cache registered at the balancer
 * (its STAT). `pipeps down` stops what the state files of DIR name.
 *
 * The daemons are detached (own session, stdout/stderr to DIR/logs/NAME.log)
 * so they outlive `up`; each one is recorded in DIR/state-HOST as soon as it
 * is forked, so a `down` after an interrupted `up` still finds it. The easy
 * thing to get wrong: a pid in a state file may have been reused by the time
 * `down` runs, so each is recorded with its start time (/proc/PID/stat) and
 * only a process with both is signalled. Once `up` has exited, nobody may
 * reap the daemons (PID 1 in a container often does not), so a zombie counts
 * as stopped. */
#include "tools/up.h"

#include "common/err.h"
#include "common/frame.h"
#include "common/net.h"
#include "metadata/meta_client.h"

#include <ctype.h>
#include <dirent.h>
#include <limits.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define UP_MAX_STORAGES 16
#define UP_MAX_MACHINES 32
#define UP_MAX_SERVERS 8
#define UP_MAX_MODELS 64
#define UP_MAX_DAEMONS (2 + UP_MAX_STORAGES + UP_MAX_MACHINES * (1 + UP_MAX_SERVERS))
#define UP_STR 128
#define UP_OPTS 512
#define UP_PATH 1024
#define UP_LOGPATH (UP_PATH + UP_STR + 16)

static const char up_default_cluster[] =
    "# The built-in cluster of `pipeps up`: everything on this machine, on\n"
    "# loopback; the two \"machines\" are 127.0.0.2 and 127.0.0.3.\n"
    "[cluster]\n"
    "models = resnet152 inception_v3 densenet201 bert_base:16 gpt2:16\n"
    "distribution = all\n"
    "max_batch_size = 32768000\n"
    "\n"
    "[metadata]\n"
    "addr = 127.0.0.1\n"
    "port = 7400\n"
    "\n"
    "[storage s0]\n"
    "addr = 127.0.0.1\n"
    "port = 7401\n"
    "\n"
    "[storage s1]\n"
    "addr = 127.0.0.1\n"
    "port = 7402\n"
    "\n"
    "[balancer]\n"
    "addr = 127.0.0.1\n"
    "client_port = 7410\n"
    "server_port = 7411\n"
    "cache_port = 7412\n"
    "http_port = 7480\n"
    "policy = basic\n"
    "\n"
    "[machine a]\n"
    "addr = 127.0.0.2\n"
    "cache_port = 7420\n"
    "server_port = 7421\n"
    "cache_size = 1536M\n"
    "cache_block = 1M\n"
    "servers = 1\n"
    "server_options = --threads 2 --memory 3G\n"
    "\n"
    "[machine b]\n"
    "addr = 127.0.0.3\n"
    "cache_port = 7420\n"
    "server_port = 7421\n"
    "cache_size = 1536M\n"
    "cache_block = 1M\n"
    "servers = 1\n"
    "server_options = --threads 2 --memory 3G\n";

struct up_model {
    char name[UP_STR];
    int seq_len; /* 0: the model's default */
};

struct up_endpoint {
    char name[UP_STR]; /* section name ("s0", "a"); empty for metadata/balancer */
    char host[UP_STR]; /* which `pipeps up --host` starts it; "local" by default */
    char addr[UP_STR];
    unsigned port;
    char options[UP_OPTS]; /* extra arguments, split on blanks */
};

struct up_machine {
    struct up_endpoint cache; /* port: the cache's port for servers */
    unsigned server_port;     /* server i listens on server_port + i */
    int servers;
    char cache_size[32], cache_block[32];
    char server_options[UP_OPTS];
};

struct up_cluster {
    struct up_model models[UP_MAX_MODELS];
    int nmodels;
    char distribution[16]; /* "all" or "round" */
    char max_batch_size[32];
    int has_meta, has_lb;
    struct up_endpoint meta;
    struct up_endpoint storages[UP_MAX_STORAGES];
    int nstorages;
    struct up_endpoint lb; /* port: the clients' port */
    unsigned lb_server_port, lb_cache_port;
    int lb_http_port; /* -1: off */
    char policy[32];
    struct up_machine machines[UP_MAX_MACHINES];
    int nmachines;
};

enum up_kind { UP_META, UP_STORAGE, UP_LB, UP_CACHE, UP_SERVER };

struct up_daemon {
    enum up_kind kind;
    char name[UP_STR];
    char program[32];
    char addr[UP_STR];
    unsigned port;
    char args[2048]; /* NUL-separated argv after argv[0] */
    int nargs;
    char shm[UP_STR]; /* cache only */
    int machine;      /* index in cluster.machines (cache, server) */
    pid_t pid;
    unsigned long long start_time;
    int is_child; /* forked by this process (can be reaped) */
};

struct up_ctx {
    struct up_cluster cl;
    char dir[UP_PATH];
    char bindir[UP_PATH];
    char host[UP_STR]; /* empty: every host */
    char state_path[UP_PATH];
    struct up_daemon d[UP_MAX_DAEMONS];
    int nd;
    double timeout_s;
};

/* ---- small helpers ------------------------------------------------------- */

static double up_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void up_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static char *up_trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

static int up_copy(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        return PPS_ETOOBIG;
    memcpy(dst, src, n + 1);
    return 0;
}

static int up_mkdir(const char *path)
{
    if (mkdir(path, 0755) == 0 || errno == EEXIST)
        return 0;
    return pps_from_errno(errno);
}

/* Start time of PID in clock ticks since boot (field 22 of /proc/PID/stat);
 * *zombie is set when the process has exited but is not reaped. */
static int up_proc_start(pid_t pid, unsigned long long *start, int *zombie)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return PPS_ENOTFOUND;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return PPS_EPROTO;
    p += 2; /* state */
    *zombie = *p == 'Z' || *p == 'X';
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    if (!p)
        return PPS_EPROTO;
    *start = strtoull(p, NULL, 10);
    return 0;
}

/* Is the daemon still running (not exited, not a zombie, not a reused pid)? */
static int up_alive(struct up_daemon *d)
{
    if (d->pid <= 0)
        return 0;
    if (d->is_child) {
        int status;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            d->is_child = 0;
            d->pid = 0;
            return 0;
        }
    }
    unsigned long long start;
    int zombie = 0;
    if (up_proc_start(d->pid, &start, &zombie))
        return 0;
    if (d->start_time && start != d->start_time)
        return 0;
    return !zombie;
}

static void up_print_tail(const char *path, int lines)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "  (no log at %s)\n", path);
        return;
    }
    static char ring[20][512];
    if (lines > 20)
        lines = 20;
    int n = 0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        snprintf(ring[n % lines], sizeof ring[0], "%s", line);
        n++;
    }
    fclose(f);
    fprintf(stderr, "last lines of %s:\n", path);
    for (int i = n > lines ? n - lines : 0; i < n; i++) {
        const char *s = ring[i % lines];
        fprintf(stderr, "  | %s%s", s, s[strlen(s) ? strlen(s) - 1 : 0] == '\n' ? "" : "\n");
    }
    if (n == 0)
        fprintf(stderr, "  | (empty)\n");
}

static void up_log_path(const struct up_ctx *c, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/logs/%s.log", c->dir, name);
}

/* ---- the cluster file ------------------------------------------------------ */

static int up_parse_port(const char *v, unsigned *out)
{
    uint16_t p;
    if (net_parse_port(v, &p))
        return PPS_EINVAL;
    *out = p;
    return 0;
}

static int up_parse_models(struct up_cluster *cl, char *v)
{
    cl->nmodels = 0;
    for (char *save = NULL, *tok = strtok_r(v, " \t,", &save); tok; tok = strtok_r(NULL, " \t,", &save)) {
        if (cl->nmodels == UP_MAX_MODELS)
            return PPS_ETOOBIG;
        struct up_model *m = &cl->models[cl->nmodels++];
        char *colon = strchr(tok, ':');
        m->seq_len = 0;
        if (colon) {
            *colon = '\0';
            char *end;
            long s = strtol(colon + 1, &end, 10);
            if (*end || s <= 0 || s > 1 << 20)
                return PPS_EINVAL;
            m->seq_len = (int)s;
        }
        if (!*tok || up_copy(m->name, sizeof m->name, tok))
            return PPS_EINVAL;
    }
    return cl->nmodels ? 0 : PPS_EINVAL;
}

/* One key of one section; returns 0, PPS_EINVAL (bad value) or PPS_ENOTFOUND
 * (a key this section does not have). */
static int up_set_key(struct up_cluster *cl, const char *section, int idx, const char *k, char *v)
{
    struct up_endpoint *ep = NULL;
    struct up_machine *m = NULL;
    if (strcmp(section, "cluster") == 0) {
        if (strcmp(k, "models") == 0)
            return up_parse_models(cl, v);
        if (strcmp(k, "distribution") == 0) {
            if (strcmp(v, "all") && strcmp(v, "round"))
                return PPS_EINVAL;
            return up_copy(cl->distribution, sizeof cl->distribution, v);
        }
        if (strcmp(k, "max_batch_size") == 0)
            return up_copy(cl->max_batch_size, sizeof cl->max_batch_size, v) ? PPS_EINVAL : 0;
        return PPS_ENOTFOUND;
    }
    if (strcmp(section, "metadata") == 0)
        ep = &cl->meta;
    else if (strcmp(section, "storage") == 0)
        ep = &cl->storages[idx];
    else if (strcmp(section, "balancer") == 0)
        ep = &cl->lb;
    else {
        m = &cl->machines[idx];
        ep = &m->cache;
    }
    if (strcmp(k, "host") == 0)
        return up_copy(ep->host, sizeof ep->host, v) ? PPS_EINVAL : 0;
    if (strcmp(k, "addr") == 0)
        return up_copy(ep->addr, sizeof ep->addr, v) ? PPS_EINVAL : 0;
    if (!m && strcmp(k, "options") == 0)
        return up_copy(ep->options, sizeof ep->options, v) ? PPS_EINVAL : 0;
    if (!m && ep != &cl->lb && strcmp(k, "port") == 0)
        return up_parse_port(v, &ep->port);
    if (ep == &cl->lb) {
        if (strcmp(k, "client_port") == 0)
            return up_parse_port(v, &ep->port);
        if (strcmp(k, "server_port") == 0)
            return up_parse_port(v, &cl->lb_server_port);
        if (strcmp(k, "cache_port") == 0)
            return up_parse_port(v, &cl->lb_cache_port);
        if (strcmp(k, "http_port") == 0) {
            unsigned p;
            if (strcmp(v, "off") == 0) {
                cl->lb_http_port = -1;
                return 0;
            }
            if (up_parse_port(v, &p))
                return PPS_EINVAL;
            cl->lb_http_port = (int)p;
            return 0;
        }
        if (strcmp(k, "policy") == 0)
            return up_copy(cl->policy, sizeof cl->policy, v) ? PPS_EINVAL : 0;
    }
    if (m) {
        if (strcmp(k, "cache_port") == 0)
            return up_parse_port(v, &ep->port);
        if (strcmp(k, "server_port") == 0)
            return up_parse_port(v, &m->server_port);
        if (strcmp(k, "servers") == 0) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 0 || n > UP_MAX_SERVERS)
                return PPS_EINVAL;
            m->servers = (int)n;
            return 0;
        }
        if (strcmp(k, "cache_size") == 0)
            return up_copy(m->cache_size, sizeof m->cache_size, v) ? PPS_EINVAL : 0;
        if (strcmp(k, "cache_block") == 0)
            return up_copy(m->cache_block, sizeof m->cache_block, v) ? PPS_EINVAL : 0;
        if (strcmp(k, "cache_options") == 0)
            return up_copy(ep->options, sizeof ep->options, v) ? PPS_EINVAL : 0;
        if (strcmp(k, "server_options") == 0)
            return up_copy(m->server_options, sizeof m->server_options, v) ? PPS_EINVAL : 0;
    }
    return PPS_ENOTFOUND;
}

static void up_endpoint_defaults(struct up_endpoint *ep, const char *name)
{
    memset(ep, 0, sizeof *ep);
    snprintf(ep->name, sizeof ep->name, "%s", name);
    snprintf(ep->host, sizeof ep->host, "local");
    snprintf(ep->addr, sizeof ep->addr, "127.0.0.1");
}

/* Parse the cluster file's text (modified in place). Errors name file:line. */
static int up_parse(struct up_cluster *cl, char *text, const char *fname)
{
    memset(cl, 0, sizeof *cl);
    snprintf(cl->distribution, sizeof cl->distribution, "all");
    snprintf(cl->max_batch_size, sizeof cl->max_batch_size, "32768000");
    snprintf(cl->policy, sizeof cl->policy, "basic");
    cl->lb_http_port = -1;
    char section[32] = "";
    int idx = 0, lineno = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = up_trim(line);
        if (!*s)
            continue;
        if (*s == '[') {
            char *end = strchr(s, ']');
            if (!end || end[1]) {
                fprintf(stderr, "pipeps up: %s:%d: bad section header\n", fname, lineno);
                return PPS_EINVAL;
            }
            *end = '\0';
            char kind[32] = "", name[UP_STR] = "";
            if (sscanf(s + 1, " %31s %127s", kind, name) < 1) {
                fprintf(stderr, "pipeps up: %s:%d: empty section header\n", fname, lineno);
                return PPS_EINVAL;
            }
            int named = strcmp(kind, "storage") == 0 || strcmp(kind, "machine") == 0;
            int plain = strcmp(kind, "cluster") == 0 || strcmp(kind, "metadata") == 0 ||
                        strcmp(kind, "balancer") == 0;
            if ((!named && !plain) || (named && !*name) || (plain && *name)) {
                fprintf(stderr,
                        "pipeps up: %s:%d: unknown section [%s%s%s] (known: [cluster], [metadata], "
                        "[storage NAME], [balancer], [machine NAME])\n",
                        fname, lineno, kind, *name ? " " : "", name);
                return PPS_EINVAL;
            }
            snprintf(section, sizeof section, "%s", kind);
            if (strcmp(kind, "metadata") == 0) {
                up_endpoint_defaults(&cl->meta, "metadata");
                cl->has_meta = 1;
            } else if (strcmp(kind, "balancer") == 0) {
                up_endpoint_defaults(&cl->lb, "balancer");
                cl->has_lb = 1;
            } else if (strcmp(kind, "storage") == 0) {
                if (cl->nstorages == UP_MAX_STORAGES) {
                    fprintf(stderr, "pipeps up: %s:%d: more than %d storages\n", fname, lineno,
                            UP_MAX_STORAGES);
                    return PPS_EINVAL;
                }
                idx = cl->nstorages++;
                up_endpoint_defaults(&cl->storages[idx], name);
            } else if (strcmp(kind, "machine") == 0) {
                if (cl->nmachines == UP_MAX_MACHINES) {
                    fprintf(stderr, "pipeps up: %s:%d: more than %d machines\n", fname, lineno,
                            UP_MAX_MACHINES);
                    return PPS_EINVAL;
                }
                idx = cl->nmachines++;
                struct up_machine *m = &cl->machines[idx];
                memset(m, 0, sizeof *m);
                up_endpoint_defaults(&m->cache, name);
                m->servers = 1;
                snprintf(m->cache_size, sizeof m->cache_size, "1G");
                snprintf(m->cache_block, sizeof m->cache_block, "1M");
            }
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq || !*section) {
            fprintf(stderr, "pipeps up: %s:%d: expected 'key = value' inside a section\n", fname,
                    lineno);
            return PPS_EINVAL;
        }
        *eq = '\0';
        char *k = up_trim(s), *v = up_trim(eq + 1);
        int rc = up_set_key(cl, section, idx, k, v);
        if (rc == PPS_ENOTFOUND) {
            fprintf(stderr, "pipeps up: %s:%d: unknown key '%s' in [%s]\n", fname, lineno, k, section);
            return PPS_EINVAL;
        }
        if (rc) {
            fprintf(stderr, "pipeps up: %s:%d: bad value for %s: '%s'\n", fname, lineno, k, v);
            return PPS_EINVAL;
        }
    }
    const char *missing = !cl->has_meta ? "[metadata]"
                          : !cl->has_lb ? "[balancer]"
                          : !cl->nstorages ? "a [storage NAME]"
                          : !cl->nmachines ? "a [machine NAME]"
                          : !cl->nmodels   ? "models = ... in [cluster]"
                                           : NULL;
    if (missing) {
        fprintf(stderr, "pipeps up: %s: no %s section or key\n", fname, missing);
        return PPS_EINVAL;
    }
    if (!cl->meta.port || !cl->lb.port || !cl->lb_server_port || !cl->lb_cache_port) {
        fprintf(stderr, "pipeps up: %s: [metadata] port and [balancer] client_port, server_port, "
                        "cache_port are required\n", fname);
        return PPS_EINVAL;
    }
    for (int i = 0; i < cl->nstorages; i++)
        if (!cl->storages[i].port) {
            fprintf(stderr, "pipeps up: %s: [storage %s] needs a port\n", fname, cl->storages[i].name);
            return PPS_EINVAL;
        }
    for (int i = 0; i < cl->nmachines; i++)
        if (!cl->machines[i].cache.port || (cl->machines[i].servers && !cl->machines[i].server_port)) {
            fprintf(stderr, "pipeps up: %s: [machine %s] needs cache_port and server_port\n", fname,
                    cl->machines[i].cache.name);
            return PPS_EINVAL;
        }
    return 0;
}

static int up_load(struct up_cluster *cl, const char *path)
{
    char *text;
    if (!path) {
        text = strdup(up_default_cluster);
        if (!text)
            return PPS_ENOMEM;
    } else {
        FILE *f = fopen(path, "r");
        if (!f) {
            fprintf(stderr, "pipeps up: cannot open %s: %s\n", path, strerror(errno));
            return PPS_EIO;
        }
        text = malloc(1 << 20);
        if (!text) {
            fclose(f);
            return PPS_ENOMEM;
        }
        size_t n = fread(text, 1, (1 << 20) - 1, f);
        int big = !feof(f);
        fclose(f);
        text[n] = '\0';
        if (big) {
            free(text);
            fprintf(stderr, "pipeps up: %s: over 1 MiB\n", path);
            return PPS_ETOOBIG;
        }
    }
    int rc = up_parse(cl, text, path ? path : "(default cluster)");
    free(text);
    return rc;
}

/* ---- the daemons ----------------------------------------------------------- */

static void up_arg(struct up_daemon *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void up_arg(struct up_daemon *d, const char *fmt, ...)
{
    size_t used = 0;
    for (int i = 0; i < d->nargs; i++)
        used += strlen(d->args + used) + 1;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(d->args + used, sizeof d->args - used, fmt, ap);
    va_end(ap);
    PPS_ASSERT(n >= 0 && (size_t)n < sizeof d->args - used);
    d->nargs++;
}

static void up_split_args(struct up_daemon *d, const char *options)
{
    char buf[UP_OPTS];
    snprintf(buf, sizeof buf, "%s", options);
    for (char *save = NULL, *t = strtok_r(buf, " \t", &save); t; t = strtok_r(NULL, " \t", &save))
        up_arg(d, "%s", t);
}

static int up_wanted(const struct up_ctx *c, const char *host)
{
    return !c->host[0] || strcmp(c->host, host) == 0;
}

static struct up_daemon *up_new(struct up_ctx *c, enum up_kind kind, const char *program,
                                const char *addr, unsigned port)
{
    PPS_ASSERT(c->nd < UP_MAX_DAEMONS);
    struct up_daemon *d = &c->d[c->nd++];
    memset(d, 0, sizeof *d);
    d->kind = kind;
    snprintf(d->program, sizeof d->program, "%s", program);
    snprintf(d->addr, sizeof d->addr, "%s", addr);
    d->port = port;
    d->machine = -1;
    return d;
}

/* The daemons of this host, in start order. */
static void up_plan(struct up_ctx *c)
{
    struct up_cluster *cl = &c->cl;
    c->nd = 0;
    if (up_wanted(c, cl->meta.host)) {
        struct up_daemon *d = up_new(c, UP_META, "metadata_storage", cl->meta.addr, cl->meta.port);
        snprintf(d->name, sizeof d->name, "metadata");
        up_arg(d, "%s", cl->meta.addr);
        up_arg(d, "%u", cl->meta.port);
        up_arg(d, "--dir");
        up_arg(d, "%s/metadata", c->dir);
        up_split_args(d, cl->meta.options);
    }
    for (int i = 0; i < cl->nstorages; i++) {
        struct up_endpoint *s = &cl->storages[i];
        if (!up_wanted(c, s->host))
            continue;
        struct up_daemon *d = up_new(c, UP_STORAGE, "storage", s->addr, s->port);
        snprintf(d->name, sizeof d->name, "storage-%s", s->name);
        up_arg(d, "%u", s->port);
        up_arg(d, "--addr");
        up_arg(d, "%s", s->addr);
        up_arg(d, "--dir");
        up_arg(d, "%s/storage-%s", c->dir, s->name);
        up_split_args(d, s->options);
    }
    if (up_wanted(c, cl->lb.host)) {
        struct up_daemon *d = up_new(c, UP_LB, "load_balancer", cl->lb.addr, cl->lb.port);
        snprintf(d->name, sizeof d->name, "balancer");
        up_arg(d, "%s", cl->policy);
        up_arg(d, "%s", cl->lb.addr);
        up_arg(d, "%u", cl->lb.port);
        up_arg(d, "%s", cl->lb.addr);
        up_arg(d, "%u", cl->lb_server_port);
        up_arg(d, "%s", cl->lb.addr);
        up_arg(d, "%u", cl->lb_cache_port);
        up_arg(d, "%s", cl->meta.addr);
        up_arg(d, "%u", cl->meta.port);
        if (cl->lb_http_port >= 0) {
            up_arg(d, "--http-port");
            up_arg(d, "%d", cl->lb_http_port);
        }
        up_split_args(d, cl->lb.options);
    }
    for (int i = 0; i < cl->nmachines; i++) {
        struct up_machine *m = &cl->machines[i];
        if (!up_wanted(c, m->cache.host))
            continue;
        struct up_daemon *d = up_new(c, UP_CACHE, "cache", m->cache.addr, m->cache.port);
        d->machine = i;
        snprintf(d->name, sizeof d->name, "cache-%s", m->cache.name);
        snprintf(d->shm, sizeof d->shm, "pipeps-up-%d-%s", (int)getpid(), m->cache.name);
        up_arg(d, "%s", m->cache.addr);
        up_arg(d, "%u", m->cache.port);
        up_arg(d, "%s", cl->meta.addr);
        up_arg(d, "%u", cl->meta.port);
        up_arg(d, "%s", cl->lb.addr);
        up_arg(d, "%u", cl->lb_cache_port);
        up_arg(d, "%s", d->shm);
        up_arg(d, "%s", m->cache_size);
        up_arg(d, "%s", m->cache_block);
        up_split_args(d, m->cache.options);
        for (int k = 0; k < m->servers; k++) {
            struct up_daemon *s =
                up_new(c, UP_SERVER, "server", m->cache.addr, m->server_port + (unsigned)k);
            s->machine = i;
            snprintf(s->name, sizeof s->name, "server-%s%d", m->cache.name, k);
            up_arg(s, "%s", m->cache.addr);
            up_arg(s, "%u", s->port);
            up_arg(s, "%s", m->cache.addr);
            up_arg(s, "%u", m->cache.port);
            up_arg(s, "%s", cl->lb.addr);
            up_arg(s, "%u", cl->lb_server_port);
            up_split_args(s, m->server_options);
        }
    }
}

/* ---- state file ------------------------------------------------------------ */

static int up_state_write(const struct up_ctx *c)
{
    char tmp[UP_PATH + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", c->state_path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return pps_from_errno(errno);
    fprintf(f, "# pipeps up state: 'daemon NAME PID START_TIME' and 'shm NAME' lines\n");
    for (int i = 0; i < c->nd; i++) {
        const struct up_daemon *d = &c->d[i];
        if (d->pid > 0)
            fprintf(f, "daemon %s %d %llu\n", d->name, (int)d->pid, d->start_time);
        if (d->shm[0] && d->pid > 0)
            fprintf(f, "shm %s\n", d->shm);
    }
    int bad = ferror(f);
    if (fclose(f) || bad || rename(tmp, c->state_path))
        return PPS_EIO;
    return 0;
}

/* Read a state file's daemons into d[] (appending at *n) and shm names. */
static int up_state_read(const char *path, struct up_daemon *d, int *n, int max)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return PPS_ENOTFOUND;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char name[UP_STR];
        int pid;
        unsigned long long st;
        if (*n == max)
            break;
        if (sscanf(line, "daemon %127s %d %llu", name, &pid, &st) == 3) {
            struct up_daemon *x = &d[(*n)++];
            memset(x, 0, sizeof *x);
            snprintf(x->name, sizeof x->name, "%s", name);
            x->pid = pid;
            x->start_time = st;
        } else if (sscanf(line, "shm %127s", name) == 1) {
            struct up_daemon *x = &d[(*n)++];
            memset(x, 0, sizeof *x);
            snprintf(x->shm, sizeof x->shm, "%s", name);
        }
    }
    fclose(f);
    return 0;
}

/* ---- stopping -------------------------------------------------------------- */

/* SIGTERM every live daemon of d[], wait up to grace_s for them to go, then
 * SIGKILL the rest; remove the shared-memory segments. Returns how many were
 * still there after SIGKILL (0 normally). */
static int up_stop(struct up_daemon *d, int n, double grace_s, int verbose)
{
    for (int i = n - 1; i >= 0; i--)
        if (d[i].pid > 0 && up_alive(&d[i])) {
            if (verbose)
                printf("stopping %-14s pid %d\n", d[i].name, (int)d[i].pid);
            kill(d[i].pid, SIGTERM);
        }
    for (int pass = 0; pass < 2; pass++) {
        double deadline = up_now() + (pass == 0 ? grace_s : 5.0);
        for (;;) {
            int left = 0;
            for (int i = 0; i < n; i++)
                if (d[i].pid > 0 && up_alive(&d[i]))
                    left++;
            if (!left)
                break;
            if (up_now() > deadline) {
                if (pass == 1)
                    return left;
                for (int i = 0; i < n; i++)
                    if (d[i].pid > 0 && up_alive(&d[i])) {
                        fprintf(stderr, "pipeps: %s (pid %d) ignored SIGTERM for %.0f s: SIGKILL\n",
                                d[i].name, (int)d[i].pid, grace_s);
                        kill(d[i].pid, SIGKILL);
                    }
                break;
            }
            up_sleep_ms(50);
        }
    }
    for (int i = 0; i < n; i++)
        if (d[i].shm[0]) {
            char name[UP_STR + 2];
            snprintf(name, sizeof name, "/%s", d[i].shm);
            if (shm_unlink(name) == 0 && verbose)
                printf("removed /dev/shm/%s\n", d[i].shm);
        }
    return 0;
}

static const char *where_of(const struct up_daemon *d)
{
    static char where[UP_STR + 16];
    snprintf(where, sizeof where, "%s:%u", d->addr, d->port);
    return where;
}

/* ---- starting ------------------------------------------------------------- */

static int up_spawn(struct up_ctx *c, struct up_daemon *d)
{
    char path[UP_PATH + 64], log[UP_LOGPATH];
    snprintf(path, sizeof path, "%s/%s", c->bindir, d->program);
    up_log_path(c, d->name, log, sizeof log);
    char *argv[128];
    int a = 0;
    argv[a++] = path;
    char *p = d->args;
    for (int i = 0; i < d->nargs && a < 127; i++) {
        argv[a++] = p;
        p += strlen(p) + 1;
    }
    argv[a] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return pps_from_errno(errno);
    if (pid == 0) {
        setsid();
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int nul = open("/dev/null", O_RDONLY);
        if (fd < 0 || nul < 0)
            _exit(126);
        dup2(nul, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(path, argv);
        fprintf(stderr, "pipeps up: cannot run %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    d->pid = pid;
    d->is_child = 1;
    int zombie;
    /* The child's start time is fixed at fork, so reading it now is exact. */
    if (up_proc_start(pid, &d->start_time, &zombie))
        d->start_time = 0;
    return 0;
}

/* One health check: connect and PING. */
static int up_ping(const char *addr, unsigned port)
{
    int fd;
    int rc = net_connect(addr, (uint16_t)port, 1000, &fd);
    if (rc)
        return rc;
    net_set_timeout(fd, 3000);
    uint8_t *resp = NULL;
    uint64_t len = 0;
    rc = frame_call(fd, MSG_PING, NULL, 0, &resp, &len, 4096);
    free(resp);
    close(fd);
    return rc;
}

/* The balancer's STAT text (the caller frees), or NULL. */
static char *up_lb_stat(const char *addr, unsigned port)
{
    int fd;
    if (net_connect(addr, (uint16_t)port, 1000, &fd))
        return NULL;
    net_set_timeout(fd, 5000);
    uint8_t *resp = NULL;
    uint64_t len = 0;
    int rc = frame_call(fd, MSG_STAT, NULL, 0, &resp, &len, FRAME_MAX_CONTROL);
    close(fd);
    if (rc) {
        free(resp);
        return NULL;
    }
    return (char *)resp; /* NUL-terminated by frame_recv */
}

static int up_has_line(const char *text, const char *prefix, const char *needle, const char *flag)
{
    for (const char *l = text; l && *l;) {
        const char *nl = strchr(l, '\n');
        size_t n = nl ? (size_t)(nl - l) : strlen(l);
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)(n < sizeof line ? n : sizeof line - 1), l);
        if (strncmp(line, prefix, strlen(prefix)) == 0 && strstr(line, needle) && strstr(line, flag))
            return 1;
        l = nl ? nl + 1 : NULL;
    }
    return 0;
}

/* Are the cache and servers of machine i registered at the balancer? */
static int up_registered(const struct up_cluster *cl, const char *stat, int i)
{
    const struct up_machine *m = &cl->machines[i];
    char needle[UP_STR + 32];
    snprintf(needle, sizeof needle, " %s:%u connected 1 ", m->cache.addr, m->cache.port);
    if (!up_has_line(stat, "cache ", needle, " connected 1 "))
        return 0;
    for (int k = 0; k < m->servers; k++) {
        snprintf(needle, sizeof needle, " %s:%u machine ", m->cache.addr, m->server_port + (unsigned)k);
        if (!up_has_line(stat, "server ", needle, " ready 1 "))
            return 0;
    }
    return 1;
}

static void up_fail(struct up_ctx *c, const struct up_daemon *d, const char *why)
{
    char log[UP_LOGPATH];
    up_log_path(c, d->name, log, sizeof log);
    fprintf(stderr, "pipeps up: %s (%s:%u) did not start: %s\n", d->name, d->addr, d->port, why);
    up_print_tail(log, 20);
}

/* Wait until d answers PING; 0, or an error (the daemon exited or timed out). */
static int up_wait_ready(struct up_ctx *c, struct up_daemon *d)
{
    double deadline = up_now() + c->timeout_s;
    for (;;) {
        if (!up_alive(d)) {
            up_fail(c, d, "it exited");
            return PPS_EIO;
        }
        if (up_ping(d->addr, d->port) == 0)
            return 0;
        if (up_now() > deadline) {
            char why[64];
            snprintf(why, sizeof why, "no answer to PING in %.0f s", c->timeout_s);
            up_fail(c, d, why);
            return PPS_ETIMEOUT;
        }
        up_sleep_ms(100);
    }
}

/* Run a helper program (generate_file, deploy_file) to completion. */
static int up_run_tool(struct up_ctx *c, const char *program, char *const *args)
{
    struct up_daemon d;
    memset(&d, 0, sizeof d);
    snprintf(d.name, sizeof d.name, "%s", program);
    snprintf(d.program, sizeof d.program, "%s", program);
    for (int i = 0; args[i]; i++)
        up_arg(&d, "%s", args[i]);
    char log[UP_LOGPATH];
    up_log_path(c, program, log, sizeof log);
    unlink(log);
    int rc = up_spawn(c, &d);
    if (rc)
        return rc;
    int status;
    while (waitpid(d.pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    fprintf(stderr, "pipeps up: %s failed (exit %d)\n", program,
            WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    up_print_tail(log, 20);
    return PPS_EIO;
}

static int up_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return pps_from_errno(errno);
    fputs(text, f);
    return fclose(f) ? PPS_EIO : 0;
}

static int up_same_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strcmp(buf, text) == 0;
}

/* Generate kv.bin and deploy it unless the metadata storage already has every
 * model's location record. Every storage (this host's or not) must answer
 * first. */
static int up_deploy(struct up_ctx *c)
{
    struct up_cluster *cl = &c->cl;
    struct meta_client *mc;
    int rc = meta_client_connect(&mc, cl->meta.addr, (uint16_t)cl->meta.port);
    if (rc) {
        fprintf(stderr, "pipeps up: cannot reach the metadata storage: %s\n", pps_strerror(rc));
        return rc;
    }
    int missing = 0;
    for (int i = 0; i < cl->nmodels && !rc; i++) {
        char key[UP_STR + 16];
        uint8_t *v = NULL;
        uint64_t len;
        snprintf(key, sizeof key, "%s-LOCATION", cl->models[i].name);
        int g = meta_get(mc, key, &v, &len);
        free(v);
        if (g == PPS_ENOTFOUND)
            missing++;
        else if (g)
            rc = g;
    }
    meta_client_close(mc);
    if (rc) {
        fprintf(stderr, "pipeps up: metadata storage: %s\n", pps_strerror(rc));
        return rc;
    }
    if (!missing) {
        printf("models already deployed (every <model>-LOCATION is in the metadata storage)\n");
        return 0;
    }
    for (int i = 0; i < cl->nstorages; i++) {
        const struct up_endpoint *s = &cl->storages[i];
        double deadline = up_now() + c->timeout_s;
        while (up_ping(s->addr, s->port)) {
            if (up_now() > deadline) {
                fprintf(stderr, "pipeps up: storage %s (%s:%u) does not answer; cannot deploy\n",
                        s->name, s->addr, s->port);
                return PPS_ETIMEOUT;
            }
            up_sleep_ms(200);
        }
    }
    static char text[65536];
    size_t used = 0;
    used += (size_t)snprintf(text + used, sizeof text - used,
                             "model_name[, seq_len]\n# max_batch_size %s\n", cl->max_batch_size);
    for (int i = 0; i < cl->nmodels && used < sizeof text; i++) {
        if (cl->models[i].seq_len)
            used += (size_t)snprintf(text + used, sizeof text - used, "%s, %d\n", cl->models[i].name,
                                     cl->models[i].seq_len);
        else
            used += (size_t)snprintf(text + used, sizeof text - used, "%s\n", cl->models[i].name);
    }
    if (used >= sizeof text)
        return PPS_ETOOBIG;
    char list[UP_PATH + 32], kv[UP_PATH + 32], sl[UP_PATH + 32], dl[UP_PATH + 32];
    snprintf(list, sizeof list, "%s/model_list.txt", c->dir);
    snprintf(kv, sizeof kv, "%s/kv.bin", c->dir);
    snprintf(sl, sizeof sl, "%s/storage_list.txt", c->dir);
    snprintf(dl, sizeof dl, "%s/distribution_list.txt", c->dir);
    if (!up_same_file(list, text) || access(kv, R_OK)) {
        if ((rc = up_write_file(list, text)))
            return rc;
        printf("generating %d model(s) into %s ...\n", cl->nmodels, kv);
        fflush(stdout);
        char *args[] = {list, kv, cl->max_batch_size, "--quiet", NULL};
        double t0 = up_now();
        if ((rc = up_run_tool(c, "generate_file", args))) {
            unlink(list); /* so the next `up` generates again */
            return rc;
        }
        printf("generated in %.1f s\n", up_now() - t0);
    }
    used = (size_t)snprintf(text, sizeof text, "address, port\n%s, %u\n", cl->meta.addr, cl->meta.port);
    for (int i = 0; i < cl->nstorages; i++)
        used += (size_t)snprintf(text + used, sizeof text - used, "%s, %u\n", cl->storages[i].addr,
                                 cl->storages[i].port);
    if ((rc = up_write_file(sl, text)))
        return rc;
    used = (size_t)snprintf(text, sizeof text, "model, storages\n");
    for (int i = 0; i < cl->nmodels && used < sizeof text; i++) {
        used += (size_t)snprintf(text + used, sizeof text - used, "%s", cl->models[i].name);
        if (strcmp(cl->distribution, "round") == 0)
            used += (size_t)snprintf(text + used, sizeof text - used, ", %d", i % cl->nstorages);
        else
            for (int s = 0; s < cl->nstorages; s++)
                used += (size_t)snprintf(text + used, sizeof text - used, ", %d", s);
        used += (size_t)snprintf(text + used, sizeof text - used, "\n");
    }
    if (used >= sizeof text)
        return PPS_ETOOBIG;
    if ((rc = up_write_file(dl, text)))
        return rc;
    printf("deploying over %d storage(s) (distribution %s) ...\n", cl->nstorages, cl->distribution);
    fflush(stdout);
    char *args[] = {sl, dl, kv, NULL};
    double t0 = up_now();
    if ((rc = up_run_tool(c, "deploy_file", args)))
        return rc;
    printf("deployed in %.1f s\n", up_now() - t0);
    return 0;
}

/* Wait until this host's machines are registered at the balancer. */
static int up_wait_registered(struct up_ctx *c)
{
    struct up_cluster *cl = &c->cl;
    double deadline = up_now() + c->timeout_s;
    for (;;) {
        char *stat = up_lb_stat(cl->lb.addr, cl->lb.port);
        int all = stat != NULL, which = -1;
        for (int i = 0; i < cl->nmachines && all; i++)
            if (up_wanted(c, cl->machines[i].cache.host) && !up_registered(cl, stat, i)) {
                all = 0;
                which = i;
            }
        free(stat);
        if (all)
            return 0;
        for (int i = 0; i < c->nd; i++)
            if (c->d[i].pid > 0 && !up_alive(&c->d[i])) {
                up_fail(c, &c->d[i], "it exited while registering with the balancer");
                return PPS_EIO;
            }
        if (up_now() > deadline) {
            if (which < 0) {
                fprintf(stderr, "pipeps up: the balancer (%s:%u) does not answer STAT\n", cl->lb.addr,
                        cl->lb.port);
            } else {
                fprintf(stderr, "pipeps up: machine %s did not register with the balancer in %.0f s\n",
                        cl->machines[which].cache.name, c->timeout_s);
                for (int i = 0; i < c->nd; i++)
                    if (c->d[i].machine == which)
                        up_fail(c, &c->d[i], "not registered");
            }
            return PPS_ETIMEOUT;
        }
        up_sleep_ms(100);
    }
}

static int up_bindir(char *out, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", out, cap - 1);
    if (n <= 0)
        return PPS_EIO;
    out[n] = '\0';
    char *slash = strrchr(out, '/');
    if (!slash)
        return PPS_EIO;
    *slash = '\0';
    return 0;
}

static int up_abs_dir(const char *dir, char *out, size_t cap, int create)
{
    if (create) {
        int rc = up_mkdir(dir);
        if (rc) {
            fprintf(stderr, "pipeps: cannot create %s: %s\n", dir, strerror(errno));
            return rc;
        }
    }
    char buf[PATH_MAX];
    if (!realpath(dir, buf))
        return PPS_ENOTFOUND;
    return up_copy(out, cap, buf);
}

static void up_print_summary(const struct up_ctx *c)
{
    const struct up_cluster *cl = &c->cl;
    printf("\n%-16s %-8s %-22s %s\n", "daemon", "pid", "listens on", "log");
    for (int i = 0; i < c->nd; i++) {
        const struct up_daemon *d = &c->d[i];
        char where[UP_STR + 16], log[UP_LOGPATH];
        snprintf(where, sizeof where, "%s:%u", d->addr, d->port);
        up_log_path(c, d->name, log, sizeof log);
        printf("%-16s %-8d %-22s %s\n", d->name, (int)d->pid, where, log);
        if (d->kind == UP_LB) {
            printf("%-16s %-8s %s:%u (servers), %s:%u (caches)%s", "", "", cl->lb.addr,
                   cl->lb_server_port, cl->lb.addr, cl->lb_cache_port,
                   cl->lb_http_port >= 0 ? "" : "\n");
            if (cl->lb_http_port >= 0)
                printf(", http://%s:%d/ (HTTP API, status page)\n", cl->lb.addr, cl->lb_http_port);
        }
        if (d->kind == UP_CACHE)
            printf("%-16s %-8s shared memory /dev/shm/%s (%s in %s blocks)\n", "", "", d->shm,
                   cl->machines[d->machine].cache_size, cl->machines[d->machine].cache_block);
    }
    printf("\ncluster up: send requests to %s:%u", cl->lb.addr, cl->lb.port);
    printf(" (e.g. pipeps infer %s:%u %s); state in %s; stop with: pipeps down --dir %s\n",
           cl->lb.addr, cl->lb.port, cl->models[0].name, c->state_path, c->dir);
}

static void up_usage(FILE *out)
{
    fprintf(out,
            "usage: pipeps up [CLUSTER_FILE] [--host NAME] [--dir DIR] [--timeout S]\n"
            "       pipeps up --print-default\n"
            "  Start the cluster CLUSTER_FILE describes (default: the built-in one, shown by\n"
            "  --print-default: metadata storage, two storages, a balancer, two machines\n"
            "  127.0.0.2 and 127.0.0.3 with a cache and a server each, the five models).\n"
            "  Generates and deploys the models unless the metadata storage has them, and\n"
            "  returns once every daemon answers its health check.\n"
            "  --host NAME  start only the daemons whose section says host = NAME (default:\n"
            "               every daemon; a section without host is host 'local')\n"
            "  --dir DIR    logs, data, kv.bin and the state file (default ./pipeps-cluster)\n"
            "  --timeout S  seconds a daemon may take to become ready (default 120)\n"
            "  Stop with `pipeps down --dir DIR`.\n");
}

int up_main(int argc, char **argv)
{
    static struct up_ctx ctx;
    struct up_ctx *c = &ctx;
    memset(c, 0, sizeof *c);
    const char *file = NULL, *dir = "pipeps-cluster";
    c->timeout_s = 120;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            up_usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--print-default") == 0) {
            fputs(up_default_cluster, stdout);
            return 0;
        } else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) {
            if (up_copy(c->host, sizeof c->host, argv[++i]))
                return 2;
        } else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            c->timeout_s = atof(argv[++i]);
            if (c->timeout_s <= 0) {
                fprintf(stderr, "pipeps up: bad --timeout\n");
                return 2;
            }
        } else if (argv[i][0] == '-' || file) {
            fprintf(stderr, "pipeps up: unexpected argument '%s'\n", argv[i]);
            up_usage(stderr);
            return 2;
        } else {
            file = argv[i];
        }
    }
    if (up_load(&c->cl, file))
        return 2;
    if (up_bindir(c->bindir, sizeof c->bindir)) {
        fprintf(stderr, "pipeps up: cannot find this program's directory\n");
        return 1;
    }
    if (up_abs_dir(dir, c->dir, sizeof c->dir, 1))
        return 1;
    char logs[UP_PATH + 8];
    snprintf(logs, sizeof logs, "%s/logs", c->dir);
    if (up_mkdir(logs)) {
        fprintf(stderr, "pipeps up: cannot create %s\n", logs);
        return 1;
    }
    snprintf(c->state_path, sizeof c->state_path, "%s/state-%s", c->dir, c->host[0] ? c->host : "all");
    up_plan(c);
    if (c->nd == 0) {
        fprintf(stderr, "pipeps up: the cluster file assigns no daemon to host '%s'\n", c->host);
        return 2;
    }
    {
        static struct up_daemon old[UP_MAX_DAEMONS];
        int n = 0;
        if (up_state_read(c->state_path, old, &n, UP_MAX_DAEMONS) == 0)
            for (int i = 0; i < n; i++)
                if (old[i].pid > 0 && up_alive(&old[i])) {
                    fprintf(stderr,
                            "pipeps up: a cluster is already up in %s (%s, pid %d); "
                            "run `pipeps down --dir %s` first\n",
                            c->dir, old[i].name, (int)old[i].pid, c->dir);
                    return 1;
                }
    }
    signal(SIGPIPE, SIG_IGN);
    printf("pipeps up: %d daemon(s)%s%s, files in %s\n", c->nd, c->host[0] ? " of host " : "", c->host,
           c->dir);
    int rc = 0;
    int meta_here = c->nd > 0 && c->d[0].kind == UP_META;
    for (int i = 0; i < c->nd && !rc; i++) {
        struct up_daemon *d = &c->d[i];
        /* Deploy once the storage tier is up, before the balancer and the
         * caches look for the models. */
        if (meta_here && d->kind >= UP_LB) {
            meta_here = 0;
            if ((rc = up_deploy(c)))
                break;
        }
        {
            char log[UP_LOGPATH];
            up_log_path(c, d->name, log, sizeof log);
            unlink(log);
            rc = up_spawn(c, d);
            if (rc) {
                fprintf(stderr, "pipeps up: cannot start %s: %s\n", d->name, pps_strerror(rc));
                break;
            }
            up_state_write(c);
            rc = up_wait_ready(c, d);
            if (!rc) {
                printf("  ready: %-16s %-22s pid %d\n", d->name, where_of(d), (int)d->pid);
                fflush(stdout);
            }
        }
    }
    if (!rc && meta_here)
        rc = up_deploy(c);
    int machines_here = 0;
    for (int i = 0; i < c->nd; i++)
        machines_here |= c->d[i].kind == UP_CACHE;
    if (!rc && machines_here)
        rc = up_wait_registered(c);
    if (rc) {
        fprintf(stderr, "pipeps up: stopping what was started\n");
        up_stop(c->d, c->nd, 10.0, 0);
        unlink(c->state_path);
        return 1;
    }
    if (up_state_write(c)) {
        fprintf(stderr, "pipeps up: cannot write %s\n", c->state_path);
        up_stop(c->d, c->nd, 10.0, 0);
        return 1;
    }
    up_print_summary(c);
    return 0;
}

int down_main(int argc, char **argv)
{
    const char *dir = "pipeps-cluster";
    double grace = 10;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: pipeps down [--dir DIR] [--grace S]\n"
                   "  Stop the daemons `pipeps up --dir DIR` started (every state-* file of DIR):\n"
                   "  SIGTERM, then SIGKILL after S seconds (default 10); remove the caches'\n"
                   "  shared memory and the state files. Logs and data stay in DIR.\n");
            return 0;
        } else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--grace") == 0 && i + 1 < argc) {
            grace = atof(argv[++i]);
        } else {
            fprintf(stderr, "pipeps down: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    char abs[UP_PATH];
    if (up_abs_dir(dir, abs, sizeof abs, 0)) {
        fprintf(stderr, "pipeps down: no cluster directory %s\n", dir);
        return 1;
    }
    static struct up_daemon d[UP_MAX_DAEMONS * 4];
    static char paths[16][UP_PATH + 64];
    int n = 0, files = 0;
    DIR *dh = opendir(abs);
    for (struct dirent *e; dh && (e = readdir(dh)) && files < 16;)
        if (strncmp(e->d_name, "state-", 6) == 0 && !strstr(e->d_name, ".tmp"))
            snprintf(paths[files++], sizeof paths[0], "%s/%s", abs, e->d_name);
    if (dh)
        closedir(dh);
    for (int i = 0; i < files; i++)
        up_state_read(paths[i], d, &n, UP_MAX_DAEMONS * 4);
    if (!files) {
        printf("pipeps down: nothing to stop in %s\n", abs);
        return 0;
    }
    int left = up_stop(d, n, grace, 1);
    if (left) {
        fprintf(stderr, "pipeps down: %d process(es) survived SIGKILL\n", left);
        return 1;
    }
    for (int i = 0; i < files; i++)
        unlink(paths[i]);
    printf("cluster in %s is down\n", abs);
    return 0;
}
