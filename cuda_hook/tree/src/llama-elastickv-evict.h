// SPDX-License-Identifier: MIT
// Token eviction for the baselines of llama-elastickv-policy.h, inside llama.cpp's attention graph.
//
// Per cache layer the evictor owns, next to the layer's K/V on the same backend:
//   bias  F32 [kv_size, n_head_kv, n_stream]: 0, or -inf for an evicted cell of that KV head; added to KQ
//         before the softmax (non-flash path of llm_graph_context::build_attn_mha), broadcast over the
//         query heads that share the KV head and over the ubatch's queries. A -inf logit gets weight 0:
//         the cell is out of the attention exactly (zeroing K would not do: exp(0 - max) > 0).
//   score F32 [kv_size, n_head_kv, n_stream] (score-based policies): the softmax output of every ubatch,
//         summed over its queries and the query heads of each KV head, is added in the graph, on the
//         device that holds the layer. The host reads it back only at a pass (every EVICT_EVERY tokens).
// A cell written by a new token gets bias 0 and score 0 before the ubatch is computed.
//
// With ELASTICKV_DUMP, a score-based policy also keeps each layer's queries (Q after RoPE, the input of KQ) as
// graph outputs and writes them after every ubatch, and every pass writes the K rows of the sequence's cells
// and the cache's own cell table: the tests recompute the scores from Q and K (tests/test_policies.py).
#pragma once

#include "llama-elastickv-policy.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpp.h"

#include <cstdio>
#include <string>
#include <vector>

class  llama_kv_cache;
struct llama_hparams;
struct llama_ubatch;

struct llama_elastickv_evict {
    llama_elastickv_evict(
            const llama_elastickv_policy_desc & desc,
            const llama_elastickv_budget      & budget,
            int32_t                              sink,
            llama_kv_cache                     * kv,
            const llama_hparams                & hparams,
            const std::vector<ggml_backend_t>  & backends,
            const std::string                  & dump_dir);

    // graph hooks (llama-graph.cpp); k is the K view the attention reads, il the model layer
    ggml_tensor * attn_bias   (ggml_context * ctx, ggml_tensor * kq, const ggml_tensor * k, int il) const;
    void          attn_observe(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * kq_soft, const ggml_tensor * k, int il) const;

    // before the ubatch's graph runs: its cells start with bias 0 and score 0
    void before_ubatch(const llama_ubatch & ubatch);

    // after the ubatch's graph ran (not a warm-up): with a dump, writes its queries (ctx<C>_ub<U>_*)
    void after_ubatch(const llama_ubatch & ubatch, int32_t ctx_id, int64_t n_pass);

    // one pass for these sequences; writes stats records and dumps when asked
    void pass(const std::vector<llama_seq_id> & seqs, int32_t ctx_id, int64_t n_pass, FILE * stats, int32_t verbose);

    bool uses_scores() const { return desc.score != LLAMA_ELASTICKV_SCORE_NONE; }

private:
    struct layer {
        int32_t       il;
        int32_t       n_head;
        ggml_tensor * k;
        ggml_backend_t backend;
        ggml_tensor * bias  = nullptr;
        ggml_tensor * score = nullptr;
        std::vector<std::vector<uint8_t>> evicted; // [stream][head*kv_size + cell]
        mutable bool  hooked = false;              // the last graph build reached this layer
        // ELASTICKV_DUMP with a score-based policy: the queries of the last graph build (an output of the graph)
        mutable ggml_tensor *       q_src  = nullptr; // Q as the KQ product reads it (set by attn_bias)
        mutable ggml_tensor *       q_out  = nullptr; // its contiguous copy [head_dim, n_tokens, n_head, n_stream]
        mutable float               kq_scale = 0.0f;  // the softmax scale of the attention
        mutable int64_t             n_kv     = 0;     // cells the attention saw (the KV view of the graph)
    };

    const layer * layer_for(int il, const ggml_tensor * k) const;
    void zero_runs(ggml_tensor * t, uint32_t strm, int32_t head, const std::vector<uint32_t> & cells, ggml_backend_t backend, bool async);

    llama_elastickv_policy_desc desc;
    llama_elastickv_budget      budget;
    int32_t                     sink;
    llama_kv_cache *            kv;
    uint32_t                    kv_size;
    uint32_t                    n_stream;

    std::vector<layer>                  layers;
    std::vector<int32_t>                by_il; // model layer -> index in layers, -1 if none
    std::vector<ggml_context_ptr>       ctxs;
    std::vector<ggml_backend_buffer_ptr> bufs;
    std::vector<float>                  zeros; // kv_size zeros, the source of async clears
    std::string                         dump_dir; // ELASTICKV_DUMP, empty: no dumps
    int64_t                             n_ubatch = 0; // ubatches seen (their dump names)
};
