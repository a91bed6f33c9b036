/* Unit tests for the cache's pool bookkeeping: the block allocator
 * (best-fit, coalescing, exhaustion), model placement and LRU eviction in
 * cache_store (pins and in-flight fetches are never evicted, whole-model
 * extents first, fallback to per-batch runs), the shared-memory segment
 * (pre-fault, leftover replacement, refusal while a live owner holds it),
 * and the cache message codecs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache/block_alloc.h"
#include "cache/cache_proto.h"
#include "cache/cache_store.h"
#include "cache/shm_pool.h"
#include "common/err.h"

/* ---- block_alloc ---- */

static void check_invariants(const struct block_alloc *a)
{
    uint64_t total = 0;
    for (size_t i = 0; i < a->nextents; i++) {
        assert_true(a->free[i].count > 0);
        if (i > 0) /* sorted and never adjacent (always coalesced) */
            assert_true(a->free[i - 1].start + a->free[i - 1].count < a->free[i].start);
        total += a->free[i].count;
    }
    assert_int_equal(total, a->nfree);
}

static void test_alloc_basic(void **state)
{
    (void)state;
    struct block_alloc a;
    block_alloc_init(&a, 100);
    uint64_t s1, s2, s3;
    assert_int_equal(block_alloc_get(&a, 0, &s1), PPS_EINVAL);
    assert_int_equal(block_alloc_get(&a, 10, &s1), 0);
    assert_int_equal(block_alloc_get(&a, 20, &s2), 0);
    assert_int_equal(block_alloc_get(&a, 70, &s3), 0);
    assert_int_equal(s1, 0);
    assert_int_equal(s2, 10);
    assert_int_equal(s3, 30);
    assert_int_equal(a.nfree, 0);
    uint64_t x;
    assert_int_equal(block_alloc_get(&a, 1, &x), PPS_ENOSPACE);
    /* free the middle, then its neighbours: everything coalesces back */
    block_alloc_put(&a, s2, 20);
    check_invariants(&a);
    assert_int_equal(a.nextents, 1);
    block_alloc_put(&a, s1, 10);
    check_invariants(&a);
    assert_int_equal(a.nextents, 1);
    assert_int_equal(a.free[0].count, 30);
    block_alloc_put(&a, s3, 70);
    check_invariants(&a);
    assert_int_equal(a.nextents, 1);
    assert_int_equal(block_alloc_largest(&a), 100);
    block_alloc_destroy(&a);
}

static void test_alloc_best_fit(void **state)
{
    (void)state;
    struct block_alloc a;
    block_alloc_init(&a, 100);
    uint64_t s[10];
    for (int i = 0; i < 10; i++)
        assert_int_equal(block_alloc_get(&a, 10, &s[i]), 0);
    /* holes of 10 at 0, 20 (merged 20..40 = 20 blocks) and 70 (10) */
    block_alloc_put(&a, s[0], 10);
    block_alloc_put(&a, s[2], 10);
    block_alloc_put(&a, s[3], 10);
    block_alloc_put(&a, s[7], 10);
    check_invariants(&a);
    assert_int_equal(a.nextents, 3);
    uint64_t x;
    /* 15 fits only the 20-block hole */
    assert_int_equal(block_alloc_get(&a, 15, &x), 0);
    assert_int_equal(x, 20);
    /* 10: best fit is an exact hole, the lowest first */
    assert_int_equal(block_alloc_get(&a, 10, &x), 0);
    assert_int_equal(x, 0);
    assert_int_equal(block_alloc_get(&a, 10, &x), 0);
    assert_int_equal(x, 70);
    /* only the 5-block remainder is left */
    assert_int_equal(block_alloc_largest(&a), 5);
    assert_int_equal(block_alloc_get(&a, 6, &x), PPS_ENOSPACE);
    check_invariants(&a);
    block_alloc_destroy(&a);
}

