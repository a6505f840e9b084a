// SPDX-License-Identifier: MIT
// Token eviction inside the attention graph: the -inf bias, the score accumulation, and the pass that
// selects the evicted cells (with the recency of lru). See llama-elastickv-evict.h and llama-elastickv-policy.h;
// what ELASTICKV_DUMP writes is in llama-elastickv-evict-dump.cpp.
#include "llama-elastickv-evict.h"
#include "llama-elastickv-dump.h"
#include "llama-elastickv-internal.h"

#include "llama-impl.h"
#include "llama-batch.h"
#include "llama-hparams.h"
#include "llama-kv-cache.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

static const ggml_tensor * ekv_root(const ggml_tensor * t) {
    while (t->view_src) {
        t = t->view_src;
    }
    return t;
}

static const float EKV_EVICTED = -1e30f; // the bias of an evicted cell (see llama-elastickv-evict.h)

llama_elastickv_evict::llama_elastickv_evict(
        const llama_elastickv_policy_desc  & desc,
        const llama_elastickv_budget       & budget,
        const llama_elastickv_evict_params & params,
        llama_kv_cache                      * kv,
        const llama_hparams                 & hparams,
        const std::vector<ggml_backend_t>   & backends)
    : desc(desc), budget(budget), params(params), kv(kv), kv_size(kv->get_size()), n_stream(kv->n_stream) {
    seq_freed_total.assign(kv->n_seq_max, 0);
    seq_evicted_last.assign(kv->n_seq_max, 0);
    int32_t il_max = 0;
    for (const auto & L : kv->layers) {
        il_max = std::max(il_max, (int32_t) L.il);
    }
    by_il.assign(il_max + 1, -1);

    if (desc.learned) {
        mlp.load(budget.learned_weights); // before the layers: each is checked against its input size
    }
    // one device state per buffer type holding K
    std::vector<ggml_backend_buffer_type_t> bufts;
    for (const auto & L : kv->layers) {
        layer l;
        l.il     = (int32_t) L.il;
        l.n_head = (int32_t) hparams.n_head_kv(L.il);
        l.k      = L.k;
        ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(L.k->buffer);
        size_t d = std::find(bufts.begin(), bufts.end(), buft) - bufts.begin();
        if (d == bufts.size()) {
            ggml_backend_t backend = llama_elastickv_backend_for(buft, backends);
            bufts.push_back(buft);
            devs.emplace_back();
            devs.back().backend = backend;
        }
        l.dev = (int32_t) d;
        l.evicted.assign(n_stream, std::vector<uint8_t>((size_t) l.n_head*kv_size, 0));
        if (desc.learned && (int64_t) mlp.dims[0]*l.n_head != L.k->ne[0]) {
            llama_elastickv_fail("ELASTICKV_LEARNED_WEIGHTS", budget.learned_weights, "takes keys of " + std::to_string(mlp.dims[0]) +
                " values, but layer " + std::to_string(l.il) + " has KV heads of " + std::to_string(L.k->ne[0]/l.n_head));
        }
        if (desc.recency) {
            l.recency.assign(n_stream, std::vector<float>((size_t) l.n_head*kv_size, 0.0f));
        }
        by_il[l.il] = (int32_t) layers.size();
        layers.push_back(std::move(l));
    }
    const bool with_bias = !params.flash_attn;
    for (size_t d = 0; d < devs.size(); ++d) {
        auto & D = devs[d];
        size_t n = 0;
        for (auto & l : layers) {
            if (l.dev == (int32_t) d) {
                l.off_bias = n;
                n += with_bias ? (size_t) l.n_head*kv_size*n_stream : 0;
            }
        }
        D.n_bias = n;
        for (auto & l : layers) {
            if (l.dev == (int32_t) d && uses_scores()) {
                l.off_score = n;
                n += (size_t) l.n_head*kv_size*n_stream;
            }
        }
        ggml_init_params ip = { ggml_tensor_overhead()*(2 + 2*layers.size()), nullptr, true };
        D.ctx.reset(ggml_init(ip));
        D.state = ggml_new_tensor_1d(D.ctx.get(), GGML_TYPE_F32, std::max<size_t>(n, 1));
        D.keep  = ggml_new_tensor_3d(D.ctx.get(), GGML_TYPE_F32, kv_size, 1, n_stream);
        for (auto & l : layers) {
            if (l.dev != (int32_t) d) {
                continue;
            }
            const size_t nb1 = (size_t) kv_size*sizeof(float), nb2 = nb1*l.n_head;
            if (with_bias) {
                l.bias = ggml_view_3d(D.ctx.get(), D.state, kv_size, l.n_head, n_stream, nb1, nb2, l.off_bias*sizeof(float));
            }
            if (uses_scores()) {
                l.score = ggml_view_3d(D.ctx.get(), D.state, kv_size, l.n_head, n_stream, nb1, nb2, l.off_score*sizeof(float));
            }
        }
        D.buf.reset(ggml_backend_alloc_ctx_tensors_from_buft(D.ctx.get(), bufts[d]));
        if (!D.buf) {
            throw std::runtime_error(std::string("elastickv: failed to allocate the eviction state on ") + ggml_backend_buft_name(bufts[d]));
        }
        ggml_backend_buffer_clear(D.buf.get(), 0);
        D.host.assign(ggml_nelements(D.state), 0.0f);
        D.keep_host.assign((size_t) kv_size*n_stream, 1.0f);
        ggml_backend_tensor_set(D.keep, D.keep_host.data(), 0, ggml_nbytes(D.keep));
    }
}

