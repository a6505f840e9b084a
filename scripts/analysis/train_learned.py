#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Trains the learned eviction policy's network (ELASTICKV_POLICY=learned) on the project's own H2O choices.

Data: one llama-perplexity run of H2O (``ELASTICKV_POLICY=h2o``, the budget below, cells kept allocated so every
pass sees the whole sequence) over WikiText-2 *validation* text with ``ELASTICKV_DUMP``; the learned policy is only
ever evaluated on the test text. At every pass, for every layer and KV head, every candidate cell (not a sink, not
in the recent window, not evicted before: the cells H2O chose among) is one sample:

  input  the cell's key averaged over the layer's KV heads (float64, as the hook computes it, policies/learned.py)
  label  1 if H2O kept the cell at that pass in that KV head, 0 if it evicted it

The network is the kv-cache-compression notebook's: 64 -> 128 -> 64 -> 1, ReLU, dropout 0.1 while training,
sigmoid, one network for every layer; its loss, MSE(sigmoid, label) + 0.1 * mean(sigmoid); Adam (lr 1e-3, the usual
betas), batches of 64, 20 epochs; PyTorch's default initialisation (uniform in +-1/sqrt(fan_in)). Everything is
seeded and runs in float64 numpy on one BLAS thread, so the same data and seed give the same weights bit for bit
(tests/test_learned.py). A held-out tenth of the samples (by a seeded permutation) reports the accuracy of
sigmoid > 0.5 and the AUC of the network's ranking (0.5: no better than chance at telling H2O's kept cells).

Writes the weights (the hook's format, policies/learned.py) beside the aggregate, which records the data (run
record, sha256 of the text), the samples, the losses per epoch and the held-out figures.

Examples:
  scripts/analysis/train_learned.py
  scripts/analysis/train_learned.py --set chunks=1 --set epochs=2 --set output=/tmp/learned.json
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

# one BLAS thread: the same sums in the same order on every run (reproducible weights)
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
import numpy as np  # noqa: E402

from elastickv import config, dump, envvars, paths, policies, ppl, pypi, results, startup  # noqa: E402
from elastickv.policies import common, learned, semantic  # noqa: E402
from elastickv.progress import bar as progress_bar  # noqa: E402

SCRIPT = "scripts/analysis/train_learned.py"
DEFAULTS = {
    "artifact": "Learned eviction: the network and its training",
    "model": "smollm2-135m",
    "data": "data/wikitext-2-raw/wiki.valid.raw",
    "ctx": 512,
    "chunks": 2,
    "budget": "0.25",
    "sink": 64,
    "max_samples": 200000,
    "holdout": 0.1,
    "epochs": 20,
    "batch": 64,
    "lr": 0.001,
    "dropout": 0.1,
    "mean_penalty": 0.1,
    "seed": 42,
    "weights": "results/learned/mlp_h2o.bin",
    "output": "results/learned/train_learned.json",
}


def dump_dir(cfg: dict) -> Path:
    key = hashlib.sha256(repr((cfg["model"], cfg["data"], cfg["ctx"], cfg["chunks"], cfg["budget"],
                               cfg["sink"])).encode()).hexdigest()[:12]
    return paths.CACHE / "learned" / f"h2o-{cfg['model']}-{key}"


def h2o_run(cfg: dict, records: Path) -> tuple[Path, Path]:
    """The H2O run over the training text with dumps (reused when its record and dumps exist): (dumps, record)."""
    out = dump_dir(cfg)
    hook = envvars.hook_env(policy="h2o", budget=cfg["budget"], sink=cfg["sink"], free=0, dump=paths.relative(out))
    s = ppl.PplSettings(model=cfg["model"], data=cfg["data"], ctx=cfg["ctx"], batch=64, chunks=cfg["chunks"],
                        flash_attn="off", hook=hook)
    name = f"h2o-{cfg['model']}-train"
    if not dump.token_passes(out):
        (records / f"{name}.json").unlink(missing_ok=True)
    record = ppl.run(name, s, records)
    if not dump.token_passes(out):
        raise RuntimeError(f"the H2O run wrote no dump to {paths.relative(out)}; see {record['log']}")
    return out, records / f"{name}.json"


