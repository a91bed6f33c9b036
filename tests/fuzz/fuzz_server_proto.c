/* libFuzzer target: every decoder of the server's payloads (INFER request
 * and response, MODEL_INFO, load-balancer registration and events) on
 * arbitrary bytes. A decoder must return an error, never read out of
 * bounds, and a successful decode must describe tensors that lie inside the
 * input. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/err.h"
#include "server/server_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_tensor(const struct infer_tensor *t, const uint8_t *data, size_t size)
{
    const uint8_t *p = t->data;
    PPS_ASSERT(p >= data && t->nbytes <= size && (size_t)(p - data) <= size - t->nbytes);
    volatile uint8_t sink = 0;
    if (t->nbytes)
        sink ^= p[0] ^ p[t->nbytes - 1];
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    struct infer_request rq;
    if (infer_decode_request(data, size, &rq, err, sizeof err) == 0)
        for (int i = 0; i < rq.ninputs; i++)
            check_tensor(&rq.inputs[i], data, size);
    struct infer_response rs;
    if (infer_decode_response(data, size, &rs, err, sizeof err) == 0)
        for (int i = 0; i < rs.noutputs; i++)
            check_tensor(&rs.outputs[i], data, size);
    struct infer_model_info mi;
    infer_decode_model_info(data, size, &mi);
    char model[INFER_MODEL_NAME_MAX + 1];
    infer_decode_model(data, size, model);
    struct lb_server_register reg;
    if (lb_server_decode_register(data, size, &reg) == 0)
        free(reg.models);
    struct lb_server_event ev;
    lb_server_decode_event(data, size, &ev);
    return 0;
}
