// SPDX-License-Identifier: MIT
// ElasticKV hook: environment, per-sequence triggers, sink masks by position, the per-layer pass,
// statistics, dumps and verbose output. See llama-elastickv.h for the overview.
#include "llama-elastickv.h"
#include "llama-elastickv-evict.h"
#include "llama-elastickv-dump.h"

#include "llama-impl.h"
#include "llama-batch.h"
#include "llama-cparams.h"
#include "llama-hparams.h"
#include "llama-model.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-memory-hybrid.h"

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

extern char ** environ;

//
// the ELASTICKV_* variables (SPEC.md §1): the one declaration
//

const llama_elastickv_var LLAMA_ELASTICKV_VARS[] = {
    { "ELASTICKV",             "0",     "0 or 1",                                   "1 enables the hook" },
    { "ELASTICKV_SCALE_K",     "0.35",  "a number in [0, 100]",                     "key threshold scale" },
    { "ELASTICKV_SCALE_V",     "0.17",  "a number in [0, 100]",                     "value threshold scale" },
    { "ELASTICKV_SINK",        "64",    "an integer in [0, context size]",          "positions protected at the start of each sequence" },
    { "ELASTICKV_EVICT_EVERY", "64",    "an integer in [1, 1048576]",               "tokens between passes" },
    { "ELASTICKV_WARM",        "128",   "an integer in [0, context size]",          "tokens before the first pass" },
    { "ELASTICKV_HEAD_DIM",    "auto",  "auto, or the model's KV head dimension",   "KV head dimension; if set it must equal the model's" },
    { "ELASTICKV_VERBOSE",     "0",     "0, 1 or 2",                                "1: one summary line per pass; 2: per layer and head" },
    { "ELASTICKV_PRESET",      "none",  "none, sweet, aggressive or k-only",        "sweet (0.45/0.50), aggressive (0.50/0.50), k-only (0.35/0.00); explicit scales override" },
    { "ELASTICKV_MODE",        "full",  "full or incremental",                      "full: re-threshold the cache each pass; incremental: each cell once" },
    { "ELASTICKV_STATS",       "",      "a path to a JSONL file (appended)",        "one record per pass, layer, K/V and head" },
    { "ELASTICKV_DUMP",        "",      "a directory (created if missing)",         "K/V of each layer before and after a pass as .npy, with cell positions" },
    { "ELASTICKV_POLICY",      "elastickv", "elastickv, streaming, h2o, scissorhands, pyramidkv, random_tokens, random_entries or topk_entries",
                                                                                        "what a pass does: ElasticKV thresholding, a token eviction (-inf attention bias per layer and KV head; needs -fa off) or an element baseline" },
    { "ELASTICKV_BUDGET",      "",      "a fraction in (0, 1] written with a decimal point (0.5) or as a percentage (50%), or a whole number of cells (>= 1, token policies only)",
                                                                                        "every policy but elastickv (required): cells kept per sequence and layer, or the fraction of K/V entries kept" },
    { "ELASTICKV_RECENT",      "auto",  "auto, or an integer >= 0",                 "token policies: most recent positions always kept; auto: (1 - HEAVY_RATIO) of the budget after the sinks" },
    { "ELASTICKV_HEAVY_RATIO", "0.8",   "a number in [0, 1]",                       "h2o, scissorhands, pyramidkv, random_tokens: share of the budget after the sinks chosen by priority when RECENT is auto" },
    { "ELASTICKV_SEED",        "42",    "an integer in [0, 9223372036854775807]",   "random_tokens and random_entries: seed of the hash" },
    { "ELASTICKV_PYRAMID_BETA","20",    "a number in [1, 1000000]",                 "pyramidkv: the top layer keeps budget/beta cells, the bottom 2*budget - budget/beta" },
    { "ELASTICKV_SCOPE",       "head",  "head or shared",                           "token policies: head: a keep set per layer and KV head; shared: one keep set per sequence for all layers and heads (scores summed over them), so every eviction frees a cell" },
    { "ELASTICKV_FREE",        "1",     "0 or 1",                                   "token policies: 1 frees a cell evicted in every layer and KV head (later tokens reuse it); 0 keeps it allocated behind the attention bias (logical eviction)" },
    { "ELASTICKV_KV_CELLS",    "0",     "0 (the context size), or an integer in [1, context size per sequence]",
                                                                                        "cells allocated per KV stream: a physical cap, with n_ctx and positions unchanged; needs a token policy whose evictions free cells (streaming, random_tokens, or h2o/scissorhands with ELASTICKV_SCOPE=shared)" },
};

