// SPDX-License-Identifier: MIT
// Semantic clustering (the kv-cache-compression notebook's SemanticCluster, as it was meant to work): at every pass,
// a seeded K-means over the keys of the candidate cells (not a sink, not in the recent window, not evicted); the cell
// nearest each centroid is kept, and the rest of the budget goes to the most recent candidates (priority 1 for the
// representatives, 0 for the others; ties to the higher position). Re-clustered at every pass.
//
// Keys (post-RoPE, as the cache holds them, read as float and widened to double): each KV head's own keys, so that
// each head keeps representatives of what it attends with (ELASTICKV_CLUSTER_KEYS=head, the default: per-head keep
// sets are what the hook's ELASTICKV_SCOPE=head evicts), or, as the notebook, each layer's keys averaged over its KV
// heads (=mean; every head of the layer then keeps the same cells). The K-means, in double precision, is:
//   K'     = min(ELASTICKV_CLUSTERS, heavy, candidates): nothing when 0
//   init   the K' candidates of highest hash(ELASTICKV_SEED, tag, pos) (tag = layer*65536 + KV head; ties: lower
//          position first) in that order
//   loop   at most 16 times: assign every candidate to its nearest centroid (squared distance summed over the
//          dimensions in order; ties: the lower centroid index); stop if no assignment changed; else each centroid
//          becomes the mean of its members (summed in ascending position), an empty one stays where it is
//   keep   per non-empty cluster, the member nearest its centroid (ties: the higher position)
// scripts/elastickv/policies/semantic.py computes the same sets operation by operation (libllama is built without
// FMA contraction, so every operation rounds as numpy's), and tests/test_policies.py compares them on dumps.
#include "llama-elastickv-policy.h"

#include <algorithm>
#include <cstdint>
#include <vector>

static double ekv_semantic_priority(const llama_elastickv_budget & b, llama_pos pos, float representative) {
    (void) b; (void) pos;
    return (double) representative;
}

const llama_elastickv_policy_desc LLAMA_ELASTICKV_POLICY_SEMANTIC_DESC = {
    LLAMA_ELASTICKV_POLICY_SEMANTIC, "semantic", true, LLAMA_ELASTICKV_SCORE_NONE, false,
    ekv_semantic_priority, llama_elastickv_uniform_budget, /*no_sinks =*/ false, /*recency =*/ false, /*clusters =*/ true,
};

static const int EKV_KMEANS_MAX_ITER = 16;

static double ekv_d2(const double * x, const double * c, int64_t d) {
    double acc = 0.0;
    for (int64_t j = 0; j < d; ++j) {
        const double t = x[j] - c[j];
        acc += t*t;
    }
    return acc;
}

void llama_elastickv_semantic_priority(
        const llama_elastickv_budget & b,
        uint64_t                       tag,
        const std::vector<llama_pos> & pos,
        const std::vector<double>    & x,
        int64_t                        d,
        const std::vector<int64_t>   & cand,
        int64_t                        heavy,
        std::vector<float>           & prio) {
    std::fill(prio.begin(), prio.end(), 0.0f);
    const int64_t m = (int64_t) cand.size();
    const int64_t K = std::min<int64_t>({ (int64_t) b.clusters, heavy, m });
    if (K <= 0) {
        return;
    }
    // init: the K candidates of highest hash
    std::vector<uint64_t> h(m);
    std::vector<int64_t>  order(m);
    for (int64_t i = 0; i < m; ++i) {
        h[i]     = llama_elastickv_hash(b.seed, { tag, (uint64_t) (int64_t) pos[cand[i]] });
        order[i] = i;
    }
    std::stable_sort(order.begin(), order.end(), [&](int64_t p, int64_t q) { return h[p] > h[q]; });
    std::vector<double> C((size_t) K*d);
    for (int64_t k = 0; k < K; ++k) {
        std::copy_n(x.begin() + cand[order[k]]*d, d, C.begin() + k*d);
    }
    std::vector<int64_t> a(m, -1), a_new(m);
    std::vector<double>  S((size_t) K*d);
    std::vector<int64_t> cnt(K);
    for (int it = 0; it < EKV_KMEANS_MAX_ITER; ++it) {
        for (int64_t i = 0; i < m; ++i) {
            const double * xi = x.data() + cand[i]*d;
            int64_t best = 0;
            double  bd   = ekv_d2(xi, C.data(), d);
            for (int64_t k = 1; k < K; ++k) {
                const double dk = ekv_d2(xi, C.data() + k*d, d);
                if (dk < bd) {
                    bd   = dk;
                    best = k;
                }
            }
            a_new[i] = best;
        }
        if (a_new == a) {
            break;
        }
        a = a_new;
        std::fill(S.begin(), S.end(), 0.0);
        std::fill(cnt.begin(), cnt.end(), 0);
        for (int64_t i = 0; i < m; ++i) {
            const double * xi = x.data() + cand[i]*d;
            double * s = S.data() + a[i]*d;
            for (int64_t j = 0; j < d; ++j) {
                s[j] += xi[j];
            }
            cnt[a[i]]++;
        }
        for (int64_t k = 0; k < K; ++k) {
            if (cnt[k] > 0) {
                for (int64_t j = 0; j < d; ++j) {
                    C[k*d + j] = S[k*d + j]/(double) cnt[k];
                }
            }
        }
    }
    // keep: per cluster, the member nearest its centroid (ties: the higher position, i.e. the later candidate)
    std::vector<int64_t> rep(K, -1);
    std::vector<double>  rd(K, 0.0);
    for (int64_t i = 0; i < m; ++i) {
        const int64_t k  = a[i];
        const double  di = ekv_d2(x.data() + cand[i]*d, C.data() + k*d, d);
        if (rep[k] < 0 || di <= rd[k]) {
            rep[k] = i;
            rd[k]  = di;
        }
    }
    for (int64_t k = 0; k < K; ++k) {
        if (rep[k] >= 0) {
            prio[cand[rep[k]]] = 1.0f;
        }
    }
}
