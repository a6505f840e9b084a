// SPDX-License-Identifier: Apache-2.0
// Host run of the CUDA kernels' per-thread logic (ggml/src/ggml-cuda/kv-sparsify-thread.cuh in the patched tree),
// built by nvcc into a shared library that tests/cuda_host.py drives through ctypes. kvs_host_pass walks the grids
// of the three launches of ggml_cuda_op_kv_sparsify (kv-sparsify.cu) on the CPU, block by block and thread by
// thread, calling the same __host__ __device__ functions the kernels call. What it replaces, and therefore does
// not test: the warp shuffles of the stat kernel (written out here as kvs_lanes_combine, their order), shared
// memory and __syncthreads, the atomics of the apply kernel (integer counts, added here in grid order), the
// launch itself and timing.
#include "kv-sparsify-thread.cuh"

#include <vector>

namespace {

constexpr int HOST_BLOCK_SIZE = 256; // CUDA_KV_SPARSIFY_BLOCK_SIZE

template <ggml_type T, bool TRANS>
void host_stat(const kvs_args & a) {
    std::vector<double> cs(KVS_CHUNK);
    for (int h = 0; h < a.n_head; ++h) {           // blockIdx.y
        for (int c = 0; c < a.n_chunk; ++c) {      // blockIdx.x
            const int e0 = c*KVS_CHUNK;
            const int ne = a.n_list - e0 < KVS_CHUNK ? a.n_list - e0 : KVS_CHUNK;
            if constexpr (TRANS) {
                for (int t = 0; t < ne; ++t) {
                    cs[t] = kvs_trans_cell_sum<T>(a, h, e0 + t);
                }
            } else {
                for (int r = 0; r < ne; ++r) {
                    double lanes[KVS_LANES];
                    for (int lane = 0; lane < KVS_LANES; ++lane) {
                        lanes[lane] = kvs_row_lane_sum<T>(a, h, e0 + r, lane);
                    }
                    cs[r] = kvs_lanes_combine(lanes);
                }
            }
            for (int g = 0; g < a.n_group; ++g) {
                kvs_chunk_slot(a, cs.data(), c, g, h);
            }
        }
    }
}

template <ggml_type T>
void host_apply(const kvs_args & a) {
    const int64_t n_items = (int64_t) a.n_head*a.n_list*a.n_blocks;
    const int64_t n_grid  = (n_items + HOST_BLOCK_SIZE - 1)/HOST_BLOCK_SIZE*HOST_BLOCK_SIZE;
    for (int64_t t = 0; t < n_grid; ++t) {
        int h, e, b;
        if (!kvs_apply_item(a, t, h, e, b)) {
            continue;
        }
        const kvs_apply_out o = kvs_apply_block<T>(a, h, e, b);
        if (o.key_proc >= 0) {
            a.state[(int64_t) o.key_proc*KVS_NSTATE + GGML_KV_SPARSIFY_N_PROC]   += o.len;
            a.state[(int64_t) o.key_proc*KVS_NSTATE + GGML_KV_SPARSIFY_NNZ_PROC] += o.nnz;
        }
        if (o.key_obs >= 0) {
            a.state[(int64_t) o.key_obs*KVS_NSTATE + GGML_KV_SPARSIFY_N_OBS]   += o.len;
            a.state[(int64_t) o.key_obs*KVS_NSTATE + GGML_KV_SPARSIFY_NNZ_OBS] += o.nnz;
        }
        if (o.key_hist >= 0) {
            a.state[(int64_t) o.key_hist*KVS_NSTATE + GGML_KV_SPARSIFY_HIST0 + o.nnz] += 1.0;
        }
    }
}

template <ggml_type T, bool TRANS>
void host_pass(const kvs_args & a) {
    host_stat<T, TRANS>(a);
    for (int key = 0; key < a.n_group*a.n_head; ++key) {
        kvs_tau_key(a, key);
    }
    host_apply<T>(a);
}

} // namespace

// One pass over `data` (n_cells cells; row layout: row pitch nb1 bytes; transposed: value j of head h of a cell at
// (h*head_dim + j)*nb1 + cell*nb0). Same arguments as ggml_kv_sparsify; returns 0, or -1 for an unsupported type.
extern "C" int kvs_host_pass(void * data, int type, int64_t nb0, int64_t nb1, int64_t n_cells, const int32_t * list,
                             int n_list, double * state, int n_head, int head_dim, int n_group, float scale, bool trans,
                             bool incremental) {
    kvs_args a;
    a.data        = (char *) data;
    a.nb0         = nb0;
    a.nb1         = nb1;
    a.n_cells     = n_cells;
    a.list        = list;
    a.state       = state;
    a.type        = (ggml_type) type;
    a.n_list      = n_list;
    a.n_chunk     = (n_list + KVS_CHUNK - 1)/KVS_CHUNK;
    a.n_head      = n_head;
    a.head_dim    = head_dim;
    a.n_blocks    = (head_dim + KVS_BLOCK - 1)/KVS_BLOCK;
    a.n_group     = n_group;
    a.scale       = scale;
    a.trans       = trans;
    a.incremental = incremental;
    std::vector<double>   part((size_t) a.n_chunk*n_group*n_head*2 + 1);
    std::vector<uint32_t> tbits((size_t) n_group*n_head);
    a.part  = part.data();
    a.tbits = tbits.data();
    switch (a.type) {
        case GGML_TYPE_F32:  trans ? host_pass<GGML_TYPE_F32,  true>(a) : host_pass<GGML_TYPE_F32,  false>(a); return 0;
        case GGML_TYPE_F16:  trans ? host_pass<GGML_TYPE_F16,  true>(a) : host_pass<GGML_TYPE_F16,  false>(a); return 0;
        case GGML_TYPE_BF16: trans ? host_pass<GGML_TYPE_BF16, true>(a) : host_pass<GGML_TYPE_BF16, false>(a); return 0;
        case GGML_TYPE_Q8_0: if (trans) { return -1; } host_pass<GGML_TYPE_Q8_0, false>(a); return 0;
        case GGML_TYPE_Q4_0: if (trans) { return -1; } host_pass<GGML_TYPE_Q4_0, false>(a); return 0;
        case GGML_TYPE_Q5_0: if (trans) { return -1; } host_pass<GGML_TYPE_Q5_0, false>(a); return 0;
        default: return -1;
    }
}

// ggml_kv_sparsify_tau_bits, for a direct test of the threshold's bits.
extern "C" uint32_t kvs_host_tau_bits(double tau, int type) {
    return ggml_kv_sparsify_tau_bits(tau, (ggml_type) type);
}