size_t llama_elastickv_evict::device_bytes() const {
    size_t n = 0;
    for (const auto & D : devs) {
        n += ggml_backend_buffer_get_size(D.buf.get());
    }
    return n;
}

float & llama_elastickv_evict::bias_at(layer & l, uint32_t strm, int32_t h, uint32_t c) {
    return devs[l.dev].host[l.off_bias + ((size_t) strm*l.n_head + h)*kv_size + c];
}

float & llama_elastickv_evict::score_at(layer & l, uint32_t strm, int32_t h, uint32_t c) {
    return devs[l.dev].host[l.off_score + ((size_t) strm*l.n_head + h)*kv_size + c];
}

void llama_elastickv_evict::mark(device & d, size_t off) {
    d.dirty_lo = std::min(d.dirty_lo, off);
    d.dirty_hi = std::max(d.dirty_hi, off + 1);
}

// one upload per backend: the span of the host mirror that changed
void llama_elastickv_evict::upload_dirty() {
    for (auto & D : devs) {
        if (D.dirty_lo < D.dirty_hi) {
            ggml_backend_tensor_set(D.state, D.host.data() + D.dirty_lo, D.dirty_lo*sizeof(float), (D.dirty_hi - D.dirty_lo)*sizeof(float));
        }
        D.dirty_lo = SIZE_MAX;
        D.dirty_hi = 0;
    }
}

// no eviction, bias or score for this cell in any layer and head, and the recency of a cell just written (host
// mirror; uploaded by upload_dirty)
void llama_elastickv_evict::clear_cell(uint32_t strm, uint32_t c) {
    for (auto & l : layers) {
        auto & D = devs[l.dev];
        for (int32_t h = 0; h < l.n_head; ++h) {
            l.evicted[strm][(size_t) h*kv_size + c] = 0;
            if (!l.recency.empty()) {
                l.recency[strm][(size_t) h*kv_size + c] = (float) next_pass;
            }
            if (l.bias) {
                float & b = bias_at(l, strm, h, c);
                if (b != 0.0f) {
                    b = 0.0f;
                    mark(D, &b - D.host.data());
                }
            }
            if (l.score) {
                float & sc = score_at(l, strm, h, c);
                if (sc != 0.0f) {
                    sc = 0.0f;
                    mark(D, &sc - D.host.data());
                }
            }
        }
    }
}

const llama_elastickv_evict::layer * llama_elastickv_evict::layer_for(int il, const ggml_tensor * k) const {
    if (il < 0 || il >= (int) by_il.size() || by_il[il] < 0) {
        return nullptr;
    }
    const layer & l = layers[by_il[il]];
    // only the attention over this cache layer (not SWA layers of another cache, not cross-attention)
    return ekv_root(k) == l.k ? &l : nullptr;
}

