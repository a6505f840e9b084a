#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""How much the numbers of an archived run move on other CPUs: the tolerance of tests/test_reproduce.py, measured.

llama.cpp on the CPU is deterministic for a given binary, thread count and instruction set, but other SIMD paths
sum in another order, so a CPU with other features (an AMD EPYC with AVX2 and no AVX-512, say) prints other last
digits. This script re-runs the archived entry that the reproduction test re-runs (Table 5, SINK = 4, with its
base logits and the hook-off baseline) with llama.cpp builds for fixed x86-64 instruction sets, here, and writes
how far each metric lands from the archive, together with how far the same run with SINK = 8 lands from SINK = 4
on the same build: the tolerance must be above the first and below the second.

Each build computes its own base logits (KL divergence is always against the same build's f16 logits, as on
another machine). Metrics compared (the rows of ``compared``): ppl (relative), ln_ppl_ratio (absolute), kld
(relative), same_top_p_pct (absolute, percentage points); for the base run ppl (relative). The hook-off
``baseline`` row is re-run for its KLD against its own base logits, which is not exactly 0 (tests/tolerances.py).

Examples:
  scripts/setup/build_llamacpp.sh --isa avx2 llama-perplexity     # one build per instruction set
  scripts/bench/cross_isa.py
  scripts/bench/cross_isa.py --set isas=[native,avx2] --set output=build/run/cross_isa.json
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from elastickv import config, envvars, logparse, paths, ppl, results, startup, tools
from elastickv.progress import bar as progress_bar

SCRIPT = "scripts/bench/cross_isa.py"
DEFAULTS = {
    "artifact": "Reproduction tolerance",
    "entry": "results/ppl/table5/smollm2-135m-c512-n10",
    "rows": ["baseline-base", "baseline", "sink4"],
    "compared": ["baseline-base", "sink4"],
    "changed": {"name": "sink8", "of": "sink4", "sink": 8},
    "isas": ["native", "avx512", "avx2", "sse42"],
    "runs_dir": "results/reproduce",
    "output": "results/reproduce/cross_isa.json",
}


def variant(isa: str) -> str:
    return "cpu" if isa == "native" else f"cpu-{isa}"


def settings_of(rec: dict, isa: str, sink: int | None = None) -> tuple[ppl.PplSettings, str | None]:
    """The archived run's settings on another build (and, for the changed run, another SINK)."""
    s = {k: v for k, v in rec["settings"].items() if k != "kld"}
    out = replace(ppl.PplSettings(**s), variant=variant(isa))
    if sink is not None:
        out = replace(out, hook=dict(out.hook) | {"ELASTICKV_SINK": str(sink)})
        envvars.resolve(out.hook)
    return out, rec["settings"]["kld"]


def values(rec: dict) -> dict:
    return ppl.metric_values(rec["metrics"])


