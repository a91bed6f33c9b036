/* Unit tests for the load balancer's placement (lb_place): the basic
 * policy's four passes in registration order, room made by LRU eviction
 * that spares models with requests in flight (and waits, evicting nothing,
 * when it cannot), models pinned by a resident server, the cache's events
 * keeping the picture exact, the cache-blind baselines, fastest_start's
 * estimates, and the balancer's block in a relayed response. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "lb/lb_place.h"
#include "server/server_proto.h"

static struct lb_model *sized(struct lb_place *pl, const char *name, uint64_t size)
{
    struct lb_model *m = lb_place_model(pl, name);
    m->size = size;
    m->size_state = LB_SIZE_KNOWN;
    return m;
}

static void load(struct lb_place *pl, struct lb_machine *m, const char *name, uint64_t bytes)
{
    lb_place_cache_event(pl, m, 1, name, bytes, 0, 0);
}

static struct lb_server *ready_server(struct lb_place *pl, const char *addr, struct lb_machine *m)
{
    struct lb_server *s = lb_place_add_server(pl, addr, 7000, m);
    s->ready = 1;
    return s;
}

static void test_policy_names(void **state)
{
    (void)state;
    enum lb_policy p;
    assert_int_equal(lb_policy_parse("basic", &p), 0);
    assert_int_equal(p, LB_POLICY_BASIC);
    assert_int_equal(lb_policy_parse("fastest_start", &p), 0);
    assert_int_equal(p, LB_POLICY_FASTEST_START);
    assert_int_equal(lb_policy_parse("Basic", &p), PPS_EINVAL);
    assert_string_equal(lb_policy_name(LB_POLICY_LEAST_LOADED), "least_loaded");
}

/* The seed's order: cached+idle, idle, cached+<2, least loaded under the cap. */
static void test_basic_passes(void **state)
{
    (void)state;
    struct lb_place pl;
    lb_place_init(&pl, LB_POLICY_BASIC, 2.0, 4);
    struct lb_machine *m0 = lb_place_machine(&pl, "10.0.0.1", 1), *m1 = lb_place_machine(&pl, "10.0.0.2", 1);
    lb_place_cache_register(&pl, m0, 1000, 1, 0, NULL, NULL, 0);
    lb_place_cache_register(&pl, m1, 1000, 1, 0, NULL, NULL, 0);
    struct lb_server *s1 = ready_server(&pl, "10.0.0.2", m1); /* registered first */
    struct lb_server *s0 = ready_server(&pl, "10.0.0.1", m0);
    struct lb_model *x = sized(&pl, "x", 100);
    load(&pl, m0, "x", 100);
    struct lb_choice ch;
    /* The second request goes to idle s1 and sends m1 a CACHE_IN, so from
     * then on both machines count as caching x. */
    int expect_rule[] = {LB_RULE_CACHED_IDLE, LB_RULE_IDLE, LB_RULE_CACHED_LIGHT, LB_RULE_CACHED_LIGHT,
                         LB_RULE_LEAST_LOADED_CAP, LB_RULE_LEAST_LOADED_CAP, LB_RULE_LEAST_LOADED_CAP,
                         LB_RULE_LEAST_LOADED_CAP};
    struct lb_server *expect_server[] = {s0, s1, s1, s0, s1, s0, s1, s0};
    for (int i = 0; i < 8; i++) {
        assert_int_equal(lb_place_choose(&pl, x, &ch), 0);
        assert_ptr_equal(ch.server, expect_server[i]);
        assert_int_equal(ch.rule, expect_rule[i]);
        lb_place_dispatched(&pl, ch.server, x, ch.estimate_ms);
    }
    /* Both at the cap of 4: the request waits. */
    assert_int_equal(lb_place_choose(&pl, x, &ch), 1);
    assert_int_equal(pl.decisions[LB_RULE_LEAST_LOADED_CAP], 4);
    assert_int_equal(pl.decisions[LB_RULE_CACHED_IDLE], 1);
    /* A completion frees a slot. */
    lb_place_completed(&pl, s1, x, 0, 1, LB_PLACED_NONE, 10, 0);
    assert_int_equal(lb_place_choose(&pl, x, &ch), 0);
    assert_ptr_equal(ch.server, s1);
    /* A server not yet connected is never chosen. */
    lb_place_free(&pl);
}

/* Room for size x amplifier: least recently used first, never a model with
 * a request in flight; wait without evicting anything when impossible. */
