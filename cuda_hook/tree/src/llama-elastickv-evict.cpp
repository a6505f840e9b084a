// SPDX-License-Identifier: MIT
// Token eviction inside the attention graph: the -inf bias, the score accumulation, and the pass that
// selects the evicted cells. See llama-elastickv-evict.h and llama-elastickv-policy.h.
#include "llama-elastickv-evict.h"
#include "llama-elastickv-dump.h"

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

llama_elastickv_evict::llama_elastickv_evict(
        const llama_elastickv_policy_desc & desc,
        const llama_elastickv_budget      & budget,
        int32_t                              sink,
        llama_kv_cache                     * kv,
        const llama_hparams                & hparams,
        const std::vector<ggml_backend_t>  & backends,
        const std::string                  & dump_dir)
    : desc(desc), budget(budget), sink(sink), kv(kv), kv_size(kv->get_size()), n_stream(kv->n_stream), dump_dir(dump_dir) {
    int32_t il_max = 0;
    for (const auto & L : kv->layers) {
        il_max = std::max(il_max, (int32_t) L.il);
    }
    by_il.assign(il_max + 1, -1);

    // one context and buffer per buffer type holding K
    std::vector<ggml_backend_buffer_type_t> bufts;
    std::vector<std::vector<size_t>>        members;
    for (const auto & L : kv->layers) {
        layer l;
        l.il     = (int32_t) L.il;
        l.n_head = (int32_t) hparams.n_head_kv(L.il);
        l.k      = L.k;
        ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(L.k->buffer);
        l.backend = nullptr;
        for (auto * b : backends) {
            if (ggml_backend_supports_buft(b, buft)) {
                l.backend = b;
                break;
            }
        }
        if (!l.backend) {
            throw std::runtime_error(std::string("elastickv: no backend of this context can access the KV buffer type ") +
                ggml_backend_buft_name(buft));
        }
        size_t d = std::find(bufts.begin(), bufts.end(), buft) - bufts.begin();
        if (d == bufts.size()) {
            bufts.push_back(buft);
            members.emplace_back();
        }
        members[d].push_back(layers.size());
        l.evicted.assign(n_stream, std::vector<uint8_t>((size_t) l.n_head*kv_size, 0));
        by_il[l.il] = (int32_t) layers.size();
        layers.push_back(std::move(l));
    }
    for (size_t d = 0; d < bufts.size(); ++d) {
        ggml_init_params ip = { ggml_tensor_overhead()*2*members[d].size(), nullptr, true };
        ctxs.emplace_back(ggml_init(ip));
        for (size_t i : members[d]) {
            auto & l = layers[i];
            l.bias = ggml_new_tensor_3d(ctxs.back().get(), GGML_TYPE_F32, kv_size, l.n_head, n_stream);
            if (uses_scores()) {
                l.score = ggml_new_tensor_3d(ctxs.back().get(), GGML_TYPE_F32, kv_size, l.n_head, n_stream);
            }
        }
        bufs.emplace_back(ggml_backend_alloc_ctx_tensors_from_buft(ctxs.back().get(), bufts[d]));
        if (!bufs.back()) {
            throw std::runtime_error(std::string("elastickv: failed to allocate the eviction bias on ") + ggml_backend_buft_name(bufts[d]));
        }
        ggml_backend_buffer_clear(bufs.back().get(), 0);
    }
    zeros.assign(kv_size, 0.0f);
}

const llama_elastickv_evict::layer * llama_elastickv_evict::layer_for(int il, const ggml_tensor * k) const {
    if (il < 0 || il >= (int) by_il.size() || by_il[il] < 0) {
        return nullptr;
    }
    const layer & l = layers[by_il[il]];
    // only the attention over this cache layer (not SWA layers of another cache, not cross-attention)
    return ekv_root(k) == l.k ? &l : nullptr;
}

