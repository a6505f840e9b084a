// SPDX-License-Identifier: MIT
// ElasticKV: what one CUDA thread of GGML_OP_KV_SPARSIFY computes, as __host__ __device__ functions.
// kv-sparsify.cu's kernels are thin loops around these; tests/cuda/kv_sparsify_host.cu (ElasticKV repository) runs
// them over the whole grid on the CPU, built by nvcc, and compares the result with the CPU kernel and the numpy
// reference. What such a host run cannot cover: the warp shuffles (kvs_lanes_combine is their order, written
// out), shared memory and barriers, atomics, and timing.
//
// The pass (the CPU kernel's order, so that S, N, tau and the zero pattern are bit-identical to the CPU's):
//   stat  : per (chunk of KVS_CHUNK list entries, head) one block. Each PROCESS cell's sum of |x|: the row layout
//           in KVS_LANES double lanes (lane j takes values j, j+8, ...; one thread per lane, combined pairwise),
//           the transposed layout in one thread, value by value. The block then adds its cells in list order per
//           group into part[chunk][group][head] (no atomics: every slot has one writer).
//   tau   : per (group, head): counters cleared, S_PASS and N_PASS = the chunk slots in chunk order, S, N, tau
//           (ggml_kv_sparsify_update_tau), and the magnitude bits of tau (ggml_kv_sparsify_tau_bits).
//   apply : per (head, entry, 32-value block) one thread: |x| < tau as an integer compare of magnitude bits, zero
//           codes written, non-zeros counted (integers: any order of addition gives the same double).
// No float operation decides a value: magnitudes are read from the stored bits and widened to double exactly, so
// -use_fast_math (flush-to-zero) cannot change the statistic or the zero pattern of subnormals.
#pragma once

#include "ggml.h"
#include "ggml-kv-sparsify.h"

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define KVS_HD __host__ __device__ __forceinline__
#else
#define KVS_HD inline
#endif

#define KVS_BLOCK  GGML_KV_SPARSIFY_BLOCK
#define KVS_NSTATE GGML_KV_SPARSIFY_NSTATE
#define KVS_CHUNK  256 // list entries per statistic slot: the CPU kernel's KV_CHUNK (the sum order depends on it)
#define KVS_LANES  8   // double lanes of a cell's sum in the row layout: the CPU kernel's LANES

struct kvs_args {
    char *          data;     // tensor a
    int64_t         nb0;
    int64_t         nb1;
    int64_t         n_cells;
    const int32_t * list;     // (cell, code) pairs
    double *        state;    // [NSTATE, n_head, n_group]
    double *        part;     // [n_chunk, n_group, n_head, 2]: S, N of one chunk (scratch)
    uint32_t *      tbits;    // [n_group, n_head]: magnitude bits of tau (scratch)
    ggml_type       type;
    int             n_list;
    int             n_chunk;
    int             n_head;
    int             head_dim;
    int             n_blocks; // 32-value blocks per head
    int             n_group;
    float           scale;
    bool            trans;
    bool            incremental;
};

// ---- stored values --------------------------------------------------------------------------------------------

KVS_HD float kvs_bits_to_f32(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof(f));
    return f;
}

KVS_HD uint32_t kvs_f32_to_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof(b));
    return b;
}

