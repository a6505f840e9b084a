// SPDX-License-Identifier: MIT
// ElasticKV configuration: the ELASTICKV_* variable table (the one declaration, SPEC.md §1), the presets, the
// parsing and validation of every variable, the policy and mode names, and llama_elastickv_config_from_env().
// What the rest of the hook uses from here is declared in llama-elastickv-internal.h.
#include "llama-elastickv-internal.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

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
    { "ELASTICKV_POLICY",      "elastickv", "elastickv, streaming, h2o, scissorhands, pyramidkv, random_tokens, sliding_window, lru, lru_fifo, semantic, learned, random_entries or topk_entries",
                                                                                        "what a pass does: ElasticKV thresholding, a token eviction (-inf attention bias per layer and KV head; needs -fa off) or an element baseline" },
    { "ELASTICKV_BUDGET",      "",      "a fraction in (0, 1] written with a decimal point (0.5) or as a percentage (50%), or a whole number of cells (>= 1, token policies only)",
                                                                                        "every policy but elastickv (required): cells kept per sequence and layer, or the fraction of K/V entries kept" },
    { "ELASTICKV_RECENT",      "auto",  "auto, or an integer >= 0",                 "token policies: most recent positions always kept; auto: (1 - HEAVY_RATIO) of the budget after the sinks" },
    { "ELASTICKV_HEAVY_RATIO", "0.8",   "a number in [0, 1]",                       "h2o, scissorhands, pyramidkv, random_tokens, lru: share of the budget after the sinks chosen by priority when RECENT is auto" },
    { "ELASTICKV_SEED",        "42",    "an integer in [0, 9223372036854775807]",   "random_tokens, random_entries and semantic: seed of the hash" },
    { "ELASTICKV_PYRAMID_BETA","20",    "a number in [1, 1000000]",                 "pyramidkv: the top layer keeps budget/beta cells, the bottom 2*budget - budget/beta" },
    { "ELASTICKV_SCOPE",       "head",  "head or shared",                           "token policies: head: a keep set per layer and KV head; shared: one keep set per sequence for all layers and heads (scores summed over them), so every eviction frees a cell" },
    { "ELASTICKV_FREE",        "1",     "0 or 1",                                   "token policies: 1 frees a cell evicted in every layer and KV head (later tokens reuse it); 0 keeps it allocated behind the attention bias (logical eviction)" },
    { "ELASTICKV_KV_CELLS",    "0",     "0 (the context size), or an integer in [1, context size per sequence]",
                                                                                        "cells allocated per KV stream: a physical cap, with n_ctx and positions unchanged; needs a token policy whose evictions free cells (streaming, random_tokens, sliding_window, lru_fifo, or h2o/scissorhands/lru with ELASTICKV_SCOPE=shared)" },
    { "ELASTICKV_CLUSTERS",    "32",    "an integer in [1, 4096]",                  "semantic: K of the K-means over the candidates' keys (the cells nearest the K centroids are kept)" },
    { "ELASTICKV_CLUSTER_KEYS","head",  "head or mean",                             "semantic: cluster each KV head's own keys (head), or each layer's keys averaged over its KV heads, as the notebook (mean)" },
    { "ELASTICKV_LEARNED_WEIGHTS", "",  "a path to an MLP weights file (scripts/analysis/train_learned.py)", "learned (required): the network that scores each cell's key" },
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

} // namespace

[[noreturn]] void llama_elastickv_fail(const char * name, const std::string & value, const std::string & why) {
    throw std::runtime_error(std::string("elastickv: ") + name + "='" + value + "' " + why +
        "; accepted: " + ekv_var(name).accepts);
}

