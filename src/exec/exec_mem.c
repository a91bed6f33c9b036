/* exec_mem: a process-wide list of idle, faulted-in blocks (see exec_mem.h).
 * Few blocks live at once (two or three per model), so a short array
 * searched linearly is enough. */
#include "exec/exec_mem.h"

#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#define MAX_IDLE 64

struct idle_block {
    void *p;
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
    /* Best fit, but not a block more than twice too big (it would hold
     * memory another model could use). */
    int best = -1;
    for (int i = 0; i < nidle; i++)
        if (idle[i].size >= want && idle[i].size / 2 <= want &&
            (best < 0 || idle[i].size < idle[best].size))
            best = i;
    if (best >= 0) {
        void *p = idle[best].p;
        *size = idle[best].size;
        idle_bytes -= idle[best].size;
        idle[best] = idle[--nidle];
        pthread_mutex_unlock(&mem_lock);
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
    idle[nidle].p = p;
    idle[nidle].size = size;
    idle[nidle].age = ++clock_ticks;
    nidle++;
    idle_bytes += size;
    pthread_mutex_unlock(&mem_lock);
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
