/* err: the one error convention of PipePS.
 *
 * Every function that can fail returns int: 0 on success, a negative PPS_E*
 * code otherwise. The same codes travel in the `status` field of a response
 * frame, so a peer's failure reads the same as a local one. The list macro is
 * the single source of codes, names and messages; add new codes at the end
 * (their values are part of the wire protocol). */
#ifndef PIPEPS_ERR_H
#define PIPEPS_ERR_H

#include <stddef.h>

#define PPS_ERR_LIST(X)                                                       \
    X(OK,          0,  "success")                                            \
    X(NOMEM,      -1,  "out of memory")                                      \
    X(IO,         -2,  "input/output error")                                 \
    X(INVAL,      -3,  "invalid argument")                                   \
    X(NOTFOUND,   -4,  "not found")                                          \
    X(EXISTS,     -5,  "already exists")                                     \
    X(PROTO,      -6,  "protocol error (malformed frame)")                   \
    X(TOOBIG,     -7,  "length over the limit")                              \
    X(CLOSED,     -8,  "peer closed the connection")                         \
    X(TIMEOUT,    -9,  "timed out")                                          \
    X(CORRUPT,   -10,  "checksum mismatch or corrupt data")                  \
    X(TRUNCATED, -11,  "truncated data")                                     \
    X(UNSUPPORTED,-12, "unsupported operation or version")                   \
    X(NOSPACE,   -13,  "no space left")                                      \
    X(CONNECT,   -14,  "cannot connect")                                     \
    X(BUSY,      -15,  "resource busy")                                      \
    X(RANGE,     -16,  "value out of range")                                 \
    X(SHAPE,     -17,  "tensor shape or type mismatch")                      \
    X(FETCH,     -18,  "parameter fetch failed")                             \
    X(CANCELED,  -19,  "operation canceled")                                 \
    X(INTERNAL,  -20,  "internal error")

enum pps_err {
#define PPS_ERR_ENUM(name, value, msg) PPS_E##name = (value),
    PPS_ERR_LIST(PPS_ERR_ENUM)
#undef PPS_ERR_ENUM
};

/* Human-readable message for a code; never NULL, also for unknown codes. */
const char *pps_strerror(int code);
/* Symbolic name ("PPS_ENOTFOUND") for a code; never NULL. */
const char *pps_errname(int code);
/* Map an errno value (positive) to the closest PPS_E* code. */
int pps_from_errno(int errnum);
/* Format a message into err (errlen bytes; nothing if err is NULL or
 * errlen 0) and return code: `return pps_fail(err, errlen, PPS_EINVAL, ...)`
 * (code 0 where the caller goes on to clean up and returns its own). */
int pps_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Invariant checks stay on in every build. Never use them on input from the
 * wire or a file: that gets an error return. */
#define PPS_ASSERT(cond)                                                      \
    do {                                                                      \
        if (!(cond)) pps_assert_fail(#cond, __FILE__, __LINE__);              \
    } while (0)
_Noreturn void pps_assert_fail(const char *expr, const char *file, int line);

/* Allocation for small internal objects: aborts on out-of-memory. Sizes that
 * come from a request or a model must use malloc and return PPS_ENOMEM. */
void *pps_xmalloc(unsigned long size);
void *pps_xcalloc(unsigned long count, unsigned long size);
void *pps_xrealloc(void *ptr, unsigned long size);
char *pps_xstrdup(const char *s);

#endif
