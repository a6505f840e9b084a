# SPDX-License-Identifier: Apache-2.0
"""Real K/V for the analysis scripts: one llama-perplexity chunk with ``ELASTICKV_DUMP`` set.

The chunk is processed as a single ubatch (-b = -ub = ctx), so the hook makes exactly one pass, after the
whole chunk is in the cache: the "before" arrays of that pass are the model's own K/V of ``ctx`` tokens of
WikiText-2 test (never thresholded before), and the "after" arrays are the sweet preset applied to them.
The dump (hundreds of MB) stays in build/cache/dumps; its run record and raw log go to results/dumps/ (the
archive: ``make experiments``) or to the ``records`` folder the caller names (the tests use a scratch folder,
so they never rewrite the archive), so every analysis can name the K/V it used.
"""

from __future__ import annotations

from pathlib import Path

from . import dump, envvars, paths, ppl


def folder(model: str, ctx: int) -> Path:
    return paths.CACHE / "dumps" / f"{model}-c{ctx}"


#: where the run records of the dumps are archived
RECORDS = paths.RESULTS / "dumps"


def record_path(model: str, ctx: int, records: Path | None = None) -> Path:
    """The run record of the dump of ``model`` at ``ctx`` in ``records`` (default: the archive, results/dumps)."""
    return Path(records or RECORDS) / f"{model}-c{ctx}.json"


def ensure(model: str, ctx: int = 2048, threads: int = 2, force: bool = False,
           records: Path | None = None) -> tuple[Path, dict]:
    """The dump folder and run record of ``model`` at ``ctx`` tokens, made if missing; the record (and its raw
    log and stats) live in ``records`` (default: results/dumps)."""
    out = folder(model, ctx)
    hook = envvars.hook_env(preset="sweet", dump=paths.relative(out))
    s = ppl.PplSettings(model=model, data=paths.relative(paths.WIKITEXT_TEST), ctx=ctx, batch=ctx, chunks=1,
                        threads=threads, hook=hook)
    rec_path = record_path(model, ctx, records)
    rec_dir = rec_path.parent
    if force or not dump.passes(out) or not rec_path.exists():
        # the dump is remade whenever its record is missing here, so a record always describes the dump in use
        for p in out.glob("ctx*_pass*"):
            p.unlink()
        rec_path.unlink(missing_ok=True)
    record = ppl.run(f"{model}-c{ctx}", s, rec_dir, force=force)
    if not dump.passes(out):
        raise RuntimeError(f"the run wrote no dump to {paths.relative(out)}; see {record['log']}")
    return out, record


def first_pass(model: str, ctx: int = 2048, threads: int = 2, records: Path | None = None) -> dump.DumpPass:
    out, _ = ensure(model, ctx, threads, records=records)
    c, p = dump.passes(out)[0]
    return dump.load(out, c, p)