const size_t LLAMA_ELASTICKV_N_VARS = sizeof(LLAMA_ELASTICKV_VARS)/sizeof(LLAMA_ELASTICKV_VARS[0]);

namespace {

struct ekv_preset {
    const char * name;
    float        scale_k;
    float        scale_v;
};

const ekv_preset EKV_PRESETS[] = {
    { "sweet",      0.45f, 0.50f },
    { "aggressive", 0.50f, 0.50f },
    { "k-only",     0.35f, 0.00f },
};

const llama_elastickv_var & ekv_var(const char * name) {
    for (size_t i = 0; i < LLAMA_ELASTICKV_N_VARS; ++i) {
        if (strcmp(LLAMA_ELASTICKV_VARS[i].name, name) == 0) {
            return LLAMA_ELASTICKV_VARS[i];
        }
    }
    throw std::logic_error(std::string("elastickv: undeclared variable ") + name);
}

[[noreturn]] void ekv_fail(const char * name, const std::string & value, const std::string & why) {
    throw std::runtime_error(std::string("elastickv: ") + name + "='" + value + "' " + why +
        "; accepted: " + ekv_var(name).accepts);
}

// nullptr when unset
const char * ekv_getenv(const char * name) {
    (void) ekv_var(name); // only declared variables are read
    return getenv(name);
}

int64_t ekv_parse_int(const char * name, const char * s, int64_t lo, int64_t hi) {
    errno = 0;
    char * end = nullptr;
    const long long v = strtoll(s, &end, 10);
    if (*s == '\0' || end == s || *end != '\0' || errno == ERANGE) {
        ekv_fail(name, s, "is not an integer");
    }
    if (v < lo || v > hi) {
        ekv_fail(name, s, "is out of range");
    }
    return v;
}

float ekv_parse_scale(const char * name, const char * s) {
    errno = 0;
    char * end = nullptr;
    const float v = strtof(s, &end);
    if (*s == '\0' || end == s || *end != '\0' || errno == ERANGE) {
        ekv_fail(name, s, "is not a number");
    }
    if (std::isnan(v) || std::isinf(v)) {
        ekv_fail(name, s, "is not a finite number");
    }
    if (v < 0.0f) {
        ekv_fail(name, s, "is negative");
    }
    if (v > 100.0f) {
        ekv_fail(name, s, "is out of range");
    }
    return v;
}

struct ekv_policy_name {
    const char *           name;
    llama_elastickv_policy policy;
};

const ekv_policy_name EKV_POLICIES[] = {
    { "elastickv",      LLAMA_ELASTICKV_POLICY_ELASTICKV },
    { "streaming",      LLAMA_ELASTICKV_POLICY_STREAMING },
    { "h2o",            LLAMA_ELASTICKV_POLICY_H2O },
    { "scissorhands",   LLAMA_ELASTICKV_POLICY_SCISSORHANDS },
    { "pyramidkv",      LLAMA_ELASTICKV_POLICY_PYRAMIDKV },
    { "random_tokens",  LLAMA_ELASTICKV_POLICY_RANDOM_TOKENS },
    { "random_entries", LLAMA_ELASTICKV_POLICY_RANDOM_ENTRIES },
    { "topk_entries",   LLAMA_ELASTICKV_POLICY_TOPK_ENTRIES },
};

const char * ekv_policy_name_of(llama_elastickv_policy p) {
    for (const auto & e : EKV_POLICIES) {
        if (e.policy == p) {
            return e.name;
        }
    }
    return "?";
}

double ekv_parse_number(const char * name, const char * s, double lo, double hi) {
    errno = 0;
    char * end = nullptr;
    const double v = strtod(s, &end);
    if (*s == '\0' || end == s || *end != '\0' || errno == ERANGE || std::isnan(v) || std::isinf(v)) {
        ekv_fail(name, s, "is not a finite number");
    }
    if (v < lo || v > hi) {
        ekv_fail(name, s, "is out of range");
    }
    return v;
}

// ELASTICKV_BUDGET: "0.5" or "50%" (a fraction), or "2048" (cells)
void ekv_parse_budget(const char * s, llama_elastickv_budget & b) {
    const size_t len = strlen(s);
    if (len > 0 && s[len - 1] == '%') {
        const std::string num(s, len - 1);
        errno = 0;
        char * end = nullptr;
        const double v = strtod(num.c_str(), &end);
        if (num.empty() || *end != '\0' || errno == ERANGE || !(v > 0.0 && v <= 100.0)) {
            ekv_fail("ELASTICKV_BUDGET", s, "is not a percentage in (0%, 100%]");
        }
        b.fraction = v/100.0;
    } else if (strchr(s, '.') || strchr(s, 'e') || strchr(s, 'E')) {
        errno = 0;
        char * end = nullptr;
        const double v = strtod(s, &end);
        if (*s == '\0' || *end != '\0' || errno == ERANGE || !(v > 0.0 && v <= 1.0)) {
            ekv_fail("ELASTICKV_BUDGET", s, "is not a fraction in (0, 1]");
        }
        b.fraction = v;
    } else {
        b.cells = ekv_parse_int("ELASTICKV_BUDGET", s, 1, INT64_MAX);
    }
}

const char * ekv_mode_name(llama_elastickv_mode m) {
    return m == LLAMA_ELASTICKV_MODE_FULL ? "full" : "incremental";
}

bool ekv_type_supported(ggml_type t) {
    return t == GGML_TYPE_F32  || t == GGML_TYPE_F16  || t == GGML_TYPE_BF16 ||
           t == GGML_TYPE_Q8_0 || t == GGML_TYPE_Q4_0 || t == GGML_TYPE_Q5_0;
}

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

namespace {

void ekv_mkdirs(const std::string & dir) {
    std::string cur;
    for (size_t i = 0; i <= dir.size(); ++i) {
        if (i == dir.size() || dir[i] == '/') {
            if (!cur.empty()) {
                if (mkdir(cur.c_str(), 0777) != 0 && errno != EEXIST) {
                    ekv_fail("ELASTICKV_DUMP", dir, std::string("cannot be created (") + strerror(errno) + ")");
                }
            }
        }
        if (i < dir.size()) {
            cur += dir[i];
        }
    }
    struct stat st;
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        ekv_fail("ELASTICKV_DUMP", dir, "is not a directory");
    }
}

int g_ekv_n_ctx = 0; // contexts created with the hook on, for unique dump names and stats records

} // namespace

