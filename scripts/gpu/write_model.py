#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A llama-architecture GGUF model with seeded random weights, written with the gguf package: what the standing
GPU check (scripts/gpu/verify.sh) runs on, since the default model (98 MB) is too large to carry to the GPU
machine. Random weights are enough for what it checks: the hook on the GPU against the hook on the CPU in the same
build, sanitizers, and decode speed.

Shapes: ``smollm2-135m`` is SmolLM2-135M's (30 layers, 576 wide, 9 query heads, 3 KV heads of 64, FFN 1536,
vocabulary 49152, tied output), so the KV cache, the hook's passes and llama-bench's decode are those of the
default model; ``llama3-8b`` is Llama-3-8B's (32 layers, 4096 wide, 32 query heads, 8 KV heads of 128, FFN 14336,
vocabulary 128256, its own output matrix; q4_0 or q8_0 only, about 4.3 GB in q4_0): the realistic shape of the
decode-overhead benchmark (weights and KV bytes per token of an 8B model), its matrices written as random codes of
the quantized type with one scale (quantizing 8e9 random floats with numpy would take long; the timing does not
depend on the values); ``tiny`` (2 layers, vocabulary 512) is for the dry run and the tests. The tokenizer is a byte-level
BPE (GPT-2 style: the 256 byte symbols, a few merges, padding to the vocabulary size), so any text tokenizes.

  scripts/gpu/write_model.py --out build/gpu-work/model-f32.gguf
  scripts/gpu/write_model.py --shape tiny --type f16 --out /tmp/tiny.gguf
  scripts/gpu/write_model.py --shape llama3-8b --type q4_0 --out build/bench/llama3-8b-random-q4_0.gguf
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

import numpy as np

