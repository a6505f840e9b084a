// SPDX-License-Identifier: MIT
// ElasticKV hook: the setup on a context (caches, layers, devices, the checks that refuse what cannot run; one impl
// per attention KV cache, two on an iSWA model, fanned out by the entry points), the per-sequence triggers and rewinds, sink masks by position and the entry points of llama_elastickv. The pass
// itself (lists, upload, the ElasticKV op per layer) is in llama-elastickv-pass.cpp; element baselines in
// llama-elastickv-entries.cpp, token evictions in llama-elastickv-evict.cpp. The
// ELASTICKV_* variables are read in llama-elastickv-config.cpp; stats records, verbose lines and dumps are
// written by llama-elastickv-report.cpp; the hook's state is in llama-elastickv-impl.h. See llama-elastickv.h
// for the overview.
#include "llama-elastickv-impl.h"
#include "llama-elastickv-internal.h"

#include "llama-impl.h"
#include "llama-batch.h"
#include "llama-cparams.h"
#include "llama-hparams.h"
#include "llama-model.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-memory-hybrid.h"
#include "llama-memory-recurrent.h"

#include "ggml-alloc.h"
#include "ggml-kv-sparsify.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <sys/stat.h>

namespace {

bool ekv_type_supported(ggml_type t) {
    return t == GGML_TYPE_F32  || t == GGML_TYPE_F16  || t == GGML_TYPE_BF16 ||
           t == GGML_TYPE_Q8_0 || t == GGML_TYPE_Q4_0 || t == GGML_TYPE_Q5_0;
}

void ekv_mkdirs(const std::string & dir) {
    std::string cur;
    for (size_t i = 0; i <= dir.size(); ++i) {
        if (i == dir.size() || dir[i] == '/') {
            if (!cur.empty()) {
                if (mkdir(cur.c_str(), 0777) != 0 && errno != EEXIST) {
                    llama_elastickv_fail("ELASTICKV_DUMP", dir, std::string("cannot be created (") + strerror(errno) + ")");
                }
            }
        }
        if (i < dir.size()) {
            cur += dir[i];
        }
    }
    struct stat st;
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        llama_elastickv_fail("ELASTICKV_DUMP", dir, "is not a directory");
    }
}

int g_ekv_n_ctx = 0; // contexts created with the hook on, for unique dump names and stats records

} // namespace

//
// the hook
//

enum ggml_backend_dev_type llama_elastickv_dev_type(ggml_backend_t backend) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    return dev ? ggml_backend_dev_type(dev) : GGML_BACKEND_DEVICE_TYPE_ACCEL;
}

// The backend that runs the hook's ops on a buffer of type buft: the device that owns that memory (a GPU for its
// own buffers, the CPU for host memory, pinned or not: -nkvo, layers left on the CPU by -ngl). Never an
// accelerator backend (BLAS, ...): those accept host buffers but run only their own few ops.
ggml_backend_t llama_elastickv_backend_for(ggml_backend_buffer_type_t buft, const std::vector<ggml_backend_t> & backends) {
    for (auto * b : backends) {
        if (llama_elastickv_dev_type(b) != GGML_BACKEND_DEVICE_TYPE_ACCEL &&
            ggml_backend_dev_buffer_type(ggml_backend_get_device(b)) == buft) {
            return b;
        }
    }
    if (ggml_backend_buft_is_host(buft)) {
        for (auto * b : backends) {
            if (llama_elastickv_dev_type(b) == GGML_BACKEND_DEVICE_TYPE_CPU) {
                return b;
            }
        }
    }
    for (auto * b : backends) {
        if (llama_elastickv_dev_type(b) != GGML_BACKEND_DEVICE_TYPE_ACCEL && ggml_backend_supports_buft(b, buft)) {
            return b;
        }
    }
    throw std::runtime_error(std::string("elastickv: no backend of this context can access the KV buffer type ") +
        ggml_backend_buft_name(buft));
}

