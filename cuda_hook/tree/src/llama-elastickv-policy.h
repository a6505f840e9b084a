// SPDX-License-Identifier: MIT
// ElasticKV baselines: the policies selectable by ELASTICKV_POLICY besides ElasticKV itself.
//
// Token policies (streaming, h2o, scissorhands, pyramidkv, random_tokens, sliding_window, lru, lru_fifo) evict
// whole cells per layer and
// KV head: an evicted cell gets -inf in a per-layer, per-KV-head attention bias added to KQ before the
// softmax (llama-elastickv-evict.cpp), so it receives exactly zero attention weight. A cell evicted in every
// layer and KV head of its sequence is freed (ELASTICKV_FREE=1, the default): llama.cpp's cell table drops
// it, the KQ mask hides it like any empty cell, and later tokens reuse it. With ELASTICKV_SCOPE=shared a
// score policy keeps one set per sequence for all layers and heads, so every eviction frees a cell. Every
// token policy is the same selection with its own priority and per-layer budget:
//
//   n      the sequence's logical length at the pass (pos_max + 1, or its resident cells if more), B the
//          budget (ELASTICKV_BUDGET: ceil(f*n) for a fraction f, min(count, n) for a count), B_l the layer's
//          budget (= B except pyramidkv). Freed cells count in n: budgets follow the context, not the cache.
//   sinks  cells with pos < ELASTICKV_SINK, always kept (none for a policy with no_sinks: sliding_window)
//   avail  max(B_l - n_sinks, 0)
//   R      recent window: ELASTICKV_RECENT if set (capped at avail), else floor((1 - HEAVY_RATIO)*avail + 0.5);
//          cells with pos > pos_max - R are always kept. (With a budget below the sinks, avail = R = 0 and the
//          newest cell is evicted too: it is never freed, and with flash attention never evicted, see evict.h.)
//   heavy  avail - R: among the other cells not yet evicted, the `heavy` ones of highest priority are kept
//          (ties: higher pos first), the rest are evicted. Evicted cells stay evicted.
//
// Element policies (random_entries, topk_entries) zero single K/V entries of cells outside the sinks, once
// per cell, like ElasticKV (llama-elastickv-entries-*.cpp).
//
// The numpy definitions are in scripts/elastickv/policies/; tests/test_policies.py checks the hook against
// them on dumps of real runs.
#pragma once

#include "llama.h"

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

enum llama_elastickv_policy {
    LLAMA_ELASTICKV_POLICY_ELASTICKV,
    LLAMA_ELASTICKV_POLICY_STREAMING,
    LLAMA_ELASTICKV_POLICY_H2O,
    LLAMA_ELASTICKV_POLICY_SCISSORHANDS,
    LLAMA_ELASTICKV_POLICY_PYRAMIDKV,
    LLAMA_ELASTICKV_POLICY_RANDOM_TOKENS,
    LLAMA_ELASTICKV_POLICY_RANDOM_ENTRIES,
    LLAMA_ELASTICKV_POLICY_TOPK_ENTRIES,
    LLAMA_ELASTICKV_POLICY_SLIDING_WINDOW,
    LLAMA_ELASTICKV_POLICY_LRU,
    LLAMA_ELASTICKV_POLICY_LRU_FIFO,
    LLAMA_ELASTICKV_POLICY_SEMANTIC,
    LLAMA_ELASTICKV_POLICY_LEARNED,
};

// What the graph accumulates per cell and KV head, summed over the query heads of the group and over the
// queries of each ubatch.
enum llama_elastickv_score {
    LLAMA_ELASTICKV_SCORE_NONE,  // no score (position or seeded priority)
    LLAMA_ELASTICKV_SCORE_ATTN,  // attention probability p
    LLAMA_ELASTICKV_SCORE_COUNT, // 1[p > 1/n_kv]: the query found the cell more important than uniform
};

// Which cells a token policy's keep set covers (ELASTICKV_SCOPE).
enum llama_elastickv_scope {
    LLAMA_ELASTICKV_SCOPE_HEAD,   // one keep set per (sequence, layer, KV head): evictions hide cells per head
    LLAMA_ELASTICKV_SCOPE_SHARED, // one keep set per sequence for all layers and KV heads: every eviction frees a cell
};

// The resolved budget settings shared by every baseline.
struct llama_elastickv_budget {
    double   fraction    = 0.0;  // > 0: fraction of cells (token policies) or entries (element policies) kept
    int64_t  cells       = 0;    // > 0: cells kept per sequence (token policies only)
    int32_t  recent      = -1;   // -1: auto
    double   heavy_ratio = 0.8;
    uint64_t seed        = 42;
    double   beta        = 20.0; // pyramidkv
    int32_t  clusters    = 32;   // semantic: K of the K-means (ELASTICKV_CLUSTERS)
    bool     cluster_mean = false; // semantic: cluster each layer's keys averaged over its KV heads (the notebook's)
                                   // instead of each KV head's own keys (ELASTICKV_CLUSTER_KEYS=mean)
    std::string learned_weights;   // learned: the MLP's weights file (ELASTICKV_LEARNED_WEIGHTS)
};