static void test_basic_makes_room_lru(void **state)
{
    (void)state;
    struct lb_place pl;
    lb_place_init(&pl, LB_POLICY_BASIC, 2.0, 4);
    struct lb_machine *m = lb_place_machine(&pl, "10.0.0.1", 1);
    lb_place_cache_register(&pl, m, 1000, 1, 0, NULL, NULL, 0);
    struct lb_server *s = ready_server(&pl, "10.0.0.1", m);
    struct lb_model *a = sized(&pl, "a", 150), *b = sized(&pl, "b", 150), *c = sized(&pl, "c", 200),
                    *d = sized(&pl, "d", 300);
    load(&pl, m, "a", 300); /* oldest */
    load(&pl, m, "b", 300);
    assert_int_equal(lb_machine_used(m), 600);
    struct lb_choice ch;
    /* c needs 400: 600 + 400 fits exactly, nothing evicted. */
    assert_int_equal(lb_place_choose(&pl, c, &ch), 0);
    assert_int_equal(ch.nvictims, 0);
    assert_true(ch.cache_in);
    assert_int_equal(ch.placed, LB_PLACED_NONE);
    assert_int_equal(lb_machine_used(m), 1000);
    lb_place_dispatched(&pl, s, c, 0);
    lb_place_completed(&pl, s, c, 0, 1, LB_PLACED_NONE, 5, 0);
    /* The cache reports c loaded at its real size. */
    load(&pl, m, "c", 200);
    assert_int_equal(lb_machine_used(m), 800);
    /* d needs 600: evict a (LRU), then b. */
    assert_int_equal(lb_place_choose(&pl, d, &ch), 0);
    assert_int_equal(ch.nvictims, 2);
    assert_ptr_equal(ch.victims[0], a);
    assert_ptr_equal(ch.victims[1], b);
    assert_int_equal(lb_machine_used(m), 200 + 600);
    assert_int_equal(lb_machine_entry(m, a)->state, LB_ENTRY_EVICTING);
    /* The cache confirms a, refuses b (pinned elsewhere): b is back. */
    lb_place_cache_event(&pl, m, 2, "a", 0, 0, 0);
    lb_place_cache_out_refused(&pl, m, b);
    assert_int_equal(lb_machine_entry(m, b)->state, LB_ENTRY_LOADED);
    assert_false(lb_machine_holds(m, a));
    lb_place_free(&pl);
}

static void test_basic_spares_models_in_flight(void **state)
{
    (void)state;
    struct lb_place pl;
    lb_place_init(&pl, LB_POLICY_BASIC, 1.0, 4);
    struct lb_machine *m = lb_place_machine(&pl, "10.0.0.1", 1);
    lb_place_cache_register(&pl, m, 1000, 1, 0, NULL, NULL, 0);
    struct lb_server *s = ready_server(&pl, "10.0.0.1", m);
    struct lb_model *a = sized(&pl, "a", 500), *b = sized(&pl, "b", 500), *c = sized(&pl, "c", 600);
    load(&pl, m, "a", 500);
    load(&pl, m, "b", 500);
    lb_place_dispatched(&pl, s, a, 0); /* a and b in use */
    lb_place_dispatched(&pl, s, b, 0);
    struct lb_choice ch;
    assert_int_equal(lb_place_choose(&pl, c, &ch), 1); /* must wait */
    assert_int_equal(lb_machine_entry(m, a)->state, LB_ENTRY_LOADED);
    assert_int_equal(lb_machine_entry(m, b)->state, LB_ENTRY_LOADED);
    assert_false(lb_machine_holds(m, c));
    /* b's request ends: only b is evicted (a is still in use). */
    lb_place_completed(&pl, s, b, 0, 1, LB_PLACED_CACHE, 5, 0);
    assert_int_equal(lb_place_choose(&pl, c, &ch), 1); /* 500 + 600 > 1000 still */
    lb_place_completed(&pl, s, a, 0, 1, LB_PLACED_CACHE, 5, 0);
    assert_int_equal(lb_place_choose(&pl, c, &ch), 0);
    assert_int_equal(ch.nvictims, 2); /* the older one first */
    assert_ptr_equal(ch.victims[0], a);
    assert_ptr_equal(ch.victims[1], b);
    lb_place_free(&pl);
}

/* A model resident in a server is pinned at its cache: not a victim; if
 * only such models stand in the way, the request goes without a CACHE_IN. */
