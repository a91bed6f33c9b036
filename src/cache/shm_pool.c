/* shm_pool: create, lock, reserve and pre-fault the pool; see shm_pool.h.
 *
 * Easy to get wrong: the leftover check and the lock must apply to the same
 * inode. We take the lock on the descriptor we created with O_EXCL, so a
 * cache that starts while another removes a leftover never locks a segment
 * that is about to be unlinked under it. */
#include "cache/shm_pool.h"
#include "common/err.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int shm_pool_normalize_name(const char *name, char *out)
{
    if (name[0] == '/')
        name++;
    size_t n = strlen(name);
    if (n == 0 || n > SHM_POOL_NAME_MAX || strchr(name, '/') || strcmp(name, ".") == 0 ||
        strcmp(name, "..") == 0)
        return PPS_EINVAL;
    out[0] = '/';
    memcpy(out + 1, name, n + 1);
    return 0;
}

/* A segment under our name exists: replace it if no live cache holds it. */
static int remove_leftover(const char *name)
{
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0)
        return errno == ENOENT ? 0 : pps_from_errno(errno);
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK) {
            log_error("shared memory %s is in use by a running cache", name);
            return PPS_EBUSY;
        }
        return pps_from_errno(e);
    }
    struct stat st;
    long long sz = fstat(fd, &st) == 0 ? (long long)st.st_size : -1;
    log_warn("removing leftover shared memory %s (%lld bytes) of a cache that did not shut down "
             "cleanly",
             name, sz);
    shm_unlink(name);
    close(fd); /* drops the lock; the unlinked inode is freed with the last mapping */
    return 0;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int shm_pool_create(struct shm_pool *p, const char *name, uint64_t size)
{
    memset(p, 0, sizeof *p);
    p->fd = -1;
    long page = sysconf(_SC_PAGESIZE);
    if (size == 0 || size % (uint64_t)page)
        return PPS_EINVAL;
    int rc = shm_pool_normalize_name(name, p->name);
    if (rc)
        return rc;
    int fd = -1;
    for (int attempt = 0; attempt < 3 && fd < 0; attempt++) {
        fd = shm_open(p->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0)
            break;
        if (errno != EEXIST)
            return pps_from_errno(errno);
        rc = remove_leftover(p->name);
        if (rc)
            return rc;
        p->replaced_leftover = 1;
    }
    if (fd < 0)
        return PPS_EBUSY;
    /* Ours until we exit; a crash releases it, which is how a successor
     * recognises the leftover. */
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        rc = pps_from_errno(errno);
        goto fail_unlink;
    }
    if (ftruncate(fd, (off_t)size) < 0) {
        rc = pps_from_errno(errno);
        goto fail_unlink;
    }
    double t0 = now_seconds();
    int e = posix_fallocate(fd, 0, (off_t)size);
    if (e) {
        rc = e == ENOSPC ? PPS_ENOSPACE : pps_from_errno(e);
        log_error("cannot reserve %llu bytes of shared memory for %s: %s",
                  (unsigned long long)size, p->name, strerror(e));
        goto fail_unlink;
    }
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = pps_from_errno(errno);
        goto fail_unlink;
    }
    /* One write per page maps every page into our page table now, so the
     * fetch path receives straight into resident memory. */
    volatile uint8_t *b = base;
    for (uint64_t off = 0; off < size; off += (uint64_t)page)
        b[off] = 0;
    p->prefault_seconds = now_seconds() - t0;
    p->fd = fd;
    p->base = base;
    p->size = size;
    return 0;

fail_unlink:
    shm_unlink(p->name);
    close(fd);
    return rc;
}

void shm_pool_close(struct shm_pool *p, int remove)
{
    if (p->base)
        munmap(p->base, p->size);
    if (remove && p->name[0])
        shm_unlink(p->name);
    if (p->fd >= 0)
        close(p->fd);
    p->base = NULL;
    p->fd = -1;
}
