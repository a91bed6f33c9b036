/* server_proto: payloads of the server's messages (docs/protocol.md,
 * "Server" and "Load balancer: servers"), shared by the server, the
 * `pipeps infer` client and the load balancer.
 *
 * Client link (client or load balancer -> server; several requests may be
 * outstanding on one connection, answered in any order by request id):
 *   INFER      (str model, u32 flags, u32 ntensors, tensor...)
 *              -> u32 timing_len, timing fields, u32 ntensors, tensor...
 *              or status < 0 with a text reason
 *   MODEL_INFO (str model) -> the model's input/output specs
 * Load-balancer link (the server connects, registers, keeps the connection):
 *   LB_SERVER_REGISTER (server -> LB request) -> any response, status 0 = registered
 *   LB_SERVER_EVENT    (server -> LB, one-way, never answered)
 *
 * A tensor is u8 dtype (1 float32, 2 int64), u8 ndims (1..8), 6 zero bytes,
 * i64 dims[ndims], u64 nbytes, zero padding to a multiple of 64 from the
 * payload's start, then nbytes of C-order data. The padding lets a receiver
 * that reads the payload into a 64-byte-aligned buffer use the data in
 * place. Decoders take untrusted bytes: every count and length is checked
 * against what remains (PPS_EPROTO), shapes against their byte counts
 * (PPS_ESHAPE). */
#ifndef PIPEPS_SERVER_PROTO_H
#define PIPEPS_SERVER_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define INFER_MAX_TENSORS 4
#define INFER_MAX_DIMS 8
#define INFER_MODEL_NAME_MAX WIRE_NAME_MAX
#define INFER_ADDR_MAX 63
#define INFER_TENSOR_ALIGN 64
/* Bound of a MODEL_INFO request or an LB message. */
#define INFER_MAX_CONTROL (64u << 10)

enum infer_dtype { INFER_F32 = 1, INFER_I64 = 2 }; /* = enum graph_dtype */

struct infer_tensor {
    uint8_t dtype;
    int ndims;
    int64_t dims[INFER_MAX_DIMS];
    uint64_t nbytes;
    const void *data;  /* decoder: points into the payload */
};

struct infer_request {
    char model[INFER_MODEL_NAME_MAX + 1];
    uint32_t flags;    /* none defined yet; must be 0 */
    int ninputs;
    struct infer_tensor inputs[INFER_MAX_TENSORS];
};

enum infer_source {
    INFER_SRC_RESIDENT = 0,  /* prepared weights already in the server */
    INFER_SRC_CACHE = 1,     /* every batch was in the local cache when subscribed */
    INFER_SRC_STORAGE = 2,   /* the cache fetched (part of) it from the storages */
};

enum infer_mode { INFER_MODE_PIPELINED = 0, INFER_MODE_STOP_AND_START = 1 };

/* Per-request timing, microseconds. "since receipt" = since the server read
 * the request's last byte. */
struct infer_timing {
    uint64_t queue_us;          /* received -> a worker took it */
    uint64_t wait_us;           /* waiting for parameters: metadata, gates, (stop-and-start) all batches */
    uint64_t compute_us;        /* running steps (including plan building) */
    uint64_t total_us;          /* received -> response ready */
    uint8_t source;             /* enum infer_source */
    uint8_t mode;               /* enum infer_mode */
    uint32_t nbatches;          /* parameter batches of the model */
    uint32_t batches_at_start;  /* batches that had arrived when execution started */
    uint64_t meta_us;           /* since receipt: METADATA arrived (0 when resident) */
    uint64_t exec_start_us;     /* since receipt: the first step started */
    uint64_t first_batch_us;    /* since receipt: batch 0 arrived (0 when resident) */
    uint64_t last_batch_us;     /* since receipt: the last batch arrived (0 when resident) */
    uint64_t load_us;           /* building the executor model from the metadata */
    uint64_t plan_us;           /* building a plan for a new batch size */
    uint64_t exec_end_us;       /* since receipt: the last step finished */
};

/* The load balancer's block, appended to a relayed response's timing block
 * (docs/protocol.md, "Load balancer: client link"). Exactly
 * INFER_LB_BLOCK_SIZE bytes, so the tensors after it keep their alignment. */
#define INFER_LB_BLOCK_SIZE 64
#define INFER_LB_MAGIC 0x31424C50u  /* "PLB1" */
enum infer_lb_placed { INFER_PLACED_RESIDENT = 0, INFER_PLACED_CACHE = 1, INFER_PLACED_NONE = 2 };
struct infer_lb_block {
    uint8_t attempts;      /* servers tried */
    uint8_t rule;          /* placement rule (1..4 basic, 5 fastest_start, 6 round_robin, 7 least_loaded) */
    uint8_t placed;        /* enum infer_lb_placed: where the parameters were when placed */
    uint64_t lb_queue_us;  /* received by the balancer -> forwarded */
    uint64_t lb_total_us;  /* received by the balancer -> answer sent */
    uint32_t server_id;
    uint32_t machine_id;
    char server[32];       /* "addr:port", NUL-terminated (truncated if longer) */
};

