/* shm_pool: the cache's POSIX shared-memory segment (/dev/shm/NAME).
 *
 * The cache creates the segment, sizes it, reserves its pages (fallocate,
 * so a full /dev/shm fails now rather than with SIGBUS later) and writes
 * every page once so no fetch ever pays a first-touch fault. Servers map it
 * read-only (cache_client.h) and address it by offsets the cache sends them;
 * the segment holds only data, all control state stays in the cache.
 *
 * Ownership is an exclusive flock() on the segment's descriptor, held for
 * the cache's lifetime: a segment that exists but whose lock can be taken
 * was left by a crashed cache and is replaced; one whose lock is held
 * belongs to a live cache and start-up fails with PPS_EBUSY. */
#ifndef PIPEPS_SHM_POOL_H
#define PIPEPS_SHM_POOL_H

#include <stdint.h>

#define SHM_POOL_NAME_MAX 200

struct shm_pool {
    char name[SHM_POOL_NAME_MAX + 2];  /* with the leading '/' */
    int fd;
    uint8_t *base;                      /* read-write mapping */
    uint64_t size;
    int replaced_leftover;              /* 1 if a crashed cache's segment was removed */
    double prefault_seconds;
};

/* "pool" or "/pool" -> "/pool" in out (room for SHM_POOL_NAME_MAX + 2).
 * PPS_EINVAL for an empty name, one with another '/', or too long. */
int shm_pool_normalize_name(const char *name, char *out);
/* Create and pre-fault a segment of size bytes (> 0, a multiple of the page
 * size). PPS_EBUSY if a live cache owns the name, PPS_ENOSPACE if
 * /dev/shm cannot hold it. */
int shm_pool_create(struct shm_pool *p, const char *name, uint64_t size);
/* Unmap, and (remove = 1) unlink the segment: clean shutdown. */
void shm_pool_close(struct shm_pool *p, int remove);

#endif
