/* net: thin wrappers over BSD sockets; see net.h. */
#include "common/net.h"
#include "common/err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int resolve(const char *addr, uint16_t port, struct sockaddr_in *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(port);
    if (!addr || !*addr)
        addr = NET_DEFAULT_ADDR;
    if (inet_pton(AF_INET, addr, &sa->sin_addr) == 1)
        return 0;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(addr, NULL, &hints, &res) != 0 || !res)
        return PPS_EINVAL;
    sa->sin_addr = ((struct sockaddr_in *)res->ai_addr)->sin_addr;
    freeaddrinfo(res);
    return 0;
}

int net_listen_msg(const char *addr, uint16_t port, int *fd_out, char *err, size_t errlen)
{
    const char *shown = addr && *addr ? addr : NET_DEFAULT_ADDR;
    struct sockaddr_in sa;
    int rc = resolve(addr, port, &sa);
    if (rc)
        return pps_fail(err, errlen, rc, "cannot listen on %s:%u: unknown address", shown, port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        return pps_fail(err, errlen, pps_from_errno(e), "cannot listen on %s:%u: %s", shown,
                        port, strerror(e));
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 512) < 0) {
        int e = errno;
        close(fd);
        /* strerror's own words ("Address already in use"), lower-cased to
         * read like the rest of our messages */
        char why[128];
        snprintf(why, sizeof why, "%s", strerror(e));
        if (why[0] >= 'A' && why[0] <= 'Z' && !(why[1] >= 'A' && why[1] <= 'Z'))
            why[0] = (char)(why[0] - 'A' + 'a');
        return pps_fail(err, errlen, e == EADDRINUSE ? PPS_EBUSY : pps_from_errno(e),
                        "cannot listen on %s:%u: %s", shown, port, why);
    }
    *fd_out = fd;
    return 0;
}

int net_listen(const char *addr, uint16_t port, int *fd_out)
{
    return net_listen_msg(addr, port, fd_out, NULL, 0);
}

int net_connect(const char *addr, uint16_t port, int timeout_ms, int *fd_out)
{
    struct sockaddr_in sa;
    int rc = resolve(addr, port, &sa);
    if (rc)
        return rc;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return pps_from_errno(errno);
    if (timeout_ms > 0)
        net_set_nonblocking(fd, 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno != EINPROGRESS || timeout_ms <= 0) {
            close(fd);
            return PPS_ECONNECT;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t len = sizeof err;
        if (poll(&p, 1, timeout_ms) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            close(fd);
            return PPS_ECONNECT;
        }
    }
    if (timeout_ms > 0)
        net_set_nonblocking(fd, 0);
    net_set_nodelay(fd);
    *fd_out = fd;
    return 0;
}

int net_local_port(int fd, uint16_t *port)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        return pps_from_errno(errno);
    *port = ntohs(sa.sin_port);
    return 0;
}

int net_read_full(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        } else if (r == 0) {
            return PPS_ECLOSED;
        } else if (errno != EINTR) {
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? PPS_ETIMEOUT
                   : errno == ECONNRESET                    ? PPS_ECLOSED
                                                            : pps_from_errno(errno);
        }
    }
    return 0;
}

int net_write_full(int fd, const void *buf, size_t n)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = n};
    return net_writev_full(fd, &iov, 1);
}

int net_writev_full(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)iovcnt};
        ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? PPS_ETIMEOUT
                   : (errno == EPIPE || errno == ECONNRESET) ? PPS_ECLOSED
                                                             : pps_from_errno(errno);
        }
        size_t done = (size_t)w;
        while (iovcnt > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return 0;
}

int net_discard(int fd, uint64_t n)
{
    char sink[65536];
    while (n) {
        size_t chunk = n < sizeof sink ? (size_t)n : sizeof sink;
        int rc = net_read_full(fd, sink, chunk);
        if (rc)
            return rc;
        n -= chunk;
    }
    return 0;
}

int net_set_nodelay(int fd)
{
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) ? pps_from_errno(errno) : 0;
}

int net_set_bufsize(int fd, int bytes)
{
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes) ||
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes))
        return pps_from_errno(errno);
    return 0;
}

int net_set_timeout(int fd, int timeout_ms)
{
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv))
        return pps_from_errno(errno);
    return 0;
}

int net_set_nonblocking(int fd, int on)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0)
        return pps_from_errno(errno);
    flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, flags) < 0 ? pps_from_errno(errno) : 0;
}

int net_parse_port(const char *text, uint16_t *port)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < 1 || v > 65535)
        return PPS_EINVAL;
    *port = (uint16_t)v;
    return 0;
}

int net_parse_hostport(const char *text, char *host, size_t hostlen, uint16_t *port)
{
    const char *colon = strrchr(text, ':');
    if (!colon) {
        snprintf(host, hostlen, "%s", NET_DEFAULT_ADDR);
        return net_parse_port(text, port);
    }
    size_t n = (size_t)(colon - text);
    if (n == 0 || n >= hostlen)
        return PPS_EINVAL;
    memcpy(host, text, n);
    host[n] = '\0';
    return net_parse_port(colon + 1, port);
}

void net_ignore_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }
