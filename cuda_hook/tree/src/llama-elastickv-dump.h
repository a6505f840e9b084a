// SPDX-License-Identifier: MIT
// ElasticKV dumps (ELASTICKV_DUMP): what every dumping path shares. C-order .npy files, the K/V rows of a
// list of cells read back as float32, and the cache's own table of occupied cells (read from llama_kv_cells,
// independently of the cell lists the passes build, so the tests can check that a pass covered them all).
#pragma once

#include "ggml.h"
#include "llama-kv-cells.h"

#include <cstdint>
#include <string>
#include <vector>

// Writes a C-order .npy array (format 1.0); descr is a numpy type string such as "<f4", "<i4" or "|u1".
void llama_elastickv_write_npy(const std::string & path, const char * descr, const std::vector<int64_t> & shape,
                               const void * data, size_t nbytes);

// Appends to out the n_embd values of each listed cell of stream strm of a K or V cache tensor, as float32
// (dequantized for quantized types). trans: V stored transposed (value j of cell c at j*kv_size + c).
void llama_elastickv_read_rows(const ggml_tensor * t, uint32_t strm, bool trans, int64_t n_embd,
                               const std::vector<uint32_t> & cells, std::vector<float> & out);

// Writes int32 [m, 4] rows (stream, cell, pos, seq): one per sequence that each non-empty cell belongs to,
// over every cell index of every stream of the cache, in (stream, cell, seq) order.
void llama_elastickv_write_cells(const std::string & path, const llama_kv_cells_vec & streams);