ggml_tensor * llama_elastickv_evict::attn_bias(ggml_context * ctx, ggml_tensor * kq, const ggml_tensor * k, int il) const {
    const layer * l = layer_for(il, k);
    if (!l) {
        return kq;
    }
    const int64_t n_kv = kq->ne[0], n_tok = kq->ne[1], n_head = kq->ne[2], ns = kq->ne[3];
    GGML_ASSERT(n_head % l->n_head == 0 && k->ne[2] == l->n_head);
    GGML_ASSERT(ggml_is_contiguous(kq));
    const int64_t G  = n_head/l->n_head;          // query heads per KV head: head i reads KV head i/G
    const size_t  s0 = k->view_offs/l->k->nb[2];  // first stream of the view
    ggml_tensor * kq4  = ggml_reshape_4d(ctx, kq, n_kv, n_tok, G, l->n_head*ns);
    ggml_tensor * bias = ggml_view_4d(ctx, l->bias, n_kv, 1, 1, l->n_head*ns,
                                      l->bias->nb[1], l->bias->nb[1], l->bias->nb[1], s0*l->bias->nb[2]);
    ggml_tensor * out  = ggml_add(ctx, kq4, bias);
    ggml_set_name(out, "elastickv_kq_bias");
    l->hooked = true;
    // a dump of the queries (score-based policies): Q is the second operand of the KQ product; an architecture
    // that transforms KQ before this point (soft-capping, ...) dumps no queries
    l->q_src = !dump_dir.empty() && uses_scores() && kq->op == GGML_OP_MUL_MAT ? kq->src[1] : nullptr;
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
    p = ggml_reshape_2d(ctx, p, n_kv, l->n_head*ns);
    ggml_tensor * dst = ggml_view_2d(ctx, l->score, n_kv, l->n_head*ns, l->score->nb[1], s0*l->score->nb[2]);
    ggml_tensor * acc = ggml_cpy(ctx, ggml_add(ctx, dst, p), dst);
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

void llama_elastickv_evict::after_ubatch(const llama_ubatch & ubatch, int32_t ctx_id, int64_t n_pass) {
    if (dump_dir.empty() || !uses_scores()) {
        return;
    }
    const int64_t u = n_ubatch++;
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "%s/ctx%d_ub%06" PRId64, dump_dir.c_str(), ctx_id, u);
    std::string il_list;
    const layer * first = nullptr;
    std::vector<float> q;
    for (const auto & l : layers) {
        if (!l.q_out) {
            continue;
        }
        ggml_backend_synchronize(l.backend);
        const ggml_tensor * t = l.q_out;
        q.resize(ggml_nelements(t));
        ggml_backend_tensor_get(t, q.data(), 0, ggml_nbytes(t));
        char name[32];
        snprintf(name, sizeof(name), "_l%03d_q.npy", l.il);
        // [stream, head, token, dim]: the reverse of ggml's [dim, token, head, stream]
        llama_elastickv_write_npy(prefix + std::string(name), "<f4", { t->ne[3], t->ne[2], t->ne[1], t->ne[0] },
                                  q.data(), q.size()*sizeof(float));
        il_list += (il_list.empty() ? "" : ", ") + std::to_string(l.il);
        first = first ? first : &l;
    }
    if (!first) {
        return;
    }
    FILE * f = fopen((prefix + std::string(".json")).c_str(), "w");
    if (!f) {
        throw std::runtime_error("elastickv: cannot write " + std::string(prefix) + ".json: " + strerror(errno));
    }
    fprintf(f, "{\"ctx\": %d, \"ubatch\": %" PRId64 ", \"passes_before\": %" PRId64 ", \"n_kv\": %" PRId64 ", "
        "\"kq_scale\": %.9g, \"n_stream\": %" PRId64 ", \"layers\": [%s], \"pos\": [",
        ctx_id, u, n_pass, first->n_kv, first->kq_scale, first->q_out->ne[3], il_list.c_str());
    for (uint32_t i = 0; i < ubatch.n_tokens; ++i) {
        fprintf(f, "%s%d", i ? ", " : "", ubatch.pos[i]);
    }
    fprintf(f, "], \"seq\": [");
    for (uint32_t i = 0; i < ubatch.n_tokens; ++i) {
        fprintf(f, "%s%d", i ? ", " : "", ubatch.n_seq_id[i] > 0 ? ubatch.seq_id[i][0] : -1);
    }
    fprintf(f, "]}\n");
    fclose(f);
}

// zeroes t[strm][head][c] for the cells in `cells` (sorted), one copy per contiguous run
void llama_elastickv_evict::zero_runs(ggml_tensor * t, uint32_t strm, int32_t head, const std::vector<uint32_t> & cells,
                                      ggml_backend_t backend, bool async) {
    size_t i = 0;
    while (i < cells.size()) {
        size_t j = i + 1;
        while (j < cells.size() && cells[j] == cells[j - 1] + 1) {
            ++j;
        }
        const size_t off = strm*t->nb[2] + head*t->nb[1] + cells[i]*sizeof(float);
        const size_t len = (j - i)*sizeof(float);
        if (async) {
            ggml_backend_tensor_set_async(backend, t, zeros.data(), off, len);
        } else {
            ggml_backend_tensor_set(t, zeros.data(), off, len);
        }
        i = j;
    }
}

