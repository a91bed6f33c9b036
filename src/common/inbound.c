/* inbound: peer limits shared by the daemons; see inbound.h. */
#include "common/inbound.h"
#include "common/args.h"
#include "common/err.h"
#include "common/net.h"

#include <errno.h>
#include <event2/bufferevent.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

void inbound_limits_default(struct inbound_limits *lim)
{
    lim->io_timeout_ms = INBOUND_DEFAULT_IO_TIMEOUT_S * 1000;
    lim->max_conns = INBOUND_DEFAULT_MAX_CONNS;
    lim->max_partial = INBOUND_DEFAULT_MAX_PARTIAL;
}

int inbound_parse(struct inbound_limits *lim, const char *io_timeout, const char *max_conns,
                  const char *max_partial, char *err, size_t errlen)
{
    int s;
    if (io_timeout) {
        if (args_parse_int(io_timeout, 1, 86400, &s))
            return pps_fail(err, errlen, PPS_EINVAL,
                            "bad --io-timeout '%s' (seconds, 1..86400)", io_timeout);
        lim->io_timeout_ms = s * 1000;
    }
    if (max_conns && args_parse_int(max_conns, 1, 1000000, &lim->max_conns))
        return pps_fail(err, errlen, PPS_EINVAL, "bad --max-conns '%s' (1..1000000)", max_conns);
    if (max_partial) {
        uint64_t v;
        if (args_parse_size(max_partial, &v) || v < (1u << 20))
            return pps_fail(err, errlen, PPS_EINVAL, "bad --max-partial '%s' (a size, at least 1M)",
                            max_partial);
        lim->max_partial = v;
    }
    return 0;
}

int inbound_set_recv_timeout(int fd, int timeout_ms)
{
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) ? pps_from_errno(errno) : 0;
}

int inbound_recv_header(int fd, uint8_t hdr[FRAME_HEADER_SIZE], size_t *got)
{
    *got = 0;
    while (*got < FRAME_HEADER_SIZE) {
        ssize_t r = recv(fd, hdr + *got, FRAME_HEADER_SIZE - *got, 0);
        if (r > 0) {
            *got += (size_t)r;
        } else if (r == 0) {
            return PPS_ECLOSED;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (*got) /* between frames the timeout just repeats */
                return PPS_ETIMEOUT;
        } else if (errno != EINTR) {
            return errno == ECONNRESET ? PPS_ECLOSED : pps_from_errno(errno);
        }
    }
    return 0;
}

void inbound_ev_arm(struct bufferevent *bev, int partial, int timeout_ms, int *armed)
{
    partial = partial && timeout_ms > 0;
    if (partial == *armed)
        return;
    *armed = partial;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    bufferevent_set_timeouts(bev, partial ? &tv : NULL, NULL);
}

void inbound_refuse(int fd, int max_conns)
{
    char msg[128];
    snprintf(msg, sizeof msg, "too many connections (--max-conns %d); try again later", max_conns);
    frame_send_error(fd, MSG_ERROR, 0, PPS_EBUSY, msg);
    close(fd);
}

void inbound_budget_init(struct inbound_budget *b, uint64_t limit)
{
    atomic_init(&b->used, 0);
    b->limit = limit;
}

int inbound_budget_take(struct inbound_budget *b, uint64_t n)
{
    uint_fast64_t cur = atomic_load(&b->used);
    do {
        if (n > b->limit || cur > b->limit - n)
            return PPS_EBUSY;
    } while (!atomic_compare_exchange_weak(&b->used, &cur, cur + n));
    return 0;
}

void inbound_budget_give(struct inbound_budget *b, uint64_t n)
{
    uint_fast64_t was = atomic_fetch_sub(&b->used, n);
    PPS_ASSERT(was >= n);
}

uint64_t inbound_budget_used(struct inbound_budget *b) { return atomic_load(&b->used); }

void inbound_trim(void) { malloc_trim(0); }