static void test_resident_models_are_not_evicted(void **state)
{
    (void)state;
    struct lb_place pl;
    lb_place_init(&pl, LB_POLICY_BASIC, 1.0, 4);
    struct lb_machine *m = lb_place_machine(&pl, "10.0.0.1", 1);
    lb_place_cache_register(&pl, m, 1000, 1, 0, NULL, NULL, 0);
    struct lb_server *s = ready_server(&pl, "10.0.0.1", m);
    struct lb_model *b = sized(&pl, "b", 800);
    load(&pl, m, "a", 600);
    lb_place_server_resident(&pl, s, "a", 1);
    struct lb_choice ch;
    assert_int_equal(lb_place_choose(&pl, b, &ch), 0);
    assert_int_equal(ch.nvictims, 0);
    assert_false(ch.cache_in);
    lb_place_server_resident(&pl, s, "a", 0);
    assert_int_equal(lb_place_choose(&pl, b, &ch), 0);
    assert_int_equal(ch.nvictims, 1);
    assert_true(ch.cache_in);
    lb_place_free(&pl);
}

static void test_cache_events_register_and_loss(void **state)
{
    (void)state;
    struct lb_place pl;
    lb_place_init(&pl, LB_POLICY_BASIC, 2.0, 4);
    struct lb_machine *m = lb_place_machine(&pl, "10.0.0.1", 1);
    assert_ptr_equal(lb_place_machine(&pl, "10.0.0.1", 1), m);
    const char *names[] = {"a", "b"};
    uint64_t bytes[] = {100, 200};
    lb_place_cache_register(&pl, m, 1000, 64, 300, names, bytes, 2);
    assert_int_equal(lb_machine_used(m), 300);
    struct lb_model *a = lb_place_find_model(&pl, "a");
    assert_non_null(a);
    assert_true(lb_machine_holds(m, a));
    lb_place_cache_event(&pl, m, 2, "a", 0, 200, 1000);
    assert_int_equal(lb_machine_used(m), 200);
    lb_place_cache_event(&pl, m, 3, "zz", 0, 200, 1000); /* a failed fetch nobody asked for */
    assert_int_equal(lb_machine_used(m), 200);
    assert_int_equal(m->fetch_failures, 1);
    lb_place_cache_lost(&pl, m);
    assert_int_equal(lb_machine_used(m), 0);
    assert_false(m->cache_connected);
    /* Registering again lists the contents anew. */
    lb_place_cache_register(&pl, m, 1000, 64, 100, names, bytes, 1);
    assert_true(lb_machine_holds(m, a));
    assert_int_equal(lb_machine_used(m), 100);
    /* Unknown names a client made up are forgotten once unused. */
    struct lb_model *junk = lb_place_model(&pl, "junk");
    assert_int_equal(lb_place_forget_model(&pl, junk), 0);
    assert_null(lb_place_find_model(&pl, "junk"));
    assert_int_equal(lb_place_forget_model(&pl, a), PPS_EBUSY);
    lb_place_free(&pl);
}

static void test_round_robin_and_least_loaded(void **state)
{
    (void)state;
    struct lb_place pl;
    lb_place_init(&pl, LB_POLICY_ROUND_ROBIN, 2.0, 2);
    struct lb_machine *m = lb_place_machine(&pl, "10.0.0.1", 1);
    struct lb_server *s[3];
    for (int i = 0; i < 3; i++)
        s[i] = ready_server(&pl, "10.0.0.1", m);
    struct lb_model *x = sized(&pl, "x", 10);
    struct lb_choice ch;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(lb_place_choose(&pl, x, &ch), 0);
        assert_ptr_equal(ch.server, s[i % 3]);
        assert_int_equal(ch.rule, LB_RULE_ROUND_ROBIN);
        assert_int_equal(ch.nvictims + ch.cache_in, 0); /* cache-blind */
        lb_place_dispatched(&pl, ch.server, x, 0);
    }
    assert_int_equal(lb_place_choose(&pl, x, &ch), 1); /* all at the cap of 2 */
    lb_place_free(&pl);

    lb_place_init(&pl, LB_POLICY_LEAST_LOADED, 2.0, 4);
    m = lb_place_machine(&pl, "10.0.0.1", 1);
    for (int i = 0; i < 3; i++)
        s[i] = ready_server(&pl, "10.0.0.1", m);
    x = sized(&pl, "x", 10);
    lb_place_dispatched(&pl, s[0], x, 0);
    lb_place_dispatched(&pl, s[1], x, 0);
    assert_int_equal(lb_place_choose(&pl, x, &ch), 0);
    assert_ptr_equal(ch.server, s[2]);
    lb_place_remove_server(&pl, s[2]);
    assert_int_equal(lb_place_choose(&pl, x, &ch), 0);
    assert_ptr_equal(ch.server, s[0]); /* tie: registration order */
    lb_place_free(&pl);
}

/* fastest_start waits behind a short queue on a server holding the model
 * rather than start it cold elsewhere, and learns from what it sees. */
