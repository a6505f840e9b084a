// SPDX-License-Identifier: MIT
// ElasticKV: CPU kernel of GGML_OP_KV_SPARSIFY. The definition it follows is the numpy reference
// (scripts/elastickv/reference.py in the ElasticKV repository); comments below name its steps.
//
// Work split: the cell list is cut into chunks of KV_CHUNK entries and every thread takes a contiguous share of
// the (head, chunk) tasks, in two phases separated by barriers:
//   1. the statistic: each task sums |x| of its PROCESS cells per group into its own slot of the work buffer;
//   2. per (group, head): the slots are added in chunk order (so S, and hence tau, is the same for every thread
//      count), the counters are cleared and tau is set (step 3 of the reference);
//   3. zeroing: each task zeroes |x| < tau in its PROCESS cells and counts non-zeros and block histograms into
//      the thread's own counters (integers: their sum does not depend on the order);
//   4. per (group, head): the threads' counters are added into the state.
// A cell's |x| are summed in 8 double lanes (lane j takes values j, j+8, ...; the lanes are then added pairwise),
// a fixed order that any compiler keeps without -ffast-math, so the sums are the same on every x86-64 CPU.
// Values are thresholded on their magnitude bits: for non-negative values the order of the bits is the order of the
// values, so |x| < tau is an integer compare against ggml_kv_sparsify_tau_bits (the CUDA kernel uses the same),
// which vectorizes and is exact (subnormals included). Values are converted with ggml's fp16/bf16 helpers.
#include "kv-sparsify.h"
#include "ggml-kv-sparsify.h"
#include "ggml-cpu-impl.h"
#include "ggml-cpu.h"
#include "simd-mappings.h"
#include "ggml-impl.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

