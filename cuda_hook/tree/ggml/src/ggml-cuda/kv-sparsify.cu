// SPDX-License-Identifier: MIT
// ElasticKV: CUDA kernel of GGML_OP_KV_SPARSIFY. It follows the numpy reference
// (tests/reference/kv_sparsify.py in the ElasticKV repository) and the CPU kernel, step for step:
//   clear   : zero this pass's counters of every (group, head)
//   stat    : one read of the PROCESS cells: per-(group, head) sum and count of |x|
//   tau     : S, N (full: this pass; incremental: running) and tau = scale * S / N
//   apply   : one read plus a conditional write: zero |x| < tau, count non-zeros, histogram survivors
// One thread owns one (list entry, head, 32-value block), so quantized blocks are rewritten by a single
// thread. Threads are ordered head-major, so a warp almost always adds into one (group, head) and the
// per-warp reduction leaves one double atomic per warp and counter.
#include "kv-sparsify.cuh"
#include "ggml-kv-sparsify.h"

#define KVS_BLOCK  GGML_KV_SPARSIFY_BLOCK
#define KVS_NSTATE GGML_KV_SPARSIFY_NSTATE

struct kvs_args {
    char *          data;     // tensor a
    int64_t         nb0;
    int64_t         nb1;
    int64_t         n_cells;
    const int32_t * list;     // (cell, code) pairs
    double *        state;    // [NSTATE, n_head, n_group]
    int             n_list;
    int             n_head;
    int             head_dim;
    int             n_blocks; // 32-value blocks per head
    int             n_group;
    float           scale;
    bool            trans;
    bool            incremental;
};

static __device__ __forceinline__ void kvs_atomic_add(double * addr, const double v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 600
    unsigned long long * p = (unsigned long long *) addr;
    unsigned long long old = *p;
    unsigned long long assumed;
    do {
        assumed = old;
        old = atomicCAS(p, assumed, __double_as_longlong(v + __longlong_as_double(assumed)));
    } while (assumed != old);
#else
    atomicAdd(addr, v);
#endif
}

// Adds v to state[key][field] for every lane with key >= 0. Must be reached by all 32 lanes of the warp.
static __device__ __forceinline__ void kvs_warp_add(double * state, const int key, const int field, double v) {
    const int key0 = __shfl_sync(0xffffffff, key, 0);
    if (__all_sync(0xffffffff, key == key0)) {
        if (key0 < 0) {
            return;
        }
#pragma unroll
        for (int off = WARP_SIZE/2; off > 0; off >>= 1) {
            v += __shfl_xor_sync(0xffffffff, v, off);
        }
        if ((threadIdx.x % WARP_SIZE) == 0) {
            kvs_atomic_add(state + (int64_t) key0*KVS_NSTATE + field, v);
        }
    } else if (key >= 0) {
        kvs_atomic_add(state + (int64_t) key*KVS_NSTATE + field, v);
    }
}

// Base address, element stride and length of block b of head h in a cell.
struct kvs_block_ref {
    char *  base;
    int64_t stride;
    int     len;
};

template <ggml_type type>
static __device__ __forceinline__ kvs_block_ref kvs_block_at(const kvs_args & a, const int64_t cell, const int h, const int b) {
    const int64_t j0 = (int64_t) h*a.head_dim + (int64_t) b*KVS_BLOCK;
    kvs_block_ref r;
    r.len = min(KVS_BLOCK, a.head_dim - b*KVS_BLOCK);
    if (a.trans) {
        r.base   = a.data + j0*a.nb1 + cell*a.nb0;
        r.stride = a.nb1;
    } else if (type == GGML_TYPE_Q8_0) {
        r.base   = a.data + cell*a.nb1 + (j0/KVS_BLOCK)*(int64_t) sizeof(block_q8_0);
        r.stride = 0;
    } else if (type == GGML_TYPE_Q4_0) {
        r.base   = a.data + cell*a.nb1 + (j0/KVS_BLOCK)*(int64_t) sizeof(block_q4_0);
        r.stride = 0;
    } else if (type == GGML_TYPE_Q5_0) {
        r.base   = a.data + cell*a.nb1 + (j0/KVS_BLOCK)*(int64_t) sizeof(block_q5_0);
        r.stride = 0;
    } else {
        r.base   = a.data + cell*a.nb1 + j0*a.nb0;
        r.stride = a.nb0;
    }
    return r;
}

