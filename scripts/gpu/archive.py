#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Files what the standing GPU check returned (scripts/gpu/verify.sh on the GPU machine) under
results/gpu/<commit>/ and writes its row in results/MANIFEST.md (section "GPU checks"; a row of the same commit
is replaced).

The folder given is the run's returned files (the `run` tool's files_at): summary.json and results.tar.gz. The
commit is the one the pack was made from (PACK.json, recorded by verify.sh in summary.json). Refused: a folder
without summary.json or results.tar.gz, a dry run, a run whose repository copy differed from the packed commit
(--allow-mismatch files it anyway, and the row says so), an archive member outside <commit>/, and an existing
results/gpu/<commit>/ (--force replaces it).

  scripts/gpu/archive.py <files_at>
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from elastickv import paths  # noqa: E402

SECTION = "## GPU checks (`scripts/gpu/verify.sh`)"
HEADER = ("| commit | run (UTC) | device | steps | test-backend-ops KV_SPARSIFY | hook GPU = CPU (PPL, sparsity) | "
          "compute-sanitizer | op bandwidth (full pass / copy) | decode overhead (depth 4096) | files |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
INTRO = ("One row per commit that ran the standing GPU check on the GPU machine (NVIDIA H200 of `../shared/DEVICE.md`)"
         ", filed by `scripts/gpu/archive.py` from the files the run returned. Model: random weights of SmolLM2-135M's "
         "shape written there (`scripts/gpu/write_model.py`; f32 for correctness, q4_1 for decode speed); text: the "
         "first 16 KiB of WikiText-2 test. `summary.json` has every step's command, exit status and time; `logs/` the "
         "raw output.")


class ArchiveError(RuntimeError):
    """The returned folder cannot be filed; the message says why."""


def load_summary(folder: Path) -> dict:
    s = folder / "summary.json"
    if not s.is_file():
        raise ArchiveError(f"{folder}: no summary.json, so no commit to file it under (is this the folder the run "
                           "returned, files_at?)")
    summary = json.loads(s.read_text())
    if summary.get("kind") != "gpu_verify" or not summary.get("commit") or summary["commit"] == "unknown":
        raise ArchiveError(f"{s}: not a summary of scripts/gpu/verify.sh with a commit")
    if not (folder / "results.tar.gz").is_file():
        raise ArchiveError(f"{folder}: no results.tar.gz (the run's results and logs)")
    return summary


def _fmt_steps(summary: dict) -> str:
    steps = summary["steps"]
    ok = sum(s["status"] == "ok" for s in steps)
    out = f"{ok}/{len(steps)} ok"
    if summary["failed"]:
        out += "; failed: " + ", ".join(summary["failed"])
    if summary["skipped"]:
        out += "; skipped: " + ", ".join(summary["skipped"])
    return out


def row(summary: dict, short: str, files: list[str], mismatch: bool) -> str:
    f = summary["figures"]
    tbo = f.get("test_backend_ops")
    tbo_s = f"{tbo['passed']}/{tbo['total']} passed" if tbo else "—"
    ha = f.get("hook_agreement")
    ha_s = f"{ha['agree']}/{ha['pairs']} pairs agree" + (f" (differ: {', '.join(ha['differ'])})" if ha["differ"] else "") \
        if ha else "—"
    san = f.get("sanitizer") or {}
    san_s = "; ".join(f"{k.removeprefix('sanitizer-')}: {v['errors'] if v['errors'] is not None else '?'} errors"
                      + (f", {v['hazards']} hazards" if "hazards" in v else "") for k, v in san.items() if v) or "—"
    op = (f.get("op_bandwidth") or {}).get("full")
    op_s = f"min {op['ratio_min']:.2f}, median {op['ratio_median']:.2f} (target {op['target_ratio']:.2f})" if op else "—"
    do = (f.get("decode_overhead") or {}).get("4096")
    do_s = ", ".join(f"{k} {v['overhead_pct_mean']:+.2f} %" for k, v in do.items() if isinstance(v, dict)) if do else "—"
    dev = (summary.get("device") or {}).get("gpu") or "—"
    commit = short + (" (copy differed from the commit: see summary.json pack_check)" if mismatch else "")
    cells = [commit, summary.get("started", "—"), dev, _fmt_steps(summary), tbo_s, ha_s, san_s, op_s, do_s,
             " ".join(f"`{x}`" for x in files)]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def update_manifest(manifest: Path, short: str, line: str) -> None:
    text = manifest.read_text() if manifest.exists() else "# What is in results/\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{INTRO}\n\n{HEADER}\n"
    head, _, tail = text.partition(SECTION)
    lines = tail.split("\n")
    key = f"| {short} "
    idx = [i for i, ln in enumerate(lines) if ln.startswith(key)]
    if idx:
        lines[idx[0]] = line
    else:
        last = max(i for i, ln in enumerate(lines) if ln.startswith("|"))
        lines.insert(last + 1, line)
    manifest.write_text(head + SECTION + "\n".join(lines))


def extract(archive: Path, short: str, dest_root: Path) -> list[Path]:
    """Extracts ``archive`` (one top folder ``short``) into ``dest_root``; refuses any other member."""
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            parts = Path(m.name).parts
            if m.name.startswith("/") or ".." in parts or not parts or parts[0] != short or not (m.isfile() or m.isdir()):
                raise ArchiveError(f"results.tar.gz: member {m.name!r} is not a file or folder under {short}/")
        with tempfile.TemporaryDirectory(dir=dest_root) as tmp:
            tar.extractall(tmp, members=members, filter="data")
            target = dest_root / short
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(Path(tmp) / short), target)
    return sorted(p for p in target.rglob("*") if p.is_file())