namespace {

constexpr int BLOCK    = GGML_KV_SPARSIFY_BLOCK;
constexpr int KV_CHUNK = 256;   // list entries per statistic slot (fixed: the sum order must not depend on threads)
constexpr int LANES    = 8;     // double accumulators per cell
constexpr int MAX_HEAD_DIM = 1024;
constexpr int NCOUNT   = 4 + BLOCK + 1; // N_PROC, NNZ_PROC, N_OBS, NNZ_OBS, HIST0..HIST32
constexpr size_t KV_ALIGN = 64;         // work buffer parts start on cache lines

constexpr bool is_quant(ggml_type t) { return t == GGML_TYPE_Q8_0 || t == GGML_TYPE_Q4_0 || t == GGML_TYPE_Q5_0; }

// Sum of |x[0..n)| in LANES double lanes, added pairwise at the end.
inline double kv_abs_sum(const float * x, int n) {
    double acc[LANES] = {};
    int i = 0;
    for (; i + LANES <= n; i += LANES) {
        for (int j = 0; j < LANES; ++j) {
            acc[j] += (double) fabsf(x[i + j]);
        }
    }
    for (int j = 0; i < n; ++i, ++j) {
        acc[j] += (double) fabsf(x[i]);
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Values of one quantized 32-block, dequantized: x = d * code.
template <ggml_type T>
inline void kv_qblock_load(const char * blk, float * x) {
    const float d = GGML_CPU_FP16_TO_FP32(*(const ggml_fp16_t *) blk);
    if constexpr (T == GGML_TYPE_Q8_0) {
        // block: f16 d, int8 q[32]
        const int8_t * q = (const int8_t *) (blk + 2);
        for (int i = 0; i < BLOCK; ++i) { x[i] = (float) q[i] * d; }
    } else if constexpr (T == GGML_TYPE_Q4_0) {
        // block: f16 d, u8 qs[16]; element i < 16 is the low nibble of qs[i], i >= 16 the high nibble of qs[i-16]
        const uint8_t * qs = (const uint8_t *) (blk + 2);
        for (int i = 0; i < BLOCK/2; ++i) {
            x[i]           = (float) ((qs[i] & 0x0F) - 8) * d;
            x[i + BLOCK/2] = (float) ((qs[i] >>   4) - 8) * d;
        }
    } else {
        // Q5_0 block: f16 d, u32 qh, u8 qs[16]; code = nibble | (bit i of qh) << 4; x = d*(code - 16)
        uint32_t qh;
        memcpy(&qh, blk + 2, sizeof(qh));
        const uint8_t * qs = (const uint8_t *) (blk + 6);
        for (int i = 0; i < BLOCK/2; ++i) {
            const int c0 = (qs[i] & 0x0F) | (((qh >> i)             & 1) << 4);
            const int c1 = (qs[i] >>   4) | (((qh >> (i + BLOCK/2)) & 1) << 4);
            x[i]           = (float) (c0 - 16) * d;
            x[i + BLOCK/2] = (float) (c1 - 16) * d;
        }
    }
}

// Magnitude bits of a float value (sign cleared).
inline uint32_t kv_mag_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof(b));
    return b & 0x7FFFFFFFu;
}

// Zeroes |x| < tau (as f32 magnitude bits < tb) of one quantized 32-block (the code of 0; d untouched; stored zeros
// left as they are) and returns the non-zeros after.
template <ggml_type T>
inline int kv_qblock_zero(char * blk, uint32_t tb) {
    float x[BLOCK];
    kv_qblock_load<T>(blk, x);
    bool below[BLOCK];
    int nnz = 0;
    for (int i = 0; i < BLOCK; ++i) {
        const uint32_t m = kv_mag_bits(x[i]);
        below[i] = m < tb && m != 0;
        nnz += !(m < tb) && m != 0;
    }
    if constexpr (T == GGML_TYPE_Q8_0) {
        int8_t * q = (int8_t *) (blk + 2);
        for (int i = 0; i < BLOCK; ++i) { q[i] = below[i] ? (int8_t) 0 : q[i]; }
    } else if constexpr (T == GGML_TYPE_Q4_0) {
        uint8_t * qs = (uint8_t *) (blk + 2);
        for (int i = 0; i < BLOCK/2; ++i) {
            const uint8_t lo = below[i]           ? 0x08 : (qs[i] & 0x0F);
            const uint8_t hi = below[i + BLOCK/2] ? 0x80 : (qs[i] & 0xF0);
            qs[i] = (uint8_t) (lo | hi);
        }
    } else {
        // code 16: nibble 0, high bit 1
        uint32_t qh;
        memcpy(&qh, blk + 2, sizeof(qh));
        uint8_t * qs = (uint8_t *) (blk + 6);
        for (int i = 0; i < BLOCK/2; ++i) {
            const uint8_t lo = below[i]           ? 0x00 : (qs[i] & 0x0F);
            const uint8_t hi = below[i + BLOCK/2] ? 0x00 : (qs[i] & 0xF0);
            qs[i] = (uint8_t) (lo | hi);
        }
        for (int i = 0; i < BLOCK; ++i) {
            qh |= (uint32_t) below[i] << i;
        }
        memcpy(blk + 2, &qh, sizeof(qh));
    }
    return nnz;
}

// Stored bits of a float type, and their magnitude mask.
template <ggml_type T>
using kv_bits_t = typename std::conditional<T == GGML_TYPE_F32, uint32_t, uint16_t>::type;
template <ggml_type T>
constexpr kv_bits_t<T> KV_MAG = T == GGML_TYPE_F32 ? (kv_bits_t<T>) 0x7FFFFFFFu : (kv_bits_t<T>) 0x7FFF;

// Zeroes one stored float value if its magnitude bits are below tb (a store only then: the transposed layout
// touches one value per cache line); returns 1 if it is non-zero after.
template <ggml_type T>
inline int kv_float_zero1(kv_bits_t<T> * q, uint32_t tb) {
    const uint32_t m = *q & KV_MAG<T>;
    const bool below = m < tb;
    if (below && m != 0) {
        *q = 0;
    }
    return !below && m != 0;
}

// Zeroes |x| < tau (as magnitude bits < tb) of n contiguous float values and returns the non-zeros after: the
// test of kv_float_zero1 with an unconditional store, which vectorizes over a contiguous row.
template <ggml_type T>
inline int kv_float_zero(char * base, int n, uint32_t tb) {
    kv_bits_t<T> * q = (kv_bits_t<T> *) base;
    int nnz = 0;
    for (int i = 0; i < n; ++i) {
        const uint32_t m = q[i] & KV_MAG<T>;
        const bool below = m < tb;
        q[i] = below && m != 0 ? (kv_bits_t<T>) 0 : q[i];
        nnz += !below && m != 0;
    }
    return nnz;
}

// Byte offset of head h inside a row of the row layout.
template <ggml_type T>
inline size_t kv_head_offset(int h, int hd) {
    return is_quant(T) ? (size_t) h*(hd/BLOCK)*ggml_type_size(T) : (size_t) h*hd*ggml_type_size(T);
}

inline float kv_float_at(ggml_type t, const char * p) {
    switch (t) {
        case GGML_TYPE_F32:  return *(const float *) p;
        case GGML_TYPE_F16:  return GGML_CPU_FP16_TO_FP32(*(const ggml_fp16_t *) p);
        default:             return GGML_BF16_TO_FP32(*(const ggml_bf16_t *) p);
    }
}

// Shared by the phases of one op.
struct kv_job {
    const ggml_tensor * a;
    const int32_t *     list;
    double *            st;
    ggml_kv_sparsify_params p;
    int64_t n_cells;
    int     n_chunk;
    double *   part;   // [n_chunk][n_group][n_head][2]: S, N of one task
    uint32_t * tbits;  // [n_group][n_head]: magnitude bits of tau (ggml_kv_sparsify_tau_bits)
    int64_t *  cnt;    // [nth][n_group][n_head][NCOUNT]

