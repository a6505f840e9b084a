// SPDX-License-Identifier: MIT
// H2O (Zhang et al., arXiv 2306.14048): heavy hitters by accumulated attention plus a recent window.
// Per layer and KV head, the score of a cell is the attention it received from every query since it was
// written, summed over the query heads sharing the KV head (accumulated in the graph,
// llama-elastickv-evict.cpp). HEAVY_RATIO splits the budget after the sinks (default 0.8 heavy / 0.2 recent).
#include "llama-elastickv-policy.h"

static double ekv_h2o_priority(const llama_elastickv_budget & b, llama_pos pos, float score) {
    (void) b; (void) pos;
    return (double) score;
}

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_H2O_DESC = {
    LLAMA_ELASTICKV_POLICY_H2O, "h2o", true, LLAMA_ELASTICKV_SCORE_ATTN, false,
    ekv_h2o_priority, llama_elastickv_uniform_budget,
};
