// SPDX-License-Identifier: MIT
// Token eviction for the baselines of llama-elastickv-policy.h, inside llama.cpp's attention graph.
//
// Per backend holding cache layers the evictor owns one F32 tensor `state` next to the layers' K/V:
//   bias  [layer][stream][KV head][cell]: 0, or EVICTED (-1e30, finite) for an evicted cell of that KV head; added
//         to KQ before the softmax (non-flash path of llm_graph_context::build_attn_mha), broadcast over the
//         query heads that share the KV head and over the ubatch's queries. The logit of an evicted cell
//         is at least 1e29 below every other: its weight is exactly 0, as with -inf (zeroing K would not do:
//         exp(0 - max) > 0). Finite, so that 0 * EVICTED = 0 (see keep).
//   score [layer][stream][KV head][cell] (score-based policies): the softmax output of every ubatch, summed over its
//         queries and the query heads of each KV head, is added in the graph, on the device that holds the
//         layer. With flash attention the softmax comes from a small score node beside the fused attention
//         (attn_observe_fa): KQ of the ubatch's queries against the cache, masked and normalised like the
//         attention's own.
// and one F32 tensor `keep` [stream][cell]: 0 for the cells the current ubatch writes, 1 elsewhere. The graph
// multiplies bias and score by keep before using them and writes the product back: a cell written by a new
// token starts with bias 0 and score 0 without a copy per layer and head.
//
// Host traffic: per ubatch at most two copies of a span of `keep` per backend (the cells of the previous and
// of this ubatch); per pass one download of the scores and one upload of the changed span of bias and score
// per backend. The host keeps a mirror of `state`.
//
// A cell evicted in every layer and KV head of its sequence is freed at the pass (ELASTICKV_FREE=1): it leaves
// llama.cpp's cell table like a seq_rm of its position, and its bias and score are cleared. The newest cell,
// cells shared with another sequence and cells of a partial (per-head) eviction stay (behind the bias); under
// flash attention, which takes no bias, the newest cell and shared cells are not evicted at all.
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
#include <numeric>
#include <string>
#include <vector>

class  llama_kv_cache;
struct llama_hparams;
struct llama_ubatch;

// what the evictor needs to know of the context besides the policy
struct llama_elastickv_evict_params {
    int32_t               sink;
    llama_elastickv_scope scope;
    bool                  free_cells; // release cells evicted in every layer and KV head
    bool                  flash_attn; // no bias (evicted cells must be freed); scores from a score node
    std::string           dump_dir;   // ELASTICKV_DUMP, empty: no dumps
};

struct llama_elastickv_evict {
    llama_elastickv_evict(
            const llama_elastickv_policy_desc  & desc,
            const llama_elastickv_budget       & budget,
            const llama_elastickv_evict_params & params,
            llama_kv_cache                      * kv,
            const llama_hparams                 & hparams,
            const std::vector<ggml_backend_t>   & backends);

    // graph hooks (llama-graph.cpp); k is the K view the attention reads, il the model layer
    ggml_tensor * attn_bias      (ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * kq, const ggml_tensor * k, int il) const;
    void          attn_observe   (ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * kq_soft, const ggml_tensor * k, int il) const;
    void          attn_observe_fa(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * q, const ggml_tensor * k,
                                  ggml_tensor * kq_mask, float kq_scale, float max_bias, int il) const;

    // before the ubatch's graph runs: its cells start with bias 0 and score 0 (through `keep`)
    void before_ubatch(const llama_ubatch & ubatch);

    // after the ubatch's graph ran (not a warm-up): with a dump, writes its queries (ctx<C>_ub<U>_*)
    void after_ubatch(const llama_ubatch & ubatch, int32_t ctx_id, int64_t n_pass);

    // one pass for these sequences; writes stats records and dumps when asked
    void pass(const std::vector<llama_seq_id> & seqs, int32_t ctx_id, int64_t n_pass, FILE * stats, int32_t verbose);

    // state was restored into the cache (seq_id, or -1: all): the cells now held get no eviction, bias or score
    void reset_restored(llama_seq_id seq_id);

    bool uses_scores() const { return desc.score != LLAMA_ELASTICKV_SCORE_NONE; }

    // bytes of the evictor's device tensors (bias, score, keep), summed over backends
    size_t device_bytes() const;

    // cells freed so far
    int64_t n_freed() const { return std::accumulate(seq_freed_total.begin(), seq_freed_total.end(), (int64_t) 0); }