static void test_alloc_random(void **state)
{
    (void)state;
    /* random alloc/free against a shadow bitmap: no block handed out twice */
    enum { N = 1000 };
    struct block_alloc a;
    block_alloc_init(&a, N);
    uint8_t used[N] = {0};
    struct {
        uint64_t start, count;
    } live[400];
    int nlive = 0;
    srand(12345);
    for (int step = 0; step < 20000; step++) {
        if (nlive < 400 && (rand() % 2 || nlive == 0)) {
            uint64_t count = 1 + (uint64_t)(rand() % 40), start;
            if (block_alloc_get(&a, count, &start) == 0) {
                for (uint64_t b = start; b < start + count; b++) {
                    assert_int_equal(used[b], 0);
                    used[b] = 1;
                }
                live[nlive].start = start;
                live[nlive++].count = count;
            } else {
                assert_true(block_alloc_largest(&a) < count);
            }
        } else {
            int i = rand() % nlive;
            block_alloc_put(&a, live[i].start, live[i].count);
            for (uint64_t b = live[i].start; b < live[i].start + live[i].count; b++)
                used[b] = 0;
            live[i] = live[--nlive];
        }
        if (step % 500 == 0)
            check_invariants(&a);
    }
    while (nlive)
        block_alloc_put(&a, live[nlive - 1].start, live[nlive - 1].count), nlive--;
    check_invariants(&a);
    assert_int_equal(a.nfree, N);
    assert_int_equal(a.nextents, 1);
    block_alloc_destroy(&a);
}

/* ---- cache_store ---- */

static int nevicted;
static char evicted[8][CACHE_MODEL_NAME_MAX + 1];

static void on_evict(struct cache_model *m, void *arg)
{
    (void)arg;
    snprintf(evicted[nevicted++ % 8], sizeof evicted[0], "%s", m->name);
}

static struct cache_model *add_ready(struct cache_store *s, const char *name, uint64_t meta,
                                     uint32_t n, const uint64_t *lens)
{
    struct cache_model *m = cache_store_add(s, name);
    assert_non_null(m);
    assert_int_equal(cache_store_place(s, m, meta, n, lens, on_evict, NULL), 0);
    m->state = CACHE_MODEL_READY;
    return m;
}

static void test_store_place_contiguous(void **state)
{
    (void)state;
    struct cache_store s;
    cache_store_init(&s, 64, 4096);
    uint64_t lens[3] = {4096 * 3, 100, 4096 * 2 + 1};
    struct cache_model *m = add_ready(&s, "a", 10, 3, lens);
    /* one extent: meta (1 block), then batches in order (3, 1, 3 blocks) */
    assert_int_equal(m->meta.offset, 0);
    assert_int_equal(m->batches[0].offset, 4096);
    assert_int_equal(m->batches[1].offset, 4 * 4096);
    assert_int_equal(m->batches[2].offset, 5 * 4096);
    assert_int_equal(m->blocks_held, 8);
    assert_int_equal(m->total_size, lens[0] + lens[1] + lens[2]);
    assert_int_equal(cache_store_used_bytes(&s), 8 * 4096);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(m->batches[i].offset % 512, 0); /* tensors usable in place */
    assert_ptr_equal(cache_store_find(&s, "a"), m);
    assert_null(cache_store_find(&s, "b"));
    cache_store_destroy(&s);
}

static void test_store_lru_eviction(void **state)
{
    (void)state;
    struct cache_store s;
    cache_store_init(&s, 30, 4096);
    nevicted = 0;
    uint64_t lens[2] = {4096 * 5, 4096 * 4}; /* + 1 meta block = 10 blocks */
    struct cache_model *a = add_ready(&s, "a", 1, 2, lens);
    struct cache_model *b = add_ready(&s, "b", 1, 2, lens);
    struct cache_model *c = add_ready(&s, "c", 1, 2, lens);
    (void)b;
    assert_int_equal(s.alloc.nfree, 0);
    cache_store_touch(&s, a); /* order, least recent first: b, c, a */
    c->pins = 1;              /* pinned: never a victim */
    struct cache_model *d = cache_store_add(&s, "d");
    assert_int_equal(cache_store_place(&s, d, 1, 2, lens, on_evict, NULL), 0);
    assert_int_equal(nevicted, 1);
    assert_string_equal(evicted[0], "b");
    assert_null(cache_store_find(&s, "b"));
    d->state = CACHE_MODEL_READY;
    /* next victim must skip pinned c and take a (d is more recent) */
    struct cache_model *e = cache_store_add(&s, "e");
    assert_int_equal(cache_store_place(&s, e, 1, 2, lens, on_evict, NULL), 0);
    assert_int_equal(nevicted, 2);
    assert_string_equal(evicted[1], "a");
    assert_non_null(cache_store_find(&s, "c"));
    cache_store_destroy(&s);
}

