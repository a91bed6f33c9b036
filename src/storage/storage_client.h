/* storage_client: blocking client of a storage daemon over one persistent
 * connection.
 *
 * Wire payloads (docs/protocol.md):
 *   STORE_PUT    = str key, then the value bytes (the rest of the payload) -> empty
 *   STORE_GET    = str key, u64 offset, u64 length (UINT64_MAX: to the end)
 *                  -> the raw bytes, nothing else, so they can be received
 *                     straight into their destination
 *   STORE_DELETE = str key -> empty
 *   STORE_STAT   = empty   -> text, "name value\n" lines
 *   STORE_LIST   = str prefix -> u32 n, n x { str key, u64 value size }
 * Not thread-safe: one client per thread (the cache opens one per storage
 * per fetch worker). After an I/O error in the middle of a frame the
 * connection is out of step and every later call returns PPS_ECLOSED:
 * close the client and connect again. storage_delete, storage_stat and storage_list
 * return PPS_EBUSY while split GETs are outstanding. */
#ifndef PIPEPS_STORAGE_CLIENT_H
#define PIPEPS_STORAGE_CLIENT_H

#include <stdint.h>

#define STORAGE_MAX_KEY 1024
#define STORAGE_MAX_VALUE (4ull << 30) /* values up to 4 GiB */
/* A STORE_LIST answer is a control message: at most 16 MiB. */
#define STORAGE_LIST_MAX_ANSWER (16u << 20)

struct storage_client;

int storage_client_connect(struct storage_client **out, const char *addr, uint16_t port);
void storage_client_close(struct storage_client *c);
/* The socket, e.g. for poll(); do not read or write it directly. */
int storage_client_fd(const struct storage_client *c);

/* Returns once the value is durable (fsync'd) on the storage. */
int storage_put(struct storage_client *c, const char *key, const void *value, uint64_t len);
/* Read [offset, offset + len) of a value into dst (room for len bytes);
 * len = UINT64_MAX reads to the end, with dst_cap bounding it. *got is the
 * number of bytes received. PPS_ERANGE if the range is outside the value. */
int storage_get(struct storage_client *c, const char *key, uint64_t offset, uint64_t len,
                void *dst, uint64_t dst_cap, uint64_t *got);
/* Split form of storage_get for callers that overlap several requests:
 * send the request now, receive the bytes later (in order, per client). */
int storage_get_send(struct storage_client *c, const char *key, uint64_t offset, uint64_t len);
int storage_get_recv(struct storage_client *c, void *dst, uint64_t dst_cap, uint64_t *got);
int storage_delete(struct storage_client *c, const char *key);
/* The STAT text, malloc'd, NUL-terminated; the caller frees. */
int storage_stat(struct storage_client *c, char **text);

/* STORE_LIST: the live keys starting with prefix ("" = every key) and
 * their value sizes, in no particular order. *out is malloc'd; free it
 * with storage_list_free. PPS_ETOOBIG if the answer would pass
 * STORAGE_LIST_MAX_ANSWER bytes (ask for a longer prefix). */
struct storage_list_entry {
    char *key;
    uint64_t size;
};
int storage_list(struct storage_client *c, const char *prefix, struct storage_list_entry **out, uint32_t *n);
void storage_list_free(struct storage_list_entry *v, uint32_t n);

/* The storage's message for the last failed call ("no value for key ..."),
 * or a local description; "" after a success. Valid until the next call. */
const char *storage_client_error(const struct storage_client *c);

#endif
