// SPDX-License-Identifier: MIT
// ElasticKV: the per-value and per-block arithmetic of the CPU kernel of GGML_OP_KV_SPARSIFY (kv-sparsify.cpp, its
// only includer, owns the work split and the phases): loads and conversions, the statistic's sums of |x| in their
// fixed lane order, and the zeroing of float values and quantized blocks with their survivor counts. Each function
// has a scalar form, the definition, and where the build's instruction set allows (AVX, AVX2 + F16C, AVX-512F/BW) the
// same arithmetic in SIMD registers: the same values, sums and bits on every x86-64 CPU (the tests compare the
// kernel bit for bit with the CUDA kernel's host-run thread functions and with the numpy reference).
#pragma once

#include "ggml-kv-sparsify.h"
#include "ggml-cpu-impl.h"
#include "ggml-cpu.h"
#include "simd-mappings.h"
#include "ggml-impl.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif
#if defined(__GNUC__) && !defined(__clang__)
// gcc 12 reports its own AVX-512 intrinsic headers' undefined inputs as maybe-uninitialized (a false positive)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <cmath>
#include <cstring>
#include <type_traits>

namespace {

constexpr int BLOCK    = GGML_KV_SPARSIFY_BLOCK;
constexpr int KV_CHUNK = 256;   // list entries per statistic slot (fixed: the sum order must not depend on threads)
constexpr int LANES    = 8;     // double accumulators per cell
constexpr int MAX_HEAD_DIM = 1024;

constexpr bool is_quant(ggml_type t) { return t == GGML_TYPE_Q8_0 || t == GGML_TYPE_Q4_0 || t == GGML_TYPE_Q5_0; }

// Value i of a float type's stored values, as f32 (exact).
template <ggml_type S>
inline float kv_value(const char * p, int i) {
    if constexpr (S == GGML_TYPE_F32) {
        return ((const float *) p)[i];
    } else if constexpr (S == GGML_TYPE_F16) {
        return GGML_CPU_FP16_TO_FP32(((const ggml_fp16_t *) p)[i]);
    } else {
        return GGML_BF16_TO_FP32(((const ggml_bf16_t *) p)[i]);
    }
}

// Stored bits of a float type, and their magnitude mask.
template <ggml_type T>
using kv_bits_t = typename std::conditional<T == GGML_TYPE_F32, uint32_t, uint16_t>::type;
template <ggml_type T>
constexpr kv_bits_t<T> KV_MAG = T == GGML_TYPE_F32 ? (kv_bits_t<T>) 0x7FFFFFFFu : (kv_bits_t<T>) 0x7FFF;

// Whether 8 stored values of S load as one 8-float register (kv_load8) on this build's instruction set.
template <ggml_type S>
constexpr bool kv_simd_load =
#if defined(__AVX2__) && defined(__F16C__)
    true;
#elif defined(__AVX__)
    S == GGML_TYPE_F32;
#else
    false;
#endif

#if defined(__AVX__)
template <ggml_type S> inline __m256 kv_load8(const char * p);
template <> inline __m256 kv_load8<GGML_TYPE_F32>(const char * p) { return _mm256_loadu_ps((const float *) p); }
#if defined(__AVX2__) && defined(__F16C__)
template <> inline __m256 kv_load8<GGML_TYPE_F16>(const char * p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) p));
}
template <> inline __m256 kv_load8<GGML_TYPE_BF16>(const char * p) { // bf16 = the high half of an f32
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *) p)), 16));
}
#endif
#endif

#if defined(__AVX512F__) && defined(__AVX2__) && defined(__F16C__)
#define KV_AVX512 1
// 16 stored values of S as one 16-float register 
template <ggml_type S> inline __m512 kv_load16(const char * p);
template <> inline __m512 kv_load16<GGML_TYPE_F32>(const char * p) { return _mm512_loadu_ps((const float *) p); }
template <> inline __m512 kv_load16<GGML_TYPE_F16>(const char * p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) p));
}
template <> inline __m512 kv_load16<GGML_TYPE_BF16>(const char * p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *) p)), 16));
}
#endif

