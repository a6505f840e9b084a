// SPDX-License-Identifier: MIT
// StreamingLLM (Xiao et al., arXiv 2309.17453): the attention sinks plus a window of the most recent cells.
// The priority is the position, so the kept non-sink cells are always the B - n_sinks most recent ones,
// whatever ELASTICKV_RECENT and ELASTICKV_HEAVY_RATIO say. Positions are not shifted (no re-RoPE).
#include "llama-elastickv-policy.h"

static double ekv_streaming_priority(const llama_elastickv_budget & b, llama_pos pos, float score) {
    (void) b; (void) score;
    return (double) pos;
}

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_STREAMING_DESC = {
    LLAMA_ELASTICKV_POLICY_STREAMING, "streaming", true, LLAMA_ELASTICKV_SCORE_NONE, false,
    ekv_streaming_priority, llama_elastickv_uniform_budget,
};
