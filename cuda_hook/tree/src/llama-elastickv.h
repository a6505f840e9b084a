// SPDX-License-Identifier: MIT
// ElasticKV: KV-cache sparsification inside llama_context::decode, switched on by ELASTICKV_* variables.
//
// At the end of every ubatch, each sequence whose cache has grown by ELASTICKV_EVICT_EVERY positions since
// its last pass (and holds at least ELASTICKV_WARM) gets a pass: for every attention layer, KV head and
// K/V tensor, the entries below tau = scale * mean|x| (outside the first ELASTICKV_SINK positions) are set to
// zero in place by the GGML_OP_KV_SPARSIFY op, on the backend that holds the layer's cache.
// The method is defined in SPEC.md §1 of the ElasticKV repository; the op in ggml/include/ggml-kv-sparsify.h.
#pragma once

#include "llama.h"
#include "llama-elastickv-policy.h"
#include "llama-elastickv-stats.h"
#include "ggml.h"
#include "ggml-backend.h"

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

struct llama_model;
struct llama_cparams;
struct llama_ubatch;
class  llama_memory_i;
class  llama_kv_cache;

// One ELASTICKV_* environment variable. This table is the single declaration; the Python mirror
// (scripts/elastickv/envvars.py) is checked against it by the test suite.
struct llama_elastickv_var {
    const char * name;
    const char * def;     // default value, as text
    const char * accepts; // what a valid value looks like
    const char * meaning;
};

extern const llama_elastickv_var LLAMA_ELASTICKV_VARS[];
extern const size_t              LLAMA_ELASTICKV_N_VARS;

enum llama_elastickv_mode {
    LLAMA_ELASTICKV_MODE_FULL,        // re-threshold the whole cache at every pass (stateless)
    LLAMA_ELASTICKV_MODE_INCREMENTAL, // threshold each cell once, with running per-head statistics
};

// The resolved configuration: defaults < preset < explicit variables.
struct llama_elastickv_config {
    bool        enabled     = false;
    float       scale_k     = 0.35f;
    float       scale_v     = 0.17f;
    int32_t     sink        = 64;
    int32_t     evict_every = 64;
    int32_t     warm        = 128;
    int32_t     head_dim    = 0;      // 0: auto
    int32_t     verbose     = 0;
    std::string preset      = "none";
    llama_elastickv_mode mode = LLAMA_ELASTICKV_MODE_FULL;
    std::string stats_path;           // empty: no JSONL stats
    std::string dump_dir;             // empty: no .npy dumps
    llama_elastickv_policy policy = LLAMA_ELASTICKV_POLICY_ELASTICKV;
    llama_elastickv_budget budget;    // the baselines' budget (policy != elastickv)
    uint32_t    kv_cells    = 0;      // ELASTICKV_KV_CELLS: cells per KV stream, 0: the logical context
    llama_elastickv_scope scope = LLAMA_ELASTICKV_SCOPE_HEAD;
    bool        free_cells  = true;   // ELASTICKV_FREE: release cells evicted in every layer and KV head
};

// The physical cap (ELASTICKV_KV_CELLS), called before the context creates its memory: the number of cells
// per KV stream the cache is allocated with, or 0 to keep llama.cpp's own (n_ctx_seq). Throws, naming the
// variables and the smallest N that works, when the policy or the batch size cannot keep every sequence
// inside N cells (llama-elastickv-cap.cpp).
uint32_t llama_elastickv_kv_cells(const llama_model & model, const llama_cparams & cparams);

// True when every eviction of the configured token policy frees its cell (no per-head attention bias needed):
// ELASTICKV_FREE=1 and a position-only policy (streaming, random_tokens) or ELASTICKV_SCOPE=shared.
bool llama_elastickv_frees_all(const llama_elastickv_config & cfg);

// Reads and validates every ELASTICKV_* variable. Throws std::runtime_error naming the variable and
// what it accepts on a bad value or an unknown ELASTICKV_* name.
llama_elastickv_config llama_elastickv_config_from_env();

struct llama_elastickv {
    // Throws std::runtime_error when the configuration does not fit this context (context size, cache
    // type, head size, memory type, backend).
    llama_elastickv(
            const llama_elastickv_config        & cfg,
            const llama_model                   & model,
            const llama_cparams                 & cparams,
            llama_memory_i                      * memory,
            const std::vector<ggml_backend_t>   & backends);
    ~llama_elastickv();

    // Called before pending K-shifts are applied: shifted K rows are re-rotated, so zeros are lost.
    void on_memory_update();

    // Called at the end of each ubatch of llama_context::decode, after its K/V were enqueued.
    void on_ubatch(const llama_ubatch & ubatch);

    // Called after the memory placed the ubatch and before its graph runs (token-eviction baselines).
    void before_ubatch(const llama_ubatch & ubatch);

    // Called after the memory restored state (llama_state_*_set_data / load_file): seq_id, or -1 for the whole
    // cache. The restored cells were written without a ubatch: their eviction flags, bias and scores are reset
    // and the sequence starts over (its next ubatch is followed by a pass).
    void on_state_read(llama_seq_id seq_id);

    // The public per-sequence counters (llama-elastickv-stats.cpp; include/llama-elastickv-stats.h). The first
    // call switches on the read-back of each pass's statistics.
    bool has_seq(llama_seq_id s) const;
    void seq_stats(llama_seq_id s, llama_elastickv_seq_stats & out);
    llama_pos resume_pos(llama_seq_id s, llama_pos n_past) const;

    // True when the hook adds nodes to the attention graph (the context then re-reserves its graphs).
    bool adds_graph_nodes() const;

    // Graph hooks of the non-flash attention path (llm_graph_context::build_attn_mha): the token-eviction
    // bias added to KQ before the softmax, and the score accumulation after it. k is the K view read by
    // the attention and il the model layer; attention that does not read this hook's cache is untouched.
    ggml_tensor * attn_bias   (ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * kq, const ggml_tensor * k, int il) const;
    void          attn_observe(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * kq_soft, const ggml_tensor * k, int il) const;
    // The flash-attention path: evicted cells are freed (the KQ mask hides them); score-based policies get
    // their softmax from a small score node beside the fused attention (llama-elastickv-evict.h).
    void          attn_observe_fa(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * q, const ggml_tensor * k,
                                  ggml_tensor * kq_mask, float kq_scale, float max_bias, int il) const;

    struct impl;

private:
    // One impl per attention KV cache: pimpl for the model's only cache, or for the full cache of a model whose
    // attention layers are split between a full and a sliding-window cache (iSWA), whose sliding-window cache is
    // swa's. Every entry point above is fanned out to both; token policies are refused on iSWA models.
    std::unique_ptr<impl> pimpl;
    std::unique_ptr<impl> swa;
};

// Parses the environment once; returns nullptr when ELASTICKV is off or the context takes no pass
// (warm-up-only contexts such as MTP drafts). Throws on a bad value (see above).
std::unique_ptr<llama_elastickv> llama_elastickv_init(
        const llama_model                 & model,
        const llama_cparams               & cparams,
        llama_memory_i                    * memory,
        const std::vector<ggml_backend_t> & backends);