static void test_store_nospace_without_eviction(void **state)
{
    (void)state;
    struct cache_store s;
    cache_store_init(&s, 20, 4096);
    nevicted = 0;
    uint64_t lens[1] = {4096 * 9};
    struct cache_model *a = add_ready(&s, "a", 1, 1, lens);
    struct cache_model *b = add_ready(&s, "b", 1, 1, lens);
    a->pins = 1;
    b->busy = 1; /* a fetch thread may still write into it */
    struct cache_model *c = cache_store_add(&s, "c");
    /* would fit only by evicting a pinned or busy model: refused, nothing evicted */
    assert_int_equal(cache_store_place(&s, c, 1, 1, lens, on_evict, NULL), PPS_ENOSPACE);
    assert_int_equal(nevicted, 0);
    assert_non_null(cache_store_find(&s, "a"));
    assert_non_null(cache_store_find(&s, "b"));
    /* larger than the whole pool: refused at once */
    uint64_t huge[1] = {4096 * 21};
    assert_int_equal(cache_store_place(&s, c, 0, 1, huge, on_evict, NULL), PPS_ENOSPACE);
    /* unpinned and idle: now evictable */
    a->pins = 0;
    b->busy = 0;
    assert_int_equal(cache_store_place(&s, c, 1, 1, lens, on_evict, NULL), 0);
    assert_int_equal(nevicted, 1);
    cache_store_release(&s, c);
    cache_store_destroy(&s);
}

static void test_store_fragmented_fallback(void **state)
{
    (void)state;
    /* pool of 12 blocks: four 3-block models; evict two non-adjacent ones so
     * free space is two 3-block holes; a model of meta 1 + batches 2, 2 (5
     * blocks) has no single extent and must be placed run by run */
    struct cache_store s;
    cache_store_init(&s, 12, 4096);
    nevicted = 0;
    uint64_t l3[1] = {4096 * 2};
    struct cache_model *m[4];
    char name[8];
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "m%d", i);
        m[i] = add_ready(&s, name, 1, 1, l3);
    }
    cache_store_release(&s, m[0]);
    cache_store_release(&s, m[2]);
    assert_int_equal(s.alloc.nextents, 2);
    m[1]->pins = 1;
    m[3]->pins = 1;
    struct cache_model *x = cache_store_add(&s, "x");
    /* 2 + 2 + 2 blocks in two 3-block holes: cannot fit; rolled back */
    uint64_t lens[2] = {4096 * 2, 4096 * 2};
    assert_int_equal(cache_store_place(&s, x, 4097, 2, lens, on_evict, NULL), PPS_ENOSPACE);
    assert_int_equal(s.alloc.nfree, 6);
    assert_int_equal(s.alloc.nextents, 2);
    uint64_t lens2[2] = {4096 * 2, 4096 * 1};
    assert_int_equal(cache_store_place(&s, x, 100, 2, lens2, on_evict, NULL), 0);
    assert_int_equal(nevicted, 0);
    /* every run inside the pool, none overlapping a pinned model */
    uint64_t runs[3][2] = {{x->meta.block, x->meta.nblocks},
                           {x->batches[0].block, x->batches[0].nblocks},
                           {x->batches[1].block, x->batches[1].nblocks}};
    for (int i = 0; i < 3; i++)
        for (int j = 1; j < 4; j += 2) {
            uint64_t ps = m[j]->meta.block, pe = ps + m[j]->blocks_held;
            assert_true(runs[i][0] + runs[i][1] <= ps || runs[i][0] >= pe);
        }
    assert_int_equal(s.alloc.nfree, 2);
    cache_store_destroy(&s);
}

/* ---- shm_pool ---- */

static void test_shm_name(void **state)
{
    (void)state;
    char out[SHM_POOL_NAME_MAX + 2];
    assert_int_equal(shm_pool_normalize_name("pool", out), 0);
    assert_string_equal(out, "/pool");
    assert_int_equal(shm_pool_normalize_name("/pool", out), 0);
    assert_string_equal(out, "/pool");
    assert_int_equal(shm_pool_normalize_name("", out), PPS_EINVAL);
    assert_int_equal(shm_pool_normalize_name("/", out), PPS_EINVAL);
    assert_int_equal(shm_pool_normalize_name("a/b", out), PPS_EINVAL);
}

