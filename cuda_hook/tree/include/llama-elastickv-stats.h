// SPDX-License-Identifier: MIT
// ElasticKV hook: its public, per-sequence counters (C API), for applications that serve several sequences
// from one context (llama-server reads them after every decode and shows them in /slots and /metrics).
// Implemented in src/llama-elastickv-stats.cpp; the hook itself is src/llama-elastickv.h.
#pragma once

#include "llama.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// What the hook did to one sequence (a server slot). Counts are since the context was created, across the
// sequence's epochs; "at its last pass" values describe the cache right after that pass.
struct llama_elastickv_seq_stats {
    int64_t n_pass;         // passes this sequence took part in
    int32_t epoch;          // times it started over (cleared, shortened or restored; a K shift re-thresholds without one)
    int32_t last_pass_pos;  // its pos_max at its last pass in this epoch, -1 before the first
    double  k_zero;         // ElasticKV: fraction of its K entries that are zero after its last pass, over every
                            // attention layer (NaN: not measured)
    double  v_zero;         // the same for V
    int64_t n_evicted;      // token policies: its resident cells evicted in every layer and KV head at its last pass
    int64_t n_freed;        // token policies: cells of this sequence released (total)
    int64_t n_cells;        // cells that hold this sequence now (resident; an iSWA model: in its full cache)
    int64_t kv_bytes;       // bytes of K and V of its cells, summed over every attention layer (an iSWA model: of both
                            // caches, the sliding-window cache holding only the window's cells)
};

// Fills *out and returns true when the hook is on in this context and seq_id is one of its sequences; returns
// false (and leaves *out alone) otherwise. The first call switches on the read-back of each pass's statistics
// (as ELASTICKV_STATS or ELASTICKV_VERBOSE do) so that later passes have k_zero and v_zero; the cache's bytes
// are the same either way. Call it from the thread that decodes.
LLAMA_API bool llama_elastickv_get_seq_stats(struct llama_context * ctx, llama_seq_id seq_id, struct llama_elastickv_seq_stats * out);

// Where a sequence kept up to (not including) position n_past must be decoded again from: one past its highest
// resident position below n_past. Cells freed by a token eviction leave gaps, and llama.cpp takes a sequence's next
// tokens only right after its last resident position, so a caller that truncates a sequence (prompt-cache reuse)
// re-decodes from here. n_past when the hook is off or no cell below n_past is missing.
LLAMA_API llama_pos llama_elastickv_seq_resume_pos(struct llama_context * ctx, llama_seq_id seq_id, llama_pos n_past);

#ifdef __cplusplus
}
#endif