// finds the attention KV caches this hook works on: the model's one cache, or the full and the sliding-window cache
// of a model whose attention layers are split between the two (iSWA; *swa is set). A recurrent or hybrid memory is
// refused with a message: the hook covers every attention layer of a model or refuses it, never part of them.
static llama_kv_cache * ekv_find_kv(llama_memory_i * memory, const llama_hparams & hparams,
                                    const llama_elastickv_config & cfg, llama_kv_cache ** swa) {
    *swa = nullptr;
    if (auto * kv = dynamic_cast<llama_kv_cache *>(memory)) {
        return kv;
    }
    if (auto * iswa = dynamic_cast<llama_kv_cache_iswa *>(memory)) {
        const llama_elastickv_policy_desc * desc = llama_elastickv_policy_get(cfg.policy);
        if (desc && desc->token) {
            uint32_t n_swa = 0;
            for (uint32_t il = 0; il < hparams.n_layer(); ++il) {
                n_swa += hparams.is_swa(il) ? 1 : 0;
            }
            throw std::runtime_error(std::string("elastickv: ELASTICKV_POLICY=") + desc->name + " is refused for this model: "
                "it splits its attention layers between two KV caches (iSWA): " + std::to_string(n_swa) + " of " +
                std::to_string(hparams.n_layer()) + " attention layers in a sliding-window cache of " +
                std::to_string(hparams.n_swa) + " positions, the others in a full cache, and token policies evict cells of "
                "one cache only; on iSWA models the hook runs ElasticKV (ELASTICKV_POLICY=elastickv) and the element "
                "baselines (random_entries, topk_entries), which cover both caches");
        }
        *swa = iswa->get_swa();
        return iswa->get_base();
    }
    if (dynamic_cast<llama_memory_hybrid *>(memory)) {
        throw std::runtime_error("elastickv: ELASTICKV=1 but this model's memory is hybrid (recurrent layers beside "
                                 "attention layers); the hook sparsifies attention KV caches, not recurrent states, and would leave part of the "
                                 "model untouched; run it with ELASTICKV unset or 0");
    }
    if (dynamic_cast<llama_memory_recurrent *>(memory)) {
        throw std::runtime_error("elastickv: ELASTICKV=1 but this model is recurrent (Mamba, RWKV, ...): its memory is "
                                 "a per-sequence state, not an attention KV cache the hook could sparsify; run it with "
                                 "ELASTICKV unset or 0");
    }
    return nullptr;
}

