// SPDX-License-Identifier: MIT
// ElasticKV dumps: .npy writing, K/V rows as float32, the cache's cell table. See llama-elastickv-dump.h.
#include "llama-elastickv-dump.h"

#include "ggml-backend.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

void llama_elastickv_write_npy(const std::string & path, const char * descr, const std::vector<int64_t> & shape,
                               const void * data, size_t nbytes) {
    std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (";
    for (size_t i = 0; i < shape.size(); ++i) {
        header += std::to_string(shape[i]) + ", ";
    }
    if (shape.size() > 1) {
        header.resize(header.size() - 1);
        header.back() = ')';
    } else {
        header.back() = ')';
    }
    header += ", }";
    const size_t preamble = 10;
    const size_t total = ((preamble + header.size() + 1 + 63)/64)*64;
    header.append(total - preamble - header.size() - 1, ' ');
    header += '\n';

    FILE * f = fopen(path.c_str(), "wb");
    if (!f) {
        throw std::runtime_error("elastickv: cannot write " + path + ": " + strerror(errno));
    }
    const uint16_t hlen = (uint16_t) header.size();
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fwrite(&hlen, 2, 1, f);
    fwrite(header.data(), 1, header.size(), f);
    fwrite(data, 1, nbytes, f);
    fclose(f);
}

void llama_elastickv_read_rows(const ggml_tensor * t, uint32_t strm, bool trans, int64_t n_embd,
                               const std::vector<uint32_t> & cells, std::vector<float> & out) {
    if (cells.empty()) {
        return;
    }
    const auto * traits = ggml_get_type_traits(t->type);
    // f32 has no to_float: copy it
    auto to_float = [&](const void * src, float * dst, int64_t n) {
        if (t->type == GGML_TYPE_F32) {
            memcpy(dst, src, n*sizeof(float));
        } else {
            traits->to_float(src, dst, n);
        }
    };
    std::vector<uint8_t> raw(t->nb[2]);
    ggml_backend_tensor_get(t, raw.data(), strm*t->nb[2], t->nb[2]);
    std::vector<float> row(n_embd);
    const size_t elt = ggml_type_size(t->type);
    for (const uint32_t c : cells) {
        if (trans) {
            for (int64_t j = 0; j < n_embd; ++j) {
                to_float(raw.data() + (j*t->ne[1] + c)*elt, row.data() + j, 1); // ne[1] = kv_size
            }
        } else {
            to_float(raw.data() + c*t->nb[1], row.data(), n_embd);
        }
        out.insert(out.end(), row.begin(), row.end());
    }
}

void llama_elastickv_write_cells(const std::string & path, const llama_kv_cells_vec & streams) {
    std::vector<int32_t> rows;
    for (size_t strm = 0; strm < streams.size(); ++strm) {
        const auto & cells = streams[strm];
        for (uint32_t c = 0; c < cells.size(); ++c) {
            if (cells.is_empty(c)) {
                continue;
            }
            for (llama_seq_id s = 0; s < LLAMA_MAX_SEQ; ++s) {
                if (cells.seq_has(c, s)) {
                    rows.insert(rows.end(), { (int32_t) strm, (int32_t) c, cells.pos_get(c), s });
                }
            }
        }
    }
    llama_elastickv_write_npy(path, "<i4", { (int64_t) rows.size()/4, 4 }, rows.data(), rows.size()*sizeof(int32_t));
}