// keep of the streams and cells of an attention view: [n_kv, 1, ns]
ggml_tensor * llama_elastickv_evict::keep_view(ggml_context * ctx, const layer & l, int64_t n_kv, int64_t ns, size_t s0) const {
    ggml_tensor * keep = devs[l.dev].keep;
    return ggml_view_3d(ctx, keep, n_kv, 1, ns, keep->nb[1], keep->nb[2], s0*keep->nb[2]);
}

ggml_tensor * llama_elastickv_evict::attn_bias(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * kq, const ggml_tensor * k, int il) const {
    const layer * l = layer_for(il, k);
    if (!l || !l->bias) {
        return kq;
    }
    const int64_t n_kv = kq->ne[0], n_tok = kq->ne[1], n_head = kq->ne[2], ns = kq->ne[3];
    GGML_ASSERT(n_head % l->n_head == 0 && k->ne[2] == l->n_head);
    GGML_ASSERT(ggml_is_contiguous(kq));
    const int64_t G  = n_head/l->n_head;          // query heads per KV head: head i reads KV head i/G
    const size_t  s0 = k->view_offs/l->k->nb[2];  // first stream of the view
    // the bias of the view's cells, 0 for the cells this ubatch writes; written back so that it stays 0
    ggml_tensor * b3 = ggml_view_3d(ctx, l->bias, n_kv, l->n_head, ns, l->bias->nb[1], l->bias->nb[2], s0*l->bias->nb[2]);
    ggml_tensor * be = ggml_mul(ctx, b3, keep_view(ctx, *l, n_kv, ns, s0));
    ggml_build_forward_expand(gf, ggml_cpy(ctx, be, b3));
    ggml_tensor * kq4  = ggml_reshape_4d(ctx, kq, n_kv, n_tok, G, l->n_head*ns);
    ggml_tensor * out  = ggml_add(ctx, kq4, ggml_reshape_4d(ctx, be, n_kv, 1, 1, l->n_head*ns));
    ggml_set_name(out, "elastickv_kq_bias");
    l->hooked = true;
    // a dump of the queries (score-based policies): Q is the second operand of the KQ product; an architecture
    // that transforms KQ before this point (soft-capping, ...) dumps no queries
    l->q_src = !params.dump_dir.empty() && uses_scores() && kq->op == GGML_OP_MUL_MAT ? kq->src[1] : nullptr;
    return ggml_reshape_4d(ctx, out, n_kv, n_tok, n_head, ns);
}

void llama_elastickv_evict::attn_observe(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * kq_soft, const ggml_tensor * k, int il) const {
    const layer * l = layer_for(il, k);
    if (!l || !l->score) {
        return;
    }
    const int64_t n_kv = kq_soft->ne[0], n_tok = kq_soft->ne[1], n_head = kq_soft->ne[2], ns = kq_soft->ne[3];
    const int64_t G  = n_head/l->n_head;
    const size_t  s0 = k->view_offs/l->k->nb[2];
    ggml_tensor * p = ggml_reshape_4d(ctx, kq_soft, n_kv, n_tok, G, l->n_head*ns);
    if (desc.score == LLAMA_ELASTICKV_SCORE_COUNT) {
        p = ggml_step(ctx, ggml_scale_bias(ctx, p, 1.0f, -1.0f/(float) n_kv)); // 1[p > 1/n_kv]
    }
    // sum over the queries and the query heads of each KV head: [n_tok*G, n_kv, n_head_kv*ns] -> rows
    p = ggml_cont(ctx, ggml_permute(ctx, p, 2, 0, 1, 3));
    p = ggml_reshape_3d(ctx, p, n_tok*G, n_kv, l->n_head*ns);
    p = ggml_sum_rows(ctx, p);
    p = ggml_reshape_3d(ctx, p, n_kv, l->n_head, ns);
    // the score of the view's cells, restarted at 0 for the cells this ubatch writes, plus this ubatch's share
    ggml_tensor * dst = ggml_view_3d(ctx, l->score, n_kv, l->n_head, ns, l->score->nb[1], l->score->nb[2], s0*l->score->nb[2]);
    ggml_tensor * acc = ggml_cpy(ctx, ggml_add(ctx, ggml_mul(ctx, dst, keep_view(ctx, *l, n_kv, ns, s0)), p), dst);
    ggml_set_name(acc, "elastickv_score");
    ggml_build_forward_expand(gf, acc);

    l->q_out = nullptr;
    if (l->q_src && kq_soft->op == GGML_OP_SOFT_MAX) {
        ggml_tensor * q = ggml_cont(ctx, l->q_src); // an output: the allocator keeps it until the next graph
        ggml_set_name(q, "elastickv_q_dump");
        ggml_set_output(q);
        ggml_build_forward_expand(gf, q);
        l->q_out = q;
        memcpy(&l->kq_scale, kq_soft->op_params, sizeof(float)); // soft_max_ext's scale
        l->n_kv = n_kv;
    }
}

