// SPDX-License-Identifier: MIT
// ElasticKV hook: the per-sequence counters of the public C API (include/llama-elastickv-stats.h).
#include "llama-elastickv-stats.h"
#include "llama-elastickv-impl.h"

#include "llama-context.h"

#include <cmath>

bool llama_elastickv::has_seq(llama_seq_id s) const {
    return s >= 0 && (uint32_t) s < pimpl->n_seq;
}

void llama_elastickv::seq_stats(llama_seq_id s, llama_elastickv_seq_stats & out) {
    auto & I = *pimpl;
    I.collect = true; // from now on every pass reads its statistics back (the cache's bytes do not change)
    if (swa) {
        swa->collect = true;
    }

    const auto & sq = I.seqs[s];
    out.n_pass        = sq.n_pass;
    out.epoch         = sq.epoch;
    out.last_pass_pos = sq.last_pass_pos;
    out.n_evicted     = I.evict ? I.evict->seq_evicted(s) : 0;
    out.n_freed       = I.evict ? I.evict->seq_freed(s)   : 0;

    // the zero fractions over the entries of every cache (an iSWA model's two pass at the same ubatches)
    double k_obs = sq.k_obs, k_nnz = sq.k_nnz, v_obs = sq.v_obs, v_nnz = sq.v_nnz;
    if (swa) {
        const auto & sw = swa->seqs[s];
        k_obs += sw.k_obs; k_nnz += sw.k_nnz; v_obs += sw.v_obs; v_nnz += sw.v_nnz;
    }
    out.k_zero = k_obs > 0 ? 1.0 - k_nnz/k_obs : NAN;
    out.v_zero = v_obs > 0 ? 1.0 - v_nnz/v_obs : NAN;

    // resident cells: the full cache's (every position the sequence holds); bytes: both caches of an iSWA model
    const uint32_t strm = I.kv->seq_to_stream[s];
    out.n_cells  = (int64_t) I.cells_of(strm).seq_pos_get(s).size();
    out.kv_bytes = out.n_cells*(int64_t) I.cell_bytes();
    if (swa) {
        const int64_t n_swa = (int64_t) swa->cells_of(swa->kv->seq_to_stream[s]).seq_pos_get(s).size();
        out.kv_bytes += n_swa*(int64_t) swa->cell_bytes();
    }
}

size_t llama_elastickv::impl::cell_bytes() const {
    size_t b = 0;
    for (const auto & l : layers) {
        b += ggml_row_size(l.k->type, l.k->ne[0]) + ggml_row_size(l.v->type, l.n_embd_v);
    }
    return b;
}

bool llama_elastickv_get_seq_stats(llama_context * ctx, llama_seq_id seq_id, llama_elastickv_seq_stats * out) {
    if (ctx == nullptr || out == nullptr) {
        return false;
    }
    llama_elastickv * ekv = ctx->get_elastickv();
    if (ekv == nullptr || seq_id < 0 || !ekv->has_seq(seq_id)) {
        return false;
    }
    ekv->seq_stats(seq_id, *out);
    return true;
}

llama_pos llama_elastickv_seq_resume_pos(llama_context * ctx, llama_seq_id seq_id, llama_pos n_past) {
    llama_elastickv * ekv = ctx ? ctx->get_elastickv() : nullptr;
    if (ekv == nullptr || seq_id < 0 || !ekv->has_seq(seq_id) || n_past <= 0) {
        return n_past;
    }
    return ekv->resume_pos(seq_id, n_past);
}

llama_pos llama_elastickv::resume_pos(llama_seq_id s, llama_pos n_past) const {
    const auto & I  = *pimpl;
    const auto & sp = I.cells_of(I.kv->seq_to_stream[s]).seq_pos_get(s);
    auto it = sp.lower_bound({ n_past, 0 });
    if (it == sp.begin()) {
        return 0; // nothing of the sequence is resident below n_past
    }
    --it;
    return std::min(n_past, it->first + 1);
}