// Sums of |x| of K vectors of n stored values of S at x[0..K) at once, each in LANES double lanes (lane j takes
// values j, j+8, ...), added pairwise at the end. The K x LANES accumulators are independent chains: one vector
// alone would wait on the latency of its additions.
#if defined(KV_AVX512)
constexpr int NV = 8; // vectors (cells) summed at once: 8 chains of 512-bit additions hide their latency
#else
constexpr int NV = 4; // vectors (cells) summed at once
#endif
template <int K, ggml_type S>
inline void kv_abs_sums(const char * const * x, int n, double * out) {
    double acc[K][LANES] = {};
    int i = 0;
#if defined(KV_AVX512)
    // the LANES lanes in one 8-double register per vector; 16 values per step go in as two 8-value halves, values
    // i..i+7 then i+8..i+15, the order of the scalar form (one 512-bit conversion of 16 values instead of two of 8)
    if constexpr (kv_simd_load<S>) {
        const __m512 mag = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
        __m512d sv[K];
        for (int v = 0; v < K; ++v) {
            sv[v] = _mm512_setzero_pd();
        }
        for (; i + 2*LANES <= n; i += 2*LANES) {
            for (int v = 0; v < K; ++v) {
                const __m512 m = _mm512_and_ps(kv_load16<S>(x[v] + i*sizeof(kv_bits_t<S>)), mag);
                sv[v] = _mm512_add_pd(sv[v], _mm512_cvtps_pd(_mm512_castps512_ps256(m)));
                sv[v] = _mm512_add_pd(sv[v], _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(m), 1))));
            }
        }
        for (; i + LANES <= n; i += LANES) {
            for (int v = 0; v < K; ++v) {
                const __m256 m = _mm256_and_ps(kv_load8<S>(x[v] + i*sizeof(kv_bits_t<S>)), _mm512_castps512_ps256(mag));
                sv[v] = _mm512_add_pd(sv[v], _mm512_cvtps_pd(m));
            }
        }
        if (i == n) {
            // the pairwise combine below in registers: ((a0+a1) + (a2+a3)) + ((a4+a5) + (a6+a7)), each addition the
            // same IEEE operation (addition commutes exactly)
            for (int v = 0; v < K; ++v) {
                const __m512d p1 = _mm512_add_pd(sv[v], _mm512_permute_pd(sv[v], 0x55));
                const __m512d p2 = _mm512_add_pd(p1, _mm512_permutex_pd(p1, _MM_SHUFFLE(1, 0, 3, 2)));
                const __m512d p3 = _mm512_add_pd(p2, _mm512_shuffle_f64x2(p2, p2, _MM_SHUFFLE(1, 0, 3, 2)));
                out[v] = _mm512_cvtsd_f64(p3);
            }
            return;
        }
        for (int v = 0; v < K; ++v) {
            _mm512_storeu_pd(acc[v], sv[v]);
        }
    }
#elif defined(__AVX__)
    // the same lanes in two 4-double registers per vector (compilers keep the scalar form below in memory)
    if constexpr (kv_simd_load<S>) {
        const __m256 mag = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
        __m256d lo[K], hi[K];
        for (int v = 0; v < K; ++v) {
            lo[v] = _mm256_setzero_pd();
            hi[v] = _mm256_setzero_pd();
        }
        for (; i + LANES <= n; i += LANES) {
            for (int v = 0; v < K; ++v) {
                const __m256 m = _mm256_and_ps(kv_load8<S>(x[v] + i*sizeof(kv_bits_t<S>)), mag);
                lo[v] = _mm256_add_pd(lo[v], _mm256_cvtps_pd(_mm256_castps256_ps128(m)));
                hi[v] = _mm256_add_pd(hi[v], _mm256_cvtps_pd(_mm256_extractf128_ps(m, 1)));
            }
        }
        for (int v = 0; v < K; ++v) {
            _mm256_storeu_pd(acc[v], lo[v]);
            _mm256_storeu_pd(acc[v] + 4, hi[v]);
        }
    }
#endif
    for (; i + LANES <= n; i += LANES) {
        for (int v = 0; v < K; ++v) {
            for (int j = 0; j < LANES; ++j) {
                acc[v][j] += (double) fabsf(kv_value<S>(x[v], i + j));
            }
        }
    }
    for (int j = 0; i < n; ++i, ++j) {
        for (int v = 0; v < K; ++v) {
            acc[v][j] += (double) fabsf(kv_value<S>(x[v], i));
        }
    }
    for (int v = 0; v < K; ++v) {
        const double * a = acc[v];
        out[v] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    }
}

inline int kv_popcount(unsigned x) {
#if defined(_MSC_VER)
    return (int) __popcnt(x);
#else
    return __builtin_popcount(x);
#endif
}

