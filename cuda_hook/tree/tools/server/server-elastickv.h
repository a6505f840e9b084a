// SPDX-License-Identifier: MIT
// ElasticKV in llama-server: each slot's copy of the hook's per-sequence counters (include/llama-elastickv-stats.h)
// and how /slots and /metrics show them. The copy is refreshed on the decoding thread (after every decode, and
// when /slots or /metrics is answered while no decode runs); the tasks answered during a decode read only the copy.
#pragma once

#include "llama-elastickv-stats.h"
#include "server-common.h"

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

struct server_elastickv_slot {
    int32_t                          id = -1;
    bool                             on = false; // the hook is on in this context
    struct llama_elastickv_seq_stats st = {};

    void refresh(llama_context * ctx, int32_t id_slot) {
        id = id_slot;
        on = llama_elastickv_get_seq_stats(ctx, id_slot, &st);
    }

    // /slots: "elastickv" of each slot (sparsity null until a pass was read back)
    json to_json() const {
        auto frac = [](double x) { return std::isnan(x) ? json(nullptr) : json(x); };
        return json {
            {"passes",         st.n_pass},
            {"epoch",          st.epoch},
            {"last_pass_pos",  st.last_pass_pos},
            {"k_sparsity",     frac(st.k_zero)},
            {"v_sparsity",     frac(st.v_zero)},
            {"cells_evicted",  st.n_evicted},
            {"cells_freed",    st.n_freed},
            {"resident_cells", st.n_cells},
            {"kv_bytes",       st.kv_bytes},
        };
    }
};

// /metrics: one labelled series per slot, named like the server's own (llamacpp:<name>, Prometheus text)
static inline std::string server_elastickv_metrics(const std::vector<server_elastickv_slot> & slots) {
    if (slots.empty()) {
        return "";
    }
    struct item {
        const char * name;
        const char * type;
        const char * help;
        double (*get)(const llama_elastickv_seq_stats &);
    };
    static const item items[] = {
        { "elastickv_passes_total",       "counter", "ElasticKV: hook passes over the slot's sequence",
          [](const llama_elastickv_seq_stats & s) { return (double) s.n_pass; } },
        { "elastickv_k_sparsity",         "gauge",   "ElasticKV: fraction of the slot's K entries that are zero after its last pass (NaN: none yet)",
          [](const llama_elastickv_seq_stats & s) { return s.k_zero; } },
        { "elastickv_v_sparsity",         "gauge",   "ElasticKV: fraction of the slot's V entries that are zero after its last pass (NaN: none yet)",
          [](const llama_elastickv_seq_stats & s) { return s.v_zero; } },
        { "elastickv_cells_evicted",      "gauge",   "ElasticKV: the slot's cells evicted in every layer and KV head at its last pass (token policies)",
          [](const llama_elastickv_seq_stats & s) { return (double) s.n_evicted; } },
        { "elastickv_cells_freed_total",  "counter", "ElasticKV: the slot's KV cells released by evictions (token policies)",
          [](const llama_elastickv_seq_stats & s) { return (double) s.n_freed; } },
        { "elastickv_resident_cells",     "gauge",   "ElasticKV: KV cells holding the slot's sequence",
          [](const llama_elastickv_seq_stats & s) { return (double) s.n_cells; } },
        { "elastickv_kv_bytes",           "gauge",   "ElasticKV: bytes of K and V in the slot's resident cells, all layers",
          [](const llama_elastickv_seq_stats & s) { return (double) s.kv_bytes; } },
    };
    std::stringstream out;
    for (const auto & it : items) {
        out << "# HELP llamacpp:" << it.name << " " << it.help << "\n"
            << "# TYPE llamacpp:" << it.name << " " << it.type << "\n";
        for (const auto & s : slots) {
            const double v = it.get(s.st);
            out << "llamacpp:" << it.name << "{id_slot=\"" << s.id << "\"} ";
            if (std::isnan(v)) {
                out << "NaN";
            } else if (v == std::floor(v) && std::fabs(v) < 1e15) {
                out << (long long) v; // counts and bytes in full
            } else {
                out << v;
            }
            out << "\n";
        }
    }
    return out.str();
}
