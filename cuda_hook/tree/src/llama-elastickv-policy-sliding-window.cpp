// SPDX-License-Identifier: MIT
// Sliding window (the kv-cache-compression notebook's SlidingWindow): the last B cells of the sequence and
// nothing else: no sinks (ELASTICKV_SINK is refused with it), no heavy part. StreamingLLM without its sinks:
// the priority is the position, so the kept cells are always the B most recent ones.
#include "llama-elastickv-policy.h"

static double ekv_sliding_window_priority(const llama_elastickv_budget & b, llama_pos pos, float score) {
    (void) b; (void) score;
    return (double) pos;
}

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_SLIDING_WINDOW_DESC = {
    LLAMA_ELASTICKV_POLICY_SLIDING_WINDOW, "sliding_window", true, LLAMA_ELASTICKV_SCORE_NONE, false,
    ekv_sliding_window_priority, llama_elastickv_uniform_budget, /*no_sinks =*/ true, /*recency =*/ false,
};
