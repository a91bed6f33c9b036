/* exec_mem: a process-wide list of idle, faulted-in blocks (see exec_mem.h).
 * Few blocks live at once (two or three per model), so a short array
 * searched linearly is enough. */
#include "exec/exec_mem.h"

#include "common/err.h"

#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#define MAX_IDLE 64

struct idle_block {
    uint8_t *p;
    uint64_t size;
    uint64_t age; /* put order: smaller is older */
};

static pthread_mutex_t mem_lock = PTHREAD_MUTEX_INITIALIZER;
static struct idle_block idle[MAX_IDLE];
static int nidle;
static uint64_t idle_bytes, keep_bytes = EXEC_MEM_DEFAULT_KEEP, clock_ticks;

static uint64_t page_round(uint64_t n) { return (n + 4095) & ~(uint64_t)4095; }

static void drop(int i) /* under mem_lock */
{
    munmap(idle[i].p, idle[i].size);
    idle_bytes -= idle[i].size;
    idle[i] = idle[--nidle];
}

void *exec_mem_get(uint64_t bytes, uint64_t *size, int *faulted)
{
    uint64_t want = page_round(bytes ? bytes : 1);
    pthread_mutex_lock(&mem_lock);
    /* Best fit; a bigger block is split and its tail stays idle. */
    int best = -1;
    for (int i = 0; i < nidle; i++)
        if (idle[i].size >= want && (best < 0 || idle[i].size < idle[best].size))
            best = i;
    if (best >= 0) {
        uint8_t *p = idle[best].p;
        if (idle[best].size > want) {
            idle[best].p = p + want;
            idle[best].size -= want;
        } else {
            idle[best] = idle[--nidle];
        }
        idle_bytes -= want;
        pthread_mutex_unlock(&mem_lock);
        *size = want;
        *faulted = 1;
        return p;
    }
    pthread_mutex_unlock(&mem_lock);
    void *p = mmap(NULL, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    *size = want;
    *faulted = 0;
    return p;
}

void exec_mem_put(void *p, uint64_t size)
{
    if (!p) return;
    pthread_mutex_lock(&mem_lock);
    if (size > keep_bytes) {
        pthread_mutex_unlock(&mem_lock);
        munmap(p, size);
        return;
    }
    while (nidle > 0 && (idle_bytes + size > keep_bytes || nidle == MAX_IDLE)) {
        int oldest = 0;
        for (int i = 1; i < nidle; i++)
            if (idle[i].age < idle[oldest].age) oldest = i;
        drop(oldest);
    }
    /* Join with idle neighbours (pieces of a split block come back). */
    uint8_t *b = p;
    for (int i = 0; i < nidle;) {
        if (idle[i].p + idle[i].size == b || b + size == idle[i].p) {
            if (idle[i].p < b) b = idle[i].p;
            size += idle[i].size;
            idle_bytes -= idle[i].size;
            idle[i] = idle[--nidle];
            i = 0;
        } else {
            i++;
        }
    }
    idle[nidle].p = b;
    idle[nidle].size = size;
    idle[nidle].age = ++clock_ticks;
    nidle++;
    idle_bytes += size;
    pthread_mutex_unlock(&mem_lock);
}

int exec_mem_reserve(uint64_t bytes)
{
    uint64_t n = page_round(bytes);
    if (!bytes) return 0;
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return PPS_ENOMEM;
#ifdef MADV_POPULATE_WRITE
    if (madvise(p, n, MADV_POPULATE_WRITE) != 0)
#endif
        for (uint64_t o = 0; o < n; o += 4096) ((volatile uint8_t *)p)[o] = 0;
    pthread_mutex_lock(&mem_lock);
    if (keep_bytes < n) keep_bytes = n;
    pthread_mutex_unlock(&mem_lock);
    exec_mem_put(p, n);
    return 0;
}

void exec_mem_set_keep(uint64_t bytes)
{
    pthread_mutex_lock(&mem_lock);
    keep_bytes = bytes;
    while (nidle > 0 && idle_bytes > keep_bytes) {
        int oldest = 0;
        for (int i = 1; i < nidle; i++)
            if (idle[i].age < idle[oldest].age) oldest = i;
        drop(oldest);
    }
    pthread_mutex_unlock(&mem_lock);
}

uint64_t exec_mem_idle_bytes(void)
{
    pthread_mutex_lock(&mem_lock);
    uint64_t n = idle_bytes;
    pthread_mutex_unlock(&mem_lock);
    return n;
}
