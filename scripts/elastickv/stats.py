# SPDX-License-Identifier: Apache-2.0
"""Reading ``ELASTICKV_STATS`` JSONL files and turning them into sparsity and compression figures.

A record ``{"record": "head", ...}`` describes one (pass, sequence, layer, K/V, head) after the pass:
``n``/``nnz`` over the entries thresholded by the pass, ``n_obs``/``nnz_obs`` over every entry of the
sequence's cells (sinks included), ``hist`` the number of 32-value blocks with 0..32 survivors.
The state of a cache is the *last* pass of each sequence before it is rewound (``epoch``): those records
are what the run-level figures below are computed from.

Compression accounting (SPEC.md §1): nominal = N / nnz; bitmap = 16 N / (N + 16 nnz) (dense f16 against a
1-bit mask plus f16 non-zeros); resident = f16 bytes of a full-context cache / real bytes of the KV cache
(ppl.resident_ratio, from the log), which zeroing never changes and only a physical cap (ELASTICKV_KV_CELLS)
or a quantized type raises.
"""

from __future__ import annotations

import json
import lzma
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from . import tools


def read(path: Path) -> tuple[list[dict], list[dict]]:
    """(config records, head records) of a stats file."""
    configs, heads = [], []
    with tools.open_text(path) as f:  # xz (the archive's), gzip (older copies) or plain
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            (configs if rec.get("record") == "config" else heads).append(rec)
    return configs, heads


#: xz settings of the archive's stats files: about 9x smaller than the text, 1.7x smaller than gzip (the tracked
#: results must leave room for the GPU check's pack: 64 MiB per run on the GPU machine)
XZ_PRESET = 9 | lzma.PRESET_EXTREME


