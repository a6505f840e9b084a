#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The record of the standing GPU check: scripts/gpu/verify.sh calls `step` after each step and `finish` after
each step too, so that a run cut short by its time limit still returns what it did.

  step   appends one step (name, status, exit code, seconds, command, log) to <results>/steps.jsonl
  finish reads the steps and what they wrote, and writes <results>/summary.json (schema
         scripts/elastickv/schemas/intermediate.gpu_summary.schema.json) with the figures of each check; then
         copies summary.json to <out>/ and packs <results>/ (logs included) into <out>/results.tar.gz, the two
         files scripts/gpu/archive.py takes back

Figures read: test-backend-ops (`N/M tests passed`, the backend's OK/FAIL), hook_agreement.json,
compute-sanitizer (`ERROR SUMMARY: N errors`, `RACECHECK SUMMARY: N hazards`), op_bandwidth_cuda.json (its
summary) and decode_overhead_cuda.json (its overhead).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from elastickv import paths  # noqa: E402

SUMMARY_FORMAT = 1
STATUSES = ("ok", "failed", "skipped", "dry-run")
#: what goes back from $OUT (the GPU machine returns at most 8 files of at most 16 MiB)
OUT_FILES = ("summary.json", "results.tar.gz")
OUT_FILE_LIMIT = 16 * 2**20


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def add_step(results: Path, name: str, status: str, rc: int | None, seconds: float, command: str, log: str,
             note: str = "") -> dict:
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: one of {', '.join(STATUSES)}")
    step = {"name": name, "status": status, "rc": rc, "seconds": round(seconds, 1), "command": command,
            "log": log, "note": note, "finished": now()}
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "steps.jsonl", "a") as f:
        f.write(json.dumps(step) + "\n")
    return step


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def backend_ops(log: str) -> dict | None:
    m = re.search(r"(\d+)/(\d+) tests passed", log)
    if not m:
        return None
    verdicts = re.findall(r"Backend (\S+): (OK|FAIL)", log)
    return {"passed": int(m.group(1)), "total": int(m.group(2)),
            "not_supported": len(re.findall(r"not supported", log)),
            "backends": {b: v for b, v in verdicts}}


def sanitizer(log: str) -> dict | None:
    m = re.search(r"ERROR SUMMARY: (\d+) errors?", log)
    r = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", log)
    if not m and not r:
        return None
    out = {"errors": int(m.group(1)) if m else None, "hook_passes": len(re.findall(r"elastickv: pass \d+", log))}
    if r:
        out |= {"hazards": int(r.group(1)), "race_errors": int(r.group(2)), "race_warnings": int(r.group(3))}
    return out


def figures(results: Path) -> dict:
    """The figures each check left in ``results`` (None where a check did not run or left nothing)."""
    logs = results / "logs"
    out: dict = {"test_backend_ops": backend_ops(_read(logs / "test-backend-ops.log"))}
    ha = results / "hook_agreement.json"
    out["hook_agreement"] = json.loads(ha.read_text())["summary"] if ha.is_file() else None
    out["sanitizer"] = {p.stem: sanitizer(_read(p)) for p in sorted(logs.glob("sanitizer-*.log"))} or None
    op = results / "op_bandwidth_cuda.json"
    out["op_bandwidth"] = json.loads(op.read_text())["data"]["summary"] if op.is_file() else None
    do = results / "decode_overhead_cuda.json"
    out["decode_overhead"] = json.loads(do.read_text())["metrics"]["overhead"] if do.is_file() else None
    return out


def finish(results: Path, out: Path | None, meta: dict) -> dict:
    steps_path = results / "steps.jsonl"
    steps = [json.loads(line) for line in _read(steps_path).splitlines() if line.strip()]
    rel = results.resolve()
    files = sorted(paths.relative(p) for p in rel.rglob("*") if p.is_file())
    summary = meta | {
        "format": SUMMARY_FORMAT,
        "kind": "gpu_verify",
        "updated": now(),
        "steps": steps,
        "failed": [s["name"] for s in steps if s["status"] == "failed"],
        "skipped": [s["name"] for s in steps if s["status"] == "skipped"],
        "figures": figures(results),
        "files": files,
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        part = out / "results.tar.gz.part"
        with tarfile.open(part, "w:gz") as tar:
            tar.add(results, arcname=results.name)
        if part.stat().st_size > OUT_FILE_LIMIT:  # keep what fits: the JSON files and the logs' tails
            with tarfile.open(part, "w:gz") as tar:
                for p in sorted(results.rglob("*")):
                    if p.is_file() and (p.suffix == ".json" or p.stat().st_size < 1 << 20):
                        tar.add(p, arcname=f"{results.name}/{p.relative_to(results)}")
        part.replace(out / "results.tar.gz")
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step", help="append one step to <results>/steps.jsonl")
    s.add_argument("--results", type=Path, required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--status", required=True, choices=STATUSES)
    s.add_argument("--rc", type=int, default=None)
    s.add_argument("--seconds", type=float, default=0.0)
    s.add_argument("--command", default="")
    s.add_argument("--log", default="")
    s.add_argument("--note", default="")
    f = sub.add_parser("finish", help="write summary.json (and the files of <out>)")
    f.add_argument("--results", type=Path, required=True)
    f.add_argument("--out", type=Path, default=None, help="the folder that goes back ($OUT)")
    f.add_argument("--meta", type=Path, required=True, help="JSON of the run: commit, pack check, device, settings")
    args = ap.parse_args()
    if args.cmd == "step":
        add_step(args.results, args.name, args.status, args.rc, args.seconds, args.command, args.log, args.note)
        return 0
    summary = finish(args.results, args.out, json.loads(args.meta.read_text()))
    print(f"summary: {len(summary['steps'])} steps, failed: {', '.join(summary['failed']) or 'none'}, "
          f"skipped: {', '.join(summary['skipped']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
