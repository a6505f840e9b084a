// SPDX-License-Identifier: MIT
// ElasticKV: the GGML_OP_KV_SPARSIFY op, an in-place per-head magnitude threshold on a KV-cache tensor.
// The readable definition of this op is tests/reference/kv_sparsify.py in the ElasticKV repository;
// the CPU kernel (ggml-cpu/kv-sparsify.cpp) and the CUDA kernel (ggml-cuda/kv-sparsify.cu) follow it.
#pragma once

#include "ggml.h"

#include <math.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Per-cell code in the `cells` list (I32 pairs: cell index, code). A negative code skips the entry.
// The low 16 bits are the statistic group (a sequence); the flags say what the op does with the cell.
#define GGML_KV_SPARSIFY_GROUP_MASK 0xFFFF
#define GGML_KV_SPARSIFY_PROCESS    (1 << 16) // |x| enters the group's statistic, then |x| < tau is zeroed
#define GGML_KV_SPARSIFY_OBSERVE    (1 << 17) // values and non-zeros are counted after the pass
#define GGML_KV_SPARSIFY_HIST       (1 << 18) // survivors per aligned 32-value block are histogrammed

// Entries zeroed per block are histogrammed over aligned runs of this many values inside a head.
#define GGML_KV_SPARSIFY_BLOCK 32

// State of one (group, head): GGML_KV_SPARSIFY_NSTATE doubles, laid out [NSTATE, n_head, n_group] (F64).
enum ggml_kv_sparsify_state {
    GGML_KV_SPARSIFY_S        = 0, // running sum of |x| behind tau (this pass in full mode, all passes in incremental)
    GGML_KV_SPARSIFY_N        = 1, // running count of values behind tau
    GGML_KV_SPARSIFY_TAU      = 2, // threshold used by the last pass: scale * S / N
    GGML_KV_SPARSIFY_N_PROC   = 3, // values thresholded by the last pass
    GGML_KV_SPARSIFY_NNZ_PROC = 4, // of those, non-zero after the pass
    GGML_KV_SPARSIFY_N_OBS    = 5, // values of OBSERVE cells
    GGML_KV_SPARSIFY_NNZ_OBS  = 6, // of those, non-zero after the pass
    GGML_KV_SPARSIFY_S_PASS   = 7, // sum of |x| over this pass's PROCESS cells, before zeroing
    GGML_KV_SPARSIFY_N_PASS   = 8, // count of values over this pass's PROCESS cells
    GGML_KV_SPARSIFY_HIST0    = 9, // 33 bins: number of 32-value blocks with 0..32 non-zero values after the pass
    GGML_KV_SPARSIFY_NSTATE   = GGML_KV_SPARSIFY_HIST0 + GGML_KV_SPARSIFY_BLOCK + 1,
};

#if defined(__CUDACC__)
#define GGML_KV_SPARSIFY_HD __host__ __device__
#else
#define GGML_KV_SPARSIFY_HD
#endif

// Step 3 of a pass, shared by the CPU and CUDA kernels: fold this pass's sum and count of one (group, head)
// into S and N (full mode: replace; incremental mode: accumulate) and set tau = scale * (S / N).
static inline GGML_KV_SPARSIFY_HD void ggml_kv_sparsify_update_tau(double * s, float scale, bool incremental) {
    if (incremental) {
        s[GGML_KV_SPARSIFY_S] += s[GGML_KV_SPARSIFY_S_PASS];
        s[GGML_KV_SPARSIFY_N] += s[GGML_KV_SPARSIFY_N_PASS];
    } else {
        s[GGML_KV_SPARSIFY_S]  = s[GGML_KV_SPARSIFY_S_PASS];
        s[GGML_KV_SPARSIFY_N]  = s[GGML_KV_SPARSIFY_N_PASS];
    }
    s[GGML_KV_SPARSIFY_TAU] = s[GGML_KV_SPARSIFY_N] > 0.0 ?
        (double) scale * (s[GGML_KV_SPARSIFY_S] / s[GGML_KV_SPARSIFY_N]) : 0.0;
}