//
// configuration
//

llama_elastickv_config llama_elastickv_config_from_env() {
    // a misspelt variable would otherwise be ignored silently
    for (char ** e = environ; e && *e; ++e) {
        const char * kv = *e;
        if (strncmp(kv, "ELASTICKV", 9) != 0) {
            continue;
        }
        const char * eq = strchr(kv, '=');
        const std::string name = eq ? std::string(kv, eq - kv) : std::string(kv);
        if (name != "ELASTICKV" && name.rfind("ELASTICKV_", 0) != 0) {
            continue;
        }
        bool known = false;
        for (size_t i = 0; i < LLAMA_ELASTICKV_N_VARS; ++i) {
            known = known || name == LLAMA_ELASTICKV_VARS[i].name;
        }
        if (!known) {
            std::string names;
            for (size_t i = 0; i < LLAMA_ELASTICKV_N_VARS; ++i) {
                names += std::string(i ? ", " : "") + LLAMA_ELASTICKV_VARS[i].name;
            }
            throw std::runtime_error("elastickv: unknown variable " + name + "; known variables: " + names);
        }
    }

    llama_elastickv_config cfg;
    const char * s;

    if ((s = ekv_getenv("ELASTICKV"))) {
        cfg.enabled = ekv_parse_int("ELASTICKV", s, 0, 1) == 1;
    }
    if ((s = ekv_getenv("ELASTICKV_PRESET"))) {
        bool found = strcmp(s, "none") == 0;
        for (const auto & p : EKV_PRESETS) {
            if (strcmp(s, p.name) == 0) {
                cfg.scale_k = p.scale_k;
                cfg.scale_v = p.scale_v;
                found = true;
            }
        }
        if (!found) {
            ekv_fail("ELASTICKV_PRESET", s, "is not a preset");
        }
        cfg.preset = s;
    }
    if ((s = ekv_getenv("ELASTICKV_SCALE_K"))) {
        cfg.scale_k = ekv_parse_scale("ELASTICKV_SCALE_K", s);
    }
    if ((s = ekv_getenv("ELASTICKV_SCALE_V"))) {
        cfg.scale_v = ekv_parse_scale("ELASTICKV_SCALE_V", s);
    }
    // context-dependent upper bounds are checked when the context is known
    if ((s = ekv_getenv("ELASTICKV_SINK"))) {
        cfg.sink = (int32_t) ekv_parse_int("ELASTICKV_SINK", s, 0, INT32_MAX);
    }
    if ((s = ekv_getenv("ELASTICKV_EVICT_EVERY"))) {
        cfg.evict_every = (int32_t) ekv_parse_int("ELASTICKV_EVICT_EVERY", s, 1, 1048576);
    }
    if ((s = ekv_getenv("ELASTICKV_WARM"))) {
        cfg.warm = (int32_t) ekv_parse_int("ELASTICKV_WARM", s, 0, INT32_MAX);
    }
    if ((s = ekv_getenv("ELASTICKV_HEAD_DIM"))) {
        cfg.head_dim = strcmp(s, "auto") == 0 ? 0 : (int32_t) ekv_parse_int("ELASTICKV_HEAD_DIM", s, 1, 65536);
    }
    if ((s = ekv_getenv("ELASTICKV_VERBOSE"))) {
        cfg.verbose = (int32_t) ekv_parse_int("ELASTICKV_VERBOSE", s, 0, 2);
    }
    if ((s = ekv_getenv("ELASTICKV_MODE"))) {
        if (strcmp(s, "full") == 0) {
            cfg.mode = LLAMA_ELASTICKV_MODE_FULL;
        } else if (strcmp(s, "incremental") == 0) {
            cfg.mode = LLAMA_ELASTICKV_MODE_INCREMENTAL;
        } else {
            ekv_fail("ELASTICKV_MODE", s, "is not a mode");
        }
    }
    if ((s = ekv_getenv("ELASTICKV_STATS"))) {
        if (*s == '\0') {
            ekv_fail("ELASTICKV_STATS", s, "is empty");
        }
        cfg.stats_path = s;
    }
    if ((s = ekv_getenv("ELASTICKV_DUMP"))) {
        if (*s == '\0') {
            ekv_fail("ELASTICKV_DUMP", s, "is empty");
        }
        cfg.dump_dir = s;
    }

    // the baselines (llama-elastickv-policy.h)
    if ((s = ekv_getenv("ELASTICKV_POLICY"))) {
        bool found = false;
        for (const auto & e : EKV_POLICIES) {
            if (strcmp(s, e.name) == 0) {
                cfg.policy = e.policy;
                found = true;
            }
        }
        if (!found) {
            ekv_fail("ELASTICKV_POLICY", s, "is not a policy");
        }
    }
    const char * policy_name = ekv_policy_name_of(cfg.policy);
    const llama_elastickv_policy_desc * desc = llama_elastickv_policy_get(cfg.policy);
    // a variable the chosen policy does not read is refused: it would be ignored silently
    auto unused = [&](const char * name, const char * why) {
        if ((s = ekv_getenv(name))) {
            ekv_fail(name, s, std::string("is set but ELASTICKV_POLICY=") + policy_name + " " + why);
        }
    };
    if ((s = ekv_getenv("ELASTICKV_KV_CELLS"))) {
        cfg.kv_cells = (uint32_t) ekv_parse_int("ELASTICKV_KV_CELLS", s, 0, INT32_MAX); // checked against the context by llama_elastickv_kv_cells
    }
    if (!desc || !desc->token) {
        unused("ELASTICKV_SCOPE", "evicts no cells");
        unused("ELASTICKV_FREE", "evicts no cells");
    }
    if (!desc) {
        for (const char * name : { "ELASTICKV_BUDGET", "ELASTICKV_RECENT", "ELASTICKV_HEAVY_RATIO", "ELASTICKV_SEED", "ELASTICKV_PYRAMID_BETA" }) {
            unused(name, "does not use it (it sets the baselines' budget)");
        }
        return cfg;
    }
    for (const char * name : { "ELASTICKV_PRESET", "ELASTICKV_SCALE_K", "ELASTICKV_SCALE_V", "ELASTICKV_MODE" }) {
        unused(name, "does not use it (it sets ElasticKV's thresholds)");
    }
    cfg.scale_k = cfg.scale_v = 0.0f; // the ElasticKV op does not run
    if (!(s = ekv_getenv("ELASTICKV_BUDGET"))) {
        throw std::runtime_error(std::string("elastickv: ELASTICKV_POLICY=") + policy_name + " needs ELASTICKV_BUDGET; accepted: " +
            ekv_var("ELASTICKV_BUDGET").accepts);
    }
    ekv_parse_budget(s, cfg.budget);
    if (!desc->token && cfg.budget.fraction <= 0.0) {
        ekv_fail("ELASTICKV_BUDGET", s, std::string("is a cell count, but ELASTICKV_POLICY=") + policy_name + " keeps a fraction of the K/V entries");
    }
    if (!desc->token) {
        unused("ELASTICKV_RECENT", "zeroes entries, it keeps no recent window");
        unused("ELASTICKV_HEAVY_RATIO", "zeroes entries, it has no heavy hitters");
        unused("ELASTICKV_PYRAMID_BETA", "is not pyramidkv");
    } else if (cfg.policy != LLAMA_ELASTICKV_POLICY_PYRAMIDKV) {
        unused("ELASTICKV_PYRAMID_BETA", "is not pyramidkv");
    }
    if (cfg.policy == LLAMA_ELASTICKV_POLICY_STREAMING) {
        unused("ELASTICKV_RECENT", "keeps the most recent cells of the budget anyway");
        unused("ELASTICKV_HEAVY_RATIO", "has no heavy hitters");
    }
    if (cfg.policy != LLAMA_ELASTICKV_POLICY_RANDOM_TOKENS && cfg.policy != LLAMA_ELASTICKV_POLICY_RANDOM_ENTRIES) {
        unused("ELASTICKV_SEED", "is not random");
    }
    if ((s = ekv_getenv("ELASTICKV_RECENT")) && strcmp(s, "auto") != 0) {
        cfg.budget.recent = (int32_t) ekv_parse_int("ELASTICKV_RECENT", s, 0, INT32_MAX);
    }
    if ((s = ekv_getenv("ELASTICKV_HEAVY_RATIO"))) {
        cfg.budget.heavy_ratio = ekv_parse_number("ELASTICKV_HEAVY_RATIO", s, 0.0, 1.0);
    }
    if ((s = ekv_getenv("ELASTICKV_SEED"))) {
        cfg.budget.seed = (uint64_t) ekv_parse_int("ELASTICKV_SEED", s, 0, INT64_MAX);
    }
    if ((s = ekv_getenv("ELASTICKV_PYRAMID_BETA"))) {
        cfg.budget.beta = ekv_parse_number("ELASTICKV_PYRAMID_BETA", s, 1.0, 1e6);
    }
    if ((s = ekv_getenv("ELASTICKV_SCOPE"))) {
        if (strcmp(s, "head") == 0) {
            cfg.scope = LLAMA_ELASTICKV_SCOPE_HEAD;
        } else if (strcmp(s, "shared") == 0) {
            cfg.scope = LLAMA_ELASTICKV_SCOPE_SHARED;
        } else {
            ekv_fail("ELASTICKV_SCOPE", s, "is not a scope");
        }
        if (cfg.scope == LLAMA_ELASTICKV_SCOPE_SHARED && cfg.policy == LLAMA_ELASTICKV_POLICY_PYRAMIDKV) {
            ekv_fail("ELASTICKV_SCOPE", s, "cannot be used with ELASTICKV_POLICY=pyramidkv, whose budgets differ per layer (one keep set for all layers would drop them)");
        }
    }
    if ((s = ekv_getenv("ELASTICKV_FREE"))) {
        cfg.free_cells = ekv_parse_int("ELASTICKV_FREE", s, 0, 1) == 1;
    }
    return cfg;
}

