// SPDX-License-Identifier: MIT
// LRU, least recently used (the kv-cache-compression notebook's LRU, as it was meant to work), and lru_fifo, the
// notebook's LRU as it was coded (a timestamp set when a token arrives and never refreshed: first in, first out).
//
// lru: a cell is *used* when a query of the ubatch gives it more than its uniform share 1/n_kv of the attention
// in any query head of its KV head (the count score of ScissorHands, accumulated in the graph and reset after
// every pass; with ELASTICKV_SCOPE=shared: in any layer and head). Its recency is the index of the last pass at
// which it had been used since the pass before (a new or restored cell counts as used at the first pass after it
// was written), so recency is known to the resolution of a pass (ELASTICKV_EVICT_EVERY positions in generation,
// one ubatch in a prompt). The sinks and the recent window are kept; of the other cells, the most recently used
// are kept (ties: the higher position), the least recently used are evicted.
// lru_fifo: the same without uses: the recency is the arrival, so it keeps the newest cells (StreamingLLM's set).
#include "llama-elastickv-policy.h"

static double ekv_lru_priority(const llama_elastickv_budget & b, llama_pos pos, float recency) {
    (void) b; (void) pos;
    return (double) recency;
}

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_LRU_DESC = {
    LLAMA_ELASTICKV_POLICY_LRU, "lru", true, LLAMA_ELASTICKV_SCORE_COUNT, true,
    ekv_lru_priority, llama_elastickv_uniform_budget, /*no_sinks =*/ false, /*recency =*/ true,
};

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_LRU_FIFO_DESC = {
    LLAMA_ELASTICKV_POLICY_LRU_FIFO, "lru_fifo", true, LLAMA_ELASTICKV_SCORE_NONE, false,
    ekv_lru_priority, llama_elastickv_uniform_budget, /*no_sinks =*/ false, /*recency =*/ true,
};
