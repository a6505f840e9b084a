#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Tables 1 and 11: the threshold ablation, and ElasticKV against random zeroing at matched sparsity.

Table 1 (config table1_threshold_ablation): one scale for K and V swept from 0.1 to 1.0, plus the hook's
defaults and the presets, each a real llama-perplexity run on WikiText-2 test with -b = -ub = EVICT_EVERY:
sparsity, PPL and KL divergence / top-1 agreement against the f16 baseline of the same chunks
-> results/f4_thresh_ablation_results.json (records and logs under results/ppl/table1/).

Table 11 (config table11_random_vs_ekv): the damage of ElasticKV's zeroing against random zeroing of the
same number of entries per layer, head and tensor, on the real K/V of ELASTICKV_DUMP
(scripts/analysis/random_vs_ekv.py, which defines the damage ratio) -> results/ablation_random_vs_ekv_results.json.

Both resume: finished runs are reused; results made with other settings are refused without --force.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from elastickv import startup

startup.single_threaded_blas()  # the Table 11 products, before numpy is imported

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "eval"))
from elastickv import config, kvanalysis, pypi  # noqa: E402

import ppl_tables  # noqa: E402  (scripts/eval/ppl_tables.py: the perplexity sweep driver)


def random_vs_ekv():
    spec = importlib.util.spec_from_file_location("random_vs_ekv", HERE.with_name("random_vs_ekv.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = startup.driver_parser(__doc__)
    ap.add_argument("--table", choices=["1", "11", "both"], default="both", help="which table (default: both)")
    ap.add_argument("--config1", default="table1_threshold_ablation", help="config of Table 1 (default: %(default)s)")
    ap.add_argument("--config11", default="table11_random_vs_ekv", help="config of Table 11 (default: %(default)s)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the Table 1 config (YAML value); repeatable")
    ap.add_argument("--set11", dest="overrides11", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the Table 11 config; repeatable")
    ap.add_argument("--force", action="store_true", help="replace results made with other settings")
    args = startup.parse_args(ap, argv)
    try:
        if args.table in ("1", "both"):
            cfg = config.load(args.config1, ppl_tables.DEFAULTS, args.overrides)
            agg = ppl_tables.run(cfg, force=args.force)
            print(ppl_tables.markdown(agg))
            print(f"f4_threshold_ablation: {cfg['output']} written")
        if args.table in ("11", "both"):
            mod = random_vs_ekv()
            cfg11 = config.load(args.config11, mod.DEFAULTS, args.overrides11)
            mod.run(cfg11, force=args.force)
            print(f"f4_threshold_ablation: {cfg11['output']} written")
    except startup.driver_errors(pypi.FetchError, kvanalysis.AnalysisError) as e:
        return startup.fail(__file__, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