    double * S(int g, int h) const { return st + ((int64_t) g*p.n_head + h)*GGML_KV_SPARSIFY_NSTATE; }
    double * slot(int c, int g, int h) const { return part + (((int64_t) c*p.n_group + g)*p.n_head + h)*2; }
    int64_t * count(int ith, int g, int h) const { return cnt + (((int64_t) ith*p.n_group + g)*p.n_head + h)*NCOUNT; }
};

// This thread's share of the (head, chunk) tasks: a contiguous range, heads outermost.
template <typename F>
inline void kv_for_tasks(const ggml_compute_params * params, const kv_job & job, F && f) {
    const int64_t n_task = (int64_t) job.p.n_head*job.n_chunk;
    const int64_t t0 = n_task*params->ith/params->nth;
    const int64_t t1 = n_task*(params->ith + 1)/params->nth;
    for (int64_t t = t0; t < t1; ++t) {
        f((int) (t / job.n_chunk), (int) (t % job.n_chunk));
    }
}

// Phase 1: sum and count of |x| over the PROCESS cells of chunk c, head h, per group.
template <ggml_type T, bool TRANS>
void kv_stat_task(const kv_job & job, int h, int c) {
    const ggml_tensor * a = job.a;
    const int hd = job.p.head_dim;
    const int e0 = c*KV_CHUNK, e1 = std::min(job.p.n_list, e0 + KV_CHUNK);
    for (int g = 0; g < job.p.n_group; ++g) {
        job.slot(c, g, h)[0] = 0.0;
        job.slot(c, g, h)[1] = 0.0;
    }
    if constexpr (TRANS) {
        // one row per embedding index: walk the rows of the head, each over the chunk's cells
        double acc[KV_CHUNK] = {};
        for (int j = 0; j < hd; ++j) {
            const char * row = (const char *) a->data + ((int64_t) h*hd + j)*a->nb[1];
            for (int e = e0; e < e1; ++e) {
                const int32_t cell = job.list[2*e], code = job.list[2*e + 1];
                if (code >= 0 && (code & GGML_KV_SPARSIFY_PROCESS)) {
                    acc[e - e0] += (double) fabsf(kv_float_at(T, row + cell*a->nb[0]));
                }
            }
        }
        for (int e = e0; e < e1; ++e) {
            const int32_t code = job.list[2*e + 1];
            if (code >= 0 && (code & GGML_KV_SPARSIFY_PROCESS)) {
                double * s = job.slot(c, code & GGML_KV_SPARSIFY_GROUP_MASK, h);
                s[0] += acc[e - e0];
                s[1] += hd;
            }
        }
    } else {
        float x[MAX_HEAD_DIM];
        const size_t head_off = kv_head_offset<T>(h, hd);
        for (int e = e0; e < e1; ++e) {
            const int32_t cell = job.list[2*e], code = job.list[2*e + 1];
            if (code < 0 || !(code & GGML_KV_SPARSIFY_PROCESS)) {
                continue;
            }
            GGML_ASSERT(cell >= 0 && cell < job.n_cells);
            const char * src = (const char *) a->data + cell*a->nb[1] + head_off;
            if constexpr (T == GGML_TYPE_F32) {
                memcpy(x, src, hd*sizeof(float));
            } else if constexpr (T == GGML_TYPE_F16) {
                ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) src, x, hd);
            } else if constexpr (T == GGML_TYPE_BF16) {
                ggml_cpu_bf16_to_fp32((const ggml_bf16_t *) src, x, hd);
            } else {
                for (int b = 0; b < hd/BLOCK; ++b) {
                    kv_qblock_load<T>(src + b*ggml_type_size(T), x + b*BLOCK);
                }
            }
            double * s = job.slot(c, code & GGML_KV_SPARSIFY_GROUP_MASK, h);
            s[0] += kv_abs_sum(x, hd);
            s[1] += hd;
        }
    }
}

