# SPDX-License-Identifier: Apache-2.0
"""Model files derived from a pinned one (configs/models.yaml, source kind ``dequantized``).

``dequantize(src, dst)`` writes ``src`` with every tensor dequantized to F32 and every metadata key kept (the file
type becomes ALL_F32). The weights are the same numbers; what changes is the arithmetic: llama.cpp's CPU matrix
products quantize the activations to 8 bits per block for quantized weights (Q4_1 -> Q8_1), which turns a change in
the last bit of an input (another order of summation) into a visible change of the output, while F32 weights keep the
products in F32. The output is byte-for-byte deterministic for a given gguf package version (requirements.txt pins
it), so the derived file is pinned by sha256 like the others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def dequantize(src: Path, dst: Path) -> None:
    import gguf
    from gguf.quants import dequantize as deq

    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # written by the writer itself
        if name == "general.file_type":
            writer.add_uint32(name, int(gguf.LlamaFileType.ALL_F32))
        elif field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_array(name, field.contents())
        else:
            writer.add_key_value(name, field.contents(), field.types[0])
    for t in reader.tensors:
        values = deq(t.data, t.tensor_type).astype(np.float32)
        writer.add_tensor(t.name, values.reshape([int(x) for x in reversed(t.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
