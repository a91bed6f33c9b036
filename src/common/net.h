/* net: TCP helpers shared by every daemon and client.
 *
 * Daemons bind to 127.0.0.1 unless given an address. All sockets get
 * TCP_NODELAY (control messages are small and latency-bound) and large
 * buffers (bulk transfers want few, large writes). Full-read/write helpers
 * retry on EINTR and short transfers; SIGPIPE is never raised (MSG_NOSIGNAL),
 * a vanished peer is PPS_ECLOSED. */
#ifndef PIPEPS_NET_H
#define PIPEPS_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define NET_DEFAULT_ADDR "127.0.0.1"

/* Listen on addr:port (addr NULL or "" = loopback; port 0 = any, see
 * net_local_port). */
int net_listen(const char *addr, uint16_t port, int *fd_out);
/* The same, with the reason in err for a log line that says it once:
 * "cannot listen on 127.0.0.1:7000: address already in use" (the code is
 * then PPS_EBUSY, whose generic text would read "resource busy"). */
int net_listen_msg(const char *addr, uint16_t port, int *fd_out, char *err, size_t errlen);
/* Connect with a timeout in milliseconds (0 = the OS default). */
int net_connect(const char *addr, uint16_t port, int timeout_ms, int *fd_out);
int net_local_port(int fd, uint16_t *port);

/* EOF before the first byte or in the middle: PPS_ECLOSED. */
int net_read_full(int fd, void *buf, size_t n);
int net_write_full(int fd, const void *buf, size_t n);
/* iov is modified. */
int net_writev_full(int fd, struct iovec *iov, int iovcnt);
/* Read and throw away n bytes (e.g. the payload of a refused frame). */
int net_discard(int fd, uint64_t n);

int net_set_nodelay(int fd);
int net_set_bufsize(int fd, int bytes);
/* Receive and send timeouts; 0 = none. */
int net_set_timeout(int fd, int timeout_ms);
int net_set_nonblocking(int fd, int on);

/* "host:port" or "port" (host = loopback). host has room for hostlen bytes. */
int net_parse_hostport(const char *text, char *host, size_t hostlen, uint16_t *port);
/* Decimal 1..65535. */
int net_parse_port(const char *text, uint16_t *port);

/* Ignore SIGPIPE for the whole process; daemons call it once at start. */
void net_ignore_sigpipe(void);

#endif
