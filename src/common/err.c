/* err: code tables generated from PPS_ERR_LIST, and the abort-on-OOM
 * allocators used for small internal objects. */
#include "common/err.h"

#include <stdarg.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *pps_strerror(int code)
{
    switch (code) {
#define PPS_ERR_MSG(name, value, msg) case value: return msg;
        PPS_ERR_LIST(PPS_ERR_MSG)
#undef PPS_ERR_MSG
    }
    return "unknown error";
}

const char *pps_errname(int code)
{
    switch (code) {
#define PPS_ERR_NAME(name, value, msg) case value: return "PPS_E" #name;
        PPS_ERR_LIST(PPS_ERR_NAME)
#undef PPS_ERR_NAME
    }
    return "PPS_E?";
}

int pps_from_errno(int errnum)
{
    switch (errnum) {
    case 0: return PPS_EOK;
    case ENOMEM: return PPS_ENOMEM;
    case ENOENT: return PPS_ENOTFOUND;
    case EEXIST: return PPS_EEXISTS;
    case EINVAL: return PPS_EINVAL;
    case ENOSPC: case EDQUOT: return PPS_ENOSPACE;
    case ETIMEDOUT: case EAGAIN: return PPS_ETIMEOUT;
    case ECONNREFUSED: case EHOSTUNREACH: case ENETUNREACH: return PPS_ECONNECT;
    case EPIPE: case ECONNRESET: return PPS_ECLOSED;
    case EBUSY: return PPS_EBUSY;
    case ERANGE: case EOVERFLOW: return PPS_ERANGE;
    default: return PPS_EIO;
    }
}

void pps_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

static void *oom_check(void *p, unsigned long size)
{
    if (!p && size) {
        fprintf(stderr, "out of memory allocating %lu bytes\n", size);
        abort();
    }
    return p;
}

void *pps_xmalloc(unsigned long size) { return oom_check(malloc(size), size); }
void *pps_xcalloc(unsigned long count, unsigned long size)
{
    return oom_check(calloc(count, size), count * size);
}
void *pps_xrealloc(void *ptr, unsigned long size) { return oom_check(realloc(ptr, size), size); }
char *pps_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = pps_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

int pps_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}
