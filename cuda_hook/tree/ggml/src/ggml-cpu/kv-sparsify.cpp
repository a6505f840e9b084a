// SPDX-License-Identifier: MIT
// ElasticKV: CPU kernel of GGML_OP_KV_SPARSIFY: the work split and the phases (the per-value and per-block
// arithmetic, scalar and SIMD, is in kv-sparsify-block.h). The definition it follows is the numpy reference
// (scripts/elastickv/reference.py in the ElasticKV repository); comments below name its steps.
//
// Work split: the cell list is cut into chunks of KV_CHUNK entries and every thread takes a contiguous share of
// the tasks, chunk-major: with at least two chunks per thread a task is a whole chunk (every head of a cell is
// read in one front-to-back sweep of its row: walking the cache head by head strides through it once per head,
// and its page walks cost more than the reads), with fewer (short lists: incremental passes) a (chunk, head) pair,
// so that every thread has work. A (chunk, group, head) sum is the same either way. The phases, separated by barriers:
//   1. the statistic: each task sums |x| of its PROCESS cells per group into its own slot of the work buffer;
//   2. per (group, head): the slots are added in chunk order (so S, and hence tau, is the same for every thread
//      count), the counters are cleared and tau is set (step 3 of the reference);
//   3. zeroing: each task zeroes |x| < tau in its PROCESS cells and counts non-zeros and block histograms into
//      the thread's own counters (integers: their sum does not depend on the order);
//   4. per (group, head): the threads' counters are added into the state.
// A cell's |x| are summed in 8 double lanes (lane j takes values j, j+8, ...; the lanes are then added pairwise),
// a fixed order that any compiler keeps without -ffast-math, so the sums are the same on every x86-64 CPU; the row
// layout sums 4 cells side by side (8 with AVX-512; independent chains), the transposed layout a run of consecutive
// cells over 8 rows at a time (lane = cell, the cells' sums held in registers through the 8 rows; each cell's sum
// runs over its rows in order). A cell's sums are added into its (chunk, group, head) slot in list order.
// Values are thresholded on their magnitude bits: for non-negative values the order of the bits is the order of the
// values, so |x| < tau is an integer compare against ggml_kv_sparsify_tau_bits (the CUDA kernel uses the same),
// which vectorizes and is exact (subnormals included).
#include "kv-sparsify.h"
#include "kv-sparsify-block.h"

#include <algorithm>

