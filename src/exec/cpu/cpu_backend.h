/* cpu_backend: the CPU compute backend on oneDNN (C API, Debian's 2.6).
 *
 * Convolutions, pooling, concat, batch/layer normalisation, softmax,
 * eltwise, binary ops and (batched) matrix products run as oneDNN
 * primitives; the rest (Gather, Where, Slice, numpy-broadcast corners, Erf)
 * as OpenMP C kernels (cpu_kernels.h). CNN activations stay in the blocked
 * layouts oneDNN's convolutions prefer (format "any") and are reordered to
 * plain C order only where an op or a model output needs it. Weights are
 * reordered once, when their batch arrives, into the layout fixed at model
 * creation; BatchNormalization is folded into the preceding Conv then. */
#ifndef PIPEPS_EXEC_CPU_BACKEND_H
#define PIPEPS_EXEC_CPU_BACKEND_H

#include "exec/backend.h"

/* The process-wide CPU backend (one oneDNN engine), created on first use.
 * Never freed. */
struct exec_backend *cpu_backend_get(void);

#endif