def archive(folder: Path, results_root: Path, manifest: Path, force: bool = False, allow_mismatch: bool = False,
            allow_dry_run: bool = False) -> Path:
    summary = load_summary(folder)
    if summary.get("dry_run") and not allow_dry_run:
        raise ArchiveError("a dry run measured nothing; it is not filed")
    check = summary.get("pack_check") or {}
    mismatch = not check.get("matches", False)
    if mismatch and not allow_mismatch:
        raise ArchiveError("the repository copy on the GPU machine differed from the packed commit "
                           f"{summary['commit'][:10]} (summary.json pack_check): re-pack and re-run, or --allow-mismatch")
    short = summary["commit"][:10]
    dest = results_root / short
    if dest.exists() and not force:
        raise ArchiveError(f"{dest} exists; --force replaces it")
    results_root.mkdir(parents=True, exist_ok=True)
    files = extract(folder / "results.tar.gz", short, results_root)
    names = [str(p.relative_to(results_root.parent)) for p in files
             if p.suffix == ".json" and p.parent == dest] + [f"{results_root.name}/{short}/logs/"]
    update_manifest(manifest, short, row(summary, short, names, mismatch))
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="the returned files (summary.json, results.tar.gz)")
    ap.add_argument("--results-root", type=Path, default=paths.RESULTS / "gpu", help="default: %(default)s")
    ap.add_argument("--manifest", type=Path, default=paths.RESULTS / "MANIFEST.md", help="default: %(default)s")
    ap.add_argument("--force", action="store_true", help="replace an existing results/gpu/<commit>/")
    ap.add_argument("--allow-mismatch", action="store_true",
                    help="file a run whose repository copy differed from the packed commit")
    ap.add_argument("--allow-dry-run", action="store_true", help="file a dry run (tests only)")
    args = ap.parse_args()
    try:
        dest = archive(args.folder, args.results_root, args.manifest, args.force, args.allow_mismatch,
                       args.allow_dry_run)
    except (ArchiveError, OSError, tarfile.TarError, json.JSONDecodeError, KeyError) as e:
        print(f"archive: {e}", file=sys.stderr)
        return 1
    print(f"archive: filed under {paths.relative(dest)}; row written in {paths.relative(args.manifest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
