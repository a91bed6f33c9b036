/* libFuzzer target for the cache's message decoders (cache_proto.h): the
 * first byte picks the decoder, the rest is the payload, exactly as the
 * daemon and cache_client receive it. Decoded lengths and counts are
 * cross-checked against the input, so a decoder that reads past its input
 * or accepts an impossible count traps. Built by tests/fuzz/build.sh
 * (`tests/fuzz/build.sh 60 cache_proto`), not by ctest. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    char model[CACHE_MODEL_NAME_MAX + 1];
    switch (data[0] % 8) {
    case 0: {
        struct cache_hello m;
        if (cache_proto_decode_hello(p, n, &m) == 0 && strlen(m.shm_name) > n)
            __builtin_trap();
        break;
    }
    case 1:
        if (cache_proto_decode_model(p, n, model) == 0 && !cache_proto_valid_model_name(model))
            __builtin_trap();
        break;
    case 2: {
        struct cache_meta_msg m;
        if (cache_proto_decode_meta(p, n, &m) == 0 && strlen(m.model) > n)
            __builtin_trap();
        break;
    }
    case 3: {
        struct cache_batch_msg m;
        if (cache_proto_decode_batch(p, n, &m) == 0 && n != 20)
            __builtin_trap();
        break;
    }
    case 4: {
        struct cache_done_msg m;
        cache_proto_decode_done(p, n, &m);
        break;
    }
    case 5: {
        uint64_t v;
        if (cache_proto_decode_u64(p, n, &v) == 0 && n != 8)
            __builtin_trap();
        break;
    }
    case 6: {
        struct cache_register_msg m;
        if (cache_proto_decode_register(p, n, &m) == 0) {
            if ((uint64_t)m.nmodels * 12 > n)
                __builtin_trap();
            for (uint32_t i = 0; i < m.nmodels; i++)
                if (strlen(m.models[i].model) > n)
                    __builtin_trap();
            free(m.models);
        }
        break;
    }
    default: {
        struct cache_lb_event m;
        cache_proto_decode_event(p, n, &m);
        break;
    }
    }
    return 0;
}