void llama_elastickv::impl::setup(const llama_model & model, const std::vector<ggml_backend_t> & backends) {
    const auto & hparams = model.hparams;

    if (kv->other) {
        throw std::runtime_error("elastickv: ELASTICKV=1 but this context shares its KV cache with another one; "
                                 "run the hook in the context that owns the cache");
    }
    if (hparams.is_mla()) {
        throw std::runtime_error("elastickv: ELASTICKV=1 is not supported for MLA attention "
                                 "(the cache holds a compressed latent, not per-head K/V)");
    }

    const uint32_t n_ctx_seq = cparams.n_ctx_seq;
    if ((uint32_t) cfg.sink > n_ctx_seq) {
        llama_elastickv_fail("ELASTICKV_SINK", std::to_string(cfg.sink), "is larger than the context (" + std::to_string(n_ctx_seq) + " tokens per sequence)");
    }
    if ((uint32_t) cfg.warm > n_ctx_seq) {
        llama_elastickv_fail("ELASTICKV_WARM", std::to_string(cfg.warm), "is larger than the context (" + std::to_string(n_ctx_seq) + " tokens per sequence)");
    }

    const ggml_type type_k = kv->type_k();
    const ggml_type type_v = kv->type_v();
    if (cfg.scale_k > 0.0f && !ekv_type_supported(type_k)) {
        throw std::runtime_error(std::string("elastickv: ELASTICKV_SCALE_K > 0 needs a K cache with an exact zero, but -ctk is ") +
            ggml_type_name(type_k) + "; accepted cache types: f32, f16, bf16, q8_0, q4_0, q5_0 (q4_1, q5_1 and iq4_nl have no exact zero)");
    }
    if (cfg.scale_v > 0.0f && !ekv_type_supported(type_v)) {
        throw std::runtime_error(std::string("elastickv: ELASTICKV_SCALE_V > 0 needs a V cache with an exact zero, but -ctv is ") +
            ggml_type_name(type_v) + "; accepted cache types: f32, f16, bf16, q8_0, q4_0, q5_0 (q4_1, q5_1 and iq4_nl have no exact zero)");
    }

    desc = llama_elastickv_policy_get(cfg.policy);
    if (desc && desc->token && cparams.flash_attn && !llama_elastickv_frees_all(cfg)) {
        throw std::runtime_error(std::string("elastickv: ELASTICKV_POLICY=") + desc->name + " with ELASTICKV_SCOPE=" +
            (cfg.scope == LLAMA_ELASTICKV_SCOPE_SHARED ? "shared" : "head") + " ELASTICKV_FREE=" + (cfg.free_cells ? "1" : "0") +
            " hides cells per layer and KV head with an attention bias, which flash attention cannot take; run with -fa off, or "
            "use a policy whose evictions free cells (streaming, random_tokens, sliding_window, lru_fifo, or h2o/scissorhands/lru with ELASTICKV_SCOPE=shared, "
            "ELASTICKV_FREE=1), which the KQ mask hides");
    }
    if (desc && !desc->token) {
        for (ggml_type t : { type_k, type_v }) {
            if (t != GGML_TYPE_F32 && t != GGML_TYPE_F16) {
                throw std::runtime_error(std::string("elastickv: ELASTICKV_POLICY=") + desc->name + " rewrites K/V entries on the host and "
                    "supports f16 and f32 caches; the cache is " + ggml_type_name(type_k) + "/" + ggml_type_name(type_v) + " (use -ctk f16 -ctv f16)");
            }
        }
    }

    unified  = kv->n_stream == 1;
    n_stream = kv->n_stream;
    n_seq    = kv->n_seq_max;
    n_group  = unified ? n_seq : 1;
    v_trans  = kv->v_trans;
    collect  = !cfg.stats_path.empty() || cfg.verbose > 0 || !cfg.dump_dir.empty();

    // layers and the devices holding them
    for (const auto & L : kv->layers) {
        layer l;
        l.il       = (int32_t) L.il;
        l.n_head   = (int32_t) hparams.n_head_kv(L.il);
        l.hd_k     = (int32_t) hparams.n_embd_head_k(L.il);
        l.hd_v     = (int32_t) hparams.n_embd_head_v(L.il);
        l.n_embd_v = (int64_t) hparams.n_embd_v_gqa(L.il);
        l.k        = L.k;
        l.v        = L.v;
        if (l.v == nullptr) {
            throw std::runtime_error("elastickv: ELASTICKV=1 but layer " + std::to_string(l.il) + " has no V cache");
        }
        if (cfg.head_dim > 0 && (cfg.head_dim != l.hd_k || cfg.head_dim != l.hd_v)) {
            llama_elastickv_fail("ELASTICKV_HEAD_DIM", std::to_string(cfg.head_dim),
                "does not match the model (layer " + std::to_string(l.il) + ": K head dim " + std::to_string(l.hd_k) +
                ", V head dim " + std::to_string(l.hd_v) + ")");
        }
        if (cfg.scale_k > 0.0f && ggml_is_quantized(type_k) && l.hd_k % ggml_blck_size(type_k) != 0) {
            throw std::runtime_error("elastickv: the K head dim " + std::to_string(l.hd_k) + " is not a multiple of the " +
                ggml_type_name(type_k) + " block size; use an f16 K cache");
        }
        if (cfg.scale_v > 0.0f && ggml_is_quantized(type_v) && l.hd_v % ggml_blck_size(type_v) != 0) {
            throw std::runtime_error("elastickv: the V head dim " + std::to_string(l.hd_v) + " is not a multiple of the " +
                ggml_type_name(type_v) + " block size; use an f16 V cache");
        }

        ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(l.k->buffer);
        int32_t dev = -1;
        for (size_t d = 0; d < devs.size(); ++d) {
            if (devs[d].buft == buft) {
                dev = (int32_t) d;
            }
        }
        if (dev < 0) {
            ggml_backend_t backend = llama_elastickv_backend_for(buft, backends);
            device d;
            d.backend = backend;
            d.buft    = buft;
            devs.push_back(std::move(d));
            dev = (int32_t) devs.size() - 1;
        }
        l.dev = dev;
        layers.push_back(std::move(l));
    }

    // the hook's persistent tensors, on each device
    const uint32_t kv_size = kv->get_size();
    for (size_t d = 0; d < devs.size(); ++d) {
        auto & D = devs[d];
        size_t n_tensors = 2*n_stream;
        for (const auto & l : layers) {
            n_tensors += l.dev == (int32_t) d ? 2*n_stream : 0;
        }
        ggml_init_params ip = { ggml_tensor_overhead()*n_tensors, nullptr, true };
        D.ctx.reset(ggml_init(ip));
        for (uint32_t s = 0; s < n_stream; ++s) {
            D.cells_k.push_back(ggml_new_tensor_2d(D.ctx.get(), GGML_TYPE_I32, 2, kv_size));
            D.cells_v.push_back(ggml_new_tensor_2d(D.ctx.get(), GGML_TYPE_I32, 2, kv_size));
        }
        for (auto & l : layers) {
            if (l.dev != (int32_t) d) {
                continue;
            }
            for (uint32_t s = 0; s < n_stream; ++s) {
                l.state_k.push_back(ggml_new_tensor_3d(D.ctx.get(), GGML_TYPE_F64, GGML_KV_SPARSIFY_NSTATE, l.n_head, n_group));
                l.state_v.push_back(ggml_new_tensor_3d(D.ctx.get(), GGML_TYPE_F64, GGML_KV_SPARSIFY_NSTATE, l.n_head, n_group));
            }
        }
        D.buf.reset(ggml_backend_alloc_ctx_tensors_from_buft(D.ctx.get(), D.buft));
        if (!D.buf) {
            throw std::runtime_error(std::string("elastickv: failed to allocate the hook's state on ") + ggml_backend_buft_name(D.buft));
        }
        ggml_backend_buffer_clear(D.buf.get(), 0);
    }

    seqs.assign(n_seq, seq_state());
    processed_k.assign(n_stream, std::vector<uint8_t>(kv_size, 0));
    processed_v.assign(n_stream, std::vector<uint8_t>(kv_size, 0));
    list_k.assign(n_stream, {});
    list_v.assign(n_stream, {});

    const size_t graph_size = 8*layers.size()*n_stream + 16;
    graph_mem.resize(ggml_tensor_overhead()*graph_size + ggml_graph_overhead_custom(graph_size, false));

    check_supported();

    if (!cfg.stats_path.empty()) {
        stats = fopen(cfg.stats_path.c_str(), "a");
        if (!stats) {
            llama_elastickv_fail("ELASTICKV_STATS", cfg.stats_path, std::string("cannot be opened for appending (") + strerror(errno) + ")");
        }
    }
    if (!cfg.dump_dir.empty()) {
        ekv_mkdirs(cfg.dump_dir);
    }
    if (desc && desc->token) {
        llama_elastickv_evict_params ep = { cfg.sink, cfg.scope, cfg.free_cells, cparams.flash_attn, cfg.dump_dir };
        evict.reset(new llama_elastickv_evict(*desc, cfg.budget, ep, kv, hparams, backends));
    }
}