//
// the hook
//

namespace {

// Where one KV layer lives and how its heads are shaped.
struct ekv_layer {
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
struct ekv_device {
    ggml_backend_t             backend;
    ggml_backend_buffer_type_t buft;
    ggml_context_ptr           ctx;
    ggml_backend_buffer_ptr    buf;
    std::vector<ggml_tensor *> cells_k; // per stream, I32 [2, kv_size]
    std::vector<ggml_tensor *> cells_v;
};

// Per sequence.
struct ekv_seq {
    llama_pos last_pass_pos = -1; // pos_max at the last pass, -1 before the first
    int32_t   epoch         = 0;  // bumped when the sequence is rewound (cleared, shortened, restored)
    bool      reset_k       = false; // incremental mode: restart the running K statistic at the next pass
    bool      reset_v       = false;
};

} // namespace

struct llama_elastickv::impl {
    llama_elastickv_config cfg;
    const llama_cparams &  cparams;
    llama_kv_cache *       kv;
    int32_t                ctx_id;

    bool     unified;
    uint32_t n_stream;
    uint32_t n_seq;
    uint32_t n_group;
    bool     v_trans;
    bool     collect; // stats, verbose or dump: count non-zeros over the whole sequence and read them back

    std::vector<ekv_layer>  layers;
    std::vector<ekv_device> devs;
    std::vector<ekv_seq>    seqs;

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
        sq.reset_k = sq.reset_v = true;
        mark_seq_unprocessed(s, true, true);
    }

