/* inbound: the limits every daemon puts on what its peers send, in one
 * place so the four daemons behave alike (docs/protocol.md, "Limits and bad
 * input"; README option tables).
 *
 *  - `--io-timeout S`: a peer that stops sending in the middle of a frame
 *    (header or payload) for S seconds is dropped. A connection idle
 *    between frames is never timed out: the load balancer keeps long-lived
 *    connections to servers and caches.
 *  - `--max-conns N`: connections served at once; one more is answered
 *    PPS_EBUSY (type ERROR) and closed.
 *  - `--max-partial SIZE` (daemons that take large request payloads):
 *    bytes of request payloads being received at once. A payload is
 *    charged before its buffer is allocated and released once it is
 *    complete or dropped; one that does not fit is refused with PPS_EBUSY,
 *    so half-sent requests cannot pile up memory. Buffers of dropped
 *    payloads go back to the system (inbound_trim).
 *
 * The one thing easy to get wrong: the timeout is armed only while a frame
 * is partly received, never between frames. For blocking sockets,
 * inbound_recv_header waits for the first byte of a header as long as it
 * takes and only then lets the receive timeout count; for libevent
 * connections, inbound_ev_arm switches the read timeout on and off. */
#ifndef PIPEPS_INBOUND_H
#define PIPEPS_INBOUND_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/frame.h"

#define INBOUND_DEFAULT_IO_TIMEOUT_S 120
#define INBOUND_DEFAULT_MAX_CONNS 1024
#define INBOUND_DEFAULT_MAX_PARTIAL (1ull << 30)

struct inbound_limits {
    int io_timeout_ms;     /* a frame in progress may stall this long */
    int max_conns;         /* connections served at once */
    uint64_t max_partial;  /* bytes of payloads being received at once */
};

/* The defaults above. */
void inbound_limits_default(struct inbound_limits *lim);
/* Parse the options' texts into *lim; a NULL text keeps the current value.
 * io_timeout: seconds 1..86400; max_conns: 1..1000000; max_partial: a
 * size (K/M/G) of at least 1M. PPS_EINVAL with a message naming the option
 * in err. */
int inbound_parse(struct inbound_limits *lim, const char *io_timeout, const char *max_conns,
                  const char *max_partial, char *err, size_t errlen);

/* ---- blocking sockets (thread per connection) ---- */

/* Receive timeout only (sends are left alone); 0 = none. */
int inbound_set_recv_timeout(int fd, int timeout_ms);
/* Read one frame header from a socket whose receive timeout is set: waits
 * for the first byte as long as it takes (an idle connection is fine), then
 * returns PPS_ETIMEOUT if the rest stalls. *got: bytes received, so the
 * caller can tell a clean close (PPS_ECLOSED, *got 0) from a cut frame. */
int inbound_recv_header(int fd, uint8_t hdr[FRAME_HEADER_SIZE], size_t *got);

/* ---- libevent connections ---- */

struct bufferevent;
/* Arm the read timeout while a frame is partly received (partial != 0),
 * disarm it otherwise; *armed remembers the state so only changes cost a
 * call. Also clears any write timeout: callers that use one (closing
 * connections) do not arm. A timeout reaches the event callback as
 * BEV_EVENT_TIMEOUT | BEV_EVENT_READING. */
void inbound_ev_arm(struct bufferevent *bev, int partial, int timeout_ms, int *armed);

/* ---- the connection limit ---- */

/* Tell a peer over the limit why (PPS_EBUSY, type ERROR) and close fd. */
void inbound_refuse(int fd, int max_conns);

/* ---- the budget of partial payloads ---- */

struct inbound_budget {
    atomic_uint_fast64_t used;
    uint64_t limit;
};

void inbound_budget_init(struct inbound_budget *b, uint64_t limit);
/* Charge n bytes: 0, or PPS_EBUSY (nothing charged) when they do not fit.
 * Thread-safe. */
int inbound_budget_take(struct inbound_budget *b, uint64_t n);
void inbound_budget_give(struct inbound_budget *b, uint64_t n);
uint64_t inbound_budget_used(struct inbound_budget *b);

/* Return freed heap memory to the system (after dropping a partial
 * payload, whose buffer may have come from the heap rather than a mapping). */
void inbound_trim(void);

#endif
