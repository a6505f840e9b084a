// SPDX-License-Identifier: MIT
// Learned eviction (the kv-cache-compression notebook's LearnedEviction, as it was meant to work): its MLP
// (64 -> 128 -> 64 -> 1, ReLU, sigmoid; one network for every layer), trained by scripts/analysis/train_learned.py on
// labels from this project's own H2O runs over WikiText-2 validation text, scores each cell from its key averaged over
// the layer's KV heads; beyond the sinks and the recent window the cells of highest output are kept (the sigmoid keeps
// the order, so the priority is the output before it). Every head of a layer keeps the same cells. The numpy
// reference (scripts/elastickv/policies/learned.py) computes the same outputs operation by operation: libllama is
// built without FMA contraction, so each double product and sum rounds as numpy's.
#include "llama-elastickv-policy.h"
#include "llama-elastickv-internal.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

static double ekv_learned_priority(const llama_elastickv_budget & b, llama_pos pos, float logit) {
    (void) b; (void) pos;
    return (double) logit;
}

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_LEARNED_DESC = {
    LLAMA_ELASTICKV_POLICY_LEARNED, "learned", true, LLAMA_ELASTICKV_SCORE_NONE, false,
    ekv_learned_priority, llama_elastickv_uniform_budget, /*no_sinks =*/ false, /*recency =*/ false,
    /*clusters =*/ false, /*learned =*/ true,
};

void llama_elastickv_mlp::load(const std::string & path) {
    std::unique_ptr<FILE, int (*)(FILE *)> f(fopen(path.c_str(), "rb"), fclose);
    if (!f) {
        llama_elastickv_fail("ELASTICKV_LEARNED_WEIGHTS", path, std::string("cannot be opened (") + strerror(errno) + ")");
    }
    auto bad = [&](const std::string & why) { llama_elastickv_fail("ELASTICKV_LEARNED_WEIGHTS", path, why); };
    char magic[8];
    uint32_t n = 0;
    if (fread(magic, 1, 8, f.get()) != 8 || memcmp(magic, "EKVMLP01", 8) != 0) {
        bad("is not an MLP weights file (no EKVMLP01 header)");
    }
    if (fread(&n, sizeof(n), 1, f.get()) != 1 || n < 1 || n > 16) {
        bad("has a bad layer count");
    }
    dims.assign(n + 1, 0);
    if (fread(dims.data(), sizeof(uint32_t), n + 1, f.get()) != n + 1 || dims[n] != 1) {
        bad("has bad layer sizes (the last must be 1)");
    }
    W.assign(n, {});
    b.assign(n, {});
    for (uint32_t l = 0; l < n; ++l) {
        if (dims[l] < 1 || dims[l] > 65536 || dims[l + 1] < 1 || dims[l + 1] > 65536) {
            bad("has a layer size outside [1, 65536]");
        }
        W[l].resize((size_t) dims[l + 1]*dims[l]);
        b[l].resize(dims[l + 1]);
        if (fread(W[l].data(), sizeof(float), W[l].size(), f.get()) != W[l].size() ||
            fread(b[l].data(), sizeof(float), b[l].size(), f.get()) != b[l].size()) {
            bad("is shorter than its layer sizes say");
        }
    }
    if (fgetc(f.get()) != EOF) {
        bad("is longer than its layer sizes say");
    }
}

double llama_elastickv_mlp::logit(const double * x) const {
    std::vector<double> h(x, x + dims[0]), y;
    for (size_t l = 0; l < W.size(); ++l) {
        const uint32_t in = dims[l], out = dims[l + 1];
        y.assign(out, 0.0);
        for (uint32_t o = 0; o < out; ++o) {
            const float * w = W[l].data() + (size_t) o*in;
            double acc = 0.0;
            for (uint32_t i = 0; i < in; ++i) {
                acc += (double) w[i]*h[i];
            }
            acc += (double) b[l][o];
            y[o] = l + 1 < W.size() && acc < 0.0 ? 0.0 : acc;
        }
        h.swap(y);
    }
    return h[0];
}