// f16 bits -> f32, exact; the result is never subnormal (the smallest f16 is 2^-24), so flush-to-zero cannot touch it.
KVS_HD float kvs_f16_to_f32(uint32_t h) {
    const uint32_t s = (h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1F;
    const uint32_t f = h & 0x3FF;
    if (e == 0) {
        const float v = (float) f * 5.9604644775390625e-8f; // f * 2^-24: exact and normal (or zero)
        return kvs_bits_to_f32(kvs_f32_to_bits(v) | s);
    }
    if (e == 31) {
        return kvs_bits_to_f32(s | 0x7F800000u | (f << 13));
    }
    return kvs_bits_to_f32(s | ((e + 112) << 23) | (f << 13));
}

// |x| as a double from the f32 bits of x, exact for every value (subnormals are widened by integer arithmetic).
KVS_HD double kvs_f32_bits_abs(uint32_t b) {
    const uint32_t m = b & 0x7FFFFFFFu;
    if (m < 0x00800000u) {
        return (double) m * 1.4012984643248171e-45; // m * 2^-149
    }
    return (double) kvs_bits_to_f32(m);
}

KVS_HD uint32_t kvs_load_u16(const char * p) { return *(const uint16_t *) p; }
KVS_HD uint32_t kvs_load_u32(const char * p) { return *(const uint32_t *) p; }

// Quantized blocks, by bytes: Q8_0 = f16 d, i8 q[32]; Q4_0 = f16 d, u8 qs[16]; Q5_0 = f16 d, u8 qh[4], u8 qs[16].
// Element i < 16 of Q4_0/Q5_0 is the low nibble of qs[i], element i >= 16 the high nibble of qs[i - 16]; Q5_0 adds
// bit i of the little-endian qh as the fifth bit. x = d * (code - offset), in f32 as on the CPU.
KVS_HD int kvs_qblock_bytes(ggml_type t) {
    return t == GGML_TYPE_Q8_0 ? 34 : t == GGML_TYPE_Q4_0 ? 18 : 22;
}

KVS_HD uint32_t kvs_q5_qh(const char * blk) {
    const uint8_t * q = (const uint8_t *) blk + 2; // not 4-aligned: byte loads
    return (uint32_t) q[0] | ((uint32_t) q[1] << 8) | ((uint32_t) q[2] << 16) | ((uint32_t) q[3] << 24);
}

template <ggml_type T>
KVS_HD int kvs_qcode(const char * blk, int i, uint32_t qh) {
    if constexpr (T == GGML_TYPE_Q8_0) {
        return (int) *(const int8_t *) (blk + 2 + i);
    } else {
        const uint8_t byte = *(const uint8_t *) (blk + (T == GGML_TYPE_Q4_0 ? 2 : 6) + (i % (KVS_BLOCK/2)));
        const int nib = i < KVS_BLOCK/2 ? (byte & 0x0F) : (byte >> 4);
        if constexpr (T == GGML_TYPE_Q4_0) {
            return nib - 8;
        } else {
            return (nib | (int) (((qh >> i) & 1) << 4)) - 16;
        }
    }
}

// f32 bits of element i of a quantized block.
template <ggml_type T>
KVS_HD uint32_t kvs_qvalue_bits(const char * blk, int i, uint32_t qh) {
    const float d = kvs_f16_to_f32(kvs_load_u16(blk));
    return kvs_f32_to_bits((float) kvs_qcode<T>(blk, i, qh) * d);
}

// Sets element i of a quantized block to its code of 0 (d untouched).
template <ggml_type T>
KVS_HD void kvs_qzero(char * blk, int i) {
    if constexpr (T == GGML_TYPE_Q8_0) {
        *(int8_t *) (blk + 2 + i) = 0;
    } else if constexpr (T == GGML_TYPE_Q4_0) {
        uint8_t * q = (uint8_t *) blk + 2 + (i % (KVS_BLOCK/2));
        *q = i < KVS_BLOCK/2 ? (uint8_t) ((*q & 0xF0) | 0x08) : (uint8_t) ((*q & 0x0F) | 0x80);
    } else {
        uint8_t * q = (uint8_t *) blk + 6 + (i % (KVS_BLOCK/2));
        *q = i < KVS_BLOCK/2 ? (uint8_t) (*q & 0xF0) : (uint8_t) (*q & 0x0F);
        ((uint8_t *) blk)[2 + i/8] |= (uint8_t) (1u << (i % 8)); // code 16: bit i of qh set
    }
}

// Magnitude bits of a float type's stored value (f32: 31 bits; f16, bf16: 15 bits), as ggml_kv_sparsify_tau_bits
// compares them, and |x| as an exact double.
template <ggml_type T>
KVS_HD uint32_t kvs_float_mag(const char * p) {
    if constexpr (T == GGML_TYPE_F32) {
        return kvs_load_u32(p) & 0x7FFFFFFFu;
    } else {
        return kvs_load_u16(p) & 0x7FFFu;
    }
}

template <ggml_type T>
KVS_HD double kvs_float_abs(const char * p) {
    if constexpr (T == GGML_TYPE_F32) {
        return kvs_f32_bits_abs(kvs_load_u32(p));
    } else if constexpr (T == GGML_TYPE_BF16) {
        return kvs_f32_bits_abs(kvs_load_u16(p) << 16);
    } else {
        return kvs_f32_bits_abs(kvs_f32_to_bits(kvs_f16_to_f32(kvs_load_u16(p))));
    }
}

KVS_HD constexpr bool kvs_is_quant(ggml_type t) {
    return t == GGML_TYPE_Q8_0 || t == GGML_TYPE_Q4_0 || t == GGML_TYPE_Q5_0;
}

KVS_HD constexpr int kvs_float_size(ggml_type t) {
    return t == GGML_TYPE_F32 ? 4 : 2;
}

// ---- the list -------------------------------------------------------------------------------------------------

// Entry e's cell and code; false for a skipped entry (negative code) or a cell outside the tensor (the CPU asserts).
KVS_HD bool kvs_entry(const kvs_args & a, int e, int32_t & cell, int32_t & code) {
    cell = a.list[2*e + 0];
    code = a.list[2*e + 1];
    return code >= 0 && cell >= 0 && cell < a.n_cells;
}

KVS_HD int kvs_key(const kvs_args & a, int32_t code, int h) {
    return (code & GGML_KV_SPARSIFY_GROUP_MASK)*a.n_head + h;
}

// ---- stat -----------------------------------------------------------------------------------------------------

// Row layout: the start of head h in cell's row.
template <ggml_type T>
KVS_HD char * kvs_row_head(const kvs_args & a, int64_t cell, int h) {
    const int64_t off = kvs_is_quant(T) ? (int64_t) h*a.n_blocks*kvs_qblock_bytes(T) : (int64_t) h*a.head_dim*kvs_float_size(T);
    return a.data + cell*a.nb1 + off;
}

// Row layout: lane `lane`'s share of entry e's sum of |x| over head h: values lane, lane + 8, ... in order.
// 0 for an entry that is not processed.
template <ggml_type T>
KVS_HD double kvs_row_lane_sum(const kvs_args & a, int h, int e, int lane) {
    int32_t cell, code;
    if (!kvs_entry(a, e, cell, code) || !(code & GGML_KV_SPARSIFY_PROCESS)) {
        return 0.0;
    }
    const char * head = kvs_row_head<T>(a, cell, h);
    double acc = 0.0;
    for (int i = lane; i < a.head_dim; i += KVS_LANES) {
        if constexpr (kvs_is_quant(T)) {
            const char * blk = head + (int64_t) (i/KVS_BLOCK)*kvs_qblock_bytes(T);
            const uint32_t qh = T == GGML_TYPE_Q5_0 ? kvs_q5_qh(blk) : 0;
            acc += kvs_f32_bits_abs(kvs_qvalue_bits<T>(blk, i % KVS_BLOCK, qh));
        } else {
            acc += kvs_float_abs<T>(head + (int64_t) i*kvs_float_size(T));
        }
    }
    return acc;
}

// The order in which the warp shuffles (xor 1, 2, 4) combine the 8 lanes: the CPU's pairwise sum.
KVS_HD double kvs_lanes_combine(const double * v) {
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// Transposed layout: entry e's sum of |x| over head h, value by value (the CPU's order); 0 if not processed.
template <ggml_type T>
KVS_HD double kvs_trans_cell_sum(const kvs_args & a, int h, int e) {
    int32_t cell, code;
    if (!kvs_entry(a, e, cell, code) || !(code & GGML_KV_SPARSIFY_PROCESS)) {
        return 0.0;
    }
    double acc = 0.0;
    for (int j = 0; j < a.head_dim; ++j) {
        acc += kvs_float_abs<T>(a.data + ((int64_t) h*a.head_dim + j)*a.nb1 + (int64_t) cell*a.nb0);
    }
    return acc;
}

// Chunk c, group g, head h: the cells' sums cs[0 .. entries of the chunk) added in list order into the chunk's slot.
KVS_HD void kvs_chunk_slot(const kvs_args & a, const double * cs, int c, int g, int h) {
    const int e0 = c*KVS_CHUNK;
    const int e1 = e0 + KVS_CHUNK < a.n_list ? e0 + KVS_CHUNK : a.n_list;
    double s = 0.0;
    double n = 0.0;
    for (int e = e0; e < e1; ++e) {
        int32_t cell, code;
        if (kvs_entry(a, e, cell, code) && (code & GGML_KV_SPARSIFY_PROCESS) && (code & GGML_KV_SPARSIFY_GROUP_MASK) == g) {
            s += cs[e - e0];
            n += a.head_dim;
        }
    }
    double * slot = a.part + (((int64_t) c*a.n_group + g)*a.n_head + h)*2;
    slot[0] = s;
    slot[1] = n;
}

// ---- tau ------------------------------------------------------------------------------------------------------

KVS_HD void kvs_tau_key(const kvs_args & a, int key) {
    double * s = a.state + (int64_t) key*KVS_NSTATE;
    for (int k = GGML_KV_SPARSIFY_N_PROC; k < KVS_NSTATE; ++k) {
        s[k] = 0.0;
    }
    const int64_t n_keys = (int64_t) a.n_group*a.n_head;
    for (int c = 0; c < a.n_chunk; ++c) {
        s[GGML_KV_SPARSIFY_S_PASS] += a.part[(c*n_keys + key)*2 + 0];
        s[GGML_KV_SPARSIFY_N_PASS] += a.part[(c*n_keys + key)*2 + 1];
    }
    ggml_kv_sparsify_update_tau(s, a.scale, a.incremental);
    a.tbits[key] = ggml_kv_sparsify_tau_bits(s[GGML_KV_SPARSIFY_TAU], a.type);
}

// ---- apply ----------------------------------------------------------------------------------------------------

// Thread t -> (head, list entry, block). Head-major; inside a head, entries vary fastest for the transposed layout
// (neighbouring threads read neighbouring cells) and blocks fastest otherwise.
KVS_HD bool kvs_apply_item(const kvs_args & a, int64_t t, int & h, int & e, int & b) {
    const int64_t per_head = (int64_t) a.n_list*a.n_blocks;
    if (t >= per_head*a.n_head) {
        return false;
    }
    h = (int) (t / per_head);
    const int64_t r = t % per_head;
    if (a.trans) {
        b = (int) (r / a.n_list);
        e = (int) (r % a.n_list);
    } else {
        e = (int) (r / a.n_blocks);
        b = (int) (r % a.n_blocks);
    }
    return true;
}

// What one apply thread adds to the state: len values and nnz non-zeros into N_PROC/NNZ_PROC of key_proc and
// N_OBS/NNZ_OBS of key_obs (-1: none), one block into HIST0 + nnz of key_hist (-1: none).
struct kvs_apply_out {
    int key_proc;
    int key_obs;
    int key_hist;
    int len;
    int nnz;
};

// Zeroes |x| < tau in block b of head h of entry e (PROCESS cells only) and counts its non-zeros after.
template <ggml_type T>
KVS_HD kvs_apply_out kvs_apply_block(const kvs_args & a, int h, int e, int b) {
    kvs_apply_out o = {-1, -1, -1, 0, 0};
    int32_t cell, code;
    if (!kvs_entry(a, e, cell, code)) {
        return o;
    }
    const int  key     = kvs_key(a, code, h);
    const bool process = (code & GGML_KV_SPARSIFY_PROCESS) != 0;
    const uint32_t tb  = process ? a.tbits[key] : 0; // 0: nothing is below
    const int len = a.head_dim - b*KVS_BLOCK < KVS_BLOCK ? a.head_dim - b*KVS_BLOCK : KVS_BLOCK;
    int nnz = 0;
    if constexpr (kvs_is_quant(T)) {
        char * blk = kvs_row_head<T>(a, cell, h) + (int64_t) b*kvs_qblock_bytes(T);
        const uint32_t qh = T == GGML_TYPE_Q5_0 ? kvs_q5_qh(blk) : 0; // read before any code is rewritten
        for (int i = 0; i < KVS_BLOCK; ++i) {
            const uint32_t m = kvs_qvalue_bits<T>(blk, i, qh) & 0x7FFFFFFFu;
            if (m < tb && m != 0) {
                kvs_qzero<T>(blk, i);
            }
            nnz += !(m < tb) && m != 0;
        }
    } else {
        char *  base;
        int64_t stride;
        if (a.trans) {
            base   = a.data + ((int64_t) h*a.head_dim + (int64_t) b*KVS_BLOCK)*a.nb1 + (int64_t) cell*a.nb0;
            stride = a.nb1;
        } else {
            base   = kvs_row_head<T>(a, cell, h) + (int64_t) b*KVS_BLOCK*kvs_float_size(T);
            stride = kvs_float_size(T);
        }
        for (int i = 0; i < len; ++i) {
            char * p = base + i*stride;
            const uint32_t m = kvs_float_mag<T>(p);
            if (m < tb && m != 0) {
                if constexpr (T == GGML_TYPE_F32) {
                    *(uint32_t *) p = 0;
                } else {
                    *(uint16_t *) p = 0;
                }
            }
            nnz += !(m < tb) && m != 0;
        }
    }
    o.len      = len;
    o.nnz      = nnz;
    o.key_proc = process ? key : -1;
    o.key_obs  = (code & GGML_KV_SPARSIFY_OBSERVE) ? key : -1;
    o.key_hist = (code & GGML_KV_SPARSIFY_HIST) && len == KVS_BLOCK ? key : -1;
    return o;
}
