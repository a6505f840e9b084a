// SPDX-License-Identifier: MIT
// ElasticKV: CUDA kernels of GGML_OP_KV_SPARSIFY: three launches per op (stat, tau, apply). What each thread computes
// is in kv-sparsify-thread.cuh (shared with a host test that runs it over the whole grid on the CPU); this file
// owns the launch geometry, the warp shuffles, shared memory and atomics. The sums follow the CPU kernel's order
// exactly (see kv-sparsify-thread.cuh), so S, N, tau and the zero pattern equal the CPU's bit for bit and do not
// change from run to run: the only atomics add integer counts, exact in any order.
#include "kv-sparsify.cuh"
#include "kv-sparsify-thread.cuh"

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

// Adds v to state[key][field] for every lane with key >= 0. Must be reached by all 32 lanes of the warp. Used for
// integer counts only: their sum is exact, whatever the order of the atomics.
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

template <ggml_type T, bool TRANS>
static __global__ void kvs_stat(const kvs_args a) {
    __shared__ double cs[KVS_CHUNK];
    const int c  = blockIdx.x;
    const int h  = blockIdx.y;
    const int e0 = c*KVS_CHUNK;
    const int ne = min(KVS_CHUNK, a.n_list - e0);
    if constexpr (TRANS) {
        for (int t = threadIdx.x; t < ne; t += blockDim.x) {
            cs[t] = kvs_trans_cell_sum<T>(a, h, e0 + t);
        }
    } else {
        // KVS_LANES threads per cell; every lane of a warp runs the same number of rounds (the shuffles need all 32)
        const int lane = threadIdx.x % KVS_LANES;
        for (int r0 = 0; r0 < KVS_CHUNK; r0 += blockDim.x/KVS_LANES) {
            const int r = r0 + threadIdx.x/KVS_LANES;
            double v = r < ne ? kvs_row_lane_sum<T>(a, h, e0 + r, lane) : 0.0;
            v += __shfl_xor_sync(0xffffffff, v, 1); // the order of kvs_lanes_combine
            v += __shfl_xor_sync(0xffffffff, v, 2);
            v += __shfl_xor_sync(0xffffffff, v, 4);
            if (lane == 0 && r < ne) {
                cs[r] = v;
            }
        }
    }
    __syncthreads();
    for (int g = threadIdx.x; g < a.n_group; g += blockDim.x) {
        kvs_chunk_slot(a, cs, c, g, h);
    }
}

static __global__ void kvs_tau(const kvs_args a) {
    const int key = blockIdx.x*blockDim.x + threadIdx.x;
    if (key < a.n_group*a.n_head) {
        kvs_tau_key(a, key);
    }
}

template <ggml_type T>
static __global__ void kvs_apply(const kvs_args a) {
    int h, e, b;
    kvs_apply_out o = {-1, -1, -1, 0, 0};
    if (kvs_apply_item(a, (int64_t) blockIdx.x*blockDim.x + threadIdx.x, h, e, b)) {
        o = kvs_apply_block<T>(a, h, e, b);
    }
    if (o.key_hist >= 0) {
        kvs_atomic_add(a.state + (int64_t) o.key_hist*KVS_NSTATE + GGML_KV_SPARSIFY_HIST0 + o.nnz, 1.0);
    }
    kvs_warp_add(a.state, o.key_proc, GGML_KV_SPARSIFY_N_PROC,   o.len);
    kvs_warp_add(a.state, o.key_proc, GGML_KV_SPARSIFY_NNZ_PROC, o.nnz);
    kvs_warp_add(a.state, o.key_obs,  GGML_KV_SPARSIFY_N_OBS,    o.len);
    kvs_warp_add(a.state, o.key_obs,  GGML_KV_SPARSIFY_NNZ_OBS,  o.nnz);
}

template <ggml_type T, bool TRANS>
static void kvs_launch(const kvs_args & a, cudaStream_t stream) {
    const int64_t n_items = (int64_t) a.n_head*a.n_list*a.n_blocks;
    const int     n_keys  = a.n_group*a.n_head;
    const int     bs      = CUDA_KV_SPARSIFY_BLOCK_SIZE;
    static_assert(CUDA_KV_SPARSIFY_BLOCK_SIZE % WARP_SIZE == 0 && KVS_CHUNK % (CUDA_KV_SPARSIFY_BLOCK_SIZE/KVS_LANES) == 0,
                  "kv_sparsify: whole warps, and whole rounds of cells per chunk");

    if (a.n_chunk > 0) {
        kvs_stat<T, TRANS><<<dim3(a.n_chunk, a.n_head), bs, 0, stream>>>(a);
    }
    kvs_tau<<<(n_keys + bs - 1)/bs, bs, 0, stream>>>(a);
    if (n_items > 0) {
        kvs_apply<T><<<(n_items + bs - 1)/bs, bs, 0, stream>>>(a);
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
    a.type        = src->type;
    a.n_list      = p.n_list;
    a.n_chunk     = (p.n_list + KVS_CHUNK - 1)/KVS_CHUNK;
    a.n_head      = p.n_head;
    a.head_dim    = p.head_dim;
    a.n_blocks    = (p.head_dim + KVS_BLOCK - 1)/KVS_BLOCK;
    a.n_group     = p.n_group;
    a.scale       = p.scale;
    a.trans       = p.trans;
    a.incremental = p.incremental;

    // scratch from the context's pool, released in stream order after the launches
    const size_t n_keys = (size_t) a.n_group*a.n_head;
    ggml_cuda_pool_alloc<double>   part (ctx.pool(), std::max<size_t>(1, (size_t) a.n_chunk*n_keys*2));
    ggml_cuda_pool_alloc<uint32_t> tbits(ctx.pool(), n_keys);
    a.part  = part.get();
    a.tbits = tbits.get();

    cudaStream_t stream = ctx.stream();
    switch (src->type) {
        case GGML_TYPE_F32:  p.trans ? kvs_launch<GGML_TYPE_F32,  true>(a, stream) : kvs_launch<GGML_TYPE_F32,  false>(a, stream); break;
        case GGML_TYPE_F16:  p.trans ? kvs_launch<GGML_TYPE_F16,  true>(a, stream) : kvs_launch<GGML_TYPE_F16,  false>(a, stream); break;
        case GGML_TYPE_BF16: p.trans ? kvs_launch<GGML_TYPE_BF16, true>(a, stream) : kvs_launch<GGML_TYPE_BF16, false>(a, stream); break;
        case GGML_TYPE_Q8_0: kvs_launch<GGML_TYPE_Q8_0, false>(a, stream); break;
        case GGML_TYPE_Q4_0: kvs_launch<GGML_TYPE_Q4_0, false>(a, stream); break;
        case GGML_TYPE_Q5_0: kvs_launch<GGML_TYPE_Q5_0, false>(a, stream); break;
        default: GGML_ABORT("kv_sparsify: unsupported type %s", ggml_type_name(src->type));
    }
    CUDA_CHECK(cudaGetLastError());
}