// Values of one quantized 32-block, dequantized: x = d * code.
template <ggml_type T>
inline void kv_qblock_load(const char * blk, float * x) {
    const float d = GGML_CPU_FP16_TO_FP32(*(const ggml_fp16_t *) blk);
#if defined(KV_AVX512) && defined(__AVX512BW__)
    // the same products in registers, 16 values at a time (code widened to int32, converted exactly, times d)
    if constexpr (T == GGML_TYPE_Q8_0 || T == GGML_TYPE_Q4_0) {
        const __m512 dv = _mm512_set1_ps(d);
        __m512i code[2];
        if constexpr (T == GGML_TYPE_Q8_0) {
            code[0] = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) (blk + 2)));
            code[1] = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) (blk + 2 + 16)));
        } else {
            const __m128i qs = _mm_loadu_si128((const __m128i *) (blk + 2)), lo4 = _mm_set1_epi8(0x0F);
            code[0] = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_and_si128(qs, lo4)), _mm512_set1_epi32(8));
            code[1] = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(qs, 4), lo4)),
                                       _mm512_set1_epi32(8));
        }
        _mm512_storeu_ps(x,      _mm512_mul_ps(_mm512_cvtepi32_ps(code[0]), dv));
        _mm512_storeu_ps(x + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(code[1]), dv));
        return;
    }
#endif
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
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    // the same arithmetic in registers: codes widened to int32, x = (float) code * d, magnitude bits compared
    // as unsigned 32-bit integers; two halves of 16 values
    if constexpr (T == GGML_TYPE_Q8_0 || T == GGML_TYPE_Q4_0) {
        const __m512 d = _mm512_set1_ps(GGML_CPU_FP16_TO_FP32(*(const ggml_fp16_t *) blk));
        const __m512i mag = _mm512_set1_epi32(0x7FFFFFFF), tv = _mm512_set1_epi32((int) tb);
        __m512i code[2];
        if constexpr (T == GGML_TYPE_Q8_0) {
            code[0] = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) (blk + 2)));
            code[1] = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) (blk + 2 + 16)));
        } else {
            const __m128i qs = _mm_loadu_si128((const __m128i *) (blk + 2)), lo4 = _mm_set1_epi8(0x0F);
            code[0] = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_and_si128(qs, lo4)), _mm512_set1_epi32(8));
            code[1] = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(qs, 4), lo4)),
                                       _mm512_set1_epi32(8));
        }
        __mmask16 below[2];
        int nnz = 0;
        for (int k = 0; k < 2; ++k) {
            const __m512i m = _mm512_and_si512(_mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(code[k]), d)), mag);
            const __mmask16 lt = _mm512_cmplt_epu32_mask(m, tv), nz = _mm512_test_epi32_mask(m, m);
            below[k] = lt & nz;
            nnz += kv_popcount((unsigned) (~lt & nz) & 0xFFFF);
        }
        if constexpr (T == GGML_TYPE_Q8_0) {
            _mm256_mask_storeu_epi8(blk + 2, (__mmask32) below[0] | ((__mmask32) below[1] << 16), _mm256_setzero_si256());
        } else {
            // value i < 16: low nibble of byte i (0 -> code 8), value i >= 16: high nibble of byte i - 16 (0x80)
            __m128i qs = _mm_loadu_si128((const __m128i *) (blk + 2));
            qs = _mm_mask_blend_epi8(below[0], qs, _mm_or_si128(_mm_and_si128(qs, _mm_set1_epi8((char) 0xF0)), _mm_set1_epi8(0x08)));
            qs = _mm_mask_blend_epi8(below[1], qs, _mm_or_si128(_mm_and_si128(qs, _mm_set1_epi8(0x0F)), _mm_set1_epi8((char) 0x80)));
            _mm_storeu_si128((__m128i *) (blk + 2), qs);
        }
        return nnz;
    }
#endif
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

// Zeroes one stored float value if |x| < tau (its magnitude bits < tb; a stored zero stays as it is) and returns 1 if
// it is non-zero after. The store is unconditional, so that the loops calling it vectorize.
template <ggml_type T>
inline int kv_float_zero1(kv_bits_t<T> & q, uint32_t tb) {
    const uint32_t m = q & KV_MAG<T>;
    const bool below = m < tb;
    q = below && m != 0 ? (kv_bits_t<T>) 0 : q;
    return !below && m != 0;
}

// kv_float_zero1 over n contiguous float values; returns the non-zeros after.
template <ggml_type T>
inline int kv_float_zero(char * base, int n, uint32_t tb) {
    kv_bits_t<T> * q = (kv_bits_t<T> *) base;
    int nnz = 0;
    for (int i = 0; i < n; ++i) {
        nnz += kv_float_zero1<T>(q[i], tb);
    }
    return nnz;
}

