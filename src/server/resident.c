/* resident: LRU bookkeeping of the server's resident models; see resident.h.
 * A doubly linked list in recency order: tables hold tens of models, so a
 * linear search by name costs nothing next to a single inference. */
#include "server/resident.h"
#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void resident_init(struct resident_table *t, uint64_t capacity)
{
    memset(t, 0, sizeof *t);
    t->capacity = capacity;
}

void resident_destroy(struct resident_table *t)
{
    struct resident_entry *e = t->head;
    while (e) {
        struct resident_entry *n = e->next;
        free(e);
        e = n;
    }
    memset(t, 0, sizeof *t);
}

struct resident_entry *resident_find(struct resident_table *t, const char *name)
{
    for (struct resident_entry *e = t->head; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

static void unlink_entry(struct resident_table *t, struct resident_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        t->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        t->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(struct resident_table *t, struct resident_entry *e)
{
    e->prev = NULL;
    e->next = t->head;
    if (t->head)
        t->head->prev = e;
    t->head = e;
    if (!t->tail)
        t->tail = e;
}

struct resident_entry *resident_add(struct resident_table *t, const char *name, uint64_t bytes,
                                    void *owner)
{
    PPS_ASSERT(!resident_find(t, name));
    struct resident_entry *e = pps_xcalloc(1, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->bytes = bytes;
    e->owner = owner;
    e->last_use = ++t->clock;
    push_front(t, e);
    t->used += bytes;
    t->count++;
    return e;
}

void resident_touch(struct resident_table *t, struct resident_entry *e)
{
    e->last_use = ++t->clock;
    if (t->head != e) {
        unlink_entry(t, e);
        push_front(t, e);
    }
}

void resident_set_bytes(struct resident_table *t, struct resident_entry *e, uint64_t bytes)
{
    t->used = t->used - e->bytes + bytes;
    e->bytes = bytes;
}

void *resident_remove(struct resident_table *t, struct resident_entry *e)
{
    PPS_ASSERT(e->in_use == 0);
    unlink_entry(t, e);
    t->used -= e->bytes;
    t->count--;
    void *owner = e->owner;
    free(e);
    return owner;
}

int resident_fits(const struct resident_table *t, uint64_t bytes)
{
    return bytes <= t->capacity;
}

struct resident_entry *resident_victim(struct resident_table *t, uint64_t extra,
                                       const struct resident_entry *keep)
{
    if (t->used + extra <= t->capacity)
        return NULL;
    for (struct resident_entry *e = t->tail; e; e = e->prev)
        if (e != keep && e->in_use == 0)
            return e;
    return NULL;
}

struct resident_entry *resident_lru_idle(struct resident_table *t)
{
    for (struct resident_entry *e = t->tail; e; e = e->prev)
        if (e->in_use == 0)
            return e;
    return NULL;
}