// Step 4's comparison |x| < tau as an integer compare, shared by the CPU and CUDA kernels: returns the magnitude
// bits T of the smallest value >= tau of the stored float type, so that for every stored x (subnormals, infinities
// and NaN included) |x| < tau <=> (bits(x) & ~sign) < T. F16 and BF16 compare their own 16 bits; F32 and the
// quantized types compare the f32 bits of x (quantized: x = d * code in f32). Integer and exact double arithmetic
// only, so that no flush-to-zero or rounding mode can change it. A NaN or non-positive tau returns 0: nothing is below.
static inline GGML_KV_SPARSIFY_HD uint32_t ggml_kv_sparsify_tau_bits(double tau, enum ggml_type type) {
    int      man;      // stored significand bits
    int      bias;     // exponent bias
    uint32_t inf;      // bits of +infinity
    double   max;      // largest finite value
    if (type == GGML_TYPE_F16) {
        man = 10; bias = 15;  inf = 0x7C00;      max = 65504.0;
    } else if (type == GGML_TYPE_BF16) {
        man = 7;  bias = 127; inf = 0x7F80;      max = ldexp(255.0, 120);
    } else {
        man = 23; bias = 127; inf = 0x7F800000u; max = ldexp(16777215.0, 104);
    }
    if (!(tau > 0.0)) {
        return 0;
    }
    if (tau > max) {
        return inf; // every finite value is below; infinity and NaN are not
    }
    if (tau <= ldexp(1.0, 1 - bias)) {
        // up to the smallest normal value: subnormal steps of 2^(1 - bias - man)
        return (uint32_t) ceil(ldexp(tau, bias - 1 + man));
    }
    int e;
    frexp(tau, &e); // tau = f * 2^e, f in [0.5, 1): the value is 1.m * 2^(e-1)
    const uint32_t m = (uint32_t) ceil(ldexp(tau, man + 1 - e)); // in [2^man, 2^(man+1)]; 2^(man+1) carries
    return ((uint32_t) (e - 1 + bias) << man) + m - (1u << man);
}

// Zero, in place, the entries of a KV-cache tensor whose magnitude is below a per-(group, head) threshold.
//   a     : rows of one cache stream, [n_embd, n_cells] (one row per cell), or [n_cells, n_embd] when `trans`
//           (flash attention off: V is stored transposed). n_embd = n_head * head_dim.
//           Types F32, F16, BF16, and Q8_0, Q4_0, Q5_0 (not transposed; quantized codes are set to exact zero).
//   cells : I32 [2, n_list]: (cell index, code) pairs, see GGML_KV_SPARSIFY_* above.
//   state : F64 [GGML_KV_SPARSIFY_NSTATE, n_head, n_group], persistent between passes.
//   For each group g and head h: S_pass, N_pass = sum and count of |x| over the PROCESS cells of g;
//   full mode: S = S_pass, N = N_pass; incremental: S += S_pass, N += N_pass. tau = scale * (S / N).
//   Every x of a PROCESS cell with |x| < tau becomes 0. Returns view(a).
GGML_API struct ggml_tensor * ggml_kv_sparsify(
        struct ggml_context * ctx,
        struct ggml_tensor  * a,
        struct ggml_tensor  * cells,
        struct ggml_tensor  * state,
        float                 scale,
        bool                  trans,
        bool                  incremental);

// Op parameters, read by the kernels.
struct ggml_kv_sparsify_params {
    float scale;
    bool  trans;
    bool  incremental;
    int   n_head;
    int   head_dim;
    int   n_group;
    int   n_list;
};
GGML_API struct ggml_kv_sparsify_params ggml_kv_sparsify_get_params(const struct ggml_tensor * dst);

#ifdef __cplusplus
}
#endif