void llama_elastickv_evict::attn_observe_fa(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * q, const ggml_tensor * k,
                                            ggml_tensor * kq_mask, float kq_scale, float max_bias, int il) const {
    const layer * l = layer_for(il, k);
    if (!l) {
        return;
    }
    l->hooked = true;
    if (!l->score) {
        return; // position-only policy: evicted cells are freed, the mask hides them
    }
    // the score node: the attention's softmax, computed beside the fused kernel (which never materialises it)
    ggml_tensor * kq = ggml_mul_mat(ctx, const_cast<ggml_tensor *>(k), q);
    ggml_prec_set_acc(kq, GGML_PREC_F32);
    l->q_src = !params.dump_dir.empty() ? q : nullptr;
    ggml_tensor * p = ggml_soft_max_ext(ctx, kq, kq_mask, kq_scale, max_bias);
    ggml_set_name(p, "elastickv_score_softmax");
    attn_observe(ctx, gf, p, k, il);
}

void llama_elastickv_evict::before_ubatch(const llama_ubatch & ubatch) {
    // the cells this ubatch writes (apply() has placed its tokens)
    std::vector<uint32_t> fresh; // stream*kv_size + cell
    for (uint32_t i = 0; i < ubatch.n_tokens; ++i) {
        const llama_pos p = ubatch.pos[i];
        for (int32_t j = 0; j < ubatch.n_seq_id[i]; ++j) {
            const llama_seq_id s = ubatch.seq_id[i][j];
            if (s < 0 || (uint32_t) s >= kv->seq_to_stream.size()) {
                continue;
            }
            const uint32_t strm = kv->seq_to_stream[s];
            const auto & sp = kv->v_cells[strm].seq_pos_get(s);
            for (auto it = sp.lower_bound({ p, 0 }); it != sp.end() && it->first == p; ++it) {
                fresh.push_back(strm*kv_size + it->second);
            }
        }
    }
    std::sort(fresh.begin(), fresh.end());
    fresh.erase(std::unique(fresh.begin(), fresh.end()), fresh.end());
    // host: the flags and the bias mirror of these cells are cleared (the graph clears the device copy)
    for (uint32_t x : fresh) {
        const uint32_t strm = x / kv_size, c = x % kv_size;
        for (auto & l : layers) {
            for (int32_t h = 0; h < l.n_head; ++h) {
                l.evicted[strm][(size_t) h*kv_size + c] = 0;
                if (l.bias) {
                    bias_at(l, strm, h, c) = 0.0f;
                }
                if (!l.recency.empty()) {
                    l.recency[strm][(size_t) h*kv_size + c] = (float) next_pass; // used at the first pass that sees it
                }
            }
        }
    }
    // device: keep = 1 again for the previous ubatch's cells, 0 for this one's: one copy of the span
    for (auto & D : devs) {
        if (fresh.empty() && D.kept_zero.empty()) {
            continue;
        }
        size_t lo = SIZE_MAX, hi = 0;
        for (uint32_t x : D.kept_zero) {
            D.keep_host[x] = 1.0f;
            lo = std::min<size_t>(lo, x);
            hi = std::max<size_t>(hi, x + 1);
        }
        for (uint32_t x : fresh) {
            D.keep_host[x] = 0.0f;
            lo = std::min<size_t>(lo, x);
            hi = std::max<size_t>(hi, x + 1);
        }
        D.kept_zero = fresh;
        // the keep tensor is [kv_size, 1, n_stream] contiguous: index stream*kv_size + cell
        ggml_backend_tensor_set_async(D.backend, D.keep, D.keep_host.data() + lo, lo*sizeof(float), (hi - lo)*sizeof(float));
    }
}

