/* stat: `pipeps stat KIND ADDR:PORT` asks a running daemon for its counters
 * and prints them ("name value" lines). Every daemon answers the common
 * STAT message; the storage's own STORE_STAT is used for KIND storage. Add a
 * line to the table below when a daemon needs another message. */
#include "common/err.h"
#include "common/frame.h"
#include "common/net.h"
#include "tools/commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct {
    const char *kind;
    uint16_t type;
} stat_kinds[] = {
    {"cache", MSG_STAT},   {"storage", MSG_STORE_STAT}, {"metadata", MSG_STAT},
    {"server", MSG_STAT},  {"lb", MSG_STAT},            {"any", MSG_STAT},
};

/* One request and its answer. Unlike frame_call, a daemon's refusal of the
 * connection itself (a well-formed ERROR frame with request id 0, e.g.
 * PPS_EBUSY over --max-conns, sent before our request was read) is taken as
 * the answer, and is still read if sending failed because the daemon had
 * already closed. */
static int stat_call(int fd, uint16_t type, uint8_t **resp, uint64_t *len)
{
    struct frame_header h = {.type = type, .request_id = 1};
    int send_rc = frame_send(fd, &h, NULL, 0);
    struct frame_header r;
    int rc = frame_recv(fd, &r, resp, FRAME_MAX_CONTROL);
    if (rc)
        return send_rc ? send_rc : rc;
    int answer = (r.flags & FRAME_FLAG_RESPONSE) && r.request_id == h.request_id &&
                 (r.type == type || r.type == MSG_ERROR);
    int refusal = (r.flags & FRAME_FLAG_RESPONSE) && r.request_id == 0 && r.type == MSG_ERROR &&
                  r.status < 0;
    if (!answer && !refusal) {
        free(*resp);
        *resp = NULL;
        return PPS_EPROTO;
    }
    *len = r.payload_len;
    return r.status < 0 ? r.status : 0;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: pipeps stat KIND ADDR:PORT\n"
                 "  print a daemon's counters; KIND is one of:");
    for (size_t i = 0; i < sizeof stat_kinds / sizeof stat_kinds[0]; i++)
        fprintf(out, " %s", stat_kinds[i].kind);
    fprintf(out, "\n");
}

int stat_main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc != 3) {
        usage(stderr);
        return 2;
    }
    uint16_t type = 0;
    for (size_t i = 0; i < sizeof stat_kinds / sizeof stat_kinds[0]; i++)
        if (strcmp(argv[1], stat_kinds[i].kind) == 0)
            type = stat_kinds[i].type;
    if (!type) {
        fprintf(stderr, "pipeps stat: unknown daemon kind '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    char host[256];
    uint16_t port;
    if (net_parse_hostport(argv[2], host, sizeof host, &port)) {
        fprintf(stderr, "pipeps stat: bad address '%s' (want ADDR:PORT)\n", argv[2]);
        return 2;
    }
    int fd;
    int rc = net_connect(host, port, 5000, &fd);
    if (rc) {
        fprintf(stderr, "pipeps stat: cannot connect to %s:%u: %s\n", host, port, pps_strerror(rc));
        return 1;
    }
    net_set_timeout(fd, 10000);
    uint8_t *resp = NULL;
    uint64_t len = 0;
    rc = stat_call(fd, type, &resp, &len);
    close(fd);
    if (rc) {
        fprintf(stderr, "pipeps stat: %s:%u: %s%s%.*s\n", host, port, pps_strerror(rc),
                resp && len ? ": " : "", resp ? (int)len : 0, resp ? (const char *)resp : "");
        free(resp);
        return 1;
    }
    fwrite(resp, 1, len, stdout);
    if (len && resp[len - 1] != '\n')
        putchar('\n');
    free(resp);
    return 0;
}
