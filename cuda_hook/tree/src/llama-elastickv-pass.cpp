// SPDX-License-Identifier: MIT
// ElasticKV hook: one pass over the cache. Builds the (cell, code) lists of the sequences due for a pass, sends them
// and the incremental-mode resets to every device, and enqueues one graph per device with a GGML_OP_KV_SPARSIFY per
// layer, K/V and stream (element baselines instead in llama-elastickv-entries.cpp). The setup that decides layers,
// devices and lists' tensors is in llama-elastickv.cpp; the hook's state in llama-elastickv-impl.h.
#include "llama-elastickv-impl.h"
#include "llama-elastickv-internal.h"

#include "llama-hparams.h"

#include "ggml-backend.h"
#include "ggml-kv-sparsify.h"

#include <stdexcept>
#include <string>
#include <vector>

// Fills list_k/list_v for the sequences flagged in in_pass: their cells (in a sliding-window cache, those the window
// holds), sinks by position.
void llama_elastickv::impl::build_lists(const std::vector<uint8_t> & in_pass) {
    const bool full = cfg.mode == LLAMA_ELASTICKV_MODE_FULL && !desc; // element baselines treat each cell once
    for (uint32_t strm = 0; strm < n_stream; ++strm) {
        const auto & cells = cells_of(strm);
        auto & lk = list_k[strm];
        auto & lv = list_v[strm];
        lk.clear();
        lv.clear();
        const uint32_t n = cells.used_max_p1();
        for (uint32_t c = 0; c < n; ++c) {
            if (cells.is_empty(c)) {
                continue;
            }
            const llama_seq_id s = owner(cells, c);
            if (s < 0 || !in_pass[s]) {
                continue;
            }
            if (kv->swa_type != LLAMA_SWA_TYPE_NONE &&
                llama_hparams::is_masked_swa(kv->n_swa, kv->swa_type, cells.pos_get(c), cells.seq_pos_max(s))) {
                continue; // a sliding-window cache: outside the window of the sequence's last position, never read again
            }
            const int32_t group = (int32_t) group_of(s);
            const bool    sink  = cells.pos_get(c) < cfg.sink;
            for (int kind = 0; kind < 2; ++kind) {
                if (!acts(kind)) {
                    continue;
                }
                const auto & done = kind == 0 ? processed_k[strm] : processed_v[strm];
                int32_t code = group;
                if (!sink && (full || !done[c])) {
                    code |= GGML_KV_SPARSIFY_PROCESS;
                }
                if (collect) {
                    code |= GGML_KV_SPARSIFY_OBSERVE | (sink ? 0 : GGML_KV_SPARSIFY_HIST);
                }
                if (code == group) {
                    continue; // nothing to do with this cell
                }
                auto & l = kind == 0 ? lk : lv;
                l.push_back((int32_t) c);
                l.push_back(code);
            }
        }
    }
}

// Sends the lists and the incremental-mode resets to every device, ordered on its stream.
void llama_elastickv::impl::upload(const std::vector<llama_seq_id> & seqs_pass) {
    for (auto & D : devs) {
        for (uint32_t strm = 0; strm < n_stream; ++strm) {
            if (!list_k[strm].empty()) {
                ggml_backend_tensor_set_async(D.backend, D.cells_k[strm], list_k[strm].data(), 0, list_k[strm].size()*sizeof(int32_t));
            }
            if (!list_v[strm].empty()) {
                ggml_backend_tensor_set_async(D.backend, D.cells_v[strm], list_v[strm].data(), 0, list_v[strm].size()*sizeof(int32_t));
            }
        }
    }
    if (cfg.mode != LLAMA_ELASTICKV_MODE_INCREMENTAL) {
        return;
    }
    std::vector<double> zeros;
    for (llama_seq_id s : seqs_pass) {
        auto & sq = seqs[s];
        if (!sq.reset_k && !sq.reset_v) {
            continue;
        }
        const uint32_t strm = kv->seq_to_stream[s];
        const uint32_t g    = group_of(s);
        for (auto & l : layers) {
            const size_t n = (size_t) GGML_KV_SPARSIFY_NSTATE*l.n_head;
            zeros.assign(n, 0.0);
            if (sq.reset_k) {
                ggml_backend_tensor_set_async(devs[l.dev].backend, l.state_k[strm], zeros.data(), g*n*sizeof(double), n*sizeof(double));
            }
            if (sq.reset_v) {
                ggml_backend_tensor_set_async(devs[l.dev].backend, l.state_v[strm], zeros.data(), g*n*sizeof(double), n*sizeof(double));
            }
        }
        sq.reset_k = sq.reset_v = false;
    }
}

