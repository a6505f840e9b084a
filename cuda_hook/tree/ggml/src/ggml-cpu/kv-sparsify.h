// SPDX-License-Identifier: MIT
// ElasticKV: CPU kernel of GGML_OP_KV_SPARSIFY (see ggml/include/ggml-kv-sparsify.h).
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

void ggml_compute_forward_kv_sparsify(const struct ggml_compute_params * params, struct ggml_tensor * dst);

// Bytes of the work buffer the op needs with n_threads threads (ggml_graph_plan).
size_t ggml_kv_sparsify_cpu_work_size(const struct ggml_tensor * dst, int n_threads);

#ifdef __cplusplus
}
#endif