// every backend must run the op for its cache types, or the pass would abort mid-decode
void llama_elastickv::impl::check_supported() {
    for (const auto & l : layers) {
        auto & D = devs[l.dev];
        ggml_init_params ip = { ggml_tensor_overhead()*8, nullptr, true };
        ggml_context_ptr ctx(ggml_init(ip));
        for (int kind = 0; kind < 2; ++kind) {
            const float scale = kind == 0 ? cfg.scale_k : cfg.scale_v;
            if (scale <= 0.0f) {
                continue;
            }
            ggml_tensor * t     = kind == 0 ? l.k : l.v;
            const bool    trans = kind == 1 && v_trans;
            ggml_tensor * a     = trans ? ggml_view_2d(ctx.get(), t, 1, l.n_embd_v, ggml_row_size(t->type, kv->get_size()), 0)
                                        : ggml_view_2d(ctx.get(), t, t->ne[0], 1, t->nb[1], 0);
            ggml_tensor * cells = kind == 0 ? D.cells_k[0] : D.cells_v[0];
            ggml_tensor * state = kind == 0 ? l.state_k[0] : l.state_v[0];
            ggml_tensor * op    = ggml_kv_sparsify(ctx.get(), a, ggml_view_2d(ctx.get(), cells, 2, 1, cells->nb[1], 0), state, scale, trans, false);
            if (!ggml_backend_supports_op(D.backend, op)) {
                throw std::runtime_error(std::string("elastickv: backend ") + ggml_backend_name(D.backend) +
                    " cannot run the ElasticKV op on a " + ggml_type_name(t->type) + (trans ? " transposed" : "") +
                    " cache; build llama.cpp with the ElasticKV patch for CPU or CUDA, or keep the KV cache on the CPU (--no-kv-offload)");
            }
        }
    }
}