// Phase 3: zero |x| < tau in the PROCESS cells of chunk c, head h; count into this thread's counters.
template <ggml_type T, bool TRANS>
void kv_zero_task(const kv_job & job, int ith, int h, int c) {
    const ggml_tensor * a = job.a;
    const int hd = job.p.head_dim;
    const int n_blocks = (hd + BLOCK - 1)/BLOCK;
    const int e0 = c*KV_CHUNK, e1 = std::min(job.p.n_list, e0 + KV_CHUNK);
    auto account = [&](int64_t * k, int32_t code, int len, int nnz, bool full_block) {
        if (code & GGML_KV_SPARSIFY_PROCESS) { k[0] += len; k[1] += nnz; }
        if (code & GGML_KV_SPARSIFY_OBSERVE) { k[2] += len; k[3] += nnz; }
        if ((code & GGML_KV_SPARSIFY_HIST) && full_block) { k[4 + nnz] += 1; }
    };
    if constexpr (TRANS) {
        // per (entry, block) non-zeros, filled row by row
        static_assert(MAX_HEAD_DIM/BLOCK <= 32, "block counters");
        uint8_t nnz[KV_CHUNK][MAX_HEAD_DIM/BLOCK];
        memset(nnz, 0, sizeof(nnz));
        for (int j = 0; j < hd; ++j) {
            char * row = (char *) a->data + ((int64_t) h*hd + j)*a->nb[1];
            for (int e = e0; e < e1; ++e) {
                const int32_t cell = job.list[2*e], code = job.list[2*e + 1];
                if (code < 0) {
                    continue;
                }
                const uint32_t tb = (code & GGML_KV_SPARSIFY_PROCESS) ? job.tbits[(code & GGML_KV_SPARSIFY_GROUP_MASK)*job.p.n_head + h] : 0;
                nnz[e - e0][j/BLOCK] += kv_float_zero1<T>((kv_bits_t<T> *) (row + cell*a->nb[0]), tb);
            }
        }
        for (int e = e0; e < e1; ++e) {
            const int32_t code = job.list[2*e + 1];
            if (code < 0) {
                continue;
            }
            int64_t * k = job.count(ith, code & GGML_KV_SPARSIFY_GROUP_MASK, h);
            for (int b = 0; b < n_blocks; ++b) {
                const int len = std::min(BLOCK, hd - b*BLOCK);
                account(k, code, len, nnz[e - e0][b], len == BLOCK);
            }
        }
    } else {
        const size_t bsz = is_quant(T) ? ggml_type_size(T) : BLOCK*ggml_type_size(T); // bytes of a 32-block
        const size_t head_off = kv_head_offset<T>(h, hd);
        for (int e = e0; e < e1; ++e) {
            const int32_t cell = job.list[2*e], code = job.list[2*e + 1];
            if (code < 0) {
                continue;
            }
            GGML_ASSERT(cell >= 0 && cell < job.n_cells);
            const int g = code & GGML_KV_SPARSIFY_GROUP_MASK;
            const bool process = (code & GGML_KV_SPARSIFY_PROCESS) != 0;
            char * base = (char *) a->data + cell*a->nb[1] + head_off;
            int64_t * k = job.count(ith, g, h);
            const uint32_t tb = process ? job.tbits[g*job.p.n_head + h] : 0; // 0: nothing below
            if constexpr (is_quant(T)) {
                for (int b = 0; b < n_blocks; ++b) {
                    account(k, code, BLOCK, kv_qblock_zero<T>(base + b*bsz, tb), true);
                }
            } else {
                for (int b = 0; b < n_blocks; ++b) {
                    const int len = std::min(BLOCK, hd - b*BLOCK);
                    account(k, code, len, kv_float_zero<T>(base + b*bsz, len, tb), len == BLOCK);
                }
            }
        }
    }
}

