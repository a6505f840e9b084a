// SPDX-License-Identifier: MIT
// Token eviction: what ELASTICKV_DUMP writes (the tests recompute the policies from it, tests/test_policies.py):
// after every ubatch, a score-based policy's queries (ctx<C>_ub<U>_*); at every pass, per sequence, its cells,
// scores, evicted flags before and after, the recency before the pass (lru, lru_fifo), the keys of score-based
// policies and the settings (ctx<C>_pass<P>_seq<S>_*). The format is read by scripts/elastickv/dump.py.
#include "llama-elastickv-evict.h"
#include "llama-elastickv-dump.h"

#include "llama-batch.h"

#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <stdexcept>
#include <string>

void llama_elastickv_evict::after_ubatch(const llama_ubatch & ubatch, int32_t ctx_id, int64_t n_pass) {
    if (params.dump_dir.empty() || !uses_scores()) {
        return;
    }
    const int64_t u = n_ubatch++;
    char base[64];
    snprintf(base, sizeof(base), "/ctx%d_ub%06" PRId64, ctx_id, u);
    const std::string prefix = params.dump_dir + base; // the folder's path may be of any length
    std::string il_list;
    const layer * first = nullptr;
    std::vector<float> q;
    for (const auto & l : layers) {
        if (!l.q_out) {
            continue;
        }
        ggml_backend_synchronize(devs[l.dev].backend);
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
        throw std::runtime_error("elastickv: cannot write " + prefix + ".json: " + strerror(errno));
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

void llama_elastickv_evict::write_pass_dump(int32_t ctx_id, int64_t n_pass, llama_seq_id s, uint32_t strm,
                                            const std::vector<uint32_t> & cells, const std::vector<llama_pos> & pos,
                                            const pass_dump & d, int64_t B, int64_t n_log, int64_t freed) const {
    const int64_t n       = (int64_t) cells.size();
    const int32_t n_layer = (int32_t) layers.size();
    const bool    shared  = params.scope == LLAMA_ELASTICKV_SCOPE_SHARED;
    char base[64];
    snprintf(base, sizeof(base), "/ctx%d_pass%06" PRId64 "_seq%d", ctx_id, n_pass, s);
    const std::string prefix = params.dump_dir + base; // the folder's path may be of any length
    std::vector<int32_t> rows; // stream, cell, pos
    for (int64_t i = 0; i < n; ++i) {
        rows.insert(rows.end(), { (int32_t) strm, (int32_t) cells[i], pos[i] });
    }
    const int64_t H = layers.empty() ? 0 : layers[0].n_head;
    llama_elastickv_write_npy(prefix + "_cells.npy", "<i4", { n, 3 }, rows.data(), rows.size()*sizeof(int32_t));
    llama_elastickv_write_npy(prefix + "_score.npy", "<f4", { n_layer, H, n }, d.score.data(), d.score.size()*sizeof(float));
    llama_elastickv_write_npy(prefix + "_evicted_before.npy", "|u1", { n_layer, H, n }, d.before.data(), d.before.size());
    llama_elastickv_write_npy(prefix + "_evicted_after.npy", "|u1", { n_layer, H, n }, d.after.data(), d.after.size());
    if (desc.recency) { // the recency of each cell before this pass's update
        llama_elastickv_write_npy(prefix + "_recency_before.npy", "<f4", { n_layer, H, n }, d.recency.data(), d.recency.size()*sizeof(float));
    }
    if (uses_scores() || desc.from_keys()) { // the keys the scores or clusters were computed from, in the cells' order
        for (const auto & l : layers) {
            const int64_t hd = l.k->ne[0]/l.n_head;
            std::vector<float> keys;
            llama_elastickv_read_rows(l.k, strm, false, l.k->ne[0], cells, keys);
            char name[32];
            snprintf(name, sizeof(name), "_l%03d_k.npy", l.il);
            llama_elastickv_write_npy(prefix + name, "<f4", { n, l.n_head, hd }, keys.data(), keys.size()*sizeof(float));
        }
    }
    FILE * f = fopen((prefix + ".json").c_str(), "w");
    if (!f) {
        throw std::runtime_error("elastickv: cannot write " + prefix + ".json: " + strerror(errno));
    }
    {
        fprintf(f, "{\"ctx\": %d, \"pass\": %" PRId64 ", \"seq\": %d, \"policy\": \"%s\", \"fraction\": %.17g, \"cells\": %" PRId64 ", "
            "\"recent\": %d, \"heavy_ratio\": %.17g, \"seed\": %" PRIu64 ", \"beta\": %.17g, \"sink\": %d, \"n_layer\": %d, "
            "\"budget\": %" PRId64 ", \"n\": %" PRId64 ", \"n_logical\": %" PRId64 ", \"scope\": \"%s\", \"free\": %s, "
            "\"freed\": %" PRId64 "}\n",
            ctx_id, n_pass, s, desc.name, budget.fraction, budget.cells, budget.recent, budget.heavy_ratio, budget.seed,
            budget.beta, desc.no_sinks ? 0 : params.sink, n_layer, B, n, n_log, shared ? "shared" : "head", params.free_cells ? "true" : "false", freed);
        fclose(f);
    }
}