// One graph per device: an op per layer, K/V and stream, enqueued after the ubatch on the same backend. Devices
// whose backend runs asynchronously (GPUs) are enqueued first, so that their pass overlaps the CPU's, which runs
// in ggml_backend_graph_compute_async itself. The graph's views get their buffer (ggml_backend_view_init): the
// graph runs outside the scheduler, and backends may read tensor->buffer (ggml-cuda does in Debug builds).
void llama_elastickv::impl::compute() {
    const bool incremental = cfg.mode == LLAMA_ELASTICKV_MODE_INCREMENTAL;
    const uint32_t kv_size = kv->get_size();
    std::vector<size_t> order;
    for (int cpu = 0; cpu < 2; ++cpu) {
        for (size_t d = 0; d < devs.size(); ++d) {
            if ((llama_elastickv_dev_type(devs[d].backend) == GGML_BACKEND_DEVICE_TYPE_CPU) == (cpu == 1)) {
                order.push_back(d);
            }
        }
    }
    auto view_init = [](ggml_tensor * t) {
        if (t->buffer == nullptr && t->view_src != nullptr) {
            GGML_ASSERT(ggml_backend_view_init(t) == GGML_STATUS_SUCCESS);
        }
    };
    for (size_t d : order) {
        auto & D = devs[d];
        ggml_init_params ip = { graph_mem.size(), graph_mem.data(), true };
        ggml_context_ptr ctx(ggml_init(ip));
        const size_t graph_size = 8*layers.size()*n_stream + 16;
        ggml_cgraph * gf = ggml_new_graph_custom(ctx.get(), graph_size, false);
        int n_ops = 0;
        for (auto & l : layers) {
            if (l.dev != (int32_t) d) {
                continue;
            }
            for (uint32_t strm = 0; strm < n_stream; ++strm) {
                const uint32_t n_cells = cells_of(strm).used_max_p1();
                for (int kind = 0; kind < 2; ++kind) {
                    const float scale = kind == 0 ? cfg.scale_k : cfg.scale_v;
                    const auto & list = kind == 0 ? list_k[strm] : list_v[strm];
                    if (scale <= 0.0f || list.empty()) {
                        continue;
                    }
                    ggml_tensor * t     = kind == 0 ? l.k : l.v;
                    const bool    trans = kind == 1 && v_trans;
                    ggml_tensor * a;
                    if (trans) {
                        // element (cell c, j) of stream s at (s*kv_size*ne0 + j*kv_size + c)*elt
                        a = ggml_view_2d(ctx.get(), t, n_cells, l.n_embd_v, ggml_row_size(t->type, kv_size), strm*t->nb[2]);
                    } else {
                        a = ggml_view_2d(ctx.get(), t, t->ne[0], n_cells, t->nb[1], strm*t->nb[2]);
                    }
                    ggml_tensor * cells = kind == 0 ? D.cells_k[strm] : D.cells_v[strm];
                    cells = ggml_view_2d(ctx.get(), cells, 2, (int64_t) list.size()/2, cells->nb[1], 0);
                    ggml_tensor * state = kind == 0 ? l.state_k[strm] : l.state_v[strm];
                    ggml_tensor * op    = ggml_kv_sparsify(ctx.get(), a, cells, state, scale, trans, incremental);
                    view_init(a);
                    view_init(cells);
                    view_init(op);
                    ggml_build_forward_expand(gf, op);
                    n_ops++;
                }
            }
        }
        if (n_ops > 0) {
            const ggml_status st = ggml_backend_graph_compute_async(D.backend, gf);
            if (st != GGML_STATUS_SUCCESS) {
                throw std::runtime_error(std::string("elastickv: pass failed on backend ") + ggml_backend_name(D.backend) +
                    ": " + ggml_status_to_string(st));
            }
        }
    }
}

void llama_elastickv::impl::run_pass(const std::vector<llama_seq_id> & seqs_pass) {
    const int64_t t0 = ggml_time_us();

    std::vector<uint8_t> in_pass(n_seq, 0);
    for (llama_seq_id s : seqs_pass) {
        in_pass[s] = 1;
    }
    build_lists(in_pass);

    if (!cfg.dump_dir.empty()) {
        dump("before");
    }
    if (desc) {
        entries_apply(seqs_pass);
    } else {
        upload(seqs_pass);
        compute();
    }

    // bookkeeping: the pass is enqueued; its cells count as thresholded from now on
    for (uint32_t strm = 0; strm < n_stream; ++strm) {
        for (size_t e = 0; e + 1 < list_k[strm].size(); e += 2) {
            if (list_k[strm][e + 1] & GGML_KV_SPARSIFY_PROCESS) { processed_k[strm][list_k[strm][e]] = 1; }
        }
        for (size_t e = 0; e + 1 < list_v[strm].size(); e += 2) {
            if (list_v[strm][e + 1] & GGML_KV_SPARSIFY_PROCESS) { processed_v[strm][list_v[strm][e]] = 1; }
        }
    }
    for (llama_seq_id s : seqs_pass) {
        seqs[s].last_pass_pos = kv->seq_pos_max(s);
        seqs[s].n_pass++;
    }

    if (collect) {
        if (!desc) {
            std::vector<std::vector<double>> host;
            read_state(host);
            report(seqs_pass, host, (ggml_time_us() - t0)/1000.0);
        }
        if (!cfg.dump_dir.empty()) {
            dump("after");
            dump_pass_meta(seqs_pass);
        }
    }
    n_pass++;
}
