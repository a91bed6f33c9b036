/* lb_place: placement state and policies; see lb_place.h. */
#include "lb/lb_place.h"
#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EMA_ALPHA 0.3
/* Until a model has been seen, fastest_start guesses from its size. */
#define GUESS_COMPUTE_BYTES_PER_MS 5e6   /* resident run: ~5 MB of weights per ms */
#define GUESS_CACHE_BYTES_PER_MS 4e6     /* extra for a cold start from the local cache */
#define GUESS_FETCH_BYTES_PER_MS 1e6     /* storage fetch, until one has been measured */
#define GUESS_FIXED_MS 2.0

static const char *const policy_names[] = {"basic", "fastest_start", "round_robin", "least_loaded"};

int lb_policy_parse(const char *name, enum lb_policy *out)
{
    for (size_t i = 0; i < sizeof policy_names / sizeof policy_names[0]; i++)
        if (strcmp(name, policy_names[i]) == 0) {
            *out = (enum lb_policy)i;
            return 0;
        }
    return PPS_EINVAL;
}

const char *lb_policy_name(enum lb_policy p)
{
    return (unsigned)p < sizeof policy_names / sizeof policy_names[0] ? policy_names[p] : "?";
}

const char *lb_policy_list(void) { return "basic, fastest_start, round_robin, least_loaded"; }

void lb_place_init(struct lb_place *pl, enum lb_policy policy, double amplifier, int max_outstanding)
{
    memset(pl, 0, sizeof *pl);
    pl->policy = policy;
    pl->amplifier = amplifier;
    pl->max_outstanding = max_outstanding;
    pl->nbuckets = 1024;
    pl->buckets = pps_xcalloc(pl->nbuckets, sizeof *pl->buckets);
    pl->fetch_bytes_per_ms = -1;
}

void lb_place_free(struct lb_place *pl)
{
    for (int i = 0; i < pl->nservers; i++) {
        free(pl->servers[i]->resident);
        free(pl->servers[i]);
    }
    for (int i = 0; i < pl->nmachines; i++) {
        free(pl->machines[i]->entries);
        free(pl->machines[i]);
    }
    for (size_t b = 0; b < pl->nbuckets; b++)
        for (struct lb_model *m = pl->buckets[b], *next; m; m = next) {
            next = m->hnext;
            free(m->info);
            free(m->latency);
            free(m);
        }
    free(pl->servers);
    free(pl->machines);
    free(pl->buckets);
    memset(pl, 0, sizeof *pl);
}

/* Room for one more element in a growable array of *cap (doubling). */
static void *grow(void *arr, int n, int *cap, size_t elem)
{
    if (n < *cap)
        return arr;
    *cap = *cap ? *cap * 2 : 8;
    return pps_xrealloc(arr, (unsigned long)*cap * elem);
}

/* ---- models ------------------------------------------------------------- */

static size_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return (size_t)h;
}

static void rehash(struct lb_place *pl)
{
    size_t nb = pl->nbuckets * 2;
    struct lb_model **b = pps_xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < pl->nbuckets; i++)
        for (struct lb_model *m = pl->buckets[i], *next; m; m = next) {
            next = m->hnext;
            size_t k = name_hash(m->name) & (nb - 1);
            m->hnext = b[k];
            b[k] = m;
        }
    free(pl->buckets);
    pl->buckets = b;
    pl->nbuckets = nb;
}

struct lb_model *lb_place_find_model(const struct lb_place *pl, const char *name)
{
    for (struct lb_model *m = pl->buckets[name_hash(name) & (pl->nbuckets - 1)]; m; m = m->hnext)
        if (strcmp(m->name, name) == 0)
            return m;
    return NULL;
}

