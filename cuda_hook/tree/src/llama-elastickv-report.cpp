// SPDX-License-Identifier: MIT
// ElasticKV hook output: the echo of the configuration at context creation, the ELASTICKV_STATS records (config,
// and per pass, layer, K/V and head from the state read back after the pass), the ELASTICKV_VERBOSE lines of a
// pass, and the ELASTICKV_DUMP files of a pass (.npy K/V before and after, cell lists, the pass's .json).
#include "llama-elastickv-impl.h"
#include "llama-elastickv-internal.h"
#include "llama-elastickv-dump.h"

#include "llama-impl.h"
#include "llama-model.h"

#include "ggml-kv-sparsify.h"

#include <cinttypes>
#include <cstring>
#include <string>

namespace {

std::string ekv_json_escape(const std::string & s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if ((unsigned char) c < 0x20) {
            char buf[8];
            snprintf(buf, sizeof(buf), "\\u%04x", c);
            out += buf;
        } else {
            out += c;
        }
    }
    return out;
}

} // namespace

void llama_elastickv::impl::echo(const llama_model & model, const impl * swa) const {
    const auto & hparams = model.hparams;
    std::string devnames;
    for (const auto & d : devs) {
        devnames += std::string(devnames.empty() ? "" : ",") + ggml_backend_name(d.backend);
    }
    LLAMA_LOG_WARN("elastickv: ELASTICKV=1 mode=%s preset=%s scale_k=%.4g scale_v=%.4g sink=%d evict_every=%d warm=%d "
                   "head_dim=%s verbose=%d stats=%s dump=%s\n",
        llama_elastickv_mode_name(cfg.mode), cfg.preset.c_str(), cfg.scale_k, cfg.scale_v, cfg.sink, cfg.evict_every, cfg.warm,
        cfg.head_dim ? std::to_string(cfg.head_dim).c_str() : "auto", cfg.verbose,
        cfg.stats_path.empty() ? "-" : cfg.stats_path.c_str(), cfg.dump_dir.empty() ? "-" : cfg.dump_dir.c_str());
    if (desc) {
        LLAMA_LOG_WARN("elastickv: policy=%s budget=%s recent=%s heavy_ratio=%.3g seed=%" PRIu64 " pyramid_beta=%.3g "
                       "scope=%s free=%d kv_cells=%u (the ElasticKV thresholds are not used)\n", desc->name,
            cfg.budget.fraction > 0 ? (std::to_string(cfg.budget.fraction) + " (fraction)").c_str() : (std::to_string(cfg.budget.cells) + " cells").c_str(),
            cfg.budget.recent < 0 ? "auto" : std::to_string(cfg.budget.recent).c_str(), cfg.budget.heavy_ratio, cfg.budget.seed, cfg.budget.beta,
            cfg.scope == LLAMA_ELASTICKV_SCOPE_SHARED ? "shared" : "head", cfg.free_cells ? 1 : 0, cfg.kv_cells);
        if (evict) {
            LLAMA_LOG_WARN("elastickv: eviction state %.2f MiB on the KV devices (%s%skeep), %u cells per stream of %u logical\n",
                evict->device_bytes()/1048576.0, cparams.flash_attn ? "" : "bias, ", evict->uses_scores() ? "score, " : "",
                kv->get_size(), cparams.n_ctx_seq);
        }
    }
    // which caches the layers live in: "(one KV cache)", or each cache of an iSWA model with its layers and cells
    std::string where = "one KV cache";
    size_t n_covered = layers.size();
    if (swa) {
        n_covered += swa->layers.size();
        auto n_layers = [](size_t n) { return std::to_string(n) + (n == 1 ? " layer" : " layers"); };
        where = "full cache: " + n_layers(layers.size()) + ", " + std::to_string(kv->get_size()) + " cells; "
                "sliding-window cache (window " + std::to_string(hparams.n_swa) + "): " + n_layers(swa->layers.size()) +
                ", " + std::to_string(swa->kv->get_size()) + " cells";
    }
    LLAMA_LOG_WARN("elastickv: cache K %s V %s%s, %zu of %u attention layers (%s) x %u KV heads x head dim "
                   "%u/%u, %u stream(s), %u group(s), K domain %s, V domain %s, backend %s\n",
        ggml_type_name(kv->type_k()), ggml_type_name(kv->type_v()), v_trans ? " (V transposed)" : "",
        n_covered, hparams.n_layer(), where.c_str(), hparams.n_head_kv(0), hparams.n_embd_head_k(0), hparams.n_embd_head_v(0),
        n_stream, n_group, kv->attn_rot_k ? "hadamard-rotated" : "plain", kv->attn_rot_v ? "hadamard-rotated" : "plain", devnames.c_str());
}

