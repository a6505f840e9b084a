#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Compression accounting: what ElasticKV's zeros are worth in bytes, beside llama.cpp's quantized caches.

Three figures for every row of the perplexity tables (SPEC.md §1), all from the runs' own numbers:
  nominal   N / nnz: entries over non-zero entries (the original release's "compression");
  bitmap    16 N / (N + 16 nnz): a dense f16 cache against a 1-bit mask plus the f16 non-zeros, i.e. what a
            sparse storage format could save (no such format exists in llama.cpp);
  resident  f16-equivalent bytes / the real bytes of the KV buffers llama.cpp allocated (from its log).
and the matching bits per stored value (16 / figure). ElasticKV writes zeros into a dense cache: its resident
figure is 1.00x, and only the quantized caches (q8_0 1.88x, q5_1 2.67x, q4_0 3.56x by construction) save
memory today. ``quality`` puts each row's KLD beside its bits per value, so the two kinds of saving can be
compared on one axis.

Reads only results/ -> results/f7_compression_proof.json.
"""

from __future__ import annotations

import sys

import pandas as pd

from elastickv import config, frame, paths, results, startup
from elastickv import kvanalysis as ka

DEFAULTS = {
    "artifact": "Compression accounting",
    "inputs": [],      # perplexity tables (scripts/eval/ppl_tables.py)
    "output": "results/f7_compression_proof.json",
}


def compression_rows(agg: dict) -> list[dict]:
    """The figures of every entry of one perplexity table (see the module text)."""
    e = frame.entries(agg)
    if e.empty:
        return []
    bitmap = e["bitmap"].astype(float).fillna(1.0)      # no bitmap figure: dense
    rows = pd.DataFrame({
        "table": agg["artifact"], "model": e["model"], "ctx": e["ctx"], "row": e["row"], "cache": e["cache"],
        "elastickv": e["elastickv"].notna(), "sparsity_k": e["sparsity_k"], "sparsity_v": e["sparsity_v"],
        "nominal": e["nominal"], "bitmap": bitmap, "resident": e["resident"], "kv_mib": e["kv_mib"],
        "bits_per_value_resident": 16.0 / e["resident"],
        "bits_per_value_bitmap": 16.0 / (bitmap * e["resident"]),
        "kld": e["kld"], "delta_ppl_pct": e["ppl_delta_pct"],
    })
    return ka.jsonable(rows.to_dict("records"))     # Python types, a missing KLD as None


def main(argv: list[str] | None = None) -> int:
    ap = startup.driver_parser(__doc__, "f7_compression")
    args = startup.parse_args(ap, argv)
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        rows, sources = [], []
        for rel in cfg["inputs"]:
            rows += compression_rows(results.load_input(rel))
            sources.append(rel)
        notes = ("nominal = N/nnz; bitmap = 16N/(N+16nnz) (hypothetical sparse format: 1-bit mask + f16 non-zeros); "
                 "resident = f16-equivalent bytes / real KV bytes from llama.cpp's log. A dense cache full of zeros is "
                 "1.00x resident: ElasticKV as shipped saves no memory; bits_per_value_bitmap is what it would need "
                 "with a bitmap format, bits_per_value_resident what each row really uses.")
        agg = results.aggregate(cfg["artifact"], "scripts/analysis/f7_compression_proof.py", cfg, {"rows": rows},
                                sources, notes)
        results.write_aggregate(paths.ROOT / cfg["output"], agg, force=args.force)
    except startup.driver_errors() as e:
        return startup.fail(__file__, e)
    print("| model | ctx | row | nominal | bitmap | resident | bits/value (real) | bits/value (bitmap) | KLD |\n" + "|---" * 9 + "|")
    for r in rows:
        if r["table"] in ("Table 2", "Table 4"):
            kld = f"{r['kld']:.5f}" if r["kld"] is not None else "—"
            print(f"| {r['model']} | {r['ctx']} | {r['row']} | {r['nominal']:.2f}× | {r['bitmap']:.2f}× | {r['resident']:.2f}× "
                  f"| {r['bits_per_value_resident']:.2f} | {r['bits_per_value_bitmap']:.2f} | {kld} |")
    print(f"\nf7_compression_proof: {cfg['output']} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