static void test_shm_create_and_leftover(void **state)
{
    (void)state;
    char name[64];
    snprintf(name, sizeof name, "/pipeps-unit-%d", (int)getpid());
    struct shm_pool p;
    assert_int_equal(shm_pool_create(&p, name, 1 << 20), 0);
    assert_int_equal(p.replaced_leftover, 0);
    assert_true(p.prefault_seconds >= 0);
    memset(p.base, 0xAB, 1 << 20);

    /* a live owner holds it: a second cache is refused */
    struct shm_pool q;
    assert_int_equal(shm_pool_create(&q, name, 1 << 20), PPS_EBUSY);
    /* and the refusal did not remove the owner's segment */
    int fd = shm_open(name, O_RDONLY, 0);
    assert_true(fd >= 0);
    const uint8_t *ro = mmap(NULL, 1 << 20, PROT_READ, MAP_SHARED, fd, 0);
    assert_true(ro != MAP_FAILED);
    assert_int_equal(ro[12345], 0xAB);
    munmap((void *)ro, 1 << 20);
    close(fd);

    /* a crashed owner: a child creates the segment and dies without cleanup */
    char name2[64];
    snprintf(name2, sizeof name2, "/pipeps-unit-crash-%d", (int)getpid());
    pid_t pid = fork();
    if (pid == 0) {
        struct shm_pool c;
        _exit(shm_pool_create(&c, name2, 64 << 10) == 0 ? 0 : 1);
    }
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    struct stat st;
    char path[96];
    snprintf(path, sizeof path, "/dev/shm%s", name2);
    assert_int_equal(stat(path, &st), 0); /* left behind */
    assert_int_equal(shm_pool_create(&q, name2, 128 << 10), 0);
    assert_int_equal(q.replaced_leftover, 1);
    assert_int_equal(q.size, 128 << 10);
    shm_pool_close(&q, 1);
    assert_int_not_equal(stat(path, &st), 0);

    shm_pool_close(&p, 1);
    snprintf(path, sizeof path, "/dev/shm%s", name);
    assert_int_not_equal(stat(path, &st), 0);
}

/* ---- cache_proto ---- */

static void test_proto_roundtrip(void **state)
{
    (void)state;
    struct wbuf wb;
    wbuf_init(&wb);
    struct cache_meta_msg m = {.generation = 7, .total_size = 1 << 20, .nbatches = 3,
                               .offset = 8192, .len = 100};
    strcpy(m.model, "resnet152");
    cache_proto_encode_meta(&wb, &m);
    struct cache_meta_msg m2;
    assert_int_equal(cache_proto_decode_meta(wb.data, wb.len, &m2), 0);
    assert_string_equal(m2.model, "resnet152");
    assert_int_equal(m2.offset, 8192);
    assert_int_equal(m2.nbatches, 3);
    /* truncated and over-long payloads are refused */
    assert_int_equal(cache_proto_decode_meta(wb.data, wb.len - 1, &m2), PPS_EPROTO);
    wbuf_u8(&wb, 0);
    assert_int_equal(cache_proto_decode_meta(wb.data, wb.len, &m2), PPS_EPROTO);

    struct wire_model_bytes models[2] = {{"a", 10}, {"b", 20}};
    struct cache_register_msg r = {.server_port = 9000, .capacity = 1 << 30, .block_size = 4096,
                                   .used = 30, .nmodels = 2, .models = models};
    strcpy(r.server_addr, "127.0.0.1");
    strcpy(r.shm_name, "/pool");
    wbuf_reset(&wb);
    cache_proto_encode_register(&wb, &r);
    struct cache_register_msg r2;
    assert_int_equal(cache_proto_decode_register(wb.data, wb.len, &r2), 0);
    assert_int_equal(r2.nmodels, 2);
    assert_string_equal(r2.models[1].model, "b");
    assert_int_equal(r2.models[1].bytes, 20);
    free(r2.models);
    /* a count that the payload cannot hold is refused before allocating */
    store_le32(wb.data + wb.len - (2 * (4 + 1 + 8)) - 4, 0x7fffffff);
    assert_int_equal(cache_proto_decode_register(wb.data, wb.len, &r2), PPS_EPROTO);

    char name[CACHE_MODEL_NAME_MAX + 1];
    wbuf_reset(&wb);
    cache_proto_encode_model(&wb, "has space");
    assert_int_equal(cache_proto_decode_model(wb.data, wb.len, name), PPS_EINVAL);
    wbuf_reset(&wb);
    cache_proto_encode_model(&wb, "");
    assert_int_equal(cache_proto_decode_model(wb.data, wb.len, name), PPS_EINVAL);
    wbuf_reset(&wb);
    wbuf_u32(&wb, 1000); /* claims more bytes than present */
    assert_int_equal(cache_proto_decode_model(wb.data, wb.len, name), PPS_EPROTO);
    wbuf_free(&wb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_basic),
        cmocka_unit_test(test_alloc_best_fit),
        cmocka_unit_test(test_alloc_random),
        cmocka_unit_test(test_store_place_contiguous),
        cmocka_unit_test(test_store_lru_eviction),
        cmocka_unit_test(test_store_nospace_without_eviction),
        cmocka_unit_test(test_store_fragmented_fallback),
        cmocka_unit_test(test_shm_name),
        cmocka_unit_test(test_shm_create_and_leftover),
        cmocka_unit_test(test_proto_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
