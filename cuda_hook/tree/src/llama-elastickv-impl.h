// SPDX-License-Identifier: MIT
// ElasticKV hook: its state (llama_elastickv::impl), shared by the files that implement it: the pass and the
// triggers (llama-elastickv.cpp) and what a pass reports (llama-elastickv-report.cpp).
#pragma once

#include "llama-elastickv.h"
#include "llama-elastickv-evict.h"

#include "llama-cparams.h"
#include "llama-kv-cache.h"

#include "ggml-cpp.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

struct llama_elastickv::impl {
    // Where one KV layer lives and how its heads are shaped.
    struct layer {
        int32_t       il;        // model layer
        int32_t       dev;       // index into impl::devs
        int32_t       n_head;
        int32_t       hd_k;
        int32_t       hd_v;
        int64_t       n_embd_v;  // V width of this layer (the transposed storage may be wider)
        ggml_tensor * k;
        ggml_tensor * v;
        std::vector<ggml_tensor *> state_k; // per stream, F64 [NSTATE, n_head, n_group]
        std::vector<ggml_tensor *> state_v;
    };

    // A backend holding some of the layers, with the hook's own tensors next to them.
    struct device {
        ggml_backend_t             backend;
        ggml_backend_buffer_type_t buft;
        ggml_context_ptr           ctx;
        ggml_backend_buffer_ptr    buf;
        std::vector<ggml_tensor *> cells_k; // per stream, I32 [2, kv_size]
        std::vector<ggml_tensor *> cells_v;
    };

    // Per sequence.
    struct seq_state {
        llama_pos last_pass_pos = -1; // pos_max at the last pass, -1 before the first
        int32_t   epoch         = 0;  // bumped when the sequence is rewound (cleared, shortened, restored)
        bool      reset_k       = false; // incremental mode: restart the running K statistic at the next pass
        bool      reset_v       = false;
        // what llama_elastickv_get_seq_stats reports
        int64_t   n_pass        = 0;   // passes this sequence took part in
        // its K / V entries and their non-zeros after its last pass, when read back (collect); 0: not read back
        double    k_obs = 0, k_nnz = 0, v_obs = 0, v_nnz = 0;
    };

    llama_elastickv_config cfg;
    const llama_cparams &  cparams;
    llama_kv_cache *       kv;
    int32_t                ctx_id;
    const char *           cache = nullptr; // iSWA models: "full" or "swa" (the cache kv is); nullptr: the only cache
    bool is_swa() const { return cache != nullptr && strcmp(cache, "swa") == 0; }

    bool     unified;
    uint32_t n_stream;
    uint32_t n_seq;
    uint32_t n_group;
    bool     v_trans;
    bool     collect; // stats, verbose, dump or the seq-stats API: count non-zeros over the whole sequence and read them back

    std::vector<layer>  layers;
    std::vector<device> devs;
    std::vector<seq_state>    seqs;

    std::vector<std::vector<uint8_t>> processed_k; // [stream][cell]: incremental mode, K of the cell thresholded
    std::vector<std::vector<uint8_t>> processed_v;

    std::vector<std::vector<int32_t>> list_k; // [stream]: (cell, code) pairs of the current pass
    std::vector<std::vector<int32_t>> list_v;

    std::vector<uint8_t> graph_mem;
    int64_t              n_pass = 0;
    FILE *               stats  = nullptr;

    const llama_elastickv_policy_desc *    desc = nullptr; // nullptr: ElasticKV itself
    std::unique_ptr<llama_elastickv_evict> evict;           // token policies

    // K (kind 0) or V (kind 1) is rewritten by the pass: ElasticKV with a scale > 0, or an element baseline
    bool acts(int kind) const {
        if (desc) {
            return !desc->token;
        }
        return (kind == 0 ? cfg.scale_k : cfg.scale_v) > 0.0f;
    }

    impl(const llama_elastickv_config & cfg, const llama_cparams & cparams) : cfg(cfg), cparams(cparams) {}

    ~impl() {
        if (stats) {
            fclose(stats);
        }
    }

    const llama_kv_cells & cells_of(uint32_t strm) const { return kv->v_cells[strm]; }

    // lowest sequence id in the cell: a cell shared by several sequences is handled by one of them only
    llama_seq_id owner(const llama_kv_cells & cells, uint32_t c) const {
        for (uint32_t s = 0; s < n_seq; ++s) {
            if (cells.seq_has(c, s)) {
                return (llama_seq_id) s;
            }
        }
        return -1;
    }

    uint32_t group_of(llama_seq_id s) const { return unified ? (uint32_t) s : 0; }

    void mark_seq_unprocessed(llama_seq_id s, bool k, bool v) {
        const uint32_t strm = kv->seq_to_stream[s];
        for (const auto & pc : cells_of(strm).seq_pos_get(s)) {
            if (k) { processed_k[strm][pc.second] = 0; }
            if (v) { processed_v[strm][pc.second] = 0; }
        }
    }

    // the sequence went back in time (cleared, shortened, restored): start over
    void rewind(llama_seq_id s) {
        auto & sq = seqs[s];
        sq.last_pass_pos = -1;
        sq.epoch++;
        sq.k_obs = sq.k_nnz = sq.v_obs = sq.v_nnz = 0;
        sq.reset_k = sq.reset_v = true;
        mark_seq_unprocessed(s, true, true);
    }

    // what a ubatch, a K-shift or a state read means for this cache (llama-elastickv.cpp)
    void on_ubatch(const llama_ubatch & ubatch);
    void on_memory_update();
    void on_state_read(llama_seq_id seq_id);

    // the prefix of this cache's dump files: ctx<C>_pass<P>, or ctx<C>_swa_pass<P> for a sliding-window cache
    std::string file_prefix() const;

    // llama-elastickv.cpp
    void setup(const llama_model & model, const std::vector<ggml_backend_t> & backends);
    void check_supported();
    void run_pass(const std::vector<llama_seq_id> & seqs_pass);
    void build_lists(const std::vector<uint8_t> & in_pass);
    void upload(const std::vector<llama_seq_id> & seqs_pass);
    void compute();
    void entries_apply(const std::vector<llama_seq_id> & seqs_pass);

    // llama-elastickv-stats.cpp: bytes of one cell's K and V over every layer of the hook's cache
    size_t cell_bytes() const;

    // llama-elastickv-report.cpp
    void echo(const llama_model & model, const impl * swa) const;   // one echo for both caches of an iSWA model
    void write_config_record(const impl * swa) const;
    void read_state(std::vector<std::vector<double>> & host) const;
    void report(const std::vector<llama_seq_id> & seqs_pass, const std::vector<std::vector<double>> & host, double ms);
    void dump(const char * when) const;
    void dump_pass_meta(const std::vector<llama_seq_id> & seqs_pass) const;
};