template <ggml_type T, bool TRANS>
void kv_sparsify_run(const ggml_compute_params * params, const kv_job & job) {
    const int ith = params->ith, nth = params->nth;
    const int n_gh = job.p.n_group*job.p.n_head;

    kv_for_tasks(params, job, [&](int h, int c) { kv_stat_task<T, TRANS>(job, h, c); });
    for (int i = 0; i < n_gh*NCOUNT; ++i) {
        job.cnt[(int64_t) ith*n_gh*NCOUNT + i] = 0;
    }
    ggml_barrier(params->threadpool);

    // 2. per (group, head): this pass's sum in chunk order, cleared counters, tau
    for (int gh = ith; gh < n_gh; gh += nth) {
        const int g = gh / job.p.n_head, h = gh % job.p.n_head;
        double * s = job.S(g, h);
        for (int k = GGML_KV_SPARSIFY_N_PROC; k < GGML_KV_SPARSIFY_NSTATE; ++k) {
            s[k] = 0.0;
        }
        for (int c = 0; c < job.n_chunk; ++c) {
            s[GGML_KV_SPARSIFY_S_PASS] += job.slot(c, g, h)[0];
            s[GGML_KV_SPARSIFY_N_PASS] += job.slot(c, g, h)[1];
        }
        ggml_kv_sparsify_update_tau(s, job.p.scale, job.p.incremental);
        job.tbits[gh] = ggml_kv_sparsify_tau_bits(s[GGML_KV_SPARSIFY_TAU], T);
    }
    ggml_barrier(params->threadpool);

    kv_for_tasks(params, job, [&](int h, int c) { kv_zero_task<T, TRANS>(job, ith, h, c); });
    ggml_barrier(params->threadpool);

    // 4. per (group, head): the threads' counters into the state
    for (int gh = ith; gh < n_gh; gh += nth) {
        double * s = job.S(gh / job.p.n_head, gh % job.p.n_head);
        for (int t = 0; t < nth; ++t) {
            const int64_t * k = job.cnt + ((int64_t) t*n_gh + gh)*NCOUNT;
            s[GGML_KV_SPARSIFY_N_PROC]   += (double) k[0];
            s[GGML_KV_SPARSIFY_NNZ_PROC] += (double) k[1];
            s[GGML_KV_SPARSIFY_N_OBS]    += (double) k[2];
            s[GGML_KV_SPARSIFY_NNZ_OBS]  += (double) k[3];
            for (int b = 0; b <= BLOCK; ++b) {
                s[GGML_KV_SPARSIFY_HIST0 + b] += (double) k[4 + b];
            }
        }
    }
}

