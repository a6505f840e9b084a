// SPDX-License-Identifier: MIT
// topk_entries: per-token magnitude top-k of each KV head's K and V row, the element-wise pruning
// published as Mustafar (Joo et al., arXiv 2505.22913). In each row of head_dim entries of a cell outside
// the sinks, the k = ceil(f*head_dim) entries of largest |x| are kept (ties: lower index first) and the
// others are zeroed; f = ELASTICKV_BUDGET.
#include "llama-elastickv-policy.h"

#include <algorithm>
#include <cmath>
#include <numeric>

void llama_elastickv_topk_entries(const llama_elastickv_budget & b, float * x, int32_t head_dim) {
    const int32_t k = std::min<int32_t>(head_dim, (int32_t) std::ceil(b.fraction*(double) head_dim));
    std::vector<int32_t> idx(head_dim);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t c) { return std::fabs(x[a]) > std::fabs(x[c]); });
    for (int32_t j = k; j < head_dim; ++j) {
        x[idx[j]] = 0.0f;
    }
}

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_TOPK_ENTRIES_DESC = {
    LLAMA_ELASTICKV_POLICY_TOPK_ENTRIES, "topk_entries", false, LLAMA_ELASTICKV_SCORE_NONE, false, nullptr, nullptr,
};