namespace {

constexpr int NCOUNT   = 4 + BLOCK + 1; // N_PROC, NNZ_PROC, N_OBS, NNZ_OBS, HIST0..HIST32
constexpr size_t KV_ALIGN = 64;         // work buffer parts start on cache lines

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

// This thread's share of the tasks: a contiguous range of (chunk, span of heads), chunks outermost; f(c, h0, h1).
template <typename F>
inline void kv_for_tasks(const ggml_compute_params * params, const kv_job & job, F && f) {
    const int span   = job.n_chunk >= 2*params->nth ? job.p.n_head : 1; // heads per task
    const int n_span = (job.p.n_head + span - 1)/span;
    const int64_t n_task = (int64_t) n_span*job.n_chunk;
    const int64_t t0 = n_task*params->ith/params->nth;
    const int64_t t1 = n_task*(params->ith + 1)/params->nth;
    for (int64_t t = t0; t < t1; ++t) {
        const int h0 = (int) (t % n_span)*span;
        f((int) (t / n_span), h0, std::min(job.p.n_head, h0 + span));
    }
}

// Runs of a chunk's list entries [e, e + len) with codes >= 0 and consecutive cells (the transposed layout reads a
// run's values of one row as one contiguous span); f(e, cell, len).
template <typename F>
inline void kv_for_runs(const kv_job & job, int e0, int e1, F && f) {
    for (int e = e0; e < e1;) {
        if (job.list[2*e + 1] < 0) {
            ++e;
            continue;
        }
        const int32_t cell = job.list[2*e];
        GGML_ASSERT(cell >= 0 && cell < job.n_cells);
        int len = 1;
        while (e + len < e1 && job.list[2*(e + len) + 1] >= 0 && job.list[2*(e + len)] == cell + len) {
            ++len;
        }
        GGML_ASSERT(cell + len <= job.n_cells);
        f(e, cell, len);
        e += len;
    }
}

// Phase 1: sum and count of |x| over the PROCESS cells of chunk c, heads [h0, h1), per group.
template <ggml_type T, bool TRANS>
void kv_stat_task(const kv_job & job, int c, int h0, int h1) {
    const ggml_tensor * a = job.a;
    const int hd = job.p.head_dim;
    const int e0 = c*KV_CHUNK, e1 = std::min(job.p.n_list, e0 + KV_CHUNK);
    for (int h = h0; h < h1; ++h) {
        for (int g = 0; g < job.p.n_group; ++g) {
            job.slot(c, g, h)[0] = 0.0;
            job.slot(c, g, h)[1] = 0.0;
        }
    }
    if constexpr (TRANS) {
        // one row per embedding index: a run's values of a row are contiguous
        double acc[KV_CHUNK];
        for (int h = h0; h < h1; ++h) {
            std::fill(acc, acc + (e1 - e0), 0.0);
            kv_for_runs(job, e0, e1, [&](int e, int32_t cell, int len) {
                const char * src = (const char *) a->data + (int64_t) h*hd*a->nb[1] + (int64_t) cell*a->nb[0];
                double * acc_run = acc + (e - e0);
                for (int j0 = 0; j0 < hd; j0 += KV_TRANS_ROWS) {
                    const int nr = std::min(KV_TRANS_ROWS, hd - j0);
                    const char * rows = src + (int64_t) j0*a->nb[1];
                    int i = 0;
#if defined(KV_TRANS_SIMD)
                    if constexpr (T != GGML_TYPE_F32) {
                        i = kv_trans_abs_add_rows<T>(rows, a->nb[1], nr, len, acc_run);
                    }
#endif
                    for (int j = 0; j < nr && i < len; ++j) {
                        kv_trans_abs_add<T>(rows + (int64_t) j*a->nb[1] + (int64_t) i*a->nb[0], len - i, acc_run + i);
                    }
                }
            });
            for (int e = e0; e < e1; ++e) {
                const int32_t code = job.list[2*e + 1];
                if (code >= 0 && (code & GGML_KV_SPARSIFY_PROCESS)) {
                    double * s = job.slot(c, code & GGML_KV_SPARSIFY_GROUP_MASK, h);
                    s[0] += acc[e - e0];
                    s[1] += hd;
                }
            }
        }
    } else {
        // the PROCESS cells in batches of NV, whose sums run side by side; each cell's sum is added to its slot in
        // list order, as one cell at a time would
        // values are summed where they are stored, or (quantized types; float types without SIMD loads here)
        // first converted into x
        constexpr bool direct = !is_quant(T) && kv_simd_load<T>;
        constexpr ggml_type S = direct ? T : GGML_TYPE_F32;
        float x[NV][MAX_HEAD_DIM];
        const char * xs[NV];
        const size_t hbytes = kv_head_bytes<T>(hd);
        const size_t qbytes = ggml_type_size(T);
        int batch[NV];
        int nb = 0;
        auto flush = [&]() {
            for (int h = h0; h < h1; ++h) {
                for (int v = 0; v < nb; ++v) {
                    const char * src = (const char *) a->data + job.list[2*batch[v]]*a->nb[1] + h*hbytes;
                    xs[v] = direct ? src : (const char *) x[v];
                    if constexpr (is_quant(T)) {
                        for (int b = 0; b < hd/BLOCK; ++b) {
                            kv_qblock_load<T>(src + b*qbytes, x[v] + b*BLOCK);
                        }
                    } else if constexpr (!direct) {
                        kv_float_load<T>(src, x[v], hd);
                    }
                }
                double sum[NV];
                if (nb == NV) {
                    kv_abs_sums<NV, S>(xs, hd, sum);
                } else {
                    for (int v = 0; v < nb; ++v) {
                        kv_abs_sums<1, S>(xs + v, hd, sum + v);
                    }
                }
                // added in list order; a run of cells of one group in a register (a memory round trip per cell
                // would chain the additions through store forwarding)
                for (int v = 0; v < nb;) {
                    const int g = job.list[2*batch[v] + 1] & GGML_KV_SPARSIFY_GROUP_MASK;
                    double * s = job.slot(c, g, h);
                    double acc = s[0];
                    int w = v;
                    for (; w < nb && (job.list[2*batch[w] + 1] & GGML_KV_SPARSIFY_GROUP_MASK) == g; ++w) {
                        acc += sum[w];
                    }
                    s[0] = acc;
                    s[1] += (double) (w - v)*hd;
                    v = w;
                }
            }
            nb = 0;
        };
        for (int e = e0; e < e1; ++e) {
            const int32_t cell = job.list[2*e], code = job.list[2*e + 1];
            if (code < 0 || !(code & GGML_KV_SPARSIFY_PROCESS)) {
                continue;
            }
            GGML_ASSERT(cell >= 0 && cell < job.n_cells);
            batch[nb++] = e;
            if (nb == NV) {
                flush();
            }
        }
        flush();
    }
}

// Phase 3: zero |x| < tau in the PROCESS cells of chunk c, heads [h0, h1); count into this thread's counters.
template <ggml_type T, bool TRANS>
void kv_zero_task(const kv_job & job, int ith, int c, int h0, int h1) {
    const ggml_tensor * a = job.a;
    const int hd = job.p.head_dim;
    const int n_blocks = (hd + BLOCK - 1)/BLOCK;
    const int e0 = c*KV_CHUNK, e1 = std::min(job.p.n_list, e0 + KV_CHUNK);
    // one (cell, head): its values, survivors, and the histogram of its full blocks' survivors
    auto account = [&](int64_t * k, int32_t code, const int * nnz) {
        int total = 0;
        for (int b = 0; b < n_blocks; ++b) {
            total += nnz[b];
        }
        if (code & GGML_KV_SPARSIFY_PROCESS) { k[0] += hd; k[1] += total; }
        if (code & GGML_KV_SPARSIFY_OBSERVE) { k[2] += hd; k[3] += total; }
        if (code & GGML_KV_SPARSIFY_HIST) {
            for (int b = 0; b < hd/BLOCK; ++b) {
                k[4 + nnz[b]] += 1;
            }
        }
    };
    int nnz_cell[MAX_HEAD_DIM/BLOCK + 1];
    if constexpr (TRANS) {
        // per (block, entry) non-zeros, filled row by row over each run of consecutive cells
        static_assert(MAX_HEAD_DIM/BLOCK <= 32, "block counters");
        uint8_t  nnz[MAX_HEAD_DIM/BLOCK][KV_CHUNK];
        uint32_t tb[KV_CHUNK]; // per entry; 0 (nothing below) for OBSERVE-only entries
        for (int h = h0; h < h1; ++h) {
            for (int b = 0; b < n_blocks; ++b) {
                memset(nnz[b], 0, e1 - e0);
            }
            for (int e = e0; e < e1; ++e) {
                const int32_t code = job.list[2*e + 1];
                tb[e - e0] = code >= 0 && (code & GGML_KV_SPARSIFY_PROCESS)
                    ? job.tbits[(code & GGML_KV_SPARSIFY_GROUP_MASK)*job.p.n_head + h] : 0;
            }
            kv_for_runs(job, e0, e1, [&](int e, int32_t cell, int len) {
                char * dst = (char *) a->data + (int64_t) h*hd*a->nb[1] + (int64_t) cell*a->nb[0];
                // rows in groups of at most KV_TRANS_ROWS that never straddle a 32-row block (one counter each)
                for (int j0 = 0; j0 < hd;) {
                    const int nr = std::min({KV_TRANS_ROWS, hd - j0, BLOCK - j0 % BLOCK});
                    char * rows = dst + (int64_t) j0*a->nb[1];
                    uint8_t * cnt = nnz[j0/BLOCK] + (e - e0);
                    int i = 0;
#if defined(KV_TRANS_SIMD)
                    if constexpr (T != GGML_TYPE_F32) {
                        i = kv_trans_zero_rows<T>(rows, a->nb[1], nr, len, tb + (e - e0), cnt);
                    }
#endif
                    for (int j = 0; j < nr && i < len; ++j) {
                        kv_trans_zero<T>(rows + (int64_t) j*a->nb[1] + (int64_t) i*a->nb[0], len - i, tb + (e - e0) + i, cnt + i);
                    }
                    j0 += nr;
                }
            });
            for (int e = e0; e < e1; ++e) {
                const int32_t code = job.list[2*e + 1];
                if (code < 0) {
                    continue;
                }
                for (int b = 0; b < n_blocks; ++b) {
                    nnz_cell[b] = nnz[b][e - e0];
                }
                account(job.count(ith, code & GGML_KV_SPARSIFY_GROUP_MASK, h), code, nnz_cell);
            }
        }
    } else {
        const size_t bsz = is_quant(T) ? ggml_type_size(T) : BLOCK*ggml_type_size(T); // bytes of a 32-block
        const size_t hbytes = kv_head_bytes<T>(hd);
        for (int e = e0; e < e1; ++e) {
            const int32_t cell = job.list[2*e], code = job.list[2*e + 1];
            if (code < 0) {
                continue;
            }
            GGML_ASSERT(cell >= 0 && cell < job.n_cells);
            const int g = code & GGML_KV_SPARSIFY_GROUP_MASK;
            const bool process = (code & GGML_KV_SPARSIFY_PROCESS) != 0;
            char * row = (char *) a->data + cell*a->nb[1];
            for (int h = h0; h < h1; ++h) {
                char * base = row + h*hbytes;
                int64_t * k = job.count(ith, g, h);
                const uint32_t tb = process ? job.tbits[g*job.p.n_head + h] : 0; // 0: nothing below
                if constexpr (is_quant(T)) {
                    for (int b = 0; b < n_blocks; ++b) {
                        nnz_cell[b] = kv_qblock_zero<T>(base + b*bsz, tb);
                    }
                } else {
                    for (int b = 0; b < hd/BLOCK; ++b) {
                        nnz_cell[b] = kv_float_zero_block<T>(base + b*bsz, tb);
                    }
                    if (hd % BLOCK) {
                        nnz_cell[hd/BLOCK] = kv_float_zero<T>(base + (hd/BLOCK)*bsz, hd % BLOCK, tb);
                    }
                }
                account(k, code, nnz_cell);
            }
        }
    }
}

template <ggml_type T, bool TRANS>
void kv_sparsify_run(const ggml_compute_params * params, const kv_job & job) {
    const int ith = params->ith, nth = params->nth;
    const int n_gh = job.p.n_group*job.p.n_head;

    kv_for_tasks(params, job, [&](int c, int h0, int h1) { kv_stat_task<T, TRANS>(job, c, h0, h1); });
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

    kv_for_tasks(params, job, [&](int c, int h0, int h1) { kv_zero_task<T, TRANS>(job, ith, c, h0, h1); });
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