SHAPES = {
    "smollm2-135m": {"n_layer": 30, "n_embd": 576, "n_head": 9, "n_head_kv": 3, "n_ff": 1536, "n_vocab": 49152,
                     "n_ctx_train": 8192, "rope_base": 100000.0},
    "llama3-8b": {"n_layer": 32, "n_embd": 4096, "n_head": 32, "n_head_kv": 8, "n_ff": 14336, "n_vocab": 128256,
                  "n_ctx_train": 8192, "rope_base": 500000.0, "tied": False, "codes": True},
    "tiny": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_head_kv": 2, "n_ff": 256, "n_vocab": 512,
             "n_ctx_train": 4096, "rope_base": 10000.0},
}
CODE_TYPES = ("q8_0", "q4_0")  # the types a shape with "codes" (random codes, one scale) is written in
TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (bytes_to_unicode), in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def vocabulary(n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """tokens, token types, merges: the 256 byte symbols, merges of a space with each lower-case letter and of a few
    common letter pairs, two control tokens, and unused padding up to ``n_vocab``."""
    tokens = byte_symbols()
    space = tokens[ord(" ")]
    pairs = [(space, c) for c in string.ascii_lowercase] + [tuple(p) for p in ("th", "he", "in", "er", "an", "re", "on")]
    merges = [f"{a} {b}" for a, b in pairs]
    tokens += [a + b for a, b in pairs]
    types = [1] * len(tokens)  # normal
    tokens += ["<|bos|>", "<|eos|>"]
    types += [3, 3]  # control
    if n_vocab < len(tokens):
        raise ValueError(f"a vocabulary of {n_vocab} is smaller than the {len(tokens)} tokens the tokenizer needs")
    while len(tokens) < n_vocab:
        tokens.append(f"<|unused{len(tokens)}|>")
        types.append(5)  # unused
    return tokens, types, merges


ARCHS = ("llama", "gemma2", "mamba", "jamba")
# gemma2: attention layers alternating between a sliding-window and a full cache (iSWA); mamba: no attention, a
# recurrent state instead of a KV cache (d_inner = 2 n_embd, d_state 16, d_conv 4, dt_rank n_embd/16); jamba: hybrid
# memory, even layers Mamba blocks (recurrent state), odd layers attention (KV cache), each with a feed-forward


def write(out: Path, shape: str = "smollm2-135m", wtype: str = "f32", seed: int = 0, arch: str = "llama",
          n_swa: int = 16) -> dict:
    import gguf
    from gguf import quants

    s = SHAPES[shape]
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r}: one of {', '.join(ARCHS)}")
    if s.get("codes") and wtype not in CODE_TYPES:
        raise ValueError(f"the {shape} shape is written in {' or '.join(CODE_TYPES)} only, not {wtype}")
    hd = s["n_embd"] // s["n_head"]
    rng = np.random.default_rng(seed)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
             "q4_1": gguf.GGMLQuantizationType.Q4_1}[wtype]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
             "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[wtype]

    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(f"elastickv-random-{shape}" + ("" if arch == "llama" else f"-{arch}"))
    if arch == "gemma2":
        w.add_sliding_window(n_swa)
        w.add_key_length(hd)
        w.add_value_length(hd)
    if arch in ("mamba", "jamba"):
        w.add_ssm_conv_kernel(4)
        w.add_ssm_inner_size(2 * s["n_embd"])
        w.add_ssm_state_size(16)
        w.add_ssm_time_step_rank(s["n_embd"] // 16)
    w.add_context_length(s["n_ctx_train"])
    w.add_embedding_length(s["n_embd"])
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    if arch == "jamba":  # a KV head count of 0 marks a recurrent layer
        w.add_head_count_kv([0 if i % 2 == 0 else s["n_head_kv"] for i in range(s["n_layer"])])
    else:
        w.add_head_count_kv(s["n_head_kv"])
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(s["rope_base"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s["n_vocab"])
    w.add_file_type(int(ftype))
    tokens, types, merges = vocabulary(s["n_vocab"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|bos|>"))
    w.add_eos_token_id(tokens.index("<|eos|>"))
    w.add_add_bos_token(False)

    def codes(rows: int, cols: int, std: float) -> np.ndarray:
        """A q8_0/q4_0 matrix of uniformly random codes and one scale d, so that the values' deviation is std:
        blocks of 32 values as llama.cpp stores them (f16 d, then 32 int8 or 16 bytes of two 4-bit codes)."""
        block, qbytes = (34, 32) if wtype == "q8_0" else (18, 16)
        spread = np.sqrt(((256 if wtype == "q8_0" else 16) ** 2 - 1) / 12)  # deviation of a uniform code
        raw = rng.integers(0, 256, size=(rows, cols // 32, block), dtype=np.uint8)
        raw[:, :, : block - qbytes] = np.frombuffer(np.float16(std / spread).tobytes(), dtype=np.uint8)
        return raw.reshape(rows, -1)

    def matrix(rows: int, cols: int, std: float) -> np.ndarray:
        """A weight matrix as it is stored: seeded normal values, quantized to the weight type, or random codes."""
        if s.get("codes"):
            return codes(rows, cols, std)
        x = (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float32)
        return x if qtype == gguf.GGMLQuantizationType.F32 else quants.quantize(x, qtype)

    def add(name: str, x: np.ndarray) -> None:
        # norms stay F32, as llama.cpp's own conversions keep them
        w.add_tensor(name, x, raw_dtype=None if x.dtype == np.float32 else qtype)

    e, ff = s["n_embd"], s["n_ff"]
    add("token_embd.weight", matrix(s["n_vocab"], e, 0.02))
    if not s.get("tied", True):
        add("output.weight", matrix(s["n_vocab"], e, 0.02))
    add("output_norm.weight", np.ones(e, dtype=np.float32))
    for i in range(s["n_layer"]):
        add(f"blk.{i}.attn_norm.weight", np.ones(e, dtype=np.float32))
        if arch == "mamba" or (arch == "jamba" and i % 2 == 0):  # a selective state-space block, no attention
            di, ds, dr = 2 * e, 16, e // 16
            if arch == "jamba":
                add(f"blk.{i}.ssm_dt_norm.weight", np.ones(dr, dtype=np.float32))
                add(f"blk.{i}.ssm_b_norm.weight", np.ones(ds, dtype=np.float32))
                add(f"blk.{i}.ssm_c_norm.weight", np.ones(ds, dtype=np.float32))
            add(f"blk.{i}.ssm_in.weight", matrix(2 * di, e, 0.02))
            add(f"blk.{i}.ssm_conv1d.weight", (rng.standard_normal((di, 4)) * 0.1).astype(np.float32))
            add(f"blk.{i}.ssm_conv1d.bias", np.zeros(di, dtype=np.float32))
            add(f"blk.{i}.ssm_x.weight", matrix(dr + 2 * ds, di, 0.02))
            add(f"blk.{i}.ssm_dt.weight", (rng.standard_normal((di, dr)) * 0.1).astype(np.float32))
            add(f"blk.{i}.ssm_dt.bias", np.zeros(di, dtype=np.float32))
            add(f"blk.{i}.ssm_a", -np.tile(np.arange(1, ds + 1, dtype=np.float32), (di, 1)))
            add(f"blk.{i}.ssm_d", np.ones(di, dtype=np.float32))
            add(f"blk.{i}.ssm_out.weight", matrix(e, di, 0.02))
            if arch == "mamba":
                continue  # a Mamba block has no feed-forward
        else:  # attention (Jamba's attention layers have no positional encoding; the tensors are the same)
            add(f"blk.{i}.attn_q.weight", matrix(s["n_head"] * hd, e, 0.02))
            add(f"blk.{i}.attn_k.weight", matrix(s["n_head_kv"] * hd, e, 0.02))
            add(f"blk.{i}.attn_v.weight", matrix(s["n_head_kv"] * hd, e, 0.02))
            add(f"blk.{i}.attn_output.weight", matrix(e, s["n_head"] * hd, 0.02))
        if arch == "gemma2":
            add(f"blk.{i}.post_attention_norm.weight", np.ones(e, dtype=np.float32))
            add(f"blk.{i}.post_ffw_norm.weight", np.ones(e, dtype=np.float32))
        add(f"blk.{i}.ffn_norm.weight", np.ones(e, dtype=np.float32))
        add(f"blk.{i}.ffn_gate.weight", matrix(ff, e, 0.02))
        add(f"blk.{i}.ffn_up.weight", matrix(ff, e, 0.02))
        add(f"blk.{i}.ffn_down.weight", matrix(e, ff, 0.02))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"file": out.name, "shape": shape, "type": wtype, "seed": seed, "arch": arch,
            "bytes": out.stat().st_size} | s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the .gguf file to write")
    ap.add_argument("--shape", choices=SHAPES, default="smollm2-135m", help="model shape (default: %(default)s)")
    ap.add_argument("--type", dest="wtype", choices=TYPES, default="f32",
                    help="type of the weight matrices (default: %(default)s; norms stay f32)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights (default: %(default)s)")
    ap.add_argument("--arch", choices=ARCHS, default="llama",
                    help="architecture (default: %(default)s; gemma2: a sliding-window cache beside the full one; "
                         "mamba: recurrent, no KV cache; jamba: hybrid, Mamba and attention layers)")
    args = ap.parse_args()
    try:
        info = write(args.out, args.shape, args.wtype, args.seed, args.arch)
    except (ImportError, ValueError, OSError) as e:
        print(f"write_model: {e}", file=sys.stderr)
        return 1
    print(f"write_model: {args.out} ({info['shape']}, {info['type']}, seed {info['seed']}, "
          f"{info['bytes'] / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
