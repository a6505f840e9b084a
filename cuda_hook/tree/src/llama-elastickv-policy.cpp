// SPDX-License-Identifier: MIT
// ElasticKV baselines: the selection shared by every token policy, the budget rule, the seeded hash and
// the policy table. The policies themselves are one file each (llama-elastickv-policy-*.cpp,
// llama-elastickv-entries-*.cpp); the rules are stated in llama-elastickv-policy.h.
#include "llama-elastickv-policy.h"

#include <algorithm>
#include <cmath>
#include <numeric>

const llama_elastickv_policy_desc * llama_elastickv_policy_get(llama_elastickv_policy p) {
    switch (p) {
        case LLAMA_ELASTICKV_POLICY_ELASTICKV:      return nullptr;
        case LLAMA_ELASTICKV_POLICY_STREAMING:      return &LLAMA_ELASTICKV_POLICY_STREAMING_DESC;
        case LLAMA_ELASTICKV_POLICY_H2O:            return &LLAMA_ELASTICKV_POLICY_H2O_DESC;
        case LLAMA_ELASTICKV_POLICY_SCISSORHANDS:   return &LLAMA_ELASTICKV_POLICY_SCISSORHANDS_DESC;
        case LLAMA_ELASTICKV_POLICY_PYRAMIDKV:      return &LLAMA_ELASTICKV_POLICY_PYRAMIDKV_DESC;
        case LLAMA_ELASTICKV_POLICY_RANDOM_TOKENS:  return &LLAMA_ELASTICKV_POLICY_RANDOM_TOKENS_DESC;
        case LLAMA_ELASTICKV_POLICY_RANDOM_ENTRIES: return &LLAMA_ELASTICKV_POLICY_RANDOM_ENTRIES_DESC;
        case LLAMA_ELASTICKV_POLICY_TOPK_ENTRIES:   return &LLAMA_ELASTICKV_POLICY_TOPK_ENTRIES_DESC;
        case LLAMA_ELASTICKV_POLICY_SLIDING_WINDOW: return &LLAMA_ELASTICKV_POLICY_SLIDING_WINDOW_DESC;
        case LLAMA_ELASTICKV_POLICY_LRU:            return &LLAMA_ELASTICKV_POLICY_LRU_DESC;
        case LLAMA_ELASTICKV_POLICY_LRU_FIFO:       return &LLAMA_ELASTICKV_POLICY_LRU_FIFO_DESC;
        case LLAMA_ELASTICKV_POLICY_SEMANTIC:       return &LLAMA_ELASTICKV_POLICY_SEMANTIC_DESC;
        case LLAMA_ELASTICKV_POLICY_LEARNED:        return &LLAMA_ELASTICKV_POLICY_LEARNED_DESC;
    }
    return nullptr;
}

int64_t llama_elastickv_budget_cells(const llama_elastickv_budget & b, int64_t n) {
    if (b.fraction > 0.0) {
        return std::min<int64_t>(n, (int64_t) std::ceil(b.fraction*(double) n));
    }
    return std::min<int64_t>(n, b.cells);
}

int64_t llama_elastickv_uniform_budget(const llama_elastickv_budget & b, int64_t B, int64_t n, int32_t l, int32_t n_layer) {
    (void) b; (void) n; (void) l; (void) n_layer;
    return B;
}

static uint64_t ekv_mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t llama_elastickv_hash(uint64_t seed, std::initializer_list<uint64_t> a) {
    uint64_t h = ekv_mix(seed);
    for (uint64_t v : a) {
        h = ekv_mix(h ^ v);
    }
    return h;
}

void llama_elastickv_candidates(
        const llama_elastickv_policy_desc & desc,
        const llama_elastickv_budget      & b,
        int32_t                              sink,
        int64_t                              B_layer,
        const std::vector<llama_pos>       & pos,
        const std::vector<uint8_t>         & evicted,
        std::vector<int64_t>               & cand,
        int64_t                            & heavy) {
    cand.clear();
    heavy = 0;
    const int64_t n = (int64_t) pos.size();
    if (n == 0) {
        return;
    }
    const llama_pos pos_max = pos.back();
    if (desc.no_sinks) {
        sink = 0;
    }

    int64_t n_sink = 0;
    for (llama_pos p : pos) {
        n_sink += p < sink;
    }
    const int64_t avail = std::max<int64_t>(B_layer - n_sink, 0);
    int64_t R = b.recent >= 0 ? std::min<int64_t>(b.recent, avail)
                              : (int64_t) std::floor((1.0 - b.heavy_ratio)*(double) avail + 0.5);
    R = std::min(R, avail);
    heavy = avail - R;

    // candidates: not a sink, not recent, not evicted yet
    for (int64_t i = 0; i < n; ++i) {
        if (pos[i] >= sink && pos[i] <= pos_max - R && !evicted[i]) {
            cand.push_back(i);
        }
    }
}

void llama_elastickv_select(
        const llama_elastickv_policy_desc & desc,
        const llama_elastickv_budget      & b,
        int32_t                              sink,
        int64_t                              B_layer,
        const std::vector<llama_pos>       & pos,
        const float                        * score,
        std::vector<uint8_t>               & evicted) {
    std::vector<int64_t> cand;
    int64_t heavy = 0;
    llama_elastickv_candidates(desc, b, sink, B_layer, pos, evicted, cand, heavy);
    if ((int64_t) cand.size() <= heavy) {
        return;
    }
    std::vector<double> prio(pos.size(), 0.0);
    for (int64_t i : cand) {
        prio[i] = desc.priority(b, pos[i], score ? score[i] : 0.0f);
    }
    // highest priority first, ties: the more recent cell first
    std::stable_sort(cand.begin(), cand.end(), [&](int64_t x, int64_t y) {
        if (prio[x] != prio[y]) {
            return prio[x] > prio[y];
        }
        return pos[x] > pos[y];
    });
    for (size_t j = (size_t) heavy; j < cand.size(); ++j) {
        evicted[cand[j]] = 1;
    }
}