struct infer_response {
    struct infer_timing timing;
    int has_lb;                  /* the answer came through a load balancer */
    struct infer_lb_block lb;
    int noutputs;
    struct infer_tensor outputs[INFER_MAX_TENSORS];
};

/* One model input or output as MODEL_INFO describes it (dims[0] = -1: batch). */
struct infer_io_spec {
    char name[96];
    uint8_t dtype;
    int ndims;
    int64_t dims[INFER_MAX_DIMS];
};

struct infer_model_info {
    int ninputs, noutputs;
    struct infer_io_spec inputs[INFER_MAX_TENSORS];
    struct infer_io_spec outputs[INFER_MAX_TENSORS]; /* ndims 0: shape not recorded */
    uint32_t nbatches;
    uint64_t param_bytes;       /* padded bytes of all batches */
    uint8_t resident;
};

struct lb_server_register {
    char client_addr[INFER_ADDR_MAX + 1];  /* where requests reach this server */
    uint16_t client_port;
    char cache_addr[INFER_ADDR_MAX + 1];   /* the cache this server uses (its machine) */
    uint16_t cache_port;
    uint64_t memory_capacity;              /* --memory */
    uint64_t memory_used;
    uint32_t threads;
    uint8_t mode;                          /* enum infer_mode */
    uint32_t nmodels;                      /* resident models now */
    struct wire_model_bytes *models;       /* decoder: malloc'd, caller frees */
};

enum lb_server_event_kind {
    LB_SERVER_EVENT_RESIDENT = 1,  /* the model's weights are now kept in the server */
    LB_SERVER_EVENT_EVICTED = 2,   /* dropped from the server */
};

struct lb_server_event {
    uint8_t kind;
    char model[INFER_MODEL_NAME_MAX + 1];
    uint64_t bytes;     /* the model's memory in the server */
    uint64_t used;      /* server memory in use after the event */
    uint64_t capacity;
};

/* 1..255 printable ASCII bytes, no space (the cache's rule). */
int infer_valid_model_name(const char *name);
size_t infer_dtype_size(uint8_t dtype);
const char *infer_dtype_name(uint8_t dtype);
/* Bytes of a tensor with these dims: 0 and *out, or PPS_ESHAPE (bad dtype,
 * ndims, a dim < 1) / PPS_ETOOBIG (overflow past max). */
int infer_tensor_bytes(uint8_t dtype, int ndims, const int64_t *dims, uint64_t max, uint64_t *out);

/* Encoders append to wb. infer_encode_tensor copies t->data; the reserve
 * form writes the tensor's header and padding, leaves nbytes of room and
 * returns the data's offset in wb (write it after the last wbuf call, wb
 * may move). */
void infer_encode_tensor(struct wbuf *wb, const struct infer_tensor *t);
size_t infer_reserve_tensor(struct wbuf *wb, const struct infer_tensor *t);
void infer_encode_request(struct wbuf *wb, const struct infer_request *r);
/* Response header: timing and the output count; tensors follow. */
void infer_encode_response_head(struct wbuf *wb, const struct infer_timing *t, int noutputs);
void infer_encode_model_info(struct wbuf *wb, const struct infer_model_info *mi);
void infer_encode_model(struct wbuf *wb, const char *model);
/* Write the block's 64 bytes at out. */
void infer_encode_lb_block(uint8_t out[INFER_LB_BLOCK_SIZE], const struct infer_lb_block *b);
void lb_server_encode_register(struct wbuf *wb, const struct lb_server_register *m);
void lb_server_encode_event(struct wbuf *wb, const struct lb_server_event *m);

/* Decoders; tensors point into p. err (may be NULL) receives a reason. */
int infer_decode_request(const void *p, size_t n, struct infer_request *r, char *err, size_t errlen);
int infer_decode_response(const void *p, size_t n, struct infer_response *r, char *err, size_t errlen);
int infer_decode_model_info(const void *p, size_t n, struct infer_model_info *mi);
int infer_decode_model(const void *p, size_t n, char model[INFER_MODEL_NAME_MAX + 1]);
/* On success m->models is malloc'd (NULL when nmodels = 0); free() it. */
int lb_server_decode_register(const void *p, size_t n, struct lb_server_register *m);
int lb_server_decode_event(const void *p, size_t n, struct lb_server_event *m);

#endif
