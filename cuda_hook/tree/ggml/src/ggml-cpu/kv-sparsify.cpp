// SPDX-License-Identifier: MIT
// ElasticKV: CPU kernel of GGML_OP_KV_SPARSIFY. The definition it follows is the numpy reference
// (tests/reference/kv_sparsify.py in the ElasticKV repository); comments below name its steps.
//
// Threads split the work by KV head: thread ith owns heads ith, ith+nth, ... and their state slices,
// so no barrier is needed and every sum is accumulated in the same order whatever the thread count.
#include "kv-sparsify.h"
#include "ggml-kv-sparsify.h"
#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "ggml-impl.h"

#include <cmath>
#include <cstring>
#include <type_traits>

namespace {

constexpr int BLOCK = GGML_KV_SPARSIFY_BLOCK;

// Where the values of one (cell, head, 32-block) live: element i is at base + i*stride.
struct kv_block_ref {
    char *  base;
    size_t  stride;
    int     len;   // 32, or less for the tail of a head whose size is not a multiple of 32
};

// Element stride in bytes: the row's own for the transposed layout, the element size otherwise (a
// compile-time constant, so that the loops below vectorize).
template <ggml_type T, bool TRANS>
static inline size_t kv_stride(const kv_block_ref & r) {
    if constexpr (TRANS) {
        return r.stride;
    } else if constexpr (T == GGML_TYPE_F32) {
        return sizeof(float);
    } else {
        return sizeof(ggml_fp16_t); // f16, bf16; unused for quantized blocks
    }
}

// Dequantized (or converted) values of a block.
template <ggml_type T, bool TRANS>
static inline void kv_block_load(const kv_block_ref & r, float * x) {
    const size_t stride = kv_stride<T, TRANS>(r);
    if constexpr (T == GGML_TYPE_F32) {
        for (int i = 0; i < r.len; ++i) { x[i] = *(const float *) (r.base + i*stride); }
    } else if constexpr (T == GGML_TYPE_F16) {
        for (int i = 0; i < r.len; ++i) { x[i] = GGML_CPU_FP16_TO_FP32(*(const ggml_fp16_t *) (r.base + i*stride)); }
    } else if constexpr (T == GGML_TYPE_BF16) {
        for (int i = 0; i < r.len; ++i) { x[i] = GGML_BF16_TO_FP32(*(const ggml_bf16_t *) (r.base + i*stride)); }
    } else if constexpr (T == GGML_TYPE_Q8_0) {
        // block: f16 d, int8 q[32]; x = d*q
        const float d = GGML_CPU_FP16_TO_FP32(*(const ggml_fp16_t *) r.base);
        const int8_t * q = (const int8_t *) (r.base + 2);
        for (int i = 0; i < BLOCK; ++i) { x[i] = (float) q[i] * d; }
    } else if constexpr (T == GGML_TYPE_Q4_0) {
        // block: f16 d, u8 qs[16]; element i < 16 is the low nibble of qs[i], i >= 16 the high nibble of qs[i-16]
        const float d = GGML_CPU_FP16_TO_FP32(*(const ggml_fp16_t *) r.base);
        const uint8_t * qs = (const uint8_t *) (r.base + 2);
        for (int i = 0; i < BLOCK/2; ++i) {
            x[i]           = (float) ((qs[i] & 0x0F) - 8) * d;
            x[i + BLOCK/2] = (float) ((qs[i] >>   4) - 8) * d;
        }
    } else if constexpr (T == GGML_TYPE_Q5_0) {
        // block: f16 d, u32 qh, u8 qs[16]; code = nibble | (bit i of qh) << 4; x = d*(code - 16)
        const float d = GGML_CPU_FP16_TO_FP32(*(const ggml_fp16_t *) r.base);
        uint32_t qh;
        memcpy(&qh, r.base + 2, sizeof(qh));
        const uint8_t * qs = (const uint8_t *) (r.base + 6);
        for (int i = 0; i < BLOCK/2; ++i) {
            const int c0 = (qs[i] & 0x0F) | (((qh >> i)             & 1) << 4);
            const int c1 = (qs[i] >>   4) | (((qh >> (i + BLOCK/2)) & 1) << 4);
            x[i]           = (float) (c0 - 16) * d;
            x[i + BLOCK/2] = (float) (c1 - 16) * d;
        }
    }
}

// Set element i of the block to an exact zero (for quantized types: the code of 0; d is untouched).
template <ggml_type T, bool TRANS>
static inline void kv_block_zero(const kv_block_ref & r, int i) {
    const size_t stride = kv_stride<T, TRANS>(r);
    if constexpr (T == GGML_TYPE_F32) {
        *(float *) (r.base + i*stride) = 0.0f;
    } else if constexpr (T == GGML_TYPE_F16) {
        *(ggml_fp16_t *) (r.base + i*stride) = 0;
    } else if constexpr (T == GGML_TYPE_BF16) {
        ((ggml_bf16_t *) (r.base + i*stride))->bits = 0;
    } else if constexpr (T == GGML_TYPE_Q8_0) {
        ((int8_t *) (r.base + 2))[i] = 0;
    } else if constexpr (T == GGML_TYPE_Q4_0) {
        uint8_t * q = (uint8_t *) (r.base + 2) + (i % (BLOCK/2));
        *q = i < BLOCK/2 ? (uint8_t) ((*q & 0xF0) | 0x08) : (uint8_t) ((*q & 0x0F) | 0x80);
    } else if constexpr (T == GGML_TYPE_Q5_0) {
        // code 16: nibble 0, high bit 1
        uint8_t * q = (uint8_t *) (r.base + 6) + (i % (BLOCK/2));
        *q = i < BLOCK/2 ? (uint8_t) (*q & 0xF0) : (uint8_t) (*q & 0x0F);
        uint32_t qh;
        memcpy(&qh, r.base + 2, sizeof(qh));
        qh |= 1u << i;
        memcpy(r.base + 2, &qh, sizeof(qh));
    }
}

// The block of (cell, head h, block b) inside tensor a; block_bytes is the type size of quantized types.
template <ggml_type T, bool TRANS>
static inline kv_block_ref kv_block_at(const ggml_tensor * a, size_t block_bytes, int64_t cell, int h, int b, int head_dim) {
    const int64_t j0  = (int64_t) h*head_dim + (int64_t) b*BLOCK;       // first embedding index of the block
    const int     len = head_dim - b*BLOCK < BLOCK ? head_dim - b*BLOCK : BLOCK;
    kv_block_ref r;
    r.len = len;
    if constexpr (TRANS) {
        r.base   = (char *) a->data + j0*a->nb[1] + cell*a->nb[0];
        r.stride = a->nb[1];
    } else if constexpr (T == GGML_TYPE_Q8_0 || T == GGML_TYPE_Q4_0 || T == GGML_TYPE_Q5_0) {
        r.base   = (char *) a->data + cell*a->nb[1] + (j0/BLOCK)*block_bytes;
        r.stride = 0;
    } else {
        r.base   = (char *) a->data + cell*a->nb[1] + j0*a->nb[0];
        r.stride = a->nb[0];
    }
    return r;
}

// The smallest float t with (double) a < tau <=> a < t for every float a >= 0, so that the comparison
// of step 4 runs in float and gives exactly the float64 comparison of the reference.
static inline float kv_tau_float(double tau) {
    float t = (float) tau;
    if ((double) t < tau) {
        t = nextafterf(t, INFINITY);
    }
    return t;
}

// One thread's share of the op: heads ith, ith+nth, ...
template <ggml_type T, bool TRANS>
static void kv_sparsify_heads(const ggml_compute_params * params, const ggml_tensor * a, const int32_t * list,
                              double * st, const ggml_kv_sparsify_params & p) {
    const size_t  block_bytes = ggml_type_size(a->type);
    const int64_t n_cells  = TRANS ? a->ne[0] : a->ne[1];
    const int     n_blocks = (p.head_dim + BLOCK - 1) / BLOCK;
    auto S = [&](int g, int h) { return st + ((int64_t) g*p.n_head + h)*GGML_KV_SPARSIFY_NSTATE; };

    float x[BLOCK];

    for (int h = params->ith; h < p.n_head; h += params->nth) {
        // 1. clear this pass's counters
        for (int g = 0; g < p.n_group; ++g) {
            double * s = S(g, h);
            for (int k = GGML_KV_SPARSIFY_N_PROC; k < GGML_KV_SPARSIFY_NSTATE; ++k) {
                s[k] = 0.0;
            }
        }

        // 2. statistic: sum and count of |x| over the PROCESS cells of each group
        for (int e = 0; e < p.n_list; ++e) {
            const int32_t cell = list[2*e + 0];
            const int32_t code = list[2*e + 1];
            if (code < 0 || !(code & GGML_KV_SPARSIFY_PROCESS)) {
                continue;
            }
            GGML_ASSERT(cell >= 0 && cell < n_cells);
            double * s = S(code & GGML_KV_SPARSIFY_GROUP_MASK, h);
            for (int b = 0; b < n_blocks; ++b) {
                const kv_block_ref r = kv_block_at<T, TRANS>(a, block_bytes, cell, h, b, p.head_dim);
                kv_block_load<T, TRANS>(r, x);
                // four double accumulators: the same sum to ~1e-16, without a serial dependency chain
                double acc[4] = { 0.0, 0.0, 0.0, 0.0 };
                for (int i = 0; i < r.len; ++i) {
                    acc[i % 4] += (double) fabsf(x[i]);
                }
                s[GGML_KV_SPARSIFY_S_PASS] += (acc[0] + acc[1]) + (acc[2] + acc[3]);
                s[GGML_KV_SPARSIFY_N_PASS] += r.len;
            }
        }

        // 3. threshold per group: full mode restarts the running statistic, incremental mode extends it
        for (int g = 0; g < p.n_group; ++g) {
            ggml_kv_sparsify_update_tau(S(g, h), p.scale, p.incremental);
        }

        // 4. zero |x| < tau in PROCESS cells; count non-zeros and survivors per block afterwards
        for (int e = 0; e < p.n_list; ++e) {
            const int32_t cell = list[2*e + 0];
            const int32_t code = list[2*e + 1];
            if (code < 0) {
                continue;
            }
            GGML_ASSERT(cell >= 0 && cell < n_cells);
            double * s = S(code & GGML_KV_SPARSIFY_GROUP_MASK, h);
            const bool  process = (code & GGML_KV_SPARSIFY_PROCESS) != 0;
            const float tau     = process ? kv_tau_float(s[GGML_KV_SPARSIFY_TAU]) : 0.0f; // 0: nothing is below
            for (int b = 0; b < n_blocks; ++b) {
                const kv_block_ref r = kv_block_at<T, TRANS>(a, block_bytes, cell, h, b, p.head_dim);
                kv_block_load<T, TRANS>(r, x);
                int nnz = 0;
                if constexpr (!TRANS && (T == GGML_TYPE_F32 || T == GGML_TYPE_F16 || T == GGML_TYPE_BF16)) {
                    // contiguous float row: branch-free select on the stored bits (vectorizes)
                    using bits_t = typename std::conditional<T == GGML_TYPE_F32, uint32_t, uint16_t>::type;
                    bits_t * q = (bits_t *) r.base;
                    for (int i = 0; i < r.len; ++i) {
                        const bool below = fabsf(x[i]) < tau;
                        const bool nz    = x[i] != 0.0f;
                        q[i] = below && nz ? (bits_t) 0 : q[i];
                        nnz += !below && nz;
                    }
                } else {
                    for (int i = 0; i < r.len; ++i) {
                        const bool below = fabsf(x[i]) < tau;
                        if (below && x[i] != 0.0f) {
                            kv_block_zero<T, TRANS>(r, i); // already-zero entries are left as stored
                        }
                        nnz += !below && x[i] != 0.0f;
                    }
                }
                if (process) {
                    s[GGML_KV_SPARSIFY_N_PROC]   += r.len;
                    s[GGML_KV_SPARSIFY_NNZ_PROC] += nnz;
                }
                if (code & GGML_KV_SPARSIFY_OBSERVE) {
                    s[GGML_KV_SPARSIFY_N_OBS]   += r.len;
                    s[GGML_KV_SPARSIFY_NNZ_OBS] += nnz;
                }
                if ((code & GGML_KV_SPARSIFY_HIST) && r.len == BLOCK) {
                    s[GGML_KV_SPARSIFY_HIST0 + nnz] += 1.0;
                }
            }
        }
    }
}

} // namespace