def run(cfg: dict, force: bool = False) -> dict:
    entry = paths.ROOT / cfg["entry"]
    archived = {name: json.loads((entry / f"{name}.json").read_text()) for name in cfg["rows"]}
    ch = cfg["changed"]
    if ch["of"] not in archived or not set(cfg["compared"]) <= set(cfg["rows"]):
        raise config.ConfigError(f"changed.of ({ch['of']!r}) and compared ({cfg['compared']}) must be rows ({cfg['rows']})")
    for isa in cfg["isas"]:
        tools.require_binary(paths.binary("llama-perplexity", variant=variant(isa)))
    builds, sources = [], [entry / f"{name}.json" for name in cfg["rows"]]
    with progress_bar(len(cfg["isas"]) * (len(cfg["rows"]) + 1), "cross-ISA runs") as bar:
        for isa in cfg["isas"]:
            out = paths.ROOT / cfg["runs_dir"] / isa
            recs = {}
            for name in cfg["rows"]:
                s, kld = settings_of(archived[name], isa)
                recs[name] = ppl.run(name, s, out, kld=kld, force=force)
                bar.update()
            s, kld = settings_of(archived[ch["of"]], isa, sink=ch["sink"])
            recs[ch["name"]] = ppl.run(ch["name"], s, out, kld=kld, force=force)
            bar.update()
            sources += [out / f"{name}.json" for name in recs]
            log = (paths.ROOT / recs[ch["of"]]["log"]).read_text(errors="replace")
            builds.append({
                "isa": isa, "variant": variant(isa), "system_info": logparse.system_info(log),
                "metrics": {name: values(r) for name, r in recs.items()},
                "deviation": {name: ppl.deviation(values(recs[name]), values(archived[name])) for name in cfg["compared"]},
                "changed_effect": ppl.deviation(values(recs[ch["name"]]), values(recs[ch["of"]])),
            })
    arch_log = (entry / Path(archived[ch["of"]]["log"]).name).read_text(errors="replace")
    data = {
        "archive": {"cpu": archived[ch["of"]]["device"]["cpu"], "system_info": logparse.system_info(arch_log),
                    "metrics": {name: values(r) for name, r in archived.items()}},
        "builds": builds,
        "max_deviation": {name: {k: max(b["deviation"][name][k] for b in builds) for k in builds[0]["deviation"][name]}
                          for name in cfg["compared"]},
        "min_changed_effect": {k: min(b["changed_effect"][k] for b in builds) for k in builds[0]["changed_effect"]},
    }
    notes = ("deviation[row][metric]: how far each build's re-run of the archived row lands from the archived record "
             "(ppl and kld relative, |a/b - 1|; ln_ppl_ratio and same_top_p_pct absolute); changed_effect: how far "
             f"the same run with ELASTICKV_SINK={ch['sink']} lands from {ch['of']} on the same build. Builds: "
             "llama-perplexity of the patched llama.cpp for fixed instruction sets (build_llamacpp.sh --isa), run on "
             "this machine; each computes its own base logits.")
    agg = results.aggregate(cfg["artifact"], SCRIPT, cfg, data, sources, notes)
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=force)
    return agg


def features(info: dict) -> str:
    """The CPU features of a system_info line that are on, comma-separated (for a table cell)."""
    return ", ".join(f.split("=")[0].strip() for f in info["cpu"].split("|") if f.strip().endswith("= 1"))


def markdown(agg: dict) -> str:
    d = agg["data"]
    rows = ["| build | CPU features | base PPL | sink4 PPL | ln ratio | KLD | top-1 % | max dev (ppl rel / kld rel) | "
            "SINK 8 effect (ppl rel / kld rel) |", "|" + "---|" * 9]
    a = d["archive"]["metrics"]
    rows.append(f"| archive ({d['archive']['cpu']}) | {features(d['archive']['system_info'])} | {a['baseline-base']['ppl']} | "
                f"{a['sink4']['ppl']} | {a['sink4']['ln_ppl_ratio']} | {a['sink4']['kld']} | {a['sink4']['same_top_p_pct']} | — | — |")
    for b in d["builds"]:
        m, dev, eff = b["metrics"], b["deviation"]["sink4"], b["changed_effect"]
        rows.append(f"| {b['isa']} | {features(b['system_info'])} | {m['baseline-base']['ppl']} | {m['sink4']['ppl']} | "
                    f"{m['sink4']['ln_ppl_ratio']} | {m['sink4']['kld']} | {m['sink4']['same_top_p_pct']} | "
                    f"{dev['ppl']:.2e} / {dev['kld']:.2e} | {eff['ppl']:.2e} / {eff['kld']:.2e} |")
    return "\n".join(rows)


def main() -> int:
    args = startup.parse_args(startup.driver_parser(__doc__, "reproduce_cross_isa"))
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        agg = run(cfg, force=args.force)
    except startup.driver_errors() as e:
        return startup.fail(__file__, e)
    print(markdown(agg))
    print(f"\ncross_isa: {cfg['output']} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
