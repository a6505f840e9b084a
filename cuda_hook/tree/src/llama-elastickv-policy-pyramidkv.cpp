// SPDX-License-Identifier: MIT
// PyramidKV (Cai et al., arXiv 2406.02069): per-layer budgets decreasing linearly with depth, cells chosen
// by the attention of an observation window (SnapKV-style). The observation window is the queries since the
// last pass (scores are reset after every pass); the budgets follow the paper's arithmetic sequence
//   B_top = B/beta, B_0 = 2B - B_top, B_l = B_0 + (B_top - B_0)*l/(L-1), rounded half up,
// whose mean is B. When B_0 would exceed the sequence (n cells), the slope is flattened to
// B_top = 2B - n so that the mean stays B.
#include "llama-elastickv-policy.h"

#include <algorithm>
#include <cmath>

static double ekv_pyramidkv_priority(const llama_elastickv_budget & b, llama_pos pos, float score) {
    (void) b; (void) pos;
    return (double) score;
}

static int64_t ekv_pyramidkv_budget(const llama_elastickv_budget & b, int64_t B, int64_t n, int32_t l, int32_t n_layer) {
    if (n_layer <= 1) {
        return B;
    }
    const double top    = std::max((double) B/b.beta, 2.0*(double) B - (double) n);
    const double bottom = 2.0*(double) B - top;
    const double Bl     = bottom + (top - bottom)*(double) l/(double) (n_layer - 1);
    return std::min<int64_t>(n, std::max<int64_t>(0, (int64_t) std::floor(Bl + 0.5)));
}

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_PYRAMIDKV_DESC = {
    LLAMA_ELASTICKV_POLICY_PYRAMIDKV, "pyramidkv", true, LLAMA_ELASTICKV_SCORE_ATTN, true,
    ekv_pyramidkv_priority, ekv_pyramidkv_budget,
};