def samples(folder: Path, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """(x [m, head_dim] float64, y [m] float64) over every pass, layer, KV head and candidate cell."""
    P = policies.policy("h2o")
    b = common.parse_budget(cfg["budget"])
    xs, ys = [], []
    keys_found = dump.token_passes(folder)
    with progress_bar(len(keys_found), "passes read") as bar:
        for key in keys_found:
            t = dump.load_token(folder, *key)
            n = len(t.pos)
            B = common.budget_cells(b, max(n, int(t.pos[-1]) + 1))
            for layer in range(t.after.shape[0]):
                x = semantic.mean_keys(dump.token_keys(folder, *key, layer))
                for h in range(t.after.shape[1]):
                    cand, _ = common.candidates(P, b, cfg["sink"], B, t.pos, t.before[layer, h])
                    xs.append(x[cand])
                    ys.append((~t.after[layer, h, cand]).astype(np.float64))
            bar.update()
    return np.concatenate(xs), np.concatenate(ys)


def init(rng: np.random.Generator, dims=learned.DIMS) -> list[list[np.ndarray]]:
    """PyTorch's nn.Linear default: weights and biases uniform in +-1/sqrt(fan_in)."""
    out = []
    for i, o in zip(dims[:-1], dims[1:]):
        bound = 1.0 / np.sqrt(i)
        out.append([rng.uniform(-bound, bound, (o, i)), rng.uniform(-bound, bound, o)])
    return out


def forward(params, x: np.ndarray, rng: np.random.Generator | None, dropout: float):
    """Returns (sigmoid output [m], cache for backward). Dropout (inverted) after each hidden ReLU when rng is given."""
    cache, h = [], x
    for li, (W, b) in enumerate(params):
        z = h @ W.T + b
        if li + 1 < len(params):
            a = np.maximum(z, 0.0)
            mask = (rng.random(a.shape) >= dropout) / (1.0 - dropout) if rng is not None and dropout > 0 else None
            cache.append((h, z, mask))
            h = a * mask if mask is not None else a
        else:
            cache.append((h, z, None))
    return 1.0 / (1.0 + np.exp(-z[:, 0])), cache


def loss_and_grads(params, x, y, rng, cfg):
    """The notebook's loss, MSE(p, y) + mean_penalty * mean(p), and its gradients."""
    p, cache = forward(params, x, rng, cfg["dropout"])
    m = len(y)
    loss = float(np.mean((p - y) ** 2) + cfg["mean_penalty"] * np.mean(p))
    dp = (2.0 * (p - y) + cfg["mean_penalty"]) / m
    dz = (dp * p * (1.0 - p))[:, None]
    grads = [None] * len(params)
    for li in range(len(params) - 1, -1, -1):
        h, z, mask = cache[li]
        W, _ = params[li]
        grads[li] = [dz.T @ h, dz.sum(axis=0)]
        if li > 0:
            dh = dz @ W
            hp, zp, maskp = cache[li - 1]
            if maskp is not None:
                dh = dh * maskp
            dz = dh * (zp > 0)
    return loss, grads


def train(x: np.ndarray, y: np.ndarray, cfg: dict) -> tuple[list, list[float]]:
    rng = np.random.default_rng(cfg["seed"])
    params = init(rng)
    m1 = [[np.zeros_like(a) for a in layer] for layer in params]
    m2 = [[np.zeros_like(a) for a in layer] for layer in params]
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, cfg["lr"]
    step, losses = 0, []
    with progress_bar(cfg["epochs"], "epochs") as bar:
        for _ in range(cfg["epochs"]):
            order = rng.permutation(len(y))
            total = 0.0
            for s in range(0, len(y), cfg["batch"]):
                idx = order[s:s + cfg["batch"]]
                loss, grads = loss_and_grads(params, x[idx], y[idx], rng, cfg)
                total += loss * len(idx)
                step += 1
                for layer, g1, g2, gr in zip(params, m1, m2, grads):
                    for k in range(2):
                        g1[k] = b1 * g1[k] + (1 - b1) * gr[k]
                        g2[k] = b2 * g2[k] + (1 - b2) * gr[k] ** 2
                        layer[k] = layer[k] - lr * (g1[k] / (1 - b1 ** step)) / (np.sqrt(g2[k] / (1 - b2 ** step)) + eps)
            losses.append(total / len(y))
            bar.update()
    return params, losses


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Probability that a kept sample outranks an evicted one (ties count half)."""
    pos, neg = score[y > 0.5], np.sort(score[y <= 0.5])
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, "left")  # evicted samples scored lower than each kept one
    tied = np.searchsorted(neg, pos, "right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (len(pos) * len(neg)))


def run(cfg: dict, force: bool = False, records: Path | None = None) -> dict:
    if not 0 < cfg["holdout"] < 1 or cfg["epochs"] < 1 or cfg["batch"] < 1 or cfg["max_samples"] < 100:
        raise config.ConfigError("holdout must be in (0, 1), epochs and batch >= 1, max_samples >= 100")
    if "test" in Path(cfg["data"]).name:
        raise config.ConfigError(f"data {cfg['data']!r}: the network is trained on validation text, never the test text")
    # the H2O run's record and log: beside the archived output, or in build/cache for an output elsewhere (tests)
    out_dir = (paths.ROOT / cfg["output"]).parent.resolve()
    in_results = out_dir == paths.RESULTS.resolve() or paths.RESULTS.resolve() in out_dir.parents
    records = Path(records or (out_dir if in_results else paths.CACHE / "learned" / "records"))
    records.mkdir(parents=True, exist_ok=True)
    folder, rec = h2o_run(cfg, records)
    x, y = samples(folder, cfg)
    rng = np.random.default_rng(cfg["seed"])
    perm = rng.permutation(len(y))[:cfg["max_samples"]]
    x, y = x[perm], y[perm]
    n_hold = max(1, int(round(cfg["holdout"] * len(y))))
    xt, yt, xh, yh = x[n_hold:], y[n_hold:], x[:n_hold], y[:n_hold]
    params, losses = train(xt, yt, cfg)
    weights = [(W.astype(np.float32), b.astype(np.float32)) for W, b in params]
    wpath = learned.write_weights(paths.ROOT / cfg["weights"], weights)
    # held-out: the hook's computation on the float32 weights (logits), and the accuracy of sigmoid > 0.5
    z = learned.logits(weights, xh)
    data = {
        "h2o_run": paths.relative(rec),
        "text_sha256": pypi.sha256_of(paths.ROOT / cfg["data"]),
        "samples": int(len(y)), "train": int(len(yt)), "holdout": int(len(yh)),
        "kept_fraction": float(y.mean()),
        "loss_per_epoch": losses,
        "holdout_accuracy": float(np.mean((z > 0) == (yh > 0.5))),
        "holdout_auc": auc(z, yh),
        "weights": paths.relative(wpath), "weights_sha256": pypi.sha256_of(wpath),
    }
    agg = results.aggregate(cfg["artifact"], SCRIPT, cfg, data, [rec],
                            "label: H2O kept (1) or evicted (0) a candidate cell at a pass, per layer and KV head; "
                            "input: the cell's key averaged over the layer's KV heads")
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=force)
    return agg


def main(argv: list[str] | None = None) -> int:
    ap = startup.driver_parser(__doc__, "learned_eviction")
    args = startup.parse_args(ap, argv)
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        agg = run(cfg, force=args.force)
    except startup.driver_errors(RuntimeError, ValueError) as e:
        return startup.fail(__file__, e)
    d = agg["data"]
    print(f"train_learned: {d['samples']} samples ({100 * d['kept_fraction']:.1f} % kept by H2O), final loss "
          f"{d['loss_per_epoch'][-1]:.4f}, held-out accuracy {d['holdout_accuracy']:.3f}, AUC {d['holdout_auc']:.3f}")
    print(f"train_learned: {d['weights']} and {cfg['output']} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