// One selectable policy. Token policies fill `priority` and `layer_budget`.
struct llama_elastickv_policy_desc {
    llama_elastickv_policy policy;
    const char *           name;
    bool                   token;        // true: cell eviction by attention bias; false: element zeroing
    llama_elastickv_score  score;
    bool                   reset_score;  // scores cover the queries since the last pass only
    // priority of a cell (higher is kept first); score is the accumulated score of this KV head
    double  (*priority)(const llama_elastickv_budget & b, llama_pos pos, float score);
    // cells kept in layer l of n_layer when the per-layer average budget is B and the sequence holds n cells
    int64_t (*layer_budget)(const llama_elastickv_budget & b, int64_t B, int64_t n, int32_t l, int32_t n_layer);
    bool                   no_sinks = false; // ELASTICKV_SINK is not used: no cell is kept for its position (sliding_window)
    // The priority is the cell's recency (lru, lru_fifo): the index of the last pass at which it was used, a cell
    // counting as used at the first pass after it was written (or restored) and, when the policy has a score, at
    // every pass whose accumulated score of the cell is > 0 (the count score: a query gave it more than 1/n_kv).
    // The recency, not the score, is what `priority` receives.
    bool                   recency  = false;
    // The priority is 1 for the cells nearest the centroids of a K-means over the candidates' keys, 0 for the others
    // (semantic, llama-elastickv-policy-semantic.cpp); the budget left after them goes to the most recent candidates.
    bool                   clusters = false;
    // The priority is the output (before the sigmoid, which keeps the order) of an MLP on the cell's key averaged
    // over the layer's KV heads (learned, llama-elastickv-policy-learned.cpp); every head of a layer keeps the same.
    bool                   learned  = false;

    // the priority is computed from the keys of the cells at the pass (semantic, learned)
    bool from_keys() const { return clusters || learned; }
};

// learned: the kv-cache-compression notebook's MLP (in -> 128 -> 64 -> 1, ReLU between), read from the file
// ELASTICKV_LEARNED_WEIGHTS names (written by scripts/analysis/train_learned.py). Little-endian: the 8 bytes
// "EKVMLP01", uint32 n (layers), uint32 dims[n + 1] (dims[n] = 1), then per layer float32 W [out][in] and b [out].
struct llama_elastickv_mlp {
    std::vector<uint32_t>           dims;
    std::vector<std::vector<float>> W, b;
    // throws, naming ELASTICKV_LEARNED_WEIGHTS and what is wrong, on a missing, short, long or malformed file
    void   load(const std::string & path);
    // the output before the sigmoid for one input x[dims[0]], in double precision: per unit, the products
    // W[o][i]*x[i] summed over i in order, then + b[o]; ReLU after every layer but the last
    double logit(const double * x) const;
};

extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_STREAMING_DESC;
extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_H2O_DESC;
extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_SCISSORHANDS_DESC;
extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_PYRAMIDKV_DESC;
extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_RANDOM_TOKENS_DESC;
extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_RANDOM_ENTRIES_DESC;
extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_TOPK_ENTRIES_DESC;
extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_SLIDING_WINDOW_DESC;
extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_LRU_DESC;
extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_LRU_FIFO_DESC;
extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_SEMANTIC_DESC;
extern const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_LEARNED_DESC;

// nullptr for LLAMA_ELASTICKV_POLICY_ELASTICKV
const llama_elastickv_policy_desc * llama_elastickv_policy_get(llama_elastickv_policy p);

// B for a sequence of n cells: ceil(fraction*n), or min(cells, n)
int64_t llama_elastickv_budget_cells(const llama_elastickv_budget & b, int64_t n);

// the shared budget rule for every layer (all token policies but pyramidkv)
int64_t llama_elastickv_uniform_budget(const llama_elastickv_budget & b, int64_t B, int64_t n, int32_t l, int32_t n_layer);

// Seeded 64-bit hash of a tuple: h = mix(seed); h = mix(h ^ a_i) for each a_i (mix: splitmix64's finaliser).
uint64_t llama_elastickv_hash(uint64_t seed, std::initializer_list<uint64_t> a);

// The candidates of a selection (indices into pos: not a sink, not in the recent window, not evicted yet, ascending
// position) and how many of them are kept (heavy). The rule of llama_elastickv_select, for policies that need the
// candidates before it (semantic).
void llama_elastickv_candidates(
        const llama_elastickv_policy_desc & desc,
        const llama_elastickv_budget      & b,
        int32_t                              sink,
        int64_t                              B_layer,
        const std::vector<llama_pos>       & pos,
        const std::vector<uint8_t>         & evicted,
        std::vector<int64_t>               & cand,
        int64_t                            & heavy);

// semantic: the priority (1: nearest its centroid, 0: not) of n cells at positions pos whose keys are x [n, d]
// (row-major), from a seeded K-means over the candidates `cand`; `tag` (layer, KV head) enters the seed.
void llama_elastickv_semantic_priority(
        const llama_elastickv_budget & b,
        uint64_t                       tag,
        const std::vector<llama_pos> & pos,
        const std::vector<double>    & x,
        int64_t                        d,
        const std::vector<int64_t>   & cand,
        int64_t                        heavy,
        std::vector<float>           & prio);

// One (sequence, layer, KV head) at a pass: cells in ascending position, their accumulated scores, and
// the evicted flags (in: before the pass, out: after). Implements the selection described above.
void llama_elastickv_select(
        const llama_elastickv_policy_desc & desc,
        const llama_elastickv_budget      & b,
        int32_t                              sink,
        int64_t                              B_layer,
        const std::vector<llama_pos>       & pos,
        const float                        * score,
        std::vector<uint8_t>               & evicted);

// Element policies: zero entries of one cell's K (kind 0) or V (kind 1) row of one KV head, in place.
// `layer` is the index among the cache's layers; x holds head_dim floats.
void llama_elastickv_random_entries(const llama_elastickv_budget & b, int32_t layer, int32_t kind, int32_t head, llama_pos pos, float * x, int32_t head_dim);
void llama_elastickv_topk_entries  (const llama_elastickv_budget & b, float * x, int32_t head_dim);