    // per sequence: cells freed so far, and its resident cells evicted in every layer and KV head at its last pass
    int64_t seq_freed  (llama_seq_id s) const { return (size_t) s < seq_freed_total.size() ? seq_freed_total[s] : 0; }
    int64_t seq_evicted(llama_seq_id s) const { return (size_t) s < seq_evicted_last.size() ? seq_evicted_last[s] : 0; }

private:
    struct layer {
        int32_t       il;
        int32_t       n_head;
        int32_t       dev;           // index into devs
        size_t        off_bias  = 0; // offsets (in floats) of the layer's block in the device state
        size_t        off_score = 0;
        ggml_tensor * k;
        ggml_tensor * bias  = nullptr; // views of the device state, [kv_size, n_head, n_stream]
        ggml_tensor * score = nullptr;
        std::vector<std::vector<uint8_t>> evicted; // [stream][head*kv_size + cell]
        std::vector<std::vector<float>>   recency; // [stream][head*kv_size + cell]: lru, lru_fifo (host only)
        mutable bool  hooked = false;              // the last graph build reached this layer
        // ELASTICKV_DUMP with a score-based policy: the queries of the last graph build (an output of the graph)
        mutable ggml_tensor *       q_src  = nullptr; // Q as the KQ product reads it
        mutable ggml_tensor *       q_out  = nullptr; // its contiguous copy [head_dim, n_tokens, n_head, n_stream]
        mutable float               kq_scale = 0.0f;  // the softmax scale of the attention
        mutable int64_t             n_kv     = 0;     // cells the attention saw (the KV view of the graph)
    };

    struct device {
        ggml_backend_t          backend;
        ggml_context_ptr        ctx;
        ggml_backend_buffer_ptr buf;
        ggml_tensor *           state = nullptr; // F32, bias blocks then score blocks
        ggml_tensor *           keep  = nullptr; // F32 [kv_size, 1, n_stream]
        std::vector<float>      host;            // mirror of state
        std::vector<float>      keep_host;       // mirror of keep
        size_t                  n_bias = 0;      // floats of the bias blocks (the score blocks follow)
        size_t                  dirty_lo = SIZE_MAX, dirty_hi = 0; // span of host changed since the last upload
        std::vector<uint32_t>   kept_zero;       // [stream*kv_size + cell] of keep set to 0 for the last ubatch
    };

    // what a pass dumps of one sequence (ELASTICKV_DUMP), [layer][head][cell] in the order of its cells
    struct pass_dump {
        std::vector<float>   score, recency;
        std::vector<uint8_t> before, after;
    };
    // llama-elastickv-evict-dump.cpp
    void write_pass_dump(int32_t ctx_id, int64_t n_pass, llama_seq_id s, uint32_t strm, const std::vector<uint32_t> & cells,
                         const std::vector<llama_pos> & pos, const pass_dump & d, int64_t B, int64_t n_log, int64_t freed) const;

    // llama-elastickv-evict-keys.cpp: semantic's representatives or learned's outputs for one layer and KV head, from
    // the layer's keys of the sequence's cells (float [n, n_head, hd]) and the head's flags before the pass
    void key_priority(const layer & l, int32_t h, const std::vector<llama_pos> & pos, const std::vector<uint8_t> & evicted,
                      int64_t B_layer, const std::vector<float> & keys, std::vector<float> & prio) const;

    const layer * layer_for(int il, const ggml_tensor * k) const;
    float & bias_at (layer & l, uint32_t strm, int32_t h, uint32_t c);
    float & score_at(layer & l, uint32_t strm, int32_t h, uint32_t c);
    void    mark(device & d, size_t off);
    void    upload_dirty();
    void    clear_cell(uint32_t strm, uint32_t c);
    ggml_tensor * keep_view(ggml_context * ctx, const layer & l, int64_t n_kv, int64_t ns, size_t s0) const;

    llama_elastickv_policy_desc  desc;
    llama_elastickv_budget       budget;
    llama_elastickv_evict_params params;
    llama_elastickv_mlp          mlp; // learned: the network
    llama_kv_cache *             kv;
    uint32_t                     kv_size;
    uint32_t                     n_stream;

    std::vector<layer>  layers;
    std::vector<int32_t> by_il; // model layer -> index in layers, -1 if none
    std::vector<device> devs;
    int64_t             n_ubatch    = 0; // ubatches seen (their dump names)
    int64_t             next_pass   = 0; // the index the next pass will have: the recency of a cell written now
    std::vector<int64_t> seq_freed_total;  // [seq]
    std::vector<int64_t> seq_evicted_last; // [seq]
};