// kv_float_zero of one full 32-block of a 16-bit float type, in SIMD registers where the build has them: the
// magnitude bits are compared as unsigned (AVX-512BW) or signed (AVX2: both sides lie in [0, 0x7FFF]) 16-bit
// integers; only the zeroed values are stored with AVX-512BW.
template <ggml_type T>
inline int kv_float_zero_block(char * base, uint32_t tb) {
#if defined(__AVX512BW__)
    if constexpr (T != GGML_TYPE_F32) {
        const __m512i v  = _mm512_loadu_si512((const void *) base);
        const __m512i m  = _mm512_and_si512(v, _mm512_set1_epi16(0x7FFF));
        const __mmask32 lt = _mm512_cmplt_epu16_mask(m, _mm512_set1_epi16((short) tb));
        const __mmask32 nz = _mm512_test_epi16_mask(m, m);
        _mm512_mask_storeu_epi16((void *) base, lt & nz, _mm512_setzero_si512());
        return kv_popcount((unsigned) (~lt & nz));
    }
#elif defined(__AVX2__)
    if constexpr (T != GGML_TYPE_F32) {
        const __m256i mask = _mm256_set1_epi16(0x7FFF), tv = _mm256_set1_epi16((short) tb);
        int nnz = 0;
        for (int k = 0; k < 2; ++k) {
            __m256i * q = (__m256i *) base + k;
            const __m256i v  = _mm256_loadu_si256(q);
            const __m256i m  = _mm256_and_si256(v, mask);
            const __m256i lt = _mm256_cmpgt_epi16(tv, m);
            const __m256i z  = _mm256_cmpeq_epi16(m, _mm256_setzero_si256());
            _mm256_storeu_si256(q, _mm256_andnot_si256(_mm256_andnot_si256(z, lt), v)); // keep unless below and non-zero
            nnz += kv_popcount((unsigned) _mm256_movemask_epi8(_mm256_andnot_si256(_mm256_or_si256(lt, z),
                                                                                          _mm256_set1_epi8(-1)))) / 2;
        }
        return nnz;
    }
#endif
    return kv_float_zero<T>(base, BLOCK, tb);
}

// Bytes of one head's values in a row of the row layout.
template <ggml_type T>
inline size_t kv_head_bytes(int hd) {
    return is_quant(T) ? (size_t) (hd/BLOCK)*ggml_type_size(T) : (size_t) hd*ggml_type_size(T);
}

// n contiguous stored float values as f32, with ggml's converters.
template <ggml_type T>
inline void kv_float_load(const char * src, float * x, int n) {
    if constexpr (T == GGML_TYPE_F32) {
        memcpy(x, src, n*sizeof(float));
    } else if constexpr (T == GGML_TYPE_F16) {
        ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) src, x, n);
    } else {
        ggml_cpu_bf16_to_fp32((const ggml_bf16_t *) src, x, n);
    }
}

// Transposed layout, one row (embedding index) of a run of n consecutive cells: acc[i] += |x_i| (each cell's sum
// thus runs over the rows in order, j = 0, 1, ...).
template <ggml_type T>
inline void kv_trans_abs_add(const char * src, int n, double * acc) {
    int i = 0;
#if defined(KV_AVX512)
    // 8 cells at a time: their values widened to double and added to their own sums (lane = cell)
    if constexpr (kv_simd_load<T>) {
        const __m256 mag = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
        for (; i + 8 <= n; i += 8) {
            const __m256 m = _mm256_and_ps(kv_load8<T>(src + i*sizeof(kv_bits_t<T>)), mag);
            _mm512_storeu_pd(acc + i, _mm512_add_pd(_mm512_loadu_pd(acc + i), _mm512_cvtps_pd(m)));
        }
    }
#endif
    float x[KV_CHUNK];
    kv_float_load<T>(src + i*sizeof(kv_bits_t<T>), x, n - i);
    for (int k = 0; i < n; ++i, ++k) {
        acc[i] += (double) fabsf(x[k]);
    }
}