template <ggml_type type>
static __device__ __forceinline__ void kvs_block_load(const kvs_block_ref & r, float * x) {
    if constexpr (type == GGML_TYPE_F32) {
        for (int i = 0; i < r.len; ++i) { x[i] = *(const float *) (r.base + i*r.stride); }
    } else if constexpr (type == GGML_TYPE_F16) {
        for (int i = 0; i < r.len; ++i) { x[i] = __half2float(*(const half *) (r.base + i*r.stride)); }
    } else if constexpr (type == GGML_TYPE_BF16) {
        for (int i = 0; i < r.len; ++i) { x[i] = __bfloat162float(*(const nv_bfloat16 *) (r.base + i*r.stride)); }
    } else if constexpr (type == GGML_TYPE_Q8_0) {
        const block_q8_0 * blk = (const block_q8_0 *) r.base;
        const float d = __half2float(blk->d);
        for (int i = 0; i < KVS_BLOCK; ++i) { x[i] = (float) blk->qs[i] * d; }
    } else if constexpr (type == GGML_TYPE_Q4_0) {
        const block_q4_0 * blk = (const block_q4_0 *) r.base;
        const float d = __half2float(blk->d);
        for (int i = 0; i < KVS_BLOCK/2; ++i) {
            x[i]             = (float) ((blk->qs[i] & 0x0F) - 8) * d;
            x[i + KVS_BLOCK/2] = (float) ((blk->qs[i] >>   4) - 8) * d;
        }
    } else if constexpr (type == GGML_TYPE_Q5_0) {
        const block_q5_0 * blk = (const block_q5_0 *) r.base;
        const float d = __half2float(blk->d);
        uint32_t qh;
        memcpy(&qh, blk->qh, sizeof(qh));
        for (int i = 0; i < KVS_BLOCK/2; ++i) {
            const int c0 = (blk->qs[i] & 0x0F) | (((qh >> i)                 & 1) << 4);
            const int c1 = (blk->qs[i] >>   4) | (((qh >> (i + KVS_BLOCK/2)) & 1) << 4);
            x[i]               = (float) (c0 - 16) * d;
            x[i + KVS_BLOCK/2] = (float) (c1 - 16) * d;
        }
    }
}

// Sets element i of the block to an exact zero (quantized: the code of 0, d untouched).
template <ggml_type type>
static __device__ __forceinline__ void kvs_block_zero(const kvs_block_ref & r, const int i) {
    if constexpr (type == GGML_TYPE_F32) {
        *(float *) (r.base + i*r.stride) = 0.0f;
    } else if constexpr (type == GGML_TYPE_F16) {
        *(half *) (r.base + i*r.stride) = __float2half(0.0f);
    } else if constexpr (type == GGML_TYPE_BF16) {
        *(nv_bfloat16 *) (r.base + i*r.stride) = __float2bfloat16(0.0f);
    } else if constexpr (type == GGML_TYPE_Q8_0) {
        ((block_q8_0 *) r.base)->qs[i] = 0;
    } else if constexpr (type == GGML_TYPE_Q4_0) {
        uint8_t * q = ((block_q4_0 *) r.base)->qs + (i % (KVS_BLOCK/2));
        *q = i < KVS_BLOCK/2 ? (uint8_t) ((*q & 0xF0) | 0x08) : (uint8_t) ((*q & 0x0F) | 0x80);
    } else if constexpr (type == GGML_TYPE_Q5_0) {
        block_q5_0 * blk = (block_q5_0 *) r.base;
        uint8_t * q = blk->qs + (i % (KVS_BLOCK/2));
        *q = i < KVS_BLOCK/2 ? (uint8_t) (*q & 0xF0) : (uint8_t) (*q & 0x0F);
        blk->qh[i/8] |= (uint8_t) (1u << (i % 8)); // bit i of the little-endian u32 qh
    }
}

