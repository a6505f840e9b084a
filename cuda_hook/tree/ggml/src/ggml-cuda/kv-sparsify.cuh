// SPDX-License-Identifier: MIT
// ElasticKV: CUDA kernel of GGML_OP_KV_SPARSIFY (see ggml/include/ggml-kv-sparsify.h).
#include "common.cuh"

#define CUDA_KV_SPARSIFY_BLOCK_SIZE 256

void ggml_cuda_op_kv_sparsify(ggml_backend_cuda_context & ctx, ggml_tensor * dst);