static void test_fastest_start(void **state)
{
    (void)state;
    struct lb_place pl;
    lb_place_init(&pl, LB_POLICY_FASTEST_START, 2.0, 4);
    struct lb_machine *m0 = lb_place_machine(&pl, "10.0.0.1", 1), *m1 = lb_place_machine(&pl, "10.0.0.2", 1);
    lb_place_cache_register(&pl, m0, 1u << 30, 1, 0, NULL, NULL, 0);
    lb_place_cache_register(&pl, m1, 1u << 30, 1, 0, NULL, NULL, 0);
    struct lb_server *s0 = ready_server(&pl, "10.0.0.1", m0), *s1 = ready_server(&pl, "10.0.0.2", m1);
    struct lb_model *x = sized(&pl, "x", 200u << 20);
    lb_place_server_resident(&pl, s0, "x", 1);
    x->t_resident = 20;
    x->t_storage = 400;
    struct lb_choice ch;
    assert_int_equal(lb_place_choose(&pl, x, &ch), 0);
    assert_ptr_equal(ch.server, s0);
    assert_int_equal(ch.rule, LB_RULE_FASTEST_START);
    assert_true(ch.placed == LB_PLACED_RESIDENT);
    lb_place_dispatched(&pl, s0, x, ch.estimate_ms);
    lb_place_dispatched(&pl, s0, x, ch.estimate_ms);
    lb_place_dispatched(&pl, s0, x, ch.estimate_ms);
    /* 3 x 20 ms ahead + 20 < 400 cold: still s0. */
    assert_int_equal(lb_place_choose(&pl, x, &ch), 0);
    assert_ptr_equal(ch.server, s0);
    /* With the model in m1's cache and cheap there, s1 wins. */
    load(&pl, m1, "x", 200u << 20);
    x->t_cache = 25;
    assert_int_equal(lb_place_choose(&pl, x, &ch), 0);
    assert_ptr_equal(ch.server, s1);
    assert_int_equal(ch.placed, LB_PLACED_CACHE);
    assert_true(lb_place_estimate(&pl, s1, x) == 25);
    /* Learning: answers move the estimates. */
    lb_place_completed(&pl, s0, x, 20, 1, LB_PLACED_RESIDENT, 30, 0);
    assert_true(x->t_resident > 20 && x->t_resident < 30);
    lb_place_completed(&pl, s0, x, 20, 1, LB_PLACED_NONE, 300, 100);
    assert_true(pl.fetch_bytes_per_ms > 0);
    lb_place_free(&pl);
}

static void test_lb_block_in_a_response(void **state)
{
    (void)state;
    struct wbuf wb;
    wbuf_init(&wb);
    struct infer_timing t = {.queue_us = 1, .total_us = 9, .source = 2};
    /* A server's head, then the balancer's block appended to the timing. */
    infer_encode_response_head(&wb, &t, 0);
    uint32_t tlen = load_le32(wb.data);
    struct wbuf out;
    wbuf_init(&out);
    wbuf_u32(&out, tlen + INFER_LB_BLOCK_SIZE);
    wbuf_put(&out, wb.data + 4, tlen);
    struct infer_lb_block b = {.attempts = 2, .rule = 3, .placed = 1, .lb_queue_us = 77, .lb_total_us = 99,
                               .server_id = 4, .machine_id = 1};
    strcpy(b.server, "127.0.0.2:7000");
    uint8_t raw[INFER_LB_BLOCK_SIZE];
    infer_encode_lb_block(raw, &b);
    wbuf_put(&out, raw, sizeof raw);
    wbuf_put(&out, wb.data + 4 + tlen, wb.len - 4 - tlen);
    struct infer_response r;
    assert_int_equal(infer_decode_response(out.data, out.len, &r, NULL, 0), 0);
    assert_true(r.has_lb);
    assert_int_equal(r.lb.attempts, 2);
    assert_int_equal(r.lb.rule, 3);
    assert_int_equal(r.lb.lb_total_us, 99);
    assert_string_equal(r.lb.server, "127.0.0.2:7000");
    assert_int_equal(r.timing.total_us, 9);
    assert_int_equal(r.timing.source, 2);
    /* Without the block: no balancer. */
    assert_int_equal(infer_decode_response(wb.data, wb.len, &r, NULL, 0), 0);
    assert_false(r.has_lb);
    wbuf_free(&wb);
    wbuf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_names),
        cmocka_unit_test(test_basic_passes),
        cmocka_unit_test(test_basic_makes_room_lru),
        cmocka_unit_test(test_basic_spares_models_in_flight),
        cmocka_unit_test(test_resident_models_are_not_evicted),
        cmocka_unit_test(test_cache_events_register_and_loss),
        cmocka_unit_test(test_round_robin_and_least_loaded),
        cmocka_unit_test(test_fastest_start),
        cmocka_unit_test(test_lb_block_in_a_response),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