def compress(path: Path) -> Path:
    """Compresses a finished stats file with xz (for the archive; plain or gzipped input) and returns the new path
    (``<name>.stats.jsonl.xz``); the input is removed."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix == ".gz" else path
    xz = base.with_name(base.name + ".xz")
    tmp = xz.with_name(xz.name + ".tmp")
    with tools.open_text(path) as fin, lzma.open(tmp, "wt", preset=XZ_PRESET) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    tmp.replace(xz)
    path.unlink()
    return xz


def final_records(heads: list[dict]) -> list[dict]:
    """The records of the last pass of every (context, sequence, epoch)."""
    last: dict[tuple, int] = {}
    for r in heads:
        key = (r["ctx"], r["seq"], r["epoch"])
        last[key] = max(last.get(key, -1), r["pass"])
    return [r for r in heads if last[(r["ctx"], r["seq"], r["epoch"])] == r["pass"]]


def nominal(n: float, nnz: float) -> float:
    return n / nnz if nnz else float("inf")


def bitmap(n: float, nnz: float) -> float:
    return 16.0 * n / (n + 16.0 * nnz) if n else float("nan")


def summarize(heads: list[dict]) -> dict:
    """Run-level figures from the final state of every sequence.

    Returns sparsity of K and V over all entries (``*_all``, sinks included) and over the thresholded
    region (``*_region``), nominal and bitmap compression of K+V together, the number of final states and
    passes, per-layer sparsity, and the survivor histogram per K/V.
    """
    final = final_records(heads)
    if not final:
        raise ValueError("the stats file holds no pass (was the context shorter than ELASTICKV_WARM?)")
    tot = {kv: {"n_obs": 0.0, "nnz_obs": 0.0, "n": 0.0, "nnz": 0.0} for kv in ("k", "v")}
    hist = {kv: np.zeros(33) for kv in ("k", "v")}
    layer = defaultdict(lambda: [0.0, 0.0])
    for r in final:
        t = tot[r["kv"]]
        t["n_obs"] += r["n_obs"]
        t["nnz_obs"] += r["nnz_obs"]
        t["n"] += r["n"]
        t["nnz"] += r["nnz"]
        hist[r["kv"]] += np.asarray(r["hist"], dtype=float)
        acc = layer[(r["layer"], r["kv"])]
        acc[0] += r["n_obs"]
        acc[1] += r["nnz_obs"]

    def sparsity(n: float, nnz: float) -> float | None:
        return 1.0 - nnz / n if n else None

    n_all = tot["k"]["n_obs"] + tot["v"]["n_obs"]
    nnz_all = tot["k"]["nnz_obs"] + tot["v"]["nnz_obs"]
    out = {
        "n_states": len({(r["ctx"], r["seq"], r["epoch"]) for r in final}),
        "n_passes": len({(r["ctx"], r["pass"]) for r in heads}),
        "sparsity_k_all": sparsity(tot["k"]["n_obs"], tot["k"]["nnz_obs"]),
        "sparsity_v_all": sparsity(tot["v"]["n_obs"], tot["v"]["nnz_obs"]),
        "sparsity_k_region": sparsity(tot["k"]["n"], tot["k"]["nnz"]),
        "sparsity_v_region": sparsity(tot["v"]["n"], tot["v"]["nnz"]),
        "n_values": n_all,
        "nnz_values": nnz_all,
        "nominal": nominal(n_all, nnz_all),
        "bitmap": bitmap(n_all, nnz_all),
        "per_layer": sorted(
            ({"layer": il, "kv": kv, "sparsity": sparsity(n, nnz)} for (il, kv), (n, nnz) in layer.items()),
            key=lambda d: (d["layer"], d["kv"])),
        "hist": {kv: hist[kv].astype(int).tolist() for kv in ("k", "v")},
    }
    return out


def per_head(heads: list[dict]) -> list[dict]:
    """Sparsity of every (layer, K/V, head) in the final states, for per-head reports."""
    acc = defaultdict(lambda: [0.0, 0.0])
    for r in final_records(heads):
        a = acc[(r["layer"], r["kv"], r["head"])]
        a[0] += r["n_obs"]
        a[1] += r["nnz_obs"]
    out = []
    for (il, kv, h), (n, nnz) in sorted(acc.items()):
        out.append({"layer": il, "kv": kv, "head": h, "sparsity": 1.0 - nnz / n if n else None})
    return out


# ---------------------------------------------------------------------------------------------- baselines
# With ELASTICKV_POLICY other than elastickv the hook writes, per pass:
#   {"record": "evict", ctx, pass, seq, pos_max, layer, head, n, budget, kept}   (token policies; per KV head;
#                                                                                  n: the logical length)
#   {"record": "evict_pass", ctx, pass, seq, pos_max, scope, n_logical, budget,   (token policies, hook with the
#    resident_before, freed, resident_after, union_kept, kv_size, used_after,     physical cap; per sequence)
#    ms}
#   {"record": "entries", ctx, pass, layer, kv, n_obs, nnz_obs}                  (element policies; cells
#                                                                                  outside the sinks)
# A sequence's state is its last pass before its positions start again (a new chunk). evict_pass: the cells the
# sequence holds before and after the pass (resident_*), the cells freed (evicted in every layer and KV head),
# the cells some keep set needs (union_kept) and the cells of its stream in use after the pass (used_after, of
# kv_size); ms (hooks since 2026-12-04): the wall time of the sequence's selection, flag updates and freeing,
# without the statistics' writes (the scores' download and the bias upload, shared by the pass's sequences, are
# not in it).

def _last_passes(recs: list[dict], key) -> list[int]:
    """Passes that end a segment: the next pass of the same key starts lower (pos_max) or there is none."""
    by_key: dict = defaultdict(dict)
    for r in recs:
        by_key[key(r)][r["pass"]] = r.get("pos_max", 0)
    out = []
    for passes in by_key.values():
        order = sorted(passes)
        for i, p in enumerate(order):
            if i + 1 == len(order) or passes[order[i + 1]] <= passes[p]:
                out.append(p)
    return sorted(out)


def _cell_use(passes: list[dict], finals: set[int]) -> dict:
    """The physical cells of a token-policy run from its evict_pass records (summarize_policy); {} without
    any (a hook from before cell freeing)."""
    if not passes:
        return {}

    def share(key: str) -> float:
        per_chunk = []
        for p in sorted(finals):
            rs = [r for r in passes if r["pass"] == p]
            per_chunk.append(sum(r[key] for r in rs) / sum(r["n_logical"] for r in rs))
        return float(np.mean(per_chunk))

    out = {"resident_cells": share("resident_after"), "union_kept_cells": share("union_kept"),
           "freed_cells": sum(r["freed"] for r in passes), "max_used_cells": max(r["used_after"] for r in passes)}
    ms = [r["ms"] for r in passes if "ms" in r]
    if ms and len(ms) == len(passes):
        out |= {"pass_ms_mean": float(np.mean(ms)), "pass_ms_median": float(np.median(ms)),
                "pass_ms_total": float(np.sum(ms)), "evict_passes": len(ms)}
    return out


def summarize_policy(records: list[dict]) -> dict:
    """Kept fractions of a baseline run: at the final pass of every chunk, averaged over chunks.

    Token policies: kept_cells = sum(kept) / sum(n) over layers and KV heads (the logical budget). With
    evict_pass records (the hook with cell freeing), what the cells cost: resident_cells = sum(resident_after) /
    sum(n_logical) (the share of the logical context that still holds a cell) and union_kept_cells =
    sum(union_kept) / sum(n_logical) (the cells the keep sets need: what a per-head scope must hold), at the
    same final passes, mean over chunks; freed_cells (cells freed over every pass) and max_used_cells (the most
    cells of a stream in use after any pass). Element policies: sparsity of K and V over the entries of the
    cells outside the sinks.
    """
    ev = [r for r in records if r.get("record") == "evict"]
    en = [r for r in records if r.get("record") == "entries"]
    if ev:
        df = pd.DataFrame(ev, columns=["pass", "layer", "n", "kept"])
        finals = set(_last_passes(ev, lambda r: (r["ctx"], r["seq"])))
        fin = df[df["pass"].isin(finals)]
        by_pass, by_layer = fin.groupby("pass")[["kept", "n"]].sum(), fin.groupby("layer")[["kept", "n"]].sum()
        # per chunk (its last pass): the kept share, and the tokens evicted = logical length - kept cells, mean over
        # layers and KV heads
        per_chunk = (by_pass["kept"] / by_pass["n"]).tolist()
        evicted = (fin["n"] - fin["kept"]).groupby(fin["pass"]).mean().tolist()
        kept = float(np.mean(per_chunk))
        out = {"kept_cells": kept, "kept_cells_per_chunk": per_chunk, "n_passes": df["pass"].nunique(),
               "kept_per_layer": {str(k): v for k, v in (by_layer["kept"] / by_layer["n"]).items()},
               "evicted_tokens_per_chunk": evicted,
               "sparsity_k_all": 1.0 - kept, "sparsity_v_all": 1.0 - kept, "nominal": 1.0 / kept}
        return out | _cell_use([r for r in records if r.get("record") == "evict_pass"], finals)
    if en:
        # every pass lists all cells of the sequence: the last pass of each chunk is its final state (the next pass
        # holds no more entries, or there is none)
        t = pd.DataFrame(en, columns=["pass", "kv", "n_obs", "nnz_obs"]).groupby(["pass", "kv"]).sum().unstack("kv")
        total = t["n_obs"].sum(axis=1)
        zero = (1 - t["nnz_obs"] / t["n_obs"])[total.shift(-1, fill_value=0) <= total]
        sk, sv = float(zero["k"].mean()), float(zero["v"].mean())
        return {"sparsity_k_region": sk, "sparsity_v_region": sv, "sparsity_k_all": sk, "sparsity_v_all": sv,
                "kept_entries": 1 - (sk + sv) / 2, "n_passes": len(t), "nominal": 2 / ((1 - sk) + (1 - sv))}
    raise ValueError("no evict or entries records: not a baseline run, or the hook never ran a pass")
