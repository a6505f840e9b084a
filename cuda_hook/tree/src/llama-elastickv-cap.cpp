// SPDX-License-Identifier: MIT
// ElasticKV physical cap (ELASTICKV_KV_CELLS): how many cells the KV cache is allocated with, and the refusal of
// every configuration that could not keep the cache inside them. Called by llama_context before it creates its
// memory (also in the memory-fitting probe contexts, which then measure the bounded cache); n_ctx, n_ctx_seq,
// positions and every tool stay logical.
//
// Why the bound below is enough. A token policy whose evictions all free cells (llama_elastickv_frees_all)
// leaves a sequence with at most B cells after a pass, B = the budget at the longest logical length n_ctx_seq
// (ceil(f*n_ctx_seq), or the cell count). A pass runs at the end of the first ubatch that brings the sequence
// EVICT_EVERY positions past its previous pass, once it holds WARM positions; so when a llama_decode call starts,
// a sequence holds at most max(B + EVICT_EVERY - 1, max(WARM, EVICT_EVERY) - 1) cells. llama.cpp places every
// ubatch of the call before computing any (llama_kv_cache::prepare): the call needs n_batch free cells up front,
// and passes inside the call do not help it. Per stream:
//   N >= min(sequences in the stream * max(B + EVICT_EVERY - 1, max(WARM, EVICT_EVERY) - 1) + n_batch, n_ctx_seq)
// (a stream never holds more than n_ctx_seq positions, so the context size always suffices). Anything smaller could end in llama.cpp's "failed to find a memory slot" mid-run; it is refused here instead.
#include "llama-elastickv.h"

#include "llama-arch.h"
#include "llama-cparams.h"
#include "llama-model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

bool llama_elastickv_frees_all(const llama_elastickv_config & cfg) {
    const llama_elastickv_policy_desc * desc = llama_elastickv_policy_get(cfg.policy);
    // position-only policies evict the same cells in every layer and head; the others only with a shared scope
    const bool same_everywhere = desc && desc->score == LLAMA_ELASTICKV_SCORE_NONE && !desc->from_keys();
    return desc && desc->token && cfg.free_cells &&
           (same_everywhere || cfg.scope == LLAMA_ELASTICKV_SCOPE_SHARED) &&
           desc->layer_budget == llama_elastickv_uniform_budget;
}

static std::string ekv_cap_budget_text(const llama_elastickv_budget & b) {
    if (b.fraction > 0.0) {
        char buf[64];
        snprintf(buf, sizeof(buf), "%.6g", b.fraction);
        return buf;
    }
    return std::to_string(b.cells) + " cells";
}

uint32_t llama_elastickv_kv_cells(const llama_model & model, const llama_cparams & cparams) {
    const llama_elastickv_config cfg = llama_elastickv_config_from_env();
    if (!cfg.enabled || cfg.kv_cells == 0 || model.hparams.vocab_only) {
        return 0;
    }
    const uint32_t N         = cfg.kv_cells;
    const uint32_t n_ctx_seq = cparams.n_ctx_seq;
    const std::string head   = "elastickv: ELASTICKV_KV_CELLS=" + std::to_string(N) + " is refused: ";

    if (N > n_ctx_seq) {
        throw std::runtime_error(head + "it is more than the context holds per sequence (" + std::to_string(n_ctx_seq) +
            " cells); accepted: " + std::to_string(n_ctx_seq) + " or fewer");
    }
    if (llm_arch_is_recurrent(model.arch) || llm_arch_is_hybrid(model.arch)) {
        throw std::runtime_error(head + "this model's memory is recurrent or hybrid; the cap bounds plain attention KV caches only");
    }
    const llama_elastickv_policy_desc * desc = llama_elastickv_policy_get(cfg.policy);
    if (!llama_elastickv_frees_all(cfg)) {
        std::string why;
        if (!desc) {
            why = "ELASTICKV_POLICY=elastickv zeroes entries and frees no cell";
        } else if (!desc->token) {
            why = std::string("ELASTICKV_POLICY=") + desc->name + " zeroes entries and frees no cell";
        } else if (!cfg.free_cells) {
            why = "ELASTICKV_FREE=0 keeps evicted cells allocated";
        } else if (desc->from_keys()) {
            why = std::string("ELASTICKV_POLICY=") + desc->name + " ranks each layer's (or KV head's) keys, so a cell is freed only "
                  "when every layer evicted it";
        } else if (desc->layer_budget != llama_elastickv_uniform_budget) {
            why = std::string("ELASTICKV_POLICY=") + desc->name + " keeps a different number of cells per layer, so a cell is freed only "
                  "when every layer evicted it";
        } else {
            why = std::string("ELASTICKV_POLICY=") + desc->name + " with ELASTICKV_SCOPE=head evicts per layer and KV head, so a cell is "
                  "freed only when every head evicted it (set ELASTICKV_SCOPE=shared)";
        }
        throw std::runtime_error(head + why + "; the cache could fill. A cap needs a policy whose evictions free cells: "
            "ELASTICKV_POLICY=streaming, random_tokens, sliding_window or lru_fifo, or h2o/scissorhands/lru with ELASTICKV_SCOPE=shared, "
            "with ELASTICKV_FREE=1");
    }

    const int64_t B   = llama_elastickv_budget_cells(cfg.budget, n_ctx_seq);
    const int64_t E   = cfg.evict_every;
    const int64_t W   = cfg.warm;
    const int64_t per = std::max(B + E - 1, std::max(W, E) - 1);
    const int64_t seqs_per_stream = cparams.kv_unified ? std::max<uint32_t>(1, cparams.n_seq_max) : 1;
    // the context size itself always suffices: a stream never holds more positions than that
    const int64_t need_bound = seqs_per_stream*per + cparams.n_batch;
    const int64_t need       = std::min<int64_t>(need_bound, n_ctx_seq);
    if ((int64_t) N < need) {
        std::string msg = head + "too few cells. ELASTICKV_POLICY=" + desc->name + " with ELASTICKV_BUDGET=" + ekv_cap_budget_text(cfg.budget) +
            " keeps up to " + std::to_string(B) + " cells per sequence at " + std::to_string(n_ctx_seq) + " positions; between passes "
            "(ELASTICKV_EVICT_EVERY=" + std::to_string(E) + ", ELASTICKV_WARM=" + std::to_string(W) + ") a sequence holds up to " +
            std::to_string(per) + " cells";
        if (seqs_per_stream > 1) {
            msg += ", and " + std::to_string(seqs_per_stream) + " sequences share one stream (unified KV cache)";
        }
        msg += "; a llama_decode call of n_batch=" + std::to_string(cparams.n_batch) + " tokens (-b) needs that many free cells up front. "
               "The minimum is ELASTICKV_KV_CELLS=" + std::to_string(need) + "; or lower -b, ELASTICKV_BUDGET or ELASTICKV_EVICT_EVERY";
        if (need_bound > (int64_t) n_ctx_seq) {
            msg += " (the context size: at these settings no smaller cap works)";
        }
        throw std::runtime_error(msg);
    }
    return N;
}