// The ELASTICKV_STATS config record, once per context (nothing without ELASTICKV_STATS): n_layer counts the layers
// of both caches of an iSWA model, whose layers of the sliding-window cache are listed in swa_layers.
void llama_elastickv::impl::write_config_record(const impl * swa) const {
    if (!stats) {
        return;
    }
    const auto & c = cfg;
    fprintf(stats, "{\"record\": \"config\", \"policy\": \"%s\", \"fraction\": %.17g, \"cells\": %" PRId64 ", "
        "\"recent\": %d, \"heavy_ratio\": %.17g, \"seed\": %" PRIu64 ", \"pyramid_beta\": %.17g, ",
        llama_elastickv_policy_name_of(c.policy), c.budget.fraction, c.budget.cells, c.budget.recent, c.budget.heavy_ratio, c.budget.seed, c.budget.beta);
    fprintf(stats, "\"ctx\": %d, \"mode\": \"%s\", \"preset\": \"%s\", \"scale_k\": %.6g, "
        "\"scale_v\": %.6g, \"sink\": %d, \"evict_every\": %d, \"warm\": %d, \"type_k\": \"%s\", \"type_v\": \"%s\", "
        "\"v_trans\": %s, \"rot_k\": %s, \"rot_v\": %s, \"n_layer\": %zu, \"n_stream\": %u, \"n_group\": %u, \"stats\": \"%s\", "
        "\"swa_layers\": [",
        ctx_id, llama_elastickv_mode_name(c.mode), c.preset.c_str(), c.scale_k, c.scale_v, c.sink, c.evict_every, c.warm,
        ggml_type_name(kv->type_k()), ggml_type_name(kv->type_v()), v_trans ? "true" : "false",
        kv->attn_rot_k ? "true" : "false", kv->attn_rot_v ? "true" : "false",
        layers.size() + (swa ? swa->layers.size() : 0), n_stream, n_group, ekv_json_escape(c.stats_path).c_str());
    for (size_t i = 0; swa && i < swa->layers.size(); ++i) {
        fprintf(stats, "%s%d", i ? ", " : "", swa->layers[i].il);
    }
    fprintf(stats, "]}\n");
    fflush(stats);
}

// host[layer*2 + kind] = the layer's K (kind 0) or V (kind 1) state of every stream, concatenated
void llama_elastickv::impl::read_state(std::vector<std::vector<double>> & host) const {
    for (const auto & D : devs) {
        ggml_backend_synchronize(D.backend);
    }
    host.assign(2*layers.size(), {});
    for (size_t i = 0; i < layers.size(); ++i) {
        const auto & l = layers[i];
        for (int kind = 0; kind < 2; ++kind) {
            const auto & st = kind == 0 ? l.state_k : l.state_v;
            auto & h = host[2*i + kind];
            const size_t n = ggml_nelements(st[0]);
            h.resize(n*n_stream);
            for (uint32_t strm = 0; strm < n_stream; ++strm) {
                ggml_backend_tensor_get(st[strm], h.data() + strm*n, 0, n*sizeof(double));
            }
        }
    }
}