// Transposed layout, one row of a run of n consecutive cells: kv_float_zero1 of each cell's value against the cell's
// tb[i], its survivor added to nnz[i].
template <ggml_type T>
inline void kv_trans_zero(char * dst, int n, const uint32_t * tb, uint8_t * nnz) {
    kv_bits_t<T> * q = (kv_bits_t<T> *) dst;
    int i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    // 16 cells at a time: magnitude bits widened to 32 bits and compared with each cell's tb as unsigned integers;
    // only the zeroed values are stored; a survivor adds 1 to its cell's byte counter
    if constexpr (T != GGML_TYPE_F32) {
        const __m512i mag = _mm512_set1_epi32(0x7FFF);
        for (; i + 16 <= n; i += 16) {
            const __m512i m = _mm512_and_si512(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *) (q + i))), mag);
            const __mmask16 lt = _mm512_cmplt_epu32_mask(m, _mm512_loadu_si512((const void *) (tb + i)));
            const __mmask16 nz = _mm512_test_epi32_mask(m, m);
            _mm256_mask_storeu_epi16((void *) (q + i), lt & nz, _mm256_setzero_si256());
            const __m128i c = _mm_loadu_si128((const __m128i *) (nnz + i));
            _mm_storeu_si128((__m128i *) (nnz + i), _mm_sub_epi8(c, _mm_movm_epi8((__mmask16) (~lt & nz))));
        }
    }
#endif
    for (; i < n; ++i) {
        nnz[i] += kv_float_zero1<T>(q[i], tb[i]);
    }
}

constexpr int KV_TRANS_ROWS = 8; // rows of the transposed layout walked together (8 streams for the prefetchers)

#if defined(KV_AVX512) && defined(__AVX512BW__)
#define KV_TRANS_SIMD 1
// Transposed layout, a run of n consecutive cells of a 16-bit float type over nr rows (stride nb1), rows in order:
// acc[i] += |x_ij|, kv_trans_abs_add's sums, 8 cells at a time with their sums in a register through the nr rows
// (one read and write of acc per nr rows instead of per row). Returns the cells done (a multiple of 8).
template <ggml_type T>
inline int kv_trans_abs_add_rows(const char * src, int64_t nb1, int nr, int n, double * acc) {
    static_assert(T == GGML_TYPE_F16 || T == GGML_TYPE_BF16, "16-bit float types");
    const __m256 mag = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m512d s = _mm512_loadu_pd(acc + i);
        for (int r = 0; r < nr; ++r) {
            s = _mm512_add_pd(s, _mm512_cvtps_pd(_mm256_and_ps(kv_load8<T>(src + (int64_t) r*nb1 + 2*i), mag)));
        }
        _mm512_storeu_pd(acc + i, s);
    }
    return i;
}

// Transposed layout, a run of n consecutive cells of a 16-bit float type over nr rows of one 32-row block (stride
// nb1): kv_trans_zero of each row, 32 cells at a time, their survivors of the nr rows counted in a register and
// added to nnz[i] once. |x| < tau is m < tb[i] with m <= 0x7FFF, i.e. m < min(tb[i], 0x8000) as 16-bit integers.
// Returns the cells done (a multiple of 32).
template <ggml_type T>
inline int kv_trans_zero_rows(char * dst, int64_t nb1, int nr, int n, const uint32_t * tb, uint8_t * nnz) {
    static_assert(T == GGML_TYPE_F16 || T == GGML_TYPE_BF16, "16-bit float types");
    const __m512i cap = _mm512_set1_epi32(0x8000), mag = _mm512_set1_epi16(0x7FFF), one = _mm512_set1_epi16(1);
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512i t16 = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm512_cvtepi32_epi16(_mm512_min_epu32(_mm512_loadu_si512((const void *) (tb + i)), cap))),
            _mm512_cvtepi32_epi16(_mm512_min_epu32(_mm512_loadu_si512((const void *) (tb + i + 16)), cap)), 1);
        __m512i cnt = _mm512_setzero_si512();
        for (int r = 0; r < nr; ++r) {
            char * q = dst + (int64_t) r*nb1 + 2*i;
            const __m512i m = _mm512_and_si512(_mm512_loadu_si512((const void *) q), mag);
            const __mmask32 lt = _mm512_cmplt_epu16_mask(m, t16), nz = _mm512_test_epi16_mask(m, m);
            _mm512_mask_storeu_epi16((void *) q, lt & nz, _mm512_setzero_si512());
            cnt = _mm512_mask_add_epi16(cnt, ~lt & nz, cnt, one);
        }
        _mm256_storeu_si256((__m256i *) (nnz + i),
                            _mm256_add_epi8(_mm256_loadu_si256((const __m256i *) (nnz + i)), _mm512_cvtepi16_epi8(cnt)));
    }
    return i;
}
#endif

} // namespace
