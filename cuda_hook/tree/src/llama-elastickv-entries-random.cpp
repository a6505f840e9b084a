// SPDX-License-Identifier: MIT
// random_entries: the matched-random element ablation. Every K/V entry of a cell outside the sinks is zeroed
// independently with probability 1 - f (f = ELASTICKV_BUDGET, the fraction kept): entry j of KV head h of
// the cell at position pos, in cache layer l, kind k (0 = K, 1 = V) is zeroed when
//   (hash(seed, l, k, pos, h*head_dim + j) >> 11) * 2^-53 < 1 - f.
#include "llama-elastickv-policy.h"

#include <cmath>

void llama_elastickv_random_entries(const llama_elastickv_budget & b, int32_t layer, int32_t kind, int32_t head, llama_pos pos, float * x, int32_t head_dim) {
    const double drop = 1.0 - b.fraction;
    for (int32_t j = 0; j < head_dim; ++j) {
        const uint64_t h = llama_elastickv_hash(b.seed, { (uint64_t) layer, (uint64_t) kind, (uint64_t) (int64_t) pos,
                                                          (uint64_t) head*(uint64_t) head_dim + (uint64_t) j });
        if ((double) (h >> 11)*0x1.0p-53 < drop) {
            x[j] = 0.0f;
        }
    }
}

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_RANDOM_ENTRIES_DESC = {
    LLAMA_ELASTICKV_POLICY_RANDOM_ENTRIES, "random_entries", false, LLAMA_ELASTICKV_SCORE_NONE, false, nullptr, nullptr,
};