    void setup(const llama_model & model, const std::vector<ggml_backend_t> & backends);
    void check_supported();
    void echo(const llama_model & model) const;
    void run_pass(const std::vector<llama_seq_id> & seqs_pass);
    void build_lists(const std::vector<uint8_t> & in_pass);
    void upload(const std::vector<llama_seq_id> & seqs_pass);
    void compute();
    void read_state(std::vector<std::vector<double>> & host) const;
    void report(const std::vector<llama_seq_id> & seqs_pass, const std::vector<std::vector<double>> & host, double ms);
    void dump(const char * when) const;
    void entries_apply(const std::vector<llama_seq_id> & seqs_pass);
};

// finds the attention KV cache this hook works on; nullptr for memories without one
static llama_kv_cache * ekv_find_kv(llama_memory_i * memory) {
    if (auto * kv = dynamic_cast<llama_kv_cache *>(memory)) {
        return kv;
    }
    if (auto * iswa = dynamic_cast<llama_kv_cache_iswa *>(memory)) {
        return iswa->get_base(); // SWA layers overwrite their cells anyway; the base layers carry the context
    }
    if (auto * hyb = dynamic_cast<llama_memory_hybrid *>(memory)) {
        return hyb->get_mem_attn();
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
        ekv_fail("ELASTICKV_SINK", std::to_string(cfg.sink), "is larger than the context (" + std::to_string(n_ctx_seq) + " tokens per sequence)");
    }
    if ((uint32_t) cfg.warm > n_ctx_seq) {
        ekv_fail("ELASTICKV_WARM", std::to_string(cfg.warm), "is larger than the context (" + std::to_string(n_ctx_seq) + " tokens per sequence)");
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
            "use a policy whose evictions free cells (streaming, random_tokens, or h2o/scissorhands with ELASTICKV_SCOPE=shared, "
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
        ekv_layer l;
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
            ekv_fail("ELASTICKV_HEAD_DIM", std::to_string(cfg.head_dim),
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
            ggml_backend_t backend = nullptr;
            for (auto * b : backends) {
                if (ggml_backend_supports_buft(b, buft)) {
                    backend = b;
                    break;
                }
            }
            if (!backend) {
                throw std::runtime_error(std::string("elastickv: no backend of this context can access the KV buffer type ") +
                    ggml_backend_buft_name(buft));
            }
            ekv_device d;
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

    seqs.assign(n_seq, ekv_seq());
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
            ekv_fail("ELASTICKV_STATS", cfg.stats_path, std::string("cannot be opened for appending (") + strerror(errno) + ")");
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

void llama_elastickv::impl::echo(const llama_model & model) const {
    const auto & hparams = model.hparams;
    std::string devnames;
    for (const auto & d : devs) {
        devnames += std::string(devnames.empty() ? "" : ",") + ggml_backend_name(d.backend);
    }
    LLAMA_LOG_WARN("elastickv: ELASTICKV=1 mode=%s preset=%s scale_k=%.4g scale_v=%.4g sink=%d evict_every=%d warm=%d "
                   "head_dim=%s verbose=%d stats=%s dump=%s\n",
        ekv_mode_name(cfg.mode), cfg.preset.c_str(), cfg.scale_k, cfg.scale_v, cfg.sink, cfg.evict_every, cfg.warm,
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
    LLAMA_LOG_WARN("elastickv: cache K %s V %s%s, %zu layers x %u KV heads x head dim %u/%u, %u stream(s), %u group(s), "
                   "K domain %s, V domain %s, backend %s\n",
        ggml_type_name(kv->type_k()), ggml_type_name(kv->type_v()), v_trans ? " (V transposed)" : "",
        layers.size(), hparams.n_head_kv(0), hparams.n_embd_head_k(0), hparams.n_embd_head_v(0), n_stream, n_group,
        kv->attn_rot_k ? "hadamard-rotated" : "plain", kv->attn_rot_v ? "hadamard-rotated" : "plain", devnames.c_str());
}

// Fills list_k/list_v for the sequences flagged in in_pass.
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

// One graph per device: an op per layer, K/V and stream, enqueued after the ubatch on the same backend.
void llama_elastickv::impl::compute() {
    const bool incremental = cfg.mode == LLAMA_ELASTICKV_MODE_INCREMENTAL;
    const uint32_t kv_size = kv->get_size();
    for (size_t d = 0; d < devs.size(); ++d) {
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
                    ggml_build_forward_expand(gf, ggml_kv_sparsify(ctx.get(), a, cells, state, scale, trans, incremental));
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
                            "\"pos_max\": %d, \"layer\": %d, \"kv\": \"%s\", \"head\": %d, \"scale\": %.6g, \"tau\": %.9g, "
                            "\"S\": %.17g, \"N\": %.0f, \"n\": %.0f, \"nnz\": %.0f, \"n_obs\": %.0f, \"nnz_obs\": %.0f, \"hist\": [",
                            ctx_id, n_pass, s, seqs[s].epoch, pos_max, l.il, kind == 0 ? "k" : "v", hd, scale,
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
        if (cfg.verbose >= 1) {
            const double nk = tot[0][0], nv = tot[1][0];
            const double zk = nk > 0 ? 100.0*(1.0 - tot[0][1]/nk) : 0.0;
            const double zv = nv > 0 ? 100.0*(1.0 - tot[1][1]/nv) : 0.0;
            const double nominal = (tot[0][1] + tot[1][1]) > 0 ? (nk + nv)/(tot[0][1] + tot[1][1]) : 0.0;
            LLAMA_LOG_WARN("elastickv: pass %" PRId64 " seq %d epoch %d pos_max %d (%s): K %.1f%% V %.1f%% zero, nominal %.3fx, %.2f ms\n",
                n_pass, s, seqs[s].epoch, pos_max, ekv_mode_name(cfg.mode), zk, zv, nominal, ms);
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
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "ctx%d_pass%06" PRId64, ctx_id, n_pass);
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
            snprintf(name, sizeof(name), "%s_l%03d_%s_%s.npy", prefix, l.il, kn, when);
            llama_elastickv_write_npy(cfg.dump_dir + "/" + name, "<f4", { (int64_t) (out.size()/n_embd), l.n_head, hd },
                out.data(), out.size()*sizeof(float));
        }
    }
}

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
                fprintf(stats, "{\"record\": \"entries\", \"ctx\": %d, \"pass\": %" PRId64 ", \"layer\": %d, \"kv\": \"%s\", "
                    "\"n_obs\": %.0f, \"nnz_obs\": %.0f}\n", ctx_id, n_pass, l.il, kind == 0 ? "k" : "v", n_all, nnz_all);
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
    }

    if (collect) {
        if (!desc) {
            std::vector<std::vector<double>> host;
            read_state(host);
            report(seqs_pass, host, (ggml_time_us() - t0)/1000.0);
        }
        if (!cfg.dump_dir.empty()) {
            dump("after");
            char name[64];
            snprintf(name, sizeof(name), "ctx%d_pass%06" PRId64 ".json", ctx_id, n_pass);
            const std::string path = cfg.dump_dir + "/" + name;
            FILE * f = fopen(path.c_str(), "w");
            if (f) {
                fprintf(f, "{\"policy\": \"%s\", \"fraction\": %.17g, \"seed\": %" PRIu64 ", ", ekv_policy_name_of(cfg.policy), cfg.budget.fraction, cfg.budget.seed);
                fprintf(f, "\"ctx\": %d, \"pass\": %" PRId64 ", \"mode\": \"%s\", \"scale_k\": %.6g, \"scale_v\": %.6g, \"sink\": %d, "
                    "\"type_k\": \"%s\", \"type_v\": \"%s\", \"v_trans\": %s, \"unified\": %s, \"seqs\": [",
                    ctx_id, n_pass, ekv_mode_name(cfg.mode), cfg.scale_k, cfg.scale_v, cfg.sink,
                    ggml_type_name(kv->type_k()), ggml_type_name(kv->type_v()), v_trans ? "true" : "false", unified ? "true" : "false");
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
    }
    n_pass++;
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
    pimpl->kv = ekv_find_kv(memory);
    if (!pimpl->kv) {
        throw std::runtime_error("elastickv: ELASTICKV=1 but this model has no attention KV cache the hook supports "
                                 "(recurrent or special memory)");
    }
    pimpl->ctx_id = g_ekv_n_ctx++;
    pimpl->setup(model, backends);
    pimpl->echo(model);
    if (pimpl->stats) {
        const auto & c = pimpl->cfg;
        fprintf(pimpl->stats, "{\"record\": \"config\", \"policy\": \"%s\", \"fraction\": %.17g, \"cells\": %" PRId64 ", "
            "\"recent\": %d, \"heavy_ratio\": %.17g, \"seed\": %" PRIu64 ", \"pyramid_beta\": %.17g, ",
            ekv_policy_name_of(c.policy), c.budget.fraction, c.budget.cells, c.budget.recent, c.budget.heavy_ratio, c.budget.seed, c.budget.beta);
        fprintf(pimpl->stats, "\"ctx\": %d, \"mode\": \"%s\", \"preset\": \"%s\", \"scale_k\": %.6g, "
            "\"scale_v\": %.6g, \"sink\": %d, \"evict_every\": %d, \"warm\": %d, \"type_k\": \"%s\", \"type_v\": \"%s\", "
            "\"v_trans\": %s, \"rot_k\": %s, \"rot_v\": %s, \"n_layer\": %zu, \"n_stream\": %u, \"n_group\": %u, \"stats\": \"%s\"}\n",
            pimpl->ctx_id, ekv_mode_name(c.mode), c.preset.c_str(), c.scale_k, c.scale_v, c.sink, c.evict_every, c.warm,
            ggml_type_name(pimpl->kv->type_k()), ggml_type_name(pimpl->kv->type_v()), pimpl->v_trans ? "true" : "false",
            pimpl->kv->attn_rot_k ? "true" : "false", pimpl->kv->attn_rot_v ? "true" : "false",
            pimpl->layers.size(), pimpl->n_stream, pimpl->n_group, ekv_json_escape(c.stats_path).c_str());
        fflush(pimpl->stats);
    }
}

llama_elastickv::~llama_elastickv() = default;

void llama_elastickv::on_memory_update() {
    auto & I = *pimpl;
    if (!I.kv->get_has_shift()) {
        return;
    }
    // RoPE re-rotation mixes K entries pairwise: zeroed K entries of shifted cells are no longer zero
    for (uint32_t strm = 0; strm < I.n_stream; ++strm) {
        const auto & cells = I.cells_of(strm);
        std::vector<uint8_t> hit(I.n_seq, 0);
        for (uint32_t c = 0; c < cells.size(); ++c) {
            if (!cells.is_empty(c) && cells.get_shift(c) != 0) {
                for (uint32_t s = 0; s < I.n_seq; ++s) {
                    hit[s] |= cells.seq_has(c, s);
                }
            }
        }
        for (uint32_t s = 0; s < I.n_seq; ++s) {
            if (hit[s]) {
                I.seqs[s].last_pass_pos = -1; // positions moved: pass again at the next ubatch
                I.seqs[s].reset_k = true;
                I.mark_seq_unprocessed((llama_seq_id) s, true, false);
            }
        }
    }
}

void llama_elastickv::on_ubatch(const llama_ubatch & ubatch) {
    auto & I = *pimpl;

    // cells written by this ubatch are new; a position at or below the last pass means a rewind
    for (uint32_t i = 0; i < ubatch.n_tokens; ++i) {
        const llama_pos p = ubatch.pos[i];
        for (int32_t j = 0; j < ubatch.n_seq_id[i]; ++j) {
            const llama_seq_id s = ubatch.seq_id[i][j];
            if (s < 0 || (uint32_t) s >= I.n_seq) {
                continue;
            }
            if (p <= I.seqs[s].last_pass_pos) {
                I.rewind(s);
            }
            const uint32_t strm = I.kv->seq_to_stream[s];
            const auto & sp = I.cells_of(strm).seq_pos_get(s);
            for (auto it = sp.lower_bound({ p, 0 }); it != sp.end() && it->first == p; ++it) {
                I.processed_k[strm][it->second] = 0;
                I.processed_v[strm][it->second] = 0;
            }
        }
    }

    if (I.cparams.warmup) {
        return; // no pass on warm-up decodes
    }
    if (I.evict) {
        I.evict->after_ubatch(ubatch, I.ctx_id, I.n_pass); // dumps of the ubatch's queries, when asked
    }

    std::vector<llama_seq_id> due;
    for (uint32_t k = 0; k < ubatch.n_seqs_unq; ++k) {
        const llama_seq_id s = ubatch.seq_id_unq[k];
        if (s < 0 || (uint32_t) s >= I.n_seq) {
            continue;
        }
        const llama_pos pos_max = I.kv->seq_pos_max(s);
        if (pos_max + 1 >= I.cfg.warm && pos_max - I.seqs[s].last_pass_pos >= I.cfg.evict_every) {
            due.push_back(s);
        }
    }
    if (due.empty()) {
        return;
    }
    if (I.evict) {
        I.evict->pass(due, I.ctx_id, I.n_pass, I.stats, I.cfg.verbose);
        for (llama_seq_id s : due) {
            I.seqs[s].last_pass_pos = I.kv->seq_pos_max(s);
        }
        I.n_pass++;
    } else {
        I.run_pass(due);
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
    auto & I = *pimpl;
    if (I.evict) {
        I.evict->reset_restored(seq_id);
    }
    for (uint32_t s = 0; s < I.n_seq; ++s) {
        if (seq_id < 0 || (uint32_t) seq_id == s) {
            I.rewind((llama_seq_id) s);
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