void llama_elastickv_evict::reset_restored(llama_seq_id seq_id) {
    for (uint32_t strm = 0; strm < n_stream; ++strm) {
        const auto & cells = kv->v_cells[strm];
        for (uint32_t c = 0; c < cells.size(); ++c) {
            if (!cells.is_empty(c) && (seq_id < 0 || cells.seq_has(c, seq_id))) {
                clear_cell(strm, c);
            }
        }
    }
    for (auto & D : devs) {
        ggml_backend_synchronize(D.backend);
    }
    upload_dirty();
}

void llama_elastickv_evict::pass(const std::vector<llama_seq_id> & seqs, int32_t ctx_id, int64_t n_pass, FILE * stats,
                                 int32_t verbose) {
    for (const auto & l : layers) {
        if (!l.hooked) {
            throw std::runtime_error("elastickv: ELASTICKV_POLICY=" + std::string(desc.name) + " could not reach the attention of layer " +
                std::to_string(l.il) + " (this architecture builds its attention another way); the eviction would be ignored");
        }
    }
    // one download of the scores per backend (the graph has finished: the pass follows the logits copy)
    for (auto & D : devs) {
        ggml_backend_synchronize(D.backend);
        if (uses_scores() && D.host.size() > D.n_bias) {
            ggml_backend_tensor_get(D.state, D.host.data() + D.n_bias, D.n_bias*sizeof(float), (D.host.size() - D.n_bias)*sizeof(float));
        }
    }
    const int32_t n_layer = (int32_t) layers.size();
    const bool    shared  = params.scope == LLAMA_ELASTICKV_SCOPE_SHARED;
    const std::string & dump_dir = params.dump_dir;
    if (!dump_dir.empty()) {
        // the cache's own occupied cells, for checking that the sequences' cell lists below cover them all
        char name[96];
        snprintf(name, sizeof(name), "/ctx%d_pass%06" PRId64 "_kvcells.npy", ctx_id, n_pass);
        llama_elastickv_write_cells(dump_dir + name, kv->v_cells);
    }

    for (llama_seq_id s : seqs) {
        const uint32_t strm  = kv->seq_to_stream[s];
        auto &         kcells = kv->v_cells[strm];
        const auto &   sp    = kcells.seq_pos_get(s);
        // the sequence's cells in ascending position; a cell shared with a lower sequence id is left to it
        std::vector<uint32_t>  cells;
        std::vector<llama_pos> pos;
        for (const auto & pc : sp) {
            bool lower = false;
            for (llama_seq_id o = 0; o < s && !lower; ++o) {
                lower = kcells.seq_has(pc.second, o);
            }
            if (!lower) {
                pos.push_back(pc.first);
                cells.push_back(pc.second);
            }
        }
        const int64_t n = (int64_t) cells.size();
        if (n == 0) {
            continue;
        }
        // the pass's own time for this sequence (evict_pass "ms"): everything below but the statistics' writes
        const int64_t t_seq = ggml_time_us();
        int64_t       t_io  = 0;
        // the budget follows the logical length: freed cells count
        const int64_t n_log = std::max<int64_t>(n, (int64_t) pos.back() + 1);
        const int64_t B     = llama_elastickv_budget_cells(budget, n_log);

        pass_dump pd; // what ELASTICKV_DUMP writes of this sequence's pass
        std::vector<float>   sc(n);
        std::vector<uint8_t> ev(n);
        std::vector<float>   key_prio; // semantic: 1 for the cells nearest a centroid; learned: the MLP's outputs
        // lru: a cell used since the last pass (its count score > 0) was used at this pass
        auto recency_now = [&](float r, double score) { return uses_scores() && score > 0.0 ? (float) n_pass : r; };
        // shared scope: one selection on the scores summed over every layer and KV head
        std::vector<uint8_t> ev_shared;
        if (shared) {
            std::vector<double> sum(n, 0.0);
            for (auto & l : layers) {
                for (int32_t h = 0; h < l.n_head && l.score; ++h) {
                    for (int64_t i = 0; i < n; ++i) {
                        sum[i] += score_at(l, strm, h, cells[i]);
                    }
                }
            }
            ev_shared.assign(n, 0);
            for (int64_t i = 0; i < n; ++i) {
                sc[i]        = (float) sum[i];
                ev_shared[i] = layers[0].evicted[strm][cells[i]]; // every layer and head carries the same flags
            }
            if (desc.recency) { // one recency per cell, carried by every layer and head: used in any of them
                if (!dump_dir.empty()) {
                    for (auto & l : layers) {
                        for (int32_t h = 0; h < l.n_head; ++h) {
                            for (int64_t i = 0; i < n; ++i) {
                                pd.recency.push_back(l.recency[strm][(size_t) h*kv_size + cells[i]]);
                            }
                        }
                    }
                }
                for (int64_t i = 0; i < n; ++i) {
                    const float r = recency_now(layers[0].recency[strm][cells[i]], sum[i]);
                    for (auto & l : layers) {
                        for (int32_t h = 0; h < l.n_head; ++h) {
                            l.recency[strm][(size_t) h*kv_size + cells[i]] = r;
                        }
                    }
                    sc[i] = r;
                }
            }
            llama_elastickv_select(desc, budget, params.sink, B, pos, sc.data(), ev_shared);
        }
        std::vector<uint8_t> all_evicted(n, 1); // evicted in every layer and KV head after this pass
        int64_t kept_total = 0;
        for (int32_t li = 0; li < n_layer; ++li) {
            auto & l = layers[li];
            auto & D = devs[l.dev];
            const int64_t Bl = shared ? B : desc.layer_budget(budget, B, n_log, li, n_layer);
            int64_t kept_layer = 0;
            std::vector<float> keys; // semantic, learned: the layer's keys of the sequence's cells [n, n_head, hd]
            if (desc.from_keys()) {
                llama_elastickv_read_rows(l.k, strm, false, l.k->ne[0], cells, keys);
            }
            for (int32_t h = 0; h < l.n_head; ++h) {
                auto & evh = l.evicted[strm];
                const size_t base = (size_t) h*kv_size;
                for (int64_t i = 0; i < n; ++i) {
                    sc[i] = l.score ? score_at(l, strm, h, cells[i]) : 0.0f;
                    ev[i] = evh[base + cells[i]];
                }
                if (desc.from_keys() && (h == 0 || !(desc.learned || budget.cluster_mean))) {
                    // semantic, learned: a priority from the keys (once per layer when every head shares it)
                    key_priority(l, h, pos, ev, Bl, keys, key_prio);
                }
                if (desc.from_keys()) {
                    std::copy(key_prio.begin(), key_prio.end(), sc.begin());
                }
                if (!dump_dir.empty()) {
                    pd.score.insert(pd.score.end(), sc.begin(), sc.end());
                    pd.before.insert(pd.before.end(), ev.begin(), ev.end());
                }
                if (desc.recency && !shared) {
                    // lru: a cell used since the last pass (count score > 0) was used at this pass; the priority
                    // is the recency (the dump keeps the recency before this update)
                    auto & rec = l.recency[strm];
                    for (int64_t i = 0; i < n; ++i) {
                        float & r = rec[base + cells[i]];
                        if (!dump_dir.empty()) {
                            pd.recency.push_back(r);
                        }
                        r     = recency_now(r, sc[i]);
                        sc[i] = r;
                    }
                }
                if (shared) {
                    ev = ev_shared;
                } else {
                    llama_elastickv_select(desc, budget, params.sink, Bl, pos, sc.data(), ev);
                }
                if (params.flash_attn) {
                    // no bias under flash attention: a cell that cannot be freed (the newest, or shared with another
                    // sequence) is not evicted either
                    for (int64_t i = 0; i < n; ++i) {
                        ev[i] &= pos[i] != pos.back() && kcells.seq_count(cells[i]) == 1;
                    }
                }
                if (!dump_dir.empty()) {
                    pd.after.insert(pd.after.end(), ev.begin(), ev.end());
                }
                int64_t kept = 0;
                for (int64_t i = 0; i < n; ++i) {
                    evh[base + cells[i]] = ev[i];
                    if (l.bias) {
                        float & b = bias_at(l, strm, h, cells[i]);
                        const float want = ev[i] ? EKV_EVICTED : 0.0f;
                        if (b != want) {
                            b = want;
                            mark(D, &b - D.host.data());
                        }
                    }
                    if (desc.reset_score && l.score) {
                        float & x = score_at(l, strm, h, cells[i]);
                        if (x != 0.0f) {
                            x = 0.0f;
                            mark(D, &x - D.host.data());
                        }
                    }
                    kept += !ev[i];
                    all_evicted[i] &= ev[i];
                }
                kept_layer += kept;
                if (stats) {
                    const int64_t t_w = ggml_time_us();
                    fprintf(stats, "{\"record\": \"evict\", \"ctx\": %d, \"pass\": %" PRId64 ", \"seq\": %d, \"pos_max\": %d, "
                        "\"layer\": %d, \"head\": %d, \"n\": %" PRId64 ", \"budget\": %" PRId64 ", \"kept\": %" PRId64 "}\n",
                        ctx_id, n_pass, s, pos.back(), l.il, h, n_log, Bl, kept);
                    t_io += ggml_time_us() - t_w;
                }
            }
            kept_total += kept_layer;
            if (verbose >= 2) {
                LLAMA_LOG_WARN("elastickv:   pass %" PRId64 " seq %d layer %2d: budget %" PRId64 " of %" PRId64 ", kept %.1f%% of the resident cells\n",
                    n_pass, s, l.il, Bl, n_log, 100.0*(double) kept_layer/(double) (n*l.n_head));
            }
        }
        // free the cells evicted in every layer and head, held by this sequence alone (not the newest: select keeps it)
        int64_t freed = 0, union_kept = 0;
        uint32_t new_head = kcells.size();
        for (int64_t i = 0; i < n; ++i) {
            if (!all_evicted[i]) {
                union_kept++;
                continue;
            }
            if (!params.free_cells || pos[i] == pos.back() || kcells.seq_count(cells[i]) != 1) {
                continue;
            }
            kcells.seq_rm(cells[i], s); // O(log n): the (pos, cell) pair leaves the sequence's index
            clear_cell(strm, cells[i]);
            new_head = std::min(new_head, cells[i]);
            freed++;
        }
        if (new_head < kv->v_heads[strm]) {
            kv->v_heads[strm] = new_head; // as seq_rm does: the slot search may start at the first freed cell
        }
        seq_freed_total[s] += freed;
        seq_evicted_last[s] = n - union_kept;
        if (stats) {
            // the cells this sequence holds after the pass, and the cells its keep sets need (their union)
            fprintf(stats, "{\"record\": \"evict_pass\", \"ctx\": %d, \"pass\": %" PRId64 ", \"seq\": %d, \"pos_max\": %d, "
                "\"scope\": \"%s\", \"n_logical\": %" PRId64 ", \"budget\": %" PRId64 ", \"resident_before\": %" PRId64 ", "
                "\"freed\": %" PRId64 ", \"resident_after\": %" PRId64 ", \"union_kept\": %" PRId64 ", \"kv_size\": %u, "
                "\"used_after\": %u, \"ms\": %.3f}\n",
                ctx_id, n_pass, s, pos.back(), shared ? "shared" : "head", n_log, B, n, freed, n - freed, union_kept,
                kv_size, kcells.get_used(), (double) (ggml_time_us() - t_seq - t_io)/1000.0);
        }
        if (verbose >= 1) {
            int64_t heads = 0;
            for (const auto & l : layers) {
                heads += l.n_head;
            }
            LLAMA_LOG_WARN("elastickv: pass %" PRId64 " seq %d pos_max %d (%s, %s scope): budget %" PRId64 " of %" PRId64 " positions, "
                "kept %.1f%% of resident cells x heads, freed %" PRId64 " cells, %" PRId64 " resident, %u of %u cells used\n",
                n_pass, s, pos.back(), desc.name, shared ? "shared" : "head", B, n_log,
                100.0*(double) kept_total/(double) (n*heads), freed, n - freed, kcells.get_used(), kv_size);
        }
        if (!dump_dir.empty()) {
            write_pass_dump(ctx_id, n_pass, s, strm, cells, pos, pd, B, n_log, freed);
        }
    }
    upload_dirty(); // one upload per backend: the changed span of bias and score
    if (stats) {
        fflush(stats);
    }
    next_pass = n_pass + 1;
}
