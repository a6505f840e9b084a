// SPDX-License-Identifier: MIT
// ElasticKV hook: the pass of the element baselines (ELASTICKV_POLICY=random_entries, topk_entries): the K/V rows of
// the cells a pass lists are read back, zeroed per KV head by the policy (llama-elastickv-entries-{random,topk}.cpp)
// and written back, with the statistics records of the pass. The rest of the hook: llama-elastickv.cpp.
#include "llama-elastickv-impl.h"
#include "llama-elastickv-internal.h"

#include "llama-impl.h"
#include "llama-kv-cache.h"

#include "ggml-kv-sparsify.h"

#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <stdexcept>
#include <vector>

// The element baselines: the listed cells' K/V rows are read, zeroed per KV head by the policy and written
// back (host memory is edited in place; other buffers go through a host copy of the stream).
void llama_elastickv::impl::entries_apply(const std::vector<llama_seq_id> & seqs_pass) {
    for (const auto & D : devs) {
        ggml_backend_synchronize(D.backend);
    }
    const uint32_t kv_size = kv->get_size();
    std::vector<uint8_t> slab;
    std::vector<float>   row;
    for (size_t li = 0; li < layers.size(); ++li) {
        const auto & l = layers[li];
        for (int kind = 0; kind < 2; ++kind) {
            ggml_tensor * t     = kind == 0 ? l.k : l.v;
            const int     hd    = kind == 0 ? l.hd_k : l.hd_v;
            const bool    trans = kind == 1 && v_trans;
            const bool    f16   = t->type == GGML_TYPE_F16;
            const size_t  elt   = ggml_type_size(t->type);
            const auto &  lists = kind == 0 ? list_k : list_v;
            double n_all = 0, nnz_all = 0;
            for (uint32_t strm = 0; strm < n_stream; ++strm) {
                const auto & list = lists[strm];
                if (list.empty()) {
                    continue;
                }
                uint8_t * base;
                const bool host = ggml_backend_buffer_is_host(t->buffer);
                if (host) {
                    base = (uint8_t *) t->data + strm*t->nb[2];
                } else {
                    slab.resize(t->nb[2]);
                    ggml_backend_tensor_get(t, slab.data(), strm*t->nb[2], t->nb[2]);
                    base = slab.data();
                }
                // element j of head h of cell c
                auto at = [&](int64_t c, int h, int j) -> uint8_t * {
                    const int64_t e = (int64_t) h*hd + j;
                    return trans ? base + (e*kv_size + c)*elt : base + c*t->nb[1] + e*elt;
                };
                row.resize(hd);
                for (size_t e = 0; e + 1 < list.size(); e += 2) {
                    const int64_t   c    = list[e];
                    const bool      proc = list[e + 1] & GGML_KV_SPARSIFY_PROCESS;
                    const llama_pos pos  = cells_of(strm).pos_get((uint32_t) c);
                    for (int h = 0; h < l.n_head; ++h) {
                        for (int j = 0; j < hd; ++j) {
                            const uint8_t * q = at(c, h, j);
                            row[j] = f16 ? ggml_fp16_to_fp32(*(const ggml_fp16_t *) q) : *(const float *) q;
                        }
                        if (proc) {
                            if (cfg.policy == LLAMA_ELASTICKV_POLICY_RANDOM_ENTRIES) {
                                llama_elastickv_random_entries(cfg.budget, (int32_t) li, kind, h, pos, row.data(), hd);
                            } else {
                                llama_elastickv_topk_entries(cfg.budget, row.data(), hd);
                            }
                            for (int j = 0; j < hd; ++j) {
                                uint8_t * q = at(c, h, j);
                                if (f16) {
                                    *(ggml_fp16_t *) q = ggml_fp32_to_fp16(row[j]);
                                } else {
                                    *(float *) q = row[j];
                                }
                            }
                        }
                        if (pos >= cfg.sink) {
                            for (int j = 0; j < hd; ++j) {
                                nnz_all += row[j] != 0.0f;
                            }
                            n_all += hd;
                        }
                    }
                }
                if (!host) {
                    ggml_backend_tensor_set(t, slab.data(), strm*t->nb[2], t->nb[2]);
                }
            }
            if (stats && n_all > 0) {
                fprintf(stats, "{\"record\": \"entries\", \"ctx\": %d, \"pass\": %" PRId64 ", \"cache\": \"%s\", \"layer\": %d, "
                    "\"kv\": \"%s\", \"n_obs\": %.0f, \"nnz_obs\": %.0f}\n", ctx_id, n_pass, cache ? cache : "one", l.il, kind == 0 ? "k" : "v", n_all, nnz_all);
            }
        }
    }
    if (stats) {
        fflush(stats);
    }
    if (cfg.verbose >= 1) {
        for (llama_seq_id s : seqs_pass) {
            LLAMA_LOG_WARN("elastickv: pass %" PRId64 " seq %d pos_max %d (%s): entries of the new cells outside the sinks zeroed\n",
                n_pass, s, kv->seq_pos_max(s), desc->name);
        }
    }
}
