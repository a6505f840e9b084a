# SPDX-License-Identifier: Apache-2.0
"""The run records of a results folder as one pandas DataFrame: one row per run, for groupby, pivot and paired
differences.

``load_runs("results")`` walks the folder for run records (JSON files with ``kind`` in RUN_KINDS and a
``schema_version``; aggregates and other files are skipped) and returns a DataFrame with these columns:

* identity: ``record`` (path relative to the repository root), ``kind``, ``name``, ``started``, ``finished``;
* provenance: ``model``, ``model_sha256``, ``data`` (file), ``commit``, ``dirty``, ``upstream``, ``device_cpu``,
  ``device_gpu``, ``variant`` (the build);
* settings: ``settings.<key>`` for every scalar setting of the run (``settings.ctx``, ``settings.chunks``,
  ``settings.cache_type_k``, ``settings.flash_attn``, ...);
* the hook: ``hook`` (enabled or not) and ``ekv.<key>`` for every scalar of the resolved ELASTICKV_* configuration
  (``ekv.policy``, ``ekv.budget``, ``ekv.preset``, ``ekv.scale_k``, ``ekv.sink``, ...);
* metrics: every scalar metric under its own name (``kv_mib``, ``resident``, ``kept_cells``, ``correct``, ...) and
  every ``{"value", "stderr"}`` metric as two columns (``ppl``, ``ppl_stderr``, ``kld``, ``kld_stderr``,
  ``same_top_p_pct``, ...). Lists and nested objects (per-layer figures, histograms) stay in the record.

Columns a kind lacks are missing values (NaN/None). ``kinds`` restricts the kinds read. The order of rows is
the sorted order of the paths, so two loads of the same folder are equal.

Example::

    from elastickv.frame import load_runs
    df = load_runs("results/ppl/head_to_head")
    df.pivot_table(index="ekv.policy", columns="ekv.budget", values="kld")

``entries(agg)`` does the same for the entries of an aggregate (``results/<artifact>.json``, ``data.entries`` or
another list of flat dicts): one row per entry, every ``{"value", "stderr"}`` metric as ``<name>`` and
``<name>_stderr``, every other field as it is (lists and objects stay objects). The table scripts read their
aggregates through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import paths

RUN_KINDS = ("perplexity", "niah", "bench", "routing")
SCALARS = (str, int, float, bool, type(None))


def _scalars(prefix: str, obj: dict | None) -> dict:
    return {f"{prefix}{k}": v for k, v in (obj or {}).items() if isinstance(v, SCALARS)}


def _metrics(metrics: dict, objects: bool = False) -> dict:
    """``{"value", "stderr"}`` metrics as ``<name>`` and ``<name>_stderr``, scalars as they are; other values (lists,
    objects) only with ``objects``."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict) and set(v) == {"value", "stderr"}:
            out[k], out[f"{k}_stderr"] = v["value"], v["stderr"]
        elif objects or isinstance(v, SCALARS):
            out[k] = v
    return out


def row(rec: dict, rel: str) -> dict:
    """One run record as a flat row (see the module text)."""
    model, data, git = rec.get("model") or {}, rec.get("data") or {}, rec.get("git") or {}
    device, ekv = rec.get("device") or {}, rec.get("elastickv") or {}
    return {
        "record": rel, "kind": rec["kind"], "name": rec.get("name"), "started": rec.get("started"),
        "finished": rec.get("finished"), "model": model.get("name"), "model_sha256": model.get("sha256"),
        "data": data.get("file"), "commit": git.get("commit"), "dirty": git.get("dirty"),
        "upstream": (rec.get("upstream") or {}).get("commit"), "device_cpu": device.get("cpu"),
        "device_gpu": device.get("gpu"), "variant": (rec.get("build") or {}).get("variant"),
        "hook": bool(ekv.get("enabled")),
        **_scalars("settings.", rec.get("settings")), **_scalars("ekv.", ekv), **_metrics(rec.get("metrics") or {}),
    }


def entries(agg: dict | list, key: str = "entries") -> pd.DataFrame:
    """The entries of an aggregate (or a list of entry dicts) as a DataFrame (see the module text); the entries'
    order is kept. An empty list gives an empty frame."""
    items = agg if isinstance(agg, list) else agg["data"][key]
    return pd.DataFrame([_metrics(e, objects=True) for e in items])


def load_runs(folder: str | Path = "results", kinds: tuple[str, ...] = RUN_KINDS) -> pd.DataFrame:
    """Every run record under ``folder`` (relative to the repository root, or absolute) as a DataFrame."""
    root = Path(folder)
    if not root.is_absolute():
        root = paths.ROOT / root
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: no such results folder")
    unknown = set(kinds) - set(RUN_KINDS)
    if unknown:
        raise ValueError(f"unknown record kinds {sorted(unknown)}; known: {', '.join(RUN_KINDS)}")
    rows = []
    for p in sorted(root.rglob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{paths.relative(p)} is not valid JSON ({e}): truncated or damaged") from None
        if isinstance(rec, dict) and rec.get("kind") in kinds and "schema_version" in rec:
            rows.append(row(rec, paths.relative(p)))
    return pd.DataFrame(rows)
