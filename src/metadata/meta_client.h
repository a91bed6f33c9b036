/* meta_client: blocking client of the metadata storage over one persistent
 * connection (the prototype opened one connection per request).
 *
 * Wire payloads (docs/protocol.md): META_GET  = str key        -> value bytes
 *                                   META_PUT  = str key, value -> empty
 *                                   META_DELETE = str key      -> empty
 *                                   META_LIST = str prefix     -> u32 n, n x str
 * A key is at most META_MAX_KEY bytes, a value at most META_MAX_VALUE.
 * Not thread-safe: one client per thread. */
#ifndef PIPEPS_META_CLIENT_H
#define PIPEPS_META_CLIENT_H

#include <stdint.h>

#define META_MAX_KEY 1024
#define META_MAX_VALUE (64u << 20)

struct meta_client;

int meta_client_connect(struct meta_client **out, const char *addr, uint16_t port);
void meta_client_close(struct meta_client *c);

/* 1 after a transport error (the connection is out of step; every later
 * call fails with PPS_ECLOSED): the outcome of the failed call is unknown
 * and the client must be closed and connected again. 0 while the failures
 * were answers of the metadata storage. */
int meta_client_broken(const struct meta_client *c);

/* *value is malloc'd (NUL-terminated, not counted in *len); the caller
 * frees. PPS_ENOTFOUND if the key is absent. */
int meta_get(struct meta_client *c, const char *key, uint8_t **value, uint64_t *len);
/* Returns once the value is durable (fsync'd) on the metadata storage. */
int meta_put(struct meta_client *c, const char *key, const void *value, uint64_t len);
int meta_delete(struct meta_client *c, const char *key);
/* Keys starting with prefix, sorted. Free with meta_free_list. */
int meta_list(struct meta_client *c, const char *prefix, char ***keys, uint32_t *nkeys);
void meta_free_list(char **keys, uint32_t nkeys);

#endif
