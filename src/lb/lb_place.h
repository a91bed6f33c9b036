/* lb_place: the load balancer's picture of the cluster and its placement
 * policies. No I/O: the daemon (lb.c) feeds it registrations, events and
 * completions, asks it where a request goes, and sends what it decides
 * (forward to a server, CACHE_OUT victims, CACHE_IN). That keeps every
 * decision testable on its own (tests/unit/test_lb_place.c).
 *
 * The picture:
 *   - machines, one per cache (keyed by the address servers reach the cache
 *     at); each knows its pool capacity and which models its cache holds,
 *     kept exact from the cache's registration and LOADED/EVICTED/FAILED
 *     events, plus the models the balancer has asked it to load (CACHE_IN
 *     sent, reserved at size x amplifier until the cache says LOADED);
 *   - servers, in registration order, each on one machine, with its
 *     outstanding requests and the models resident in it;
 *   - models, with their size from the metadata storage and what has been
 *     learned of their service times (for fastest_start).
 * Per (machine, model) the number of requests in flight pins the model
 * against eviction by the balancer.
 *
 * The easy thing to get wrong: "used" of a machine is the sum of what the
 * balancer believes is in the pool or on its way, never the cache's own
 * counter alone (that one lags behind CACHE_IN and CACHE_OUT not yet
 * carried out); a model being evicted no longer counts, a model being
 * loaded counts at size x amplifier. */
#ifndef PIPEPS_LB_PLACE_H
#define PIPEPS_LB_PLACE_H

#include <stddef.h>
#include <stdint.h>

struct prom_hist;

#define LB_NAME_MAX 255
#define LB_ADDR_MAX 63

enum lb_policy {
    LB_POLICY_BASIC = 0,
    LB_POLICY_FASTEST_START,
    LB_POLICY_ROUND_ROBIN,
    LB_POLICY_LEAST_LOADED,
};

/* Placement rules, as reported in the balancer's timing block. */
enum lb_rule {
    LB_RULE_CACHED_IDLE = 1,
    LB_RULE_IDLE = 2,
    LB_RULE_CACHED_LIGHT = 3,
    LB_RULE_LEAST_LOADED_CAP = 4,
    LB_RULE_FASTEST_START = 5,
    LB_RULE_ROUND_ROBIN = 6,
    LB_RULE_LEAST_LOADED = 7,
    LB_RULE_COUNT = 8,
};

/* Where the model's parameters were when the request was placed
 * (= enum infer_lb_placed). */
enum lb_placed { LB_PLACED_RESIDENT = 0, LB_PLACED_CACHE = 1, LB_PLACED_NONE = 2 };

enum lb_size_state { LB_SIZE_UNKNOWN = 0, LB_SIZE_ASKING, LB_SIZE_KNOWN, LB_SIZE_ABSENT };

struct lb_model {
    char name[LB_NAME_MAX + 1];
    int size_state;            /* enum lb_size_state */
    uint64_t size;             /* padded parameter bytes (<model>-SIZE) */
    /* learned service times, ms (EMA; < 0: not yet seen) */
    double t_resident, t_cache, t_storage;
    uint64_t requests, ok, errors;
    uint64_t by_source[3];     /* answers served resident / from cache / from storage */
    /* MODEL_INFO answer built from the METADATA blob (the daemon's cache) */
    int info_state;            /* enum lb_size_state: unknown, asking, known */
    void *info;                /* encoded MODEL_INFO payload, malloc'd */
    size_t info_len;
    struct prom_hist *latency; /* the daemon's per-model latency histogram (malloc'd, freed here) */
    struct lb_model *hnext;
};

enum lb_entry_state {
    LB_ENTRY_NONE = 0,         /* not in the pool (entry kept for its in-flight count) */
    LB_ENTRY_LOADING,          /* CACHE_IN sent, not loaded yet */
    LB_ENTRY_LOADED,           /* complete in the pool */
    LB_ENTRY_EVICTING,         /* CACHE_OUT sent, not evicted yet */
};

struct lb_entry {              /* one model as seen on one machine */
    struct lb_model *model;
    int state;                 /* enum lb_entry_state */
    uint64_t bytes;            /* pool bytes (LOADED), reserved bytes (LOADING) */
    uint64_t last_use;         /* LRU tick */
    int inflight;              /* requests on this machine's servers for it */
};

struct lb_machine {
    int id;
    char cache_addr[LB_ADDR_MAX + 1]; /* where servers reach the cache */
    uint16_t cache_port;
    int cache_connected;
    uint64_t capacity, block_size;
    uint64_t reported_used;    /* the cache's own counter (for STAT) */
    struct lb_entry *entries;
    int nentries, capentries;
    int nservers;
    uint64_t cache_in, cache_out, evictions, loads, fetch_failures;
    void *conn;                /* the daemon's cache connection (opaque here) */
};

struct lb_server {
    int id;
    char addr[LB_ADDR_MAX + 1];
    uint16_t port;
    char label[LB_ADDR_MAX + 8];      /* "addr:port" */
    struct lb_machine *machine;
    int ready;                 /* forwarding connection up: eligible */
    int outstanding;           /* INFERs forwarded, not answered */
    double ahead_ms;           /* estimated work of the outstanding requests */
    uint64_t served, errors, memory_capacity, memory_used;
    struct lb_model **resident;
    int nresident, capresident;
    void *reg_conn, *fwd_conn; /* the daemon's connections (opaque here) */
};

