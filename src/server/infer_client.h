/* infer_client: `pipeps infer ADDR:PORT MODEL ...`, a client that sends
 * INFER requests to a server (or, later, a load balancer speaking the same
 * messages) and prints each request's timing breakdown; plus the blocking
 * call it is built on, for other tools. */
#ifndef PIPEPS_INFER_CLIENT_H
#define PIPEPS_INFER_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "server/server_proto.h"

/* Send one INFER on fd and wait for its answer. On success *payload holds
 * the response (the caller frees) and resp points into it. A server error
 * returns its status with the reason in err. */
int infer_call(int fd, const struct infer_request *req, uint8_t **payload, struct infer_response *resp,
               char *err, size_t errlen);
/* MODEL_INFO round trip. */
int infer_model_info(int fd, const char *model, struct infer_model_info *mi, char *err, size_t errlen);

/* The INFER request for model that `pipeps infer` and the clients send:
 * its first input read from npy_path (batch = the file's first dimension),
 * or, without one, generated from the model's spec (MODEL_INFO on fd) with
 * the given batch: float32 uniform in [-1, 1), int64 ids in [0, 1000),
 * deterministic in seed. *owned is the input's memory (the caller frees). */
int infer_build_request(int fd, const char *model, int batch, uint64_t seed, const char *npy_path,
                        struct infer_request *req, void **owned, char *err, size_t errlen);

int infer_main(int argc, char **argv);

#endif
