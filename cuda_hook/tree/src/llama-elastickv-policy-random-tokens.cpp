// SPDX-License-Identifier: MIT
// Random token eviction (control for the score-based policies): the same sinks, recent window and budget
// split as h2o, but the heavy part is chosen by a seeded priority hash(ELASTICKV_SEED, pos) >> 11 instead
// of attention. The priority depends on the position only, so every layer and head evicts the same cells.
#include "llama-elastickv-policy.h"

static double ekv_random_tokens_priority(const llama_elastickv_budget & b, llama_pos pos, float score) {
    (void) score;
    return (double) (llama_elastickv_hash(b.seed, { (uint64_t) (int64_t) pos }) >> 11);
}

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_RANDOM_TOKENS_DESC = {
    LLAMA_ELASTICKV_POLICY_RANDOM_TOKENS, "random_tokens", true, LLAMA_ELASTICKV_SCORE_NONE, false,
    ekv_random_tokens_priority, llama_elastickv_uniform_budget,
};