void llama_elastickv_evict::before_ubatch(const llama_ubatch & ubatch) {
    // the cells this ubatch writes (apply() has placed its tokens)
    std::vector<std::vector<uint32_t>> fresh(n_stream);
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
                fresh[strm].push_back(it->second);
            }
        }
    }
    for (uint32_t strm = 0; strm < n_stream; ++strm) {
        auto & cells = fresh[strm];
        if (cells.empty()) {
            continue;
        }
        std::sort(cells.begin(), cells.end());
        cells.erase(std::unique(cells.begin(), cells.end()), cells.end());
        for (auto & l : layers) {
            for (int32_t h = 0; h < l.n_head; ++h) {
                std::vector<uint32_t> stale; // cells still carrying -inf from a token that is gone
                for (uint32_t c : cells) {
                    uint8_t & e = l.evicted[strm][(size_t) h*kv_size + c];
                    if (e) {
                        stale.push_back(c);
                        e = 0;
                    }
                }
                zero_runs(l.bias, strm, h, stale, l.backend, true);
                if (l.score) {
                    zero_runs(l.score, strm, h, cells, l.backend, true);
                }
            }
        }
    }
}

void llama_elastickv_evict::pass(const std::vector<llama_seq_id> & seqs, int32_t ctx_id, int64_t n_pass, FILE * stats,
                                 int32_t verbose) {
    for (const auto & l : layers) {
        if (!l.hooked) {
            throw std::runtime_error("elastickv: ELASTICKV_POLICY=" + std::string(desc.name) + " could not reach the attention of layer " +
                std::to_string(l.il) + " (this architecture builds its attention another way); the eviction would be ignored");
        }
        ggml_backend_synchronize(l.backend);
    }
    const int32_t n_layer = (int32_t) layers.size();
    const float   ninf    = -std::numeric_limits<float>::infinity();
    if (!dump_dir.empty()) {
        // the cache's own occupied cells, for checking that the sequences' cell lists below cover them all
        char name[96];
        snprintf(name, sizeof(name), "/ctx%d_pass%06" PRId64 "_kvcells.npy", ctx_id, n_pass);
        llama_elastickv_write_cells(dump_dir + name, kv->v_cells);
    }

    for (llama_seq_id s : seqs) {
        const uint32_t strm = kv->seq_to_stream[s];
        const auto &   sp   = kv->v_cells[strm].seq_pos_get(s);
        // the sequence's cells in ascending position; a cell shared with a lower sequence id is left to it
        std::vector<uint32_t>  cells;
        std::vector<llama_pos> pos;
        for (const auto & pc : sp) {
            bool lower = false;
            for (llama_seq_id o = 0; o < s && !lower; ++o) {
                lower = kv->v_cells[strm].seq_has(pc.second, o);
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
        const int64_t B = llama_elastickv_budget_cells(budget, n);
        std::vector<uint32_t> sorted(cells); // for the score resets: runs of consecutive cells
        std::sort(sorted.begin(), sorted.end());
        const uint32_t c_lo = sorted.front();
        const uint32_t c_hi = sorted.back();

        std::vector<float>   dump_score, row_score(c_hi - c_lo + 1), row(c_hi - c_lo + 1);
        std::vector<uint8_t> dump_before, dump_after;
        std::vector<float>   sc(n);
        std::vector<uint8_t> ev(n);
        int64_t kept_total = 0;
        for (int32_t li = 0; li < n_layer; ++li) {
            auto & l = layers[li];
            const int64_t Bl = desc.layer_budget(budget, B, n, li, n_layer);
            int64_t kept_layer = 0;
            for (int32_t h = 0; h < l.n_head; ++h) {
                auto & evh = l.evicted[strm];
                const size_t base = (size_t) h*kv_size;
                if (l.score) {
                    ggml_backend_tensor_get(l.score, row_score.data(), strm*l.score->nb[2] + h*l.score->nb[1] + c_lo*sizeof(float),
                                            row_score.size()*sizeof(float));
                }
                for (int64_t i = 0; i < n; ++i) {
                    sc[i] = l.score ? row_score[cells[i] - c_lo] : 0.0f;
                    ev[i] = evh[base + cells[i]];
                }
                if (!dump_dir.empty()) {
                    dump_score.insert(dump_score.end(), sc.begin(), sc.end());
                    dump_before.insert(dump_before.end(), ev.begin(), ev.end());
                }
                llama_elastickv_select(desc, budget, sink, Bl, pos, l.score ? sc.data() : nullptr, ev);
                if (!dump_dir.empty()) {
                    dump_after.insert(dump_after.end(), ev.begin(), ev.end());
                }
                // upload the bias of the sequence's cells whose state changed
                ggml_backend_tensor_get(l.bias, row.data(), strm*l.bias->nb[2] + h*l.bias->nb[1] + c_lo*sizeof(float), row.size()*sizeof(float));
                bool changed = false;
                int64_t kept = 0;
                for (int64_t i = 0; i < n; ++i) {
                    changed |= ev[i] != evh[base + cells[i]];
                    evh[base + cells[i]] = ev[i];
                    row[cells[i] - c_lo] = ev[i] ? ninf : 0.0f;
                    kept += !ev[i];
                }
                if (changed) {
                    ggml_backend_tensor_set(l.bias, row.data(), strm*l.bias->nb[2] + h*l.bias->nb[1] + c_lo*sizeof(float), row.size()*sizeof(float));
                }
                if (desc.reset_score && l.score) {
                    zero_runs(l.score, strm, h, sorted, l.backend, false);
                }
                kept_layer += kept;
                if (stats) {
                    fprintf(stats, "{\"record\": \"evict\", \"ctx\": %d, \"pass\": %" PRId64 ", \"seq\": %d, \"pos_max\": %d, "
                        "\"layer\": %d, \"head\": %d, \"n\": %" PRId64 ", \"budget\": %" PRId64 ", \"kept\": %" PRId64 "}\n",
                        ctx_id, n_pass, s, pos.back(), l.il, h, n, Bl, kept);
                }
            }
            kept_total += kept_layer;
            if (verbose >= 2) {
                LLAMA_LOG_WARN("elastickv:   pass %" PRId64 " seq %d layer %2d: budget %" PRId64 " of %" PRId64 ", kept %.1f%%\n",
                    n_pass, s, l.il, Bl, n, 100.0*(double) kept_layer/(double) (n*l.n_head));
            }
        }
        if (verbose >= 1) {
            int64_t heads = 0;
            for (const auto & l : layers) {
                heads += l.n_head;
            }
            LLAMA_LOG_WARN("elastickv: pass %" PRId64 " seq %d pos_max %d (%s): budget %" PRId64 " of %" PRId64 " cells, kept %.1f%% of cells x heads\n",
                n_pass, s, pos.back(), desc.name, B, n, 100.0*(double) kept_total/(double) (n*heads));
        }
        if (!dump_dir.empty()) {
            char prefix[96];
            snprintf(prefix, sizeof(prefix), "%s/ctx%d_pass%06" PRId64 "_seq%d", dump_dir.c_str(), ctx_id, n_pass, s);
            std::vector<int32_t> rows; // stream, cell, pos
            for (int64_t i = 0; i < n; ++i) {
                rows.insert(rows.end(), { (int32_t) strm, (int32_t) cells[i], pos[i] });
            }
            const int64_t H = layers.empty() ? 0 : layers[0].n_head;
            llama_elastickv_write_npy(std::string(prefix) + "_cells.npy", "<i4", { n, 3 }, rows.data(), rows.size()*sizeof(int32_t));
            llama_elastickv_write_npy(std::string(prefix) + "_score.npy", "<f4", { n_layer, H, n }, dump_score.data(), dump_score.size()*sizeof(float));
            llama_elastickv_write_npy(std::string(prefix) + "_evicted_before.npy", "|u1", { n_layer, H, n }, dump_before.data(), dump_before.size());
            llama_elastickv_write_npy(std::string(prefix) + "_evicted_after.npy", "|u1", { n_layer, H, n }, dump_after.data(), dump_after.size());
            if (uses_scores()) { // the keys the scores were computed with, in the order of the cells above
                for (const auto & l : layers) {
                    const int64_t hd = l.k->ne[0]/l.n_head;
                    std::vector<float> keys;
                    llama_elastickv_read_rows(l.k, strm, false, l.k->ne[0], cells, keys);
                    char name[32];
                    snprintf(name, sizeof(name), "_l%03d_k.npy", l.il);
                    llama_elastickv_write_npy(std::string(prefix) + name, "<f4", { n, l.n_head, hd }, keys.data(), keys.size()*sizeof(float));
                }
            }
            FILE * f = fopen((std::string(prefix) + ".json").c_str(), "w");
            if (f) {
                fprintf(f, "{\"ctx\": %d, \"pass\": %" PRId64 ", \"seq\": %d, \"policy\": \"%s\", \"fraction\": %.17g, \"cells\": %" PRId64 ", "
                    "\"recent\": %d, \"heavy_ratio\": %.17g, \"seed\": %" PRIu64 ", \"beta\": %.17g, \"sink\": %d, \"n_layer\": %d, "
                    "\"budget\": %" PRId64 ", \"n\": %" PRId64 "}\n",
                    ctx_id, n_pass, s, desc.name, budget.fraction, budget.cells, budget.recent, budget.heavy_ratio, budget.seed,
                    budget.beta, sink, n_layer, B, n);
                fclose(f);
            }
        }
    }
    if (stats) {
        fflush(stats);
    }
}
