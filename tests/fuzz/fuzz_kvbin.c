/* libFuzzer target for the kv.bin reader: every input is indexed, every
 * model checked, every value verified. Built by tests/fuzz/build.sh (clang,
 * with ASan+UBSan), not by ctest. The build defines
 * KVBIN_FUZZ_NO_HEADER_CHECKSUM so that mutated headers get past their
 * checksums and reach the bounds checks behind them. */
#include <stddef.h>
#include <stdint.h>

#include "formats/kvbin.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kvbin kv;
    char err[KVBIN_ERR_LEN];
    if (kvbin_open_buffer(&kv, data, size, "fuzz", err, sizeof err) != 0)
        return 0;
    for (uint32_t i = 0; i < kv.nmodels; i++) {
        const struct kvbin_model *m = &kv.models[i];
        kvbin_check_model(&kv, m, 1, err, sizeof err);
        for (uint32_t j = 0; j < m->nrecords; j++) {
            kvbin_verify(&m->records[j], err, sizeof err);
            if (kvbin_find_record(m, m->records[j].key) != &m->records[j])
                __builtin_trap();
        }
    }
    kvbin_close(&kv);
    return 0;
}
