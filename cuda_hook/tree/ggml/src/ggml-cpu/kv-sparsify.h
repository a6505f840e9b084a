// SPDX-License-Identifier: MIT
// ElasticKV: CPU kernel of GGML_OP_KV_SPARSIFY (see ggml/include/ggml-kv-sparsify.h).
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

void ggml_compute_forward_kv_sparsify(const struct ggml_compute_params * params, struct ggml_tensor * dst);

#ifdef __cplusplus
}
#endif
