# SPDX-License-Identifier: Apache-2.0
"""Reading ``ELASTICKV_DUMP`` folders.

For every pass the hook writes, with prefix ``ctx<C>_pass<PPPPPP>``:

* ``<prefix>.json``: mode, scales, sink, cache types, V layout, the sequences of the pass
  (seq, epoch, pos_max, stream, group) and the model layers;
* ``<prefix>_cells_{k,v}.npy``: int32 ``[n, 4]`` rows (stream, cell, pos, code) of the cells the pass
  visited, in the order of the arrays below (code: group | PROCESS/OBSERVE/HIST flags, see reference.py);
* ``<prefix>_l<LLL>_{k,v}_{before,after}.npy``: float32 ``[n, n_head, head_dim]`` values of those cells
  (dequantized for quantized caches) before and after the pass;
* ``<prefix>_kvcells.npy``: the cache's own table of occupied cells at the pass, int32 ``[m, 4]`` rows
  (stream, cell, pos, seq), one per sequence a non-empty cell belongs to, read from llama.cpp's cell
  metadata over every cell index (independently of the lists above: :func:`kv_cells`). Token-eviction
  passes write it too.

A model whose attention layers are split between a full and a sliding-window cache (iSWA) gets the files above for
its full cache and the same files with prefix ``ctx<C>_swa_pass<PPPPPP>`` for its sliding-window cache, whose
passes list the cells the window of the sequence's last position holds (``cache`` in the .json: ``one``, ``full``
or ``swa``; pass ``cache="swa"`` to :func:`passes`, :func:`load` and :func:`kv_cells`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class DumpPass:
    manifest: dict
    cells: dict[str, np.ndarray]  # "k"/"v" -> int32 [n, 4]
    prefix: Path

    @property
    def layers(self) -> list[int]:
        return self.manifest["layers"]

    def values(self, layer: int, kind: str, when: str) -> np.ndarray:
        return np.load(f"{self.prefix}_l{layer:03d}_{kind}_{when}.npy")


#: the caches a pass can be of: "full" (the model's only cache, or an iSWA model's full cache) or "swa"
CACHES = ("full", "swa")


def _cache_tag(cache: str) -> str:
    """What a cache adds to a pass's file names: nothing for "full", "swa_" for "swa"; ValueError otherwise."""
    if cache not in CACHES:
        raise ValueError(f"cache {cache!r}: one of {', '.join(CACHES)}")
    return "swa_" if cache == "swa" else ""


def _prefix(ctx: int, pass_id: int, cache: str) -> str:
    """The file prefix of a pass: ``ctx<C>_pass<P>``, or ``ctx<C>_swa_pass<P>`` for the sliding-window cache of a
    model whose attention layers are split between a full and a sliding-window cache (iSWA)."""
    return f"ctx{ctx}_{_cache_tag(cache)}pass{pass_id:06d}"


def kv_cells(folder: Path, ctx: int, pass_id: int, cache: str = "full") -> np.ndarray:
    """The cache's own occupied cells at a pass: int32 [m, 4] rows (stream, cell, pos, seq)."""
    return np.load(Path(folder) / f"{_prefix(ctx, pass_id, cache)}_kvcells.npy")


def owned_cells(table: np.ndarray, seq: int) -> np.ndarray:
    """The rows (stream, cell, pos) of a :func:`kv_cells` table that a pass of ``seq`` handles: the cells holding
    ``seq`` and no lower sequence id (a cell shared by several sequences belongs to the lowest), by position."""
    lowest = {}
    for strm, cell, _, s in table.tolist():
        lowest[(strm, cell)] = min(s, lowest.get((strm, cell), s))
    rows = [r for r in table.tolist() if r[3] == seq and lowest[(r[0], r[1])] == seq]
    out = np.array([r[:3] for r in rows], dtype=np.int64).reshape(-1, 3)
    return out[np.argsort(out[:, 2], kind="stable")]


def coverage_problems(folder: Path, d: DumpPass, seq: int = 0) -> list[str]:
    """What is wrong with the cells pass ``d`` listed for ``seq`` against the cache's own cell table: they must be
    exactly the sequence's occupied cells, each once, and the cache must hold its positions 0..pos_max. Empty
    when the pass covered the sequence."""
    owned = owned_cells(kv_cells(folder, d.manifest["ctx"], d.manifest["pass"]), seq)
    pos_max = next(s["pos_max"] for s in d.manifest["seqs"] if s["seq"] == seq)
    out = [] if np.array_equal(owned[:, 2], np.arange(pos_max + 1)) else ["the cache does not hold positions 0..pos_max"]
    want = {(int(a), int(b)): int(c) for a, b, c in owned}
    for kind, cells in d.cells.items():
        listed = {(int(a), int(b)): int(c) for a, b, c in cells[:, :3]}
        if len(listed) != len(cells):
            out.append(f"{kind}: a cell listed twice")
        if listed != want:
            out.append(f"pass {d.manifest['pass']} {kind}: cells missed or extra")
    return out


def _keys(folder: Path, pattern: str) -> list[tuple[int, ...]]:
    """The integer groups of ``pattern`` (a full-match regex) over the .json names of the folder, in order."""
    out = []
    for p in Path(folder).glob("ctx*.json"):
        m = re.fullmatch(pattern, p.name)
        if m:
            out.append(tuple(int(g) for g in m.groups()))
    return sorted(out)