// ggml_compute_forward_kv_sparsify

void ggml_compute_forward_kv_sparsify(const ggml_compute_params * params, ggml_tensor * dst) {
    const ggml_tensor * a     = dst->src[0];
    const int32_t *     list  = (const int32_t *) dst->src[1]->data;
    double *            st    = (double *) dst->src[2]->data;
    const ggml_kv_sparsify_params p = ggml_kv_sparsify_get_params(dst);

    // the transposed layout exists only for float types (a quantized V cache needs flash attention)
    switch (a->type) {
        case GGML_TYPE_F32:
            p.trans ? kv_sparsify_heads<GGML_TYPE_F32,  true>(params, a, list, st, p)
                    : kv_sparsify_heads<GGML_TYPE_F32,  false>(params, a, list, st, p); break;
        case GGML_TYPE_F16:
            p.trans ? kv_sparsify_heads<GGML_TYPE_F16,  true>(params, a, list, st, p)
                    : kv_sparsify_heads<GGML_TYPE_F16,  false>(params, a, list, st, p); break;
        case GGML_TYPE_BF16:
            p.trans ? kv_sparsify_heads<GGML_TYPE_BF16, true>(params, a, list, st, p)
                    : kv_sparsify_heads<GGML_TYPE_BF16, false>(params, a, list, st, p); break;
        case GGML_TYPE_Q8_0: kv_sparsify_heads<GGML_TYPE_Q8_0, false>(params, a, list, st, p); break;
        case GGML_TYPE_Q4_0: kv_sparsify_heads<GGML_TYPE_Q4_0, false>(params, a, list, st, p); break;
        case GGML_TYPE_Q5_0: kv_sparsify_heads<GGML_TYPE_Q5_0, false>(params, a, list, st, p); break;
        default: GGML_ABORT("kv_sparsify: unsupported type %s", ggml_type_name(a->type));
    }
}