struct lb_place {
    enum lb_policy policy;
    double amplifier;          /* basic: room made for size x amplifier */
    int max_outstanding;       /* per server; more requests wait in the balancer */
    struct lb_server **servers;    /* registration order */
    int nservers, capservers;
    struct lb_machine **machines;
    int nmachines, capmachines;
    struct lb_model **buckets;
    size_t nbuckets, nmodels;
    uint64_t tick;
    int rr_next;
    int next_server_id, next_machine_id;
    double fetch_bytes_per_ms; /* learned from cold starts from storage */
    uint64_t decisions[LB_RULE_COUNT];
};

/* What lb_place_choose decided. */
#define LB_MAX_VICTIMS 64
struct lb_choice {
    struct lb_server *server;
    int rule;                  /* enum lb_rule */
    int placed;                /* enum lb_placed */
    int cache_in;              /* 1: send CACHE_IN of the model to the server's machine */
    int nvictims;              /* CACHE_OUT these first (already marked EVICTING) */
    struct lb_model *victims[LB_MAX_VICTIMS];
    double estimate_ms;        /* fastest_start's estimate (others: the model's) */
};

int lb_policy_parse(const char *name, enum lb_policy *out);
const char *lb_policy_name(enum lb_policy p);
/* "basic, fastest_start, round_robin, least_loaded" */
const char *lb_policy_list(void);

void lb_place_init(struct lb_place *pl, enum lb_policy policy, double amplifier, int max_outstanding);
void lb_place_free(struct lb_place *pl);

/* Models: found or created (never fails: small allocations abort on OOM). */
struct lb_model *lb_place_model(struct lb_place *pl, const char *name);
struct lb_model *lb_place_find_model(const struct lb_place *pl, const char *name);
/* Drop a model nothing refers to (an unknown name a client sent), so that
 * made-up names cannot grow the table. PPS_EBUSY if it is still in use. */
int lb_place_forget_model(struct lb_place *pl, struct lb_model *model);

/* Machines: found or created by the cache address servers use. */
struct lb_machine *lb_place_machine(struct lb_place *pl, const char *cache_addr, uint16_t cache_port);
/* A cache registered: its capacity and complete models replace what was known. */
void lb_place_cache_register(struct lb_place *pl, struct lb_machine *m, uint64_t capacity,
                             uint64_t block_size, uint64_t used, const char *const *models,
                             const uint64_t *bytes, int n);
/* A cache went away: its contents become unknown (no entry is LOADED). */
void lb_place_cache_lost(struct lb_place *pl, struct lb_machine *m);
/* LOADED (1), EVICTED (2), FAILED (3) as the cache reported it. */
void lb_place_cache_event(struct lb_place *pl, struct lb_machine *m, int kind, const char *model,
                          uint64_t bytes, uint64_t used, uint64_t capacity);
/* A CACHE_OUT was refused (the model is pinned at the cache): LOADED again. */
void lb_place_cache_out_refused(struct lb_place *pl, struct lb_machine *m, struct lb_model *model);
/* A CACHE_IN failed: drop the reservation. */
void lb_place_cache_in_failed(struct lb_place *pl, struct lb_machine *m, struct lb_model *model);

/* Servers: appended in registration order (not yet ready). */
struct lb_server *lb_place_add_server(struct lb_place *pl, const char *addr, uint16_t port,
                                      struct lb_machine *m);
void lb_place_remove_server(struct lb_place *pl, struct lb_server *s);
void lb_place_server_resident(struct lb_place *pl, struct lb_server *s, const char *model, int resident);
int lb_server_has_resident(const struct lb_server *s, const struct lb_model *m);

struct lb_entry *lb_machine_entry(struct lb_machine *m, const struct lb_model *model);
/* Pool bytes the balancer counts for the machine (see the top comment). */
uint64_t lb_machine_used(const struct lb_machine *m);
int lb_machine_holds(const struct lb_machine *m, const struct lb_model *model);

/* Where does a request for model go? 0 with *out filled, or 1: it must
 * wait (no server can take it now, or basic could not make room). The
 * model's size must be known. Eviction victims and the CACHE_IN are
 * already accounted for; the caller sends them and then calls
 * lb_place_dispatched. */
int lb_place_choose(struct lb_place *pl, struct lb_model *model, struct lb_choice *out);
/* Book-keeping of a forwarded request, and of its answer (ok: a server
 * response with status 0; source and the server's times, in ms, feed
 * fastest_start's estimates). */
void lb_place_dispatched(struct lb_place *pl, struct lb_server *s, struct lb_model *model, double estimate_ms);
void lb_place_completed(struct lb_place *pl, struct lb_server *s, struct lb_model *model, double estimate_ms,
                        int ok, int source, double service_ms, double fetch_ms);

/* Estimated service time of model on s, as fastest_start sees it (ms). */
double lb_place_estimate(const struct lb_place *pl, const struct lb_server *s, const struct lb_model *model);

#endif