// Stats records and verbose lines from the state read back after the pass.
void llama_elastickv::impl::report(const std::vector<llama_seq_id> & seqs_pass, const std::vector<std::vector<double>> & host, double ms) {
    for (llama_seq_id s : seqs_pass) {
        const uint32_t strm = kv->seq_to_stream[s];
        const uint32_t g    = group_of(s);
        const llama_pos pos_max = kv->seq_pos_max(s);
        double tot[2][2] = { { 0, 0 }, { 0, 0 } }; // [kind][n_obs, nnz_obs]
        for (size_t i = 0; i < layers.size(); ++i) {
            const auto & l = layers[i];
            for (int kind = 0; kind < 2; ++kind) {
                const float scale = kind == 0 ? cfg.scale_k : cfg.scale_v;
                if (scale <= 0.0f) {
                    continue;
                }
                const auto & h = host[2*i + kind];
                const size_t per_stream = (size_t) GGML_KV_SPARSIFY_NSTATE*l.n_head*n_group;
                double lay[2] = { 0, 0 };
                for (int hd = 0; hd < l.n_head; ++hd) {
                    const double * st = h.data() + strm*per_stream + ((size_t) g*l.n_head + hd)*GGML_KV_SPARSIFY_NSTATE;
                    lay[0] += st[GGML_KV_SPARSIFY_N_OBS];
                    lay[1] += st[GGML_KV_SPARSIFY_NNZ_OBS];
                    if (stats) {
                        fprintf(stats, "{\"record\": \"head\", \"ctx\": %d, \"pass\": %" PRId64 ", \"seq\": %d, \"epoch\": %d, "
                            "\"pos_max\": %d, \"cache\": \"%s\", \"layer\": %d, \"kv\": \"%s\", \"head\": %d, \"scale\": %.6g, \"tau\": %.9g, "
                            "\"S\": %.17g, \"N\": %.0f, \"n\": %.0f, \"nnz\": %.0f, \"n_obs\": %.0f, \"nnz_obs\": %.0f, \"hist\": [",
                            ctx_id, n_pass, s, seqs[s].epoch, pos_max, cache ? cache : "one", l.il, kind == 0 ? "k" : "v", hd, scale,
                            st[GGML_KV_SPARSIFY_TAU], st[GGML_KV_SPARSIFY_S], st[GGML_KV_SPARSIFY_N],
                            st[GGML_KV_SPARSIFY_N_PROC], st[GGML_KV_SPARSIFY_NNZ_PROC],
                            st[GGML_KV_SPARSIFY_N_OBS], st[GGML_KV_SPARSIFY_NNZ_OBS]);
                        for (int b = 0; b <= GGML_KV_SPARSIFY_BLOCK; ++b) {
                            fprintf(stats, b ? ", %.0f" : "%.0f", st[GGML_KV_SPARSIFY_HIST0 + b]);
                        }
                        fprintf(stats, "]}\n");
                    }
                    if (cfg.verbose >= 2) {
                        LLAMA_LOG_WARN("elastickv:   pass %" PRId64 " seq %d layer %2d %s head %d: tau %.5f, zero %5.1f%% of %.0f thresholded, %5.1f%% overall\n",
                            n_pass, s, l.il, kind == 0 ? "K" : "V", hd, st[GGML_KV_SPARSIFY_TAU],
                            st[GGML_KV_SPARSIFY_N_PROC] > 0 ? 100.0*(1.0 - st[GGML_KV_SPARSIFY_NNZ_PROC]/st[GGML_KV_SPARSIFY_N_PROC]) : 0.0,
                            st[GGML_KV_SPARSIFY_N_PROC],
                            st[GGML_KV_SPARSIFY_N_OBS] > 0 ? 100.0*(1.0 - st[GGML_KV_SPARSIFY_NNZ_OBS]/st[GGML_KV_SPARSIFY_N_OBS]) : 0.0);
                    }
                }
                tot[kind][0] += lay[0];
                tot[kind][1] += lay[1];
            }
        }
        // what llama_elastickv_get_seq_stats reports: the sequence's entries and non-zeros after this pass
        seqs[s].k_obs  = tot[0][0];
        seqs[s].k_nnz  = tot[0][1];
        seqs[s].v_obs  = tot[1][0];
        seqs[s].v_nnz  = tot[1][1];
        if (cfg.verbose >= 1) {
            const double nk = tot[0][0], nv = tot[1][0];
            const double zk = nk > 0 ? 100.0*(1.0 - tot[0][1]/nk) : 0.0;
            const double zv = nv > 0 ? 100.0*(1.0 - tot[1][1]/nv) : 0.0;
            const double nominal = (tot[0][1] + tot[1][1]) > 0 ? (nk + nv)/(tot[0][1] + tot[1][1]) : 0.0;
            LLAMA_LOG_WARN("elastickv: %spass %" PRId64 " seq %d epoch %d pos_max %d (%s): K %.1f%% V %.1f%% zero, nominal %.3fx, %.2f ms\n",
                is_swa() ? "sliding-window cache: " : "", n_pass, s, seqs[s].epoch, pos_max, llama_elastickv_mode_name(cfg.mode), zk, zv, nominal, ms);
        }
    }
    if (stats) {
        fflush(stats);
    }
}

