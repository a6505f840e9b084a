// SPDX-License-Identifier: MIT
// ScissorHands (Liu et al., arXiv 2305.17118): persistence of importance. A cell's score is the number of
// (query, query head) pairs in the history window that gave it more than the uniform weight 1/n_kv
// (n_kv: cells in the attention view of the ubatch), counted in the graph. The history window is the
// queries since the last pass (ELASTICKV_EVICT_EVERY tokens): scores are reset after every pass. The cells
// that were important most often are kept, plus the sinks and the recent window.
#include "llama-elastickv-policy.h"

static double ekv_scissorhands_priority(const llama_elastickv_budget & b, llama_pos pos, float score) {
    (void) b; (void) pos;
    return (double) score;
}

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_SCISSORHANDS_DESC = {
    LLAMA_ELASTICKV_POLICY_SCISSORHANDS, "scissorhands", true, LLAMA_ELASTICKV_SCORE_COUNT, true,
    ekv_scissorhands_priority, llama_elastickv_uniform_budget,
};
