// SPDX-License-Identifier: MIT
// ElasticKV: constructor and parameter accessor of GGML_OP_KV_SPARSIFY (see ggml-kv-sparsify.h).
#include "ggml-kv-sparsify.h"
#include "ggml-impl.h"

#include <string.h>

// op_params layout: [0] scale (f32 bits), [1] flags
enum {
    KV_SPARSIFY_FLAG_TRANS       = 1,
    KV_SPARSIFY_FLAG_INCREMENTAL = 2,
};

// ggml_kv_sparsify

struct ggml_tensor * ggml_kv_sparsify(
        struct ggml_context * ctx,
        struct ggml_tensor  * a,
        struct ggml_tensor  * cells,
        struct ggml_tensor  * state,
        float                 scale,
        bool                  trans,
        bool                  incremental) {
    GGML_ASSERT(a->ne[2] == 1 && a->ne[3] == 1);
    GGML_ASSERT(a->type == GGML_TYPE_F32 || a->type == GGML_TYPE_F16 || a->type == GGML_TYPE_BF16 ||
                a->type == GGML_TYPE_Q8_0 || a->type == GGML_TYPE_Q4_0 || a->type == GGML_TYPE_Q5_0);
    GGML_ASSERT(!trans || !ggml_is_quantized(a->type)); // a transposed V cache is never quantized
    GGML_ASSERT(a->nb[0] == ggml_type_size(a->type));   // rows are contiguous
    GGML_ASSERT(cells->type == GGML_TYPE_I32 && cells->ne[0] == 2 && ggml_is_contiguous(cells));
    GGML_ASSERT(state->type == GGML_TYPE_F64 && state->ne[0] == GGML_KV_SPARSIFY_NSTATE && ggml_is_contiguous(state));
    GGML_ASSERT(state->ne[2] <= GGML_KV_SPARSIFY_GROUP_MASK + 1);
    GGML_ASSERT(isfinite(scale) && scale >= 0.0f);

    const int64_t n_embd = trans ? a->ne[1] : a->ne[0];
    const int64_t n_head = state->ne[1];
    GGML_ASSERT(n_head > 0 && n_embd % n_head == 0);
    if (ggml_is_quantized(a->type)) {
        // quantized blocks must not straddle two heads
        GGML_ASSERT((n_embd / n_head) % ggml_blck_size(a->type) == 0);
    }

    struct ggml_tensor * result = ggml_view_tensor(ctx, a);

    int32_t params[2];
    memcpy(&params[0], &scale, sizeof(float));
    params[1] = (trans ? KV_SPARSIFY_FLAG_TRANS : 0) | (incremental ? KV_SPARSIFY_FLAG_INCREMENTAL : 0);
    ggml_set_op_params(result, params, sizeof(params));

    result->op     = GGML_OP_KV_SPARSIFY;
    result->src[0] = a;
    result->src[1] = cells;
    result->src[2] = state;

    return result;
}

// ggml_kv_sparsify_get_params

struct ggml_kv_sparsify_params ggml_kv_sparsify_get_params(const struct ggml_tensor * dst) {
    GGML_ASSERT(dst->op == GGML_OP_KV_SPARSIFY);
    const struct ggml_tensor * a     = dst->src[0];
    const struct ggml_tensor * cells = dst->src[1];
    const struct ggml_tensor * state = dst->src[2];

    struct ggml_kv_sparsify_params p;
    memcpy(&p.scale, &dst->op_params[0], sizeof(float));
    p.trans       = (dst->op_params[1] & KV_SPARSIFY_FLAG_TRANS) != 0;
    p.incremental = (dst->op_params[1] & KV_SPARSIFY_FLAG_INCREMENTAL) != 0;
    p.n_head      = (int) state->ne[1];
    p.n_group     = (int) state->ne[2];
    p.head_dim    = (int) ((p.trans ? a->ne[1] : a->ne[0]) / p.n_head);
    p.n_list      = (int) cells->ne[1];
    return p;
}