namespace {

// nullptr when unset
const char * ekv_getenv(const char * name) {
    (void) ekv_var(name); // only declared variables are read
    return getenv(name);
}

// Whether s is written as the variable table's numbers are: decimal digits, sign, point and exponent only (strtod
// would also take leading spaces and hex), or one of inf, infinity, nan (refused later as not finite). The Python
// mirror (envvars.py, decimal_float / decimal_int) reads the same grammar.
bool ekv_plain_number(const char * s, bool integer) {
    if (!integer) {
        std::string w(s);
        std::transform(w.begin(), w.end(), w.begin(), [](unsigned char c) { return (char) std::tolower(c); });
        const size_t sign = !w.empty() && (w[0] == '+' || w[0] == '-');
        const std::string word = w.substr(sign);
        if (word == "inf" || word == "infinity" || word == "nan") {
            return true;
        }
    }
    return *s != '\0' && strspn(s, integer ? "0123456789+-" : "0123456789+-.eE") == strlen(s);
}

int64_t ekv_parse_int(const char * name, const char * s, int64_t lo, int64_t hi) {
    errno = 0;
    char * end = nullptr;
    const long long v = strtoll(s, &end, 10);
    if (*s == '\0' || !ekv_plain_number(s, true) || end == s || *end != '\0' || errno == ERANGE) {
        llama_elastickv_fail(name, s, "is not an integer");
    }
    if (v < lo || v > hi) {
        llama_elastickv_fail(name, s, "is out of range");
    }
    return v;
}

float ekv_parse_scale(const char * name, const char * s) {
    errno = 0;
    char * end = nullptr;
    const float v = strtof(s, &end);
    // ERANGE: an underflow reads as 0 (in range), an overflow as infinity (refused below)
    if (*s == '\0' || !ekv_plain_number(s, false) || end == s || *end != '\0') {
        llama_elastickv_fail(name, s, "is not a number");
    }
    if (std::isnan(v) || std::isinf(v)) {
        llama_elastickv_fail(name, s, "is not a finite number");
    }
    if (v < 0.0f) {
        llama_elastickv_fail(name, s, "is negative");
    }
    if (v > 100.0f) {
        llama_elastickv_fail(name, s, "is out of range");
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
    { "sliding_window", LLAMA_ELASTICKV_POLICY_SLIDING_WINDOW },
    { "lru",            LLAMA_ELASTICKV_POLICY_LRU },
    { "lru_fifo",       LLAMA_ELASTICKV_POLICY_LRU_FIFO },
    { "semantic",       LLAMA_ELASTICKV_POLICY_SEMANTIC },
    { "learned",        LLAMA_ELASTICKV_POLICY_LEARNED },
};

} // namespace

const char * llama_elastickv_policy_name_of(llama_elastickv_policy p) {
    for (const auto & e : EKV_POLICIES) {
        if (e.policy == p) {
            return e.name;
        }
    }
    return "?";
}

namespace {

double ekv_parse_number(const char * name, const char * s, double lo, double hi) {
    errno = 0;
    char * end = nullptr;
    const double v = strtod(s, &end);
    if (*s == '\0' || !ekv_plain_number(s, false) || end == s || *end != '\0' || std::isnan(v) || std::isinf(v)) {
        llama_elastickv_fail(name, s, "is not a finite number");
    }
    if (v < lo || v > hi) {
        llama_elastickv_fail(name, s, "is out of range");
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
        if (num.empty() || !ekv_plain_number(num.c_str(), false) || *end != '\0' || !(v > 0.0 && v <= 100.0)) {
            llama_elastickv_fail("ELASTICKV_BUDGET", s, "is not a percentage in (0%, 100%]");
        }
        b.fraction = v/100.0;
    } else if (strchr(s, '.') || strchr(s, 'e') || strchr(s, 'E')) {
        errno = 0;
        char * end = nullptr;
        const double v = strtod(s, &end);
        if (*s == '\0' || !ekv_plain_number(s, false) || *end != '\0' || !(v > 0.0 && v <= 1.0)) {
            llama_elastickv_fail("ELASTICKV_BUDGET", s, "is not a fraction in (0, 1]");
        }
        b.fraction = v;
    } else {
        b.cells = ekv_parse_int("ELASTICKV_BUDGET", s, 1, INT64_MAX);
    }
}

} // namespace

const char * llama_elastickv_mode_name(llama_elastickv_mode m) {
    return m == LLAMA_ELASTICKV_MODE_FULL ? "full" : "incremental";
}

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
            llama_elastickv_fail("ELASTICKV_PRESET", s, "is not a preset");
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
            llama_elastickv_fail("ELASTICKV_MODE", s, "is not a mode");
        }
    }
    if ((s = ekv_getenv("ELASTICKV_STATS"))) {
        if (*s == '\0') {
            llama_elastickv_fail("ELASTICKV_STATS", s, "is empty");
        }
        cfg.stats_path = s;
    }
    if ((s = ekv_getenv("ELASTICKV_DUMP"))) {
        if (*s == '\0') {
            llama_elastickv_fail("ELASTICKV_DUMP", s, "is empty");
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
            llama_elastickv_fail("ELASTICKV_POLICY", s, "is not a policy");
        }
    }
    const char * policy_name = llama_elastickv_policy_name_of(cfg.policy);
    const llama_elastickv_policy_desc * desc = llama_elastickv_policy_get(cfg.policy);
    // a variable the chosen policy does not read is refused: it would be ignored silently
    auto unused = [&](const char * name, const char * why) {
        if ((s = ekv_getenv(name))) {
            llama_elastickv_fail(name, s, std::string("is set but ELASTICKV_POLICY=") + policy_name + " " + why);
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
        for (const char * name : { "ELASTICKV_BUDGET", "ELASTICKV_RECENT", "ELASTICKV_HEAVY_RATIO", "ELASTICKV_SEED", "ELASTICKV_PYRAMID_BETA",
                                   "ELASTICKV_CLUSTERS", "ELASTICKV_CLUSTER_KEYS", "ELASTICKV_LEARNED_WEIGHTS" }) {
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
        llama_elastickv_fail("ELASTICKV_BUDGET", s, std::string("is a cell count, but ELASTICKV_POLICY=") + policy_name + " keeps a fraction of the K/V entries");
    }
    if (!desc->token) {
        unused("ELASTICKV_RECENT", "zeroes entries, it keeps no recent window");
        unused("ELASTICKV_HEAVY_RATIO", "zeroes entries, it has no heavy hitters");
        unused("ELASTICKV_PYRAMID_BETA", "is not pyramidkv");
    } else if (cfg.policy != LLAMA_ELASTICKV_POLICY_PYRAMIDKV) {
        unused("ELASTICKV_PYRAMID_BETA", "is not pyramidkv");
    }
    if (cfg.policy == LLAMA_ELASTICKV_POLICY_STREAMING || cfg.policy == LLAMA_ELASTICKV_POLICY_SLIDING_WINDOW ||
        cfg.policy == LLAMA_ELASTICKV_POLICY_LRU_FIFO) {
        unused("ELASTICKV_RECENT", "keeps the most recent cells of the budget anyway");
        unused("ELASTICKV_HEAVY_RATIO", "has no heavy hitters");
    }
    if (desc->no_sinks) {
        unused("ELASTICKV_SINK", "keeps no sinks (the last cells of the budget only)");
        cfg.sink = 0;
    }
    if (cfg.policy != LLAMA_ELASTICKV_POLICY_RANDOM_TOKENS && cfg.policy != LLAMA_ELASTICKV_POLICY_RANDOM_ENTRIES &&
        cfg.policy != LLAMA_ELASTICKV_POLICY_SEMANTIC) {
        unused("ELASTICKV_SEED", "is not random");
    }
    if (!desc->clusters) {
        unused("ELASTICKV_CLUSTERS", "is not semantic");
        unused("ELASTICKV_CLUSTER_KEYS", "is not semantic");
    }
    if (!desc->learned) {
        unused("ELASTICKV_LEARNED_WEIGHTS", "is not learned");
    } else if (!(s = ekv_getenv("ELASTICKV_LEARNED_WEIGHTS")) || *s == '\0') {
        throw std::runtime_error(std::string("elastickv: ELASTICKV_POLICY=") + policy_name + " needs ELASTICKV_LEARNED_WEIGHTS; accepted: " +
            ekv_var("ELASTICKV_LEARNED_WEIGHTS").accepts);
    } else {
        cfg.budget.learned_weights = s; // read (and checked) when the context is created
    }
    if ((s = ekv_getenv("ELASTICKV_CLUSTERS"))) {
        cfg.budget.clusters = (int32_t) ekv_parse_int("ELASTICKV_CLUSTERS", s, 1, 4096);
    }
    if ((s = ekv_getenv("ELASTICKV_CLUSTER_KEYS"))) {
        if (strcmp(s, "head") == 0) {
            cfg.budget.cluster_mean = false;
        } else if (strcmp(s, "mean") == 0) {
            cfg.budget.cluster_mean = true;
        } else {
            llama_elastickv_fail("ELASTICKV_CLUSTER_KEYS", s, "is not a key set");
        }
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
            llama_elastickv_fail("ELASTICKV_SCOPE", s, "is not a scope");
        }
        if (cfg.scope == LLAMA_ELASTICKV_SCOPE_SHARED && cfg.policy == LLAMA_ELASTICKV_POLICY_PYRAMIDKV) {
            llama_elastickv_fail("ELASTICKV_SCOPE", s, "cannot be used with ELASTICKV_POLICY=pyramidkv, whose budgets differ per layer (one keep set for all layers would drop them)");
        }
        if (cfg.scope == LLAMA_ELASTICKV_SCOPE_SHARED && desc->from_keys()) {
            llama_elastickv_fail("ELASTICKV_SCOPE", s, std::string("cannot be used with ELASTICKV_POLICY=") + policy_name + ", which ranks the keys of each layer or KV head");
        }
    }
    if ((s = ekv_getenv("ELASTICKV_FREE"))) {
        cfg.free_cells = ekv_parse_int("ELASTICKV_FREE", s, 0, 1) == 1;
    }
    return cfg;
}