// Writes the listed cells of every layer as float32 [n, n_head, head_dim] .npy files, plus the cell lists.
void llama_elastickv::impl::dump(const char * when) const {
    for (const auto & D : devs) {
        ggml_backend_synchronize(D.backend);
    }
    const std::string prefix = file_prefix();
    if (strcmp(when, "before") == 0) {
        // the cache's own occupied cells, for checking that the lists below cover every cell of the sequences
        llama_elastickv_write_cells(cfg.dump_dir + "/" + prefix + "_kvcells.npy", kv->v_cells);
    }
    for (int kind = 0; kind < 2; ++kind) {
        if (!acts(kind)) {
            continue;
        }
        const char * kn = kind == 0 ? "k" : "v";
        const auto & lists = kind == 0 ? list_k : list_v;
        if (strcmp(when, "before") == 0) {
            std::vector<int32_t> rows; // stream, cell, pos, code
            for (uint32_t strm = 0; strm < n_stream; ++strm) {
                for (size_t e = 0; e + 1 < lists[strm].size(); e += 2) {
                    const int32_t c = lists[strm][e];
                    rows.insert(rows.end(), { (int32_t) strm, c, cells_of(strm).pos_get(c), lists[strm][e + 1] });
                }
            }
            llama_elastickv_write_npy(cfg.dump_dir + "/" + prefix + "_cells_" + kn + ".npy", "<i4", { (int64_t) rows.size()/4, 4 },
                rows.data(), rows.size()*sizeof(int32_t));
        }
        std::vector<std::vector<uint32_t>> cells(n_stream); // the listed cells of each stream, list order
        for (uint32_t strm = 0; strm < n_stream; ++strm) {
            for (size_t e = 0; e + 1 < lists[strm].size(); e += 2) {
                cells[strm].push_back((uint32_t) lists[strm][e]);
            }
        }
        for (const auto & l : layers) {
            ggml_tensor * t  = kind == 0 ? l.k : l.v;
            const int     hd = kind == 0 ? l.hd_k : l.hd_v;
            const int64_t n_embd = (int64_t) l.n_head*hd;
            std::vector<float> out;
            for (uint32_t strm = 0; strm < n_stream; ++strm) {
                llama_elastickv_read_rows(t, strm, kind == 1 && v_trans, n_embd, cells[strm], out);
            }
            char name[96];
            snprintf(name, sizeof(name), "%s_l%03d_%s_%s.npy", prefix.c_str(), l.il, kn, when);
            llama_elastickv_write_npy(cfg.dump_dir + "/" + name, "<f4", { (int64_t) (out.size()/n_embd), l.n_head, hd },
                out.data(), out.size()*sizeof(float));
        }
    }
}

std::string llama_elastickv::impl::file_prefix() const {
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "ctx%d_%spass%06" PRId64, ctx_id, is_swa() ? "swa_" : "", n_pass);
    return prefix;
}

// Writes ctx<C>_pass<P>.json (ctx<C>_swa_pass<P>.json for a sliding-window cache) next to the pass's .npy files: the configuration, the sequences and the layers.
void llama_elastickv::impl::dump_pass_meta(const std::vector<llama_seq_id> & seqs_pass) const {
    const std::string path = cfg.dump_dir + "/" + file_prefix() + ".json";
    FILE * f = fopen(path.c_str(), "w");
    if (f) {
        fprintf(f, "{\"policy\": \"%s\", \"fraction\": %.17g, \"seed\": %" PRIu64 ", ", llama_elastickv_policy_name_of(cfg.policy), cfg.budget.fraction, cfg.budget.seed);
        fprintf(f, "\"ctx\": %d, \"pass\": %" PRId64 ", \"mode\": \"%s\", \"scale_k\": %.6g, \"scale_v\": %.6g, \"sink\": %d, "
            "\"type_k\": \"%s\", \"type_v\": \"%s\", \"v_trans\": %s, \"unified\": %s, \"cache\": \"%s\", \"seqs\": [",
            ctx_id, n_pass, llama_elastickv_mode_name(cfg.mode), cfg.scale_k, cfg.scale_v, cfg.sink,
            ggml_type_name(kv->type_k()), ggml_type_name(kv->type_v()), v_trans ? "true" : "false", unified ? "true" : "false",
            cache ? cache : "one");
        for (size_t i = 0; i < seqs_pass.size(); ++i) {
            const llama_seq_id s = seqs_pass[i];
            fprintf(f, "%s{\"seq\": %d, \"epoch\": %d, \"pos_max\": %d, \"stream\": %u, \"group\": %u}", i ? ", " : "",
                s, seqs[s].epoch, kv->seq_pos_max(s), kv->seq_to_stream[s], group_of(s));
        }
        fprintf(f, "], \"layers\": [");
        for (size_t i = 0; i < layers.size(); ++i) {
            fprintf(f, "%s%d", i ? ", " : "", layers[i].il);
        }
        fprintf(f, "]}\n");
        fclose(f);
    }
}