//
// llama_elastickv
//

llama_elastickv::llama_elastickv(
        const llama_elastickv_config      & cfg,
        const llama_model                 & model,
        const llama_cparams               & cparams,
        llama_memory_i                    * memory,
        const std::vector<ggml_backend_t> & backends) : pimpl(new impl(cfg, cparams)) {
    llama_kv_cache * kv_swa = nullptr;
    pimpl->kv = ekv_find_kv(memory, model.hparams, cfg, &kv_swa);
    if (!pimpl->kv) {
        throw std::runtime_error("elastickv: ELASTICKV=1 but this model has no attention KV cache the hook supports "
                                 "(recurrent or special memory)");
    }
    pimpl->ctx_id = g_ekv_n_ctx++;
    if (kv_swa) {
        swa.reset(new impl(cfg, cparams));
        swa->kv     = kv_swa;
        swa->ctx_id = pimpl->ctx_id;
        swa->cache  = "swa";
        pimpl->cache = "full";
    }
    pimpl->setup(model, backends);
    if (swa) {
        swa->setup(model, backends);
    }
    pimpl->echo(model, swa.get());
    pimpl->write_config_record(swa.get());
}

llama_elastickv::~llama_elastickv() = default;

void llama_elastickv::on_memory_update() {
    pimpl->on_memory_update();
    if (swa) {
        swa->on_memory_update();
    }
}

void llama_elastickv::impl::on_memory_update() {
    if (!kv->get_has_shift()) {
        return;
    }
    // RoPE re-rotation mixes K entries pairwise: zeroed K entries of shifted cells are no longer zero
    for (uint32_t strm = 0; strm < n_stream; ++strm) {
        const auto & cells = cells_of(strm);
        std::vector<uint8_t> hit(n_seq, 0);
        for (uint32_t c = 0; c < cells.size(); ++c) {
            if (!cells.is_empty(c) && cells.get_shift(c) != 0) {
                for (uint32_t s = 0; s < n_seq; ++s) {
                    hit[s] |= cells.seq_has(c, s);
                }
            }
        }
        for (uint32_t s = 0; s < n_seq; ++s) {
            if (hit[s]) {
                seqs[s].last_pass_pos = -1; // positions moved: pass again at the next ubatch
                seqs[s].reset_k = true;
                mark_seq_unprocessed((llama_seq_id) s, true, false);
            }
        }
    }
}

void llama_elastickv::on_ubatch(const llama_ubatch & ubatch) {
    pimpl->on_ubatch(ubatch);
    if (swa) {
        swa->on_ubatch(ubatch); // same positions, same triggers: both caches pass at the same ubatch
    }
}

void llama_elastickv::impl::on_ubatch(const llama_ubatch & ubatch) {
    // cells written by this ubatch are new; a position at or below the last pass means a rewind
    for (uint32_t i = 0; i < ubatch.n_tokens; ++i) {
        const llama_pos p = ubatch.pos[i];
        for (int32_t j = 0; j < ubatch.n_seq_id[i]; ++j) {
            const llama_seq_id s = ubatch.seq_id[i][j];
            if (s < 0 || (uint32_t) s >= n_seq) {
                continue;
            }
            if (p <= seqs[s].last_pass_pos) {
                rewind(s);
            }
            const uint32_t strm = kv->seq_to_stream[s];
            const auto & sp = cells_of(strm).seq_pos_get(s);
            for (auto it = sp.lower_bound({ p, 0 }); it != sp.end() && it->first == p; ++it) {
                processed_k[strm][it->second] = 0;
                processed_v[strm][it->second] = 0;
            }
        }
    }

    if (cparams.warmup) {
        return; // no pass on warm-up decodes
    }
    if (evict) {
        evict->after_ubatch(ubatch, ctx_id, n_pass); // dumps of the ubatch's queries, when asked
    }

    std::vector<llama_seq_id> due;
    for (uint32_t k = 0; k < ubatch.n_seqs_unq; ++k) {
        const llama_seq_id s = ubatch.seq_id_unq[k];
        if (s < 0 || (uint32_t) s >= n_seq) {
            continue;
        }
        const llama_pos pos_max = kv->seq_pos_max(s);
        if (pos_max + 1 >= cfg.warm && pos_max - seqs[s].last_pass_pos >= cfg.evict_every) {
            due.push_back(s);
        }
    }
    if (due.empty()) {
        return;
    }
    if (evict) {
        evict->pass(due, ctx_id, n_pass, stats, cfg.verbose);
        for (llama_seq_id s : due) {
            seqs[s].last_pass_pos = kv->seq_pos_max(s);
            seqs[s].n_pass++;
        }
        n_pass++;
    } else {
        run_pass(due);
    }
}