struct lb_model *lb_place_model(struct lb_place *pl, const char *name)
{
    struct lb_model *m = lb_place_find_model(pl, name);
    if (m)
        return m;
    if (pl->nmodels >= pl->nbuckets)
        rehash(pl);
    m = pps_xcalloc(1, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    m->t_resident = m->t_cache = m->t_storage = -1;
    size_t k = name_hash(name) & (pl->nbuckets - 1);
    m->hnext = pl->buckets[k];
    pl->buckets[k] = m;
    pl->nmodels++;
    return m;
}

static int model_referenced(const struct lb_place *pl, const struct lb_model *model)
{
    for (int i = 0; i < pl->nmachines; i++)
        if (lb_machine_entry(pl->machines[i], model))
            return 1;
    for (int i = 0; i < pl->nservers; i++)
        if (lb_server_has_resident(pl->servers[i], model))
            return 1;
    return 0;
}

int lb_place_forget_model(struct lb_place *pl, struct lb_model *model)
{
    if (model_referenced(pl, model))
        return PPS_EBUSY;
    struct lb_model **pp = &pl->buckets[name_hash(model->name) & (pl->nbuckets - 1)];
    while (*pp && *pp != model)
        pp = &(*pp)->hnext;
    if (!*pp)
        return PPS_ENOTFOUND;
    *pp = model->hnext;
    free(model->info);
    free(model->latency);
    free(model);
    pl->nmodels--;
    return 0;
}

/* ---- machines ----------------------------------------------------------- */

struct lb_entry *lb_machine_entry(struct lb_machine *m, const struct lb_model *model)
{
    for (int i = 0; i < m->nentries; i++)
        if (m->entries[i].model == model)
            return &m->entries[i];
    return NULL;
}

static struct lb_entry *entry_get(struct lb_machine *m, struct lb_model *model)
{
    struct lb_entry *e = lb_machine_entry(m, model);
    if (e)
        return e;
    m->entries = grow(m->entries, m->nentries, &m->capentries, sizeof *m->entries);
    e = &m->entries[m->nentries++];
    memset(e, 0, sizeof *e);
    e->model = model;
    return e;
}

/* Entries that say nothing any more are removed (order is not kept). */
static void entry_maybe_drop(struct lb_machine *m, struct lb_entry *e)
{
    if (e->state != LB_ENTRY_NONE || e->inflight > 0)
        return;
    *e = m->entries[--m->nentries];
}

uint64_t lb_machine_used(const struct lb_machine *m)
{
    uint64_t used = 0;
    for (int i = 0; i < m->nentries; i++)
        if (m->entries[i].state == LB_ENTRY_LOADED || m->entries[i].state == LB_ENTRY_LOADING)
            used += m->entries[i].bytes;
    return used;
}

int lb_machine_holds(const struct lb_machine *m, const struct lb_model *model)
{
    for (int i = 0; i < m->nentries; i++)
        if (m->entries[i].model == model)
            return m->entries[i].state == LB_ENTRY_LOADED || m->entries[i].state == LB_ENTRY_LOADING;
    return 0;
}

static int machine_loaded(const struct lb_machine *m, const struct lb_model *model)
{
    for (int i = 0; i < m->nentries; i++)
        if (m->entries[i].model == model)
            return m->entries[i].state == LB_ENTRY_LOADED;
    return 0;
}

struct lb_machine *lb_place_machine(struct lb_place *pl, const char *cache_addr, uint16_t cache_port)
{
    for (int i = 0; i < pl->nmachines; i++)
        if (pl->machines[i]->cache_port == cache_port && strcmp(pl->machines[i]->cache_addr, cache_addr) == 0)
            return pl->machines[i];
    pl->machines = grow(pl->machines, pl->nmachines, &pl->capmachines, sizeof *pl->machines);
    struct lb_machine *m = pps_xcalloc(1, sizeof *m);
    m->id = pl->next_machine_id++;
    snprintf(m->cache_addr, sizeof m->cache_addr, "%s", cache_addr);
    m->cache_port = cache_port;
    pl->machines[pl->nmachines++] = m;
    return m;
}

static void forget_contents(struct lb_machine *m)
{
    for (int i = m->nentries - 1; i >= 0; i--) {
        m->entries[i].state = LB_ENTRY_NONE;
        m->entries[i].bytes = 0;
        entry_maybe_drop(m, &m->entries[i]);
    }
}

void lb_place_cache_register(struct lb_place *pl, struct lb_machine *m, uint64_t capacity,
                             uint64_t block_size, uint64_t used, const char *const *models,
                             const uint64_t *bytes, int n)
{
    forget_contents(m);
    m->cache_connected = 1;
    m->capacity = capacity;
    m->block_size = block_size;
    m->reported_used = used;
    for (int i = 0; i < n; i++) {
        struct lb_entry *e = entry_get(m, lb_place_model(pl, models[i]));
        e->state = LB_ENTRY_LOADED;
        e->bytes = bytes[i];
        e->last_use = ++pl->tick;
    }
}

void lb_place_cache_lost(struct lb_place *pl, struct lb_machine *m)
{
    (void)pl;
    forget_contents(m);
    m->cache_connected = 0;
    m->conn = NULL;
}

void lb_place_cache_event(struct lb_place *pl, struct lb_machine *m, int kind, const char *model,
                          uint64_t bytes, uint64_t used, uint64_t capacity)
{
    m->reported_used = used;
    if (capacity)
        m->capacity = capacity;
    struct lb_model *md = lb_place_model(pl, model);
    struct lb_entry *e = entry_get(m, md);
    switch (kind) {
    case 1: /* loaded */
        if (e->state != LB_ENTRY_LOADED && e->state != LB_ENTRY_LOADING)
            e->last_use = ++pl->tick;
        e->state = LB_ENTRY_LOADED;
        e->bytes = bytes;
        m->loads++;
        break;
    case 2: /* evicted */
        e->state = LB_ENTRY_NONE;
        e->bytes = 0;
        m->evictions++;
        break;
    case 3: /* failed */
        if (e->state == LB_ENTRY_LOADING) {
            e->state = LB_ENTRY_NONE;
            e->bytes = 0;
        }
        m->fetch_failures++;
        break;
    default:
        break;
    }
    entry_maybe_drop(m, e);
}

void lb_place_cache_out_refused(struct lb_place *pl, struct lb_machine *m, struct lb_model *model)
{
    (void)pl;
    struct lb_entry *e = lb_machine_entry(m, model);
    if (e && e->state == LB_ENTRY_EVICTING)
        e->state = LB_ENTRY_LOADED;
}

void lb_place_cache_in_failed(struct lb_place *pl, struct lb_machine *m, struct lb_model *model)
{
    (void)pl;
    struct lb_entry *e = lb_machine_entry(m, model);
    if (e && e->state == LB_ENTRY_LOADING) {
        e->state = LB_ENTRY_NONE;
        e->bytes = 0;
        entry_maybe_drop(m, e);
    }
}

/* ---- servers ------------------------------------------------------------ */

struct lb_server *lb_place_add_server(struct lb_place *pl, const char *addr, uint16_t port,
                                      struct lb_machine *m)
{
    pl->servers = grow(pl->servers, pl->nservers, &pl->capservers, sizeof *pl->servers);
    struct lb_server *s = pps_xcalloc(1, sizeof *s);
    s->id = pl->next_server_id++;
    snprintf(s->addr, sizeof s->addr, "%s", addr);
    s->port = port;
    snprintf(s->label, sizeof s->label, "%s:%u", addr, port);
    s->machine = m;
    m->nservers++;
    pl->servers[pl->nservers++] = s;
    return s;
}

void lb_place_remove_server(struct lb_place *pl, struct lb_server *s)
{
    int i = 0;
    while (i < pl->nservers && pl->servers[i] != s)
        i++;
    if (i == pl->nservers)
        return;
    memmove(&pl->servers[i], &pl->servers[i + 1], (size_t)(pl->nservers - i - 1) * sizeof *pl->servers);
    pl->nservers--;
    if (pl->rr_next > i)
        pl->rr_next--;
    s->machine->nservers--;
    free(s->resident);
    free(s);
}

int lb_server_has_resident(const struct lb_server *s, const struct lb_model *m)
{
    for (int i = 0; i < s->nresident; i++)
        if (s->resident[i] == m)
            return 1;
    return 0;
}

void lb_place_server_resident(struct lb_place *pl, struct lb_server *s, const char *model, int resident)
{
    struct lb_model *m = lb_place_model(pl, model);
    int i = 0;
    while (i < s->nresident && s->resident[i] != m)
        i++;
    if (resident && i == s->nresident) {
        s->resident = grow(s->resident, s->nresident, &s->capresident, sizeof *s->resident);
        s->resident[s->nresident++] = m;
    } else if (!resident && i < s->nresident) {
        s->resident[i] = s->resident[--s->nresident];
    }
}

/* A model resident in a server keeps its cache subscription, which pins it
 * in that machine's pool: CACHE_OUT would be refused. */
static int pinned_by_server(const struct lb_place *pl, const struct lb_machine *m, const struct lb_model *model)
{
    for (int i = 0; i < pl->nservers; i++)
        if (pl->servers[i]->machine == m && lb_server_has_resident(pl->servers[i], model))
            return 1;
    return 0;
}

/* ---- estimates (fastest_start) ------------------------------------------ */

static double guess_resident(const struct lb_model *m)
{
    return m->t_resident >= 0 ? m->t_resident : GUESS_FIXED_MS + (double)m->size / GUESS_COMPUTE_BYTES_PER_MS;
}

double lb_place_estimate(const struct lb_place *pl, const struct lb_server *s, const struct lb_model *model)
{
    double res = guess_resident(model);
    if (lb_server_has_resident(s, model))
        return res;
    if (machine_loaded(s->machine, model))
        return model->t_cache >= 0 ? model->t_cache : res + (double)model->size / GUESS_CACHE_BYTES_PER_MS;
    if (model->t_storage >= 0)
        return model->t_storage;
    double rate = pl->fetch_bytes_per_ms > 0 ? pl->fetch_bytes_per_ms : GUESS_FETCH_BYTES_PER_MS;
    return res + (double)model->size / rate;
}

static void ema(double *v, double x)
{
    *v = *v < 0 ? x : (1 - EMA_ALPHA) * *v + EMA_ALPHA * x;
}

/* ---- policies ----------------------------------------------------------- */

static int can_take(const struct lb_place *pl, const struct lb_server *s, int limit)
{
    return s->ready && s->outstanding < limit && s->outstanding < pl->max_outstanding;
}

static struct lb_server *choose_basic(struct lb_place *pl, const struct lb_model *model, int *rule)
{
    /* The seed's four passes, servers in registration order. */
    for (int i = 0; i < pl->nservers; i++)
        if (can_take(pl, pl->servers[i], 1) && lb_machine_holds(pl->servers[i]->machine, model)) {
            *rule = LB_RULE_CACHED_IDLE;
            return pl->servers[i];
        }
    for (int i = 0; i < pl->nservers; i++)
        if (can_take(pl, pl->servers[i], 1)) {
            *rule = LB_RULE_IDLE;
            return pl->servers[i];
        }
    for (int i = 0; i < pl->nservers; i++)
        if (can_take(pl, pl->servers[i], 2) && lb_machine_holds(pl->servers[i]->machine, model)) {
            *rule = LB_RULE_CACHED_LIGHT;
            return pl->servers[i];
        }
    struct lb_server *best = NULL;
    for (int i = 0; i < pl->nservers; i++)
        if (can_take(pl, pl->servers[i], pl->max_outstanding) &&
            (!best || pl->servers[i]->outstanding < best->outstanding))
            best = pl->servers[i];
    *rule = LB_RULE_LEAST_LOADED_CAP;
    return best;
}

static struct lb_server *choose_fastest(struct lb_place *pl, const struct lb_model *model, double *est)
{
    struct lb_server *best = NULL;
    double best_t = 0;
    for (int i = 0; i < pl->nservers; i++) {
        struct lb_server *s = pl->servers[i];
        if (!can_take(pl, s, pl->max_outstanding))
            continue;
        double t = s->ahead_ms + lb_place_estimate(pl, s, model);
        if (!best || t < best_t) {
            best = s;
            best_t = t;
        }
    }
    *est = best_t;
    return best;
}

static struct lb_server *choose_round_robin(struct lb_place *pl)
{
    for (int k = 0; k < pl->nservers; k++) {
        int i = (pl->rr_next + k) % pl->nservers;
        if (can_take(pl, pl->servers[i], pl->max_outstanding)) {
            pl->rr_next = (i + 1) % pl->nservers;
            return pl->servers[i];
        }
    }
    return NULL;
}

static struct lb_server *choose_least_loaded(struct lb_place *pl)
{
    struct lb_server *best = NULL;
    for (int i = 0; i < pl->nservers; i++)
        if (can_take(pl, pl->servers[i], pl->max_outstanding) &&
            (!best || pl->servers[i]->outstanding < best->outstanding))
            best = pl->servers[i];
    return best;
}

/* basic: make room for the model on m. 0: room made (victims chosen and
 * marked, LOADING reserved, *cache_in = 1) or not needed/possible to manage
 * (*cache_in = 0: the server's own subscription loads it); 1: wait. */
static int make_room(struct lb_place *pl, struct lb_machine *m, struct lb_model *model, struct lb_choice *out)
{
    if (!m->cache_connected || lb_machine_holds(m, model))
        return 0;
    double needd = (double)model->size * pl->amplifier;
    uint64_t need = needd > (double)UINT64_MAX / 2 ? UINT64_MAX / 2 : (uint64_t)needd;
    if (need > m->capacity)
        return 0; /* can never be made; the cache itself will say what fits */
    uint64_t used = lb_machine_used(m);
    int nv = 0, pinned_only_by_servers = 0;
    struct lb_entry *victims[LB_MAX_VICTIMS];
    while (used + need > m->capacity) {
        struct lb_entry *lru = NULL;
        for (int i = 0; i < m->nentries; i++) {
            struct lb_entry *e = &m->entries[i];
            if (e->state != LB_ENTRY_LOADED || e->inflight > 0)
                continue;
            int taken = 0;
            for (int k = 0; k < nv; k++)
                taken |= victims[k] == e;
            if (taken)
                continue;
            if (pinned_by_server(pl, m, e->model)) {
                pinned_only_by_servers = 1;
                continue;
            }
            if (!lru || e->last_use < lru->last_use)
                lru = e;
        }
        if (!lru || nv == LB_MAX_VICTIMS) {
            /* Everything left is in use. Models merely resident in a server
             * are released by that server when its own fetch needs room, so
             * let the request go without a CACHE_IN; requests in flight
             * are not, so wait for them. Either way nothing is evicted. */
            return pinned_only_by_servers ? 0 : 1;
        }
        victims[nv++] = lru;
        used -= lru->bytes;
    }
    for (int k = 0; k < nv; k++) {
        victims[k]->state = LB_ENTRY_EVICTING;
        out->victims[k] = victims[k]->model;
    }
    out->nvictims = nv;
    struct lb_entry *e = entry_get(m, model);
    e->state = LB_ENTRY_LOADING;
    e->bytes = need;
    out->cache_in = 1;
    return 0;
}

int lb_place_choose(struct lb_place *pl, struct lb_model *model, struct lb_choice *out)
{
    memset(out, 0, sizeof *out);
    struct lb_server *s = NULL;
    int rule = 0;
    double est = 0;
    switch (pl->policy) {
    case LB_POLICY_BASIC:
        s = choose_basic(pl, model, &rule);
        break;
    case LB_POLICY_FASTEST_START:
        s = choose_fastest(pl, model, &est);
        rule = LB_RULE_FASTEST_START;
        break;
    case LB_POLICY_ROUND_ROBIN:
        s = choose_round_robin(pl);
        rule = LB_RULE_ROUND_ROBIN;
        break;
    case LB_POLICY_LEAST_LOADED:
        s = choose_least_loaded(pl);
        rule = LB_RULE_LEAST_LOADED;
        break;
    }
    if (!s)
        return 1;
    out->server = s;
    out->rule = rule;
    out->placed = lb_server_has_resident(s, model)          ? LB_PLACED_RESIDENT
                  : machine_loaded(s->machine, model)        ? LB_PLACED_CACHE
                                                             : LB_PLACED_NONE;
    if (pl->policy == LB_POLICY_BASIC && make_room(pl, s->machine, model, out))
        return 1;
    out->estimate_ms = pl->policy == LB_POLICY_FASTEST_START ? est - s->ahead_ms : lb_place_estimate(pl, s, model);
    pl->decisions[rule]++;
    return 0;
}

void lb_place_dispatched(struct lb_place *pl, struct lb_server *s, struct lb_model *model, double estimate_ms)
{
    struct lb_entry *e = entry_get(s->machine, model);
    e->inflight++;
    e->last_use = ++pl->tick;
    s->outstanding++;
    s->ahead_ms += estimate_ms;
}

void lb_place_completed(struct lb_place *pl, struct lb_server *s, struct lb_model *model, double estimate_ms,
                        int ok, int source, double service_ms, double fetch_ms)
{
    struct lb_entry *e = lb_machine_entry(s->machine, model);
    if (e) {
        if (e->inflight > 0)
            e->inflight--;
        entry_maybe_drop(s->machine, e);
    }
    if (s->outstanding > 0)
        s->outstanding--;
    s->ahead_ms -= estimate_ms;
    if (s->ahead_ms < 0 || s->outstanding == 0)
        s->ahead_ms = 0;
    if (!ok) {
        s->errors++;
        return;
    }
    s->served++;
    switch (source) {
    case LB_PLACED_RESIDENT:
        ema(&model->t_resident, service_ms);
        break;
    case LB_PLACED_CACHE:
        ema(&model->t_cache, service_ms);
        break;
    default:
        ema(&model->t_storage, service_ms);
        if (fetch_ms > 0.5 && model->size)
            ema(&pl->fetch_bytes_per_ms, (double)model->size / fetch_ms);
        break;
    }
}