def passes(folder: Path, cache: str = "full") -> list[tuple[int, int]]:
    """(ctx, pass) of every pass of ``cache`` in the folder, in order."""
    return _keys(folder, rf"ctx(\d+)_{_cache_tag(cache)}pass(\d+)\.json")


def load(folder: Path, ctx: int, pass_id: int, cache: str = "full") -> DumpPass:
    prefix = Path(folder) / _prefix(ctx, pass_id, cache)
    manifest = json.loads(Path(f"{prefix}.json").read_text())
    cells = {}
    for kind in ("k", "v"):
        path = Path(f"{prefix}_cells_{kind}.npy")
        if path.exists():
            cells[kind] = np.load(path)
    return DumpPass(manifest=manifest, cells=cells, prefix=prefix)


# ------------------------------------------------------------------------------- token-eviction baselines
# With a token policy (ELASTICKV_POLICY = streaming, h2o, ...) every pass writes, per sequence, with prefix
# ``ctx<C>_pass<PPPPPP>_seq<S>``:
#   ``.json``                 policy, budget settings (fraction, cells, recent, heavy_ratio, seed, beta), sink,
#                             n_layer, the budget B and the sequence's cell count n;
#   ``_cells.npy``            int32 [n, 3]: stream, cell, pos, in ascending position;
#   ``_score.npy``            float32 [n_layer, n_head_kv, n]: the accumulated scores read at the pass (before
#                             any reset), 0 for policies without scores;
#   ``_evicted_before.npy``, ``_evicted_after.npy``  uint8 [n_layer, n_head_kv, n]: evicted flags;
#   ``_l<LLL>_k.npy``         score-based policies: float32 [n, n_head_kv, head_dim], the keys of the cells;
#   ``_recency_before.npy``   lru, lru_fifo: float32 [n_layer, n_head_kv, n], each cell's recency before the pass;
# and ``ctx<C>_pass<PPPPPP>_kvcells.npy`` (the cache's cell table, as above). Score-based policies also write,
# after every ubatch that is not a warm-up, with prefix ``ctx<C>_ub<UUUUUU>``:
#   ``.json``                 passes_before (passes done before the ubatch), n_kv (cells in the attention's KV
#                             view), kq_scale (the softmax scale), n_stream, layers, and per token pos and seq;
#   ``_l<LLL>_q.npy``         float32 [n_stream, n_head, n_tokens, head_dim]: the queries (Q after RoPE, as the
#                             KQ product reads them), from which the tests recompute the scores.

@dataclass
class TokenPass:
    manifest: dict
    cells: np.ndarray
    score: np.ndarray
    before: np.ndarray
    after: np.ndarray
    recency: np.ndarray | None = None  # lru, lru_fifo: the recency before the pass

    @property
    def pos(self) -> np.ndarray:
        return self.cells[:, 2]


def token_passes(folder: Path) -> list[tuple[int, int, int]]:
    """(ctx, pass, seq) of every token-eviction pass in the folder, in order."""
    return _keys(folder, r"ctx(\d+)_pass(\d+)_seq(\d+)\.json")


def token_manifest(folder: Path, ctx: int, pass_id: int, seq: int) -> dict:
    """The .json of a token-eviction pass alone (without loading its arrays)."""
    return json.loads((Path(folder) / f"ctx{ctx}_pass{pass_id:06d}_seq{seq}.json").read_text())


def load_token(folder: Path, ctx: int, pass_id: int, seq: int) -> TokenPass:
    prefix = Path(folder) / f"ctx{ctx}_pass{pass_id:06d}_seq{seq}"
    recency = Path(f"{prefix}_recency_before.npy")
    return TokenPass(manifest=token_manifest(folder, ctx, pass_id, seq),
                     cells=np.load(f"{prefix}_cells.npy"), score=np.load(f"{prefix}_score.npy"),
                     before=np.load(f"{prefix}_evicted_before.npy").astype(bool),
                     after=np.load(f"{prefix}_evicted_after.npy").astype(bool),
                     recency=np.load(recency) if recency.exists() else None)


@dataclass
class UbatchQueries:
    manifest: dict
    prefix: Path

    @property
    def pos(self) -> np.ndarray:
        return np.asarray(self.manifest["pos"], dtype=np.int64)

    def q(self, layer: int) -> np.ndarray:
        """float32 [n_stream, n_head, n_tokens, head_dim]."""
        return np.load(f"{self.prefix}_l{layer:03d}_q.npy")


def ubatches(folder: Path) -> list[tuple[int, int]]:
    """(ctx, ubatch) of every ubatch whose queries were dumped, in order."""
    return _keys(folder, r"ctx(\d+)_ub(\d+)\.json")


def load_ubatch(folder: Path, ctx: int, ubatch: int) -> UbatchQueries:
    prefix = Path(folder) / f"ctx{ctx}_ub{ubatch:06d}"
    return UbatchQueries(manifest=json.loads(Path(f"{prefix}.json").read_text()), prefix=prefix)


def token_keys(folder: Path, ctx: int, pass_id: int, seq: int, layer: int) -> np.ndarray:
    """float32 [n, n_head_kv, head_dim]: the keys of a token pass's cells (score-based policies)."""
    return np.load(Path(folder) / f"ctx{ctx}_pass{pass_id:06d}_seq{seq}_l{layer:03d}_k.npy")
