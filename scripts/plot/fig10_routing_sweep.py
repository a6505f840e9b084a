#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 10: the synthetic routing suite under compression: accuracy (left) and the Global Eviction Ratio of
the answer-relevant tokens (right) against the compression each run really reached (1 - kept cells; ElasticKV:
1 - kept K entries), per policy; ElasticKV's element analogue
(answer tokens whose K row is >= element_min_zero zero in every KV head of some layer) dashed on the right.
Reads results/routing_sweep.json -> paper/figures/fig10_routing_sweep.{pdf,png}."""

import argparse
import sys

import plotcommon as pc

from fig9_head_to_head import STYLE


def main() -> None:
    agg = pc.load("routing_sweep.json")
    cfg = agg["config"]
    summ = agg["data"]["summary"]
    base = next(s for s in summ if s["policy"] == "baseline")
    fig, (a, b) = pc.plt.subplots(1, 2, figsize=(6.4, 2.6))
    for p in cfg["policies"]:
        ss = sorted((s for s in summ if s["policy"] == p), key=lambda s: -s["kept"])
        if not ss:
            continue
        c, m, ls = STYLE.get(p, ("C9", ".", "-"))
        # measured compression: cells (token policies) or K entries (ElasticKV, whose scales miss the target)
        x = [0.0] + [100 * (1 - (s["kept_entries_k"] if p == "elastickv" else s["kept_cells"])) for s in ss]
        a.plot(x, [100 * base["accuracy"]] + [100 * s["accuracy"] for s in ss], color=c, marker=m, ls=ls, ms=4,
               lw=1.2, label=p)
        if p == "elastickv":
            b.plot(x, [0.0] + [s["element_ger_max"] or 0.0 for s in ss], color=c, marker=m, ls="--", ms=4, lw=1.2,
                   label="ElasticKV element analogue")
        else:
            b.plot(x, [0.0] + [s["ger"] or 0.0 for s in ss], color=c, marker=m, ls=ls, ms=4, lw=1.2, label=p)
    a.set_xlabel("compression (%, measured)")
    a.set_ylabel("accuracy (%)")
    b.set_xlabel("compression (%, measured)")
    b.set_ylabel("GER of answer tokens")
    a.legend(fontsize=6, frameon=False)
    b.legend(fontsize=6, frameon=False)
    fig.suptitle(f"{cfg['model']}: routing suite, {agg['data']['items']} items, sink {cfg['sink']}", fontsize=8)
    pc.save(fig, "fig10_routing_sweep")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(pc.main_guard(main))
