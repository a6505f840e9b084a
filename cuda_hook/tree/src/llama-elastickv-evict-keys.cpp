// SPDX-License-Identifier: MIT
// Token eviction: the priorities computed from the keys of a sequence's cells at a pass (semantic: the
// representatives of a K-means, llama-elastickv-policy-semantic.cpp; learned: an MLP's output,
// llama-elastickv-policy-learned.cpp). The pass that calls it is in llama-elastickv-evict.cpp.
#include "llama-elastickv-evict.h"

#include "llama-kv-cache.h"

#include <vector>

void llama_elastickv_evict::key_priority(const layer & l, int32_t h, const std::vector<llama_pos> & pos,
                                         const std::vector<uint8_t> & evicted, int64_t B_layer,
                                         const std::vector<float> & keys, std::vector<float> & prio) const {
    const int64_t n      = (int64_t) pos.size();
    const int64_t n_embd = l.k->ne[0];
    const int64_t hd     = n_embd/l.n_head;
    const bool    mean   = desc.learned || budget.cluster_mean; // the layer's keys averaged over its KV heads
    // x [n, hd] in double: this head's keys, or the mean over the heads (summed in head order)
    std::vector<double> x((size_t) n*hd, 0.0);
    for (int64_t i = 0; i < n; ++i) {
        const float * ki = keys.data() + i*n_embd;
        for (int64_t j = 0; j < hd; ++j) {
            if (mean) {
                double acc = 0.0;
                for (int32_t g = 0; g < l.n_head; ++g) {
                    acc += (double) ki[g*hd + j];
                }
                x[i*hd + j] = acc/(double) l.n_head;
            } else {
                x[i*hd + j] = (double) ki[h*hd + j];
            }
        }
    }
    prio.assign(n, 0.0f);
    if (desc.learned) {
        for (int64_t i = 0; i < n; ++i) {
            prio[i] = (float) mlp.logit(x.data() + i*hd);
        }
        return;
    }
    std::vector<int64_t> cand;
    int64_t heavy = 0;
    llama_elastickv_candidates(desc, budget, params.sink, B_layer, pos, evicted, cand, heavy);
    const uint64_t tag = (uint64_t) l.il*65536 + (uint64_t) (mean ? 0 : h);
    llama_elastickv_semantic_priority(budget, tag, pos, x, hd, cand, heavy, prio);
}