size_t kv_work_size(int n_list, int n_group, int n_head, int n_threads) {
    const int64_t n_chunk = ((int64_t) n_list + KV_CHUNK - 1)/KV_CHUNK;
    return sizeof(double)*n_chunk*n_group*n_head*2 + sizeof(uint32_t)*(size_t) n_group*n_head
         + sizeof(int64_t)*(size_t) n_threads*n_group*n_head*NCOUNT + 3*KV_ALIGN;
}

} // namespace

size_t ggml_kv_sparsify_cpu_work_size(const ggml_tensor * dst, int n_threads) {
    const ggml_tensor * state = dst->src[2];
    return kv_work_size((int) dst->src[1]->ne[1], (int) state->ne[2], (int) state->ne[1], n_threads);
}

// ggml_compute_forward_kv_sparsify

void ggml_compute_forward_kv_sparsify(const ggml_compute_params * params, ggml_tensor * dst) {
    kv_job job;
    job.a       = dst->src[0];
    job.list    = (const int32_t *) dst->src[1]->data;
    job.st      = (double *) dst->src[2]->data;
    job.p       = ggml_kv_sparsify_get_params(dst);
    job.n_cells = job.p.trans ? job.a->ne[0] : job.a->ne[1];
    job.n_chunk = (job.p.n_list + KV_CHUNK - 1)/KV_CHUNK;
    GGML_ASSERT(job.p.head_dim <= MAX_HEAD_DIM);
    GGML_ASSERT(params->wsize >= kv_work_size(job.p.n_list, job.p.n_group, job.p.n_head, params->nth));

    // the work buffer, cache-line aligned parts
    auto align = [](char * p) { return (char *) GGML_PAD((uintptr_t) p, KV_ALIGN); };
    char * w = align((char *) params->wdata);
    job.part  = (double *) w;
    w = align(w + sizeof(double)*(size_t) job.n_chunk*job.p.n_group*job.p.n_head*2);
    job.tbits = (uint32_t *) w;
    w = align(w + sizeof(uint32_t)*(size_t) job.p.n_group*job.p.n_head);
    job.cnt   = (int64_t *) w;

    // the transposed layout exists only for float types (a quantized V cache needs flash attention)
    switch (job.a->type) {
        case GGML_TYPE_F32:
            job.p.trans ? kv_sparsify_run<GGML_TYPE_F32,  true>(params, job) : kv_sparsify_run<GGML_TYPE_F32,  false>(params, job); break;
        case GGML_TYPE_F16:
            job.p.trans ? kv_sparsify_run<GGML_TYPE_F16,  true>(params, job) : kv_sparsify_run<GGML_TYPE_F16,  false>(params, job); break;
        case GGML_TYPE_BF16:
            job.p.trans ? kv_sparsify_run<GGML_TYPE_BF16, true>(params, job) : kv_sparsify_run<GGML_TYPE_BF16, false>(params, job); break;
        case GGML_TYPE_Q8_0: kv_sparsify_run<GGML_TYPE_Q8_0, false>(params, job); break;
        case GGML_TYPE_Q4_0: kv_sparsify_run<GGML_TYPE_Q4_0, false>(params, job); break;
        case GGML_TYPE_Q5_0: kv_sparsify_run<GGML_TYPE_Q5_0, false>(params, job); break;
        default: GGML_ABORT("kv_sparsify: unsupported type %s", ggml_type_name(job.a->type));
    }
}