// Thread t -> (head, list entry, block). Head-major; inside a head, entries vary fastest for the
// transposed layout (neighbouring threads read neighbouring cells) and blocks fastest otherwise.
static __device__ __forceinline__ bool kvs_thread_item(const kvs_args & a, int & h, int & e, int & b) {
    const int64_t t        = (int64_t) blockIdx.x*blockDim.x + threadIdx.x;
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

static __global__ void kvs_clear(const kvs_args a) {
    const int64_t t = (int64_t) blockIdx.x*blockDim.x + threadIdx.x;
    const int n_fields = KVS_NSTATE - GGML_KV_SPARSIFY_N_PROC;
    if (t >= (int64_t) a.n_group*a.n_head*n_fields) {
        return;
    }
    const int64_t key = t / n_fields;
    a.state[key*KVS_NSTATE + GGML_KV_SPARSIFY_N_PROC + t % n_fields] = 0.0;
}

template <ggml_type type>
static __global__ void kvs_stat(const kvs_args a) {
    int h, e, b;
    int    key = -1;
    double sum = 0.0;
    double cnt = 0.0;
    if (kvs_thread_item(a, h, e, b)) {
        const int32_t cell = a.list[2*e + 0];
        const int32_t code = a.list[2*e + 1];
        if (code >= 0 && (code & GGML_KV_SPARSIFY_PROCESS) && cell >= 0 && cell < a.n_cells) {
            float x[KVS_BLOCK];
            const kvs_block_ref r = kvs_block_at<type>(a, cell, h, b);
            kvs_block_load<type>(r, x);
            for (int i = 0; i < r.len; ++i) {
                sum += (double) fabsf(x[i]);
            }
            cnt = r.len;
            key = (code & GGML_KV_SPARSIFY_GROUP_MASK)*a.n_head + h;
        }
    }
    kvs_warp_add(a.state, key, GGML_KV_SPARSIFY_S_PASS, sum);
    kvs_warp_add(a.state, key, GGML_KV_SPARSIFY_N_PASS, cnt);
}

static __global__ void kvs_tau(const kvs_args a) {
    const int64_t key = (int64_t) blockIdx.x*blockDim.x + threadIdx.x;
    if (key >= (int64_t) a.n_group*a.n_head) {
        return;
    }
    ggml_kv_sparsify_update_tau(a.state + key*KVS_NSTATE, a.scale, a.incremental);
}

template <ggml_type type>
static __global__ void kvs_apply(const kvs_args a) {
    int h, e, b;
    int key_proc = -1;
    int key_obs  = -1;
    double len   = 0.0;
    double nnz_d = 0.0;
    if (kvs_thread_item(a, h, e, b)) {
        const int32_t cell = a.list[2*e + 0];
        const int32_t code = a.list[2*e + 1];
        if (code >= 0 && cell >= 0 && cell < a.n_cells) {
            const int key = (code & GGML_KV_SPARSIFY_GROUP_MASK)*a.n_head + h;
            const double tau = a.state[(int64_t) key*KVS_NSTATE + GGML_KV_SPARSIFY_TAU];
            const bool process = (code & GGML_KV_SPARSIFY_PROCESS) != 0;

            float x[KVS_BLOCK];
            const kvs_block_ref r = kvs_block_at<type>(a, cell, h, b);
            kvs_block_load<type>(r, x);
            int nnz = 0;
            for (int i = 0; i < r.len; ++i) {
                if (process && (double) fabsf(x[i]) < tau) {
                    if (x[i] != 0.0f) {
                        kvs_block_zero<type>(r, i);
                    }
                    continue;
                }
                nnz += x[i] != 0.0f;
            }
            len      = r.len;
            nnz_d    = nnz;
            key_proc = process                                   ? key : -1;
            key_obs  = (code & GGML_KV_SPARSIFY_OBSERVE) != 0    ? key : -1;
            if ((code & GGML_KV_SPARSIFY_HIST) && r.len == KVS_BLOCK) {
                kvs_atomic_add(a.state + (int64_t) key*KVS_NSTATE + GGML_KV_SPARSIFY_HIST0 + nnz, 1.0);
            }
        }
    }
    kvs_warp_add(a.state, key_proc, GGML_KV_SPARSIFY_N_PROC,   len);
    kvs_warp_add(a.state, key_proc, GGML_KV_SPARSIFY_NNZ_PROC, nnz_d);
    kvs_warp_add(a.state, key_obs,  GGML_KV_SPARSIFY_N_OBS,    len);
    kvs_warp_add(a.state, key_obs,  GGML_KV_SPARSIFY_NNZ_OBS,  nnz_d);
}

template <ggml_type type>
static void kvs_launch(const kvs_args & a, cudaStream_t stream) {
    const int64_t n_items  = (int64_t) a.n_head*a.n_list*a.n_blocks;
    const int64_t n_keys   = (int64_t) a.n_group*a.n_head;
    const int64_t n_clear  = n_keys*(KVS_NSTATE - GGML_KV_SPARSIFY_N_PROC);
    const int     bs       = CUDA_KV_SPARSIFY_BLOCK_SIZE;

    kvs_clear<<<(n_clear + bs - 1)/bs, bs, 0, stream>>>(a);
    if (n_items > 0) {
        kvs_stat<type><<<(n_items + bs - 1)/bs, bs, 0, stream>>>(a);
    }
    kvs_tau<<<(n_keys + bs - 1)/bs, bs, 0, stream>>>(a);
    if (n_items > 0) {
        kvs_apply<type><<<(n_items + bs - 1)/bs, bs, 0, stream>>>(a);
    }
}

void ggml_cuda_op_kv_sparsify(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    const ggml_tensor * src   = dst->src[0];
    const ggml_tensor * cells = dst->src[1];
    const ggml_tensor * state = dst->src[2];
    const ggml_kv_sparsify_params p = ggml_kv_sparsify_get_params(dst);

    kvs_args a;
    a.data        = (char *) src->data;
    a.nb0         = src->nb[0];
    a.nb1         = src->nb[1];
    a.n_cells     = p.trans ? src->ne[0] : src->ne[1];
    a.list        = (const int32_t *) cells->data;
    a.state       = (double *) state->data;
    a.n_list      = p.n_list;
    a.n_head      = p.n_head;
    a.head_dim    = p.head_dim;
    a.n_blocks    = (p.head_dim + KVS_BLOCK - 1)/KVS_BLOCK;
    a.n_group     = p.n_group;
    a.scale       = p.scale;
    a.trans       = p.trans;
    a.incremental = p.incremental;

    cudaStream_t stream = ctx.stream();
    switch (src->type) {
        case GGML_TYPE_F32:  kvs_launch<GGML_TYPE_F32> (a, stream); break;
        case GGML_TYPE_F16:  kvs_launch<GGML_TYPE_F16> (a, stream); break;
        case GGML_TYPE_BF16: kvs_launch<GGML_TYPE_BF16>(a, stream); break;
        case GGML_TYPE_Q8_0: kvs_launch<GGML_TYPE_Q8_0>(a, stream); break;
        case GGML_TYPE_Q4_0: kvs_launch<GGML_TYPE_Q4_0>(a, stream); break;
        case GGML_TYPE_Q5_0: kvs_launch<GGML_TYPE_Q5_0>(a, stream); break;
        default: GGML_ABORT("kv_sparsify: unsupported type %s", ggml_type_name(src->type));
    }
    CUDA_CHECK(cudaGetLastError());
}