void llama_elastickv::before_ubatch(const llama_ubatch & ubatch) {
    if (pimpl->evict) {
        pimpl->evict->before_ubatch(ubatch);
    }
}

bool llama_elastickv::adds_graph_nodes() const {
    return pimpl->evict != nullptr;
}

ggml_tensor * llama_elastickv::attn_bias(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * kq, const ggml_tensor * k, int il) const {
    return pimpl->evict ? pimpl->evict->attn_bias(ctx, gf, kq, k, il) : kq;
}

void llama_elastickv::attn_observe_fa(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * q, const ggml_tensor * k,
                                      ggml_tensor * kq_mask, float kq_scale, float max_bias, int il) const {
    if (pimpl->evict) {
        pimpl->evict->attn_observe_fa(ctx, gf, q, k, kq_mask, kq_scale, max_bias, il);
    }
}

void llama_elastickv::on_state_read(llama_seq_id seq_id) {
    pimpl->on_state_read(seq_id);
    if (swa) {
        swa->on_state_read(seq_id);
    }
}

void llama_elastickv::impl::on_state_read(llama_seq_id seq_id) {
    if (evict) {
        evict->reset_restored(seq_id);
    }
    for (uint32_t s = 0; s < n_seq; ++s) {
        if (seq_id < 0 || (uint32_t) seq_id == s) {
            rewind((llama_seq_id) s);
        }
    }
}

void llama_elastickv::attn_observe(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * kq_soft, const ggml_tensor * k, int il) const {
    if (pimpl->evict) {
        pimpl->evict->attn_observe(ctx, gf, kq_soft, k, il);
    }
}

std::unique_ptr<llama_elastickv> llama_elastickv_init(
        const llama_model                 & model,
        const llama_cparams               & cparams,
        llama_memory_i                    * memory,
        const std::vector<ggml_backend_t> & backends) {
    const llama_elastickv_config cfg = llama_elastickv_config_from_env();

    if (!cfg.enabled) {
        std::string set;
        for (size_t i = 1; i < LLAMA_ELASTICKV_N_VARS; ++i) {
            if (getenv(LLAMA_ELASTICKV_VARS[i].name)) {
                set += std::string(set.empty() ? "" : ", ") + LLAMA_ELASTICKV_VARS[i].name;
            }
        }
        if (!set.empty()) {
            LLAMA_LOG_WARN("elastickv: %s set but ELASTICKV is not 1: the hook is off\n", set.c_str());
        } else {
            LLAMA_LOG_INFO("elastickv: off (set ELASTICKV=1 to enable)\n");
        }
        return nullptr;
    }
    if (model.hparams.no_alloc) {
        // a memory-fitting probe (common_fit_params): dummy buffers, never decoded
        LLAMA_LOG_DEBUG("elastickv: not applied to a no-alloc probe context\n");
        return nullptr;
    }
    if (cparams.ctx_type == LLAMA_CONTEXT_TYPE_MTP) {
        LLAMA_LOG_INFO("elastickv: not applied to this MTP draft context\n");
        return nullptr;
    }
    if (memory == nullptr) {
        throw std::runtime_error("elastickv: ELASTICKV=1 but this context has no memory (encoder-only model)");
    }
    return std::unique_ptr<llama_elastickv>(new llama_elastickv(cfg, model, cparams, memory, backends));
}
