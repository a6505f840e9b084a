# SPDX-License-Identifier: Apache-2.0
"""The text files of the kv-cache-compression protocol's document types (scripts/eval/notebook_protocol.py).

llama-perplexity reads one text file; the code and question-answering documents are made from shipped data,
deterministically, into build/corpora/ (git-ignored: the same bytes on every machine, recorded by sha256):

* ``narrative``: WikiText-2 raw test (data/wikitext-2-raw/wiki.test.raw, used as it is).
* ``code``: the ten CPython 3.11.7 modules of data/python-stdlib (PSF licence), checked against its SHA256SUMS
  and joined in file-name order, each preceded by a ``# file: <name>`` line.
* ``qa``: the routing suite's items (scripts/elastickv/routing_suite.py: synthetic facts with exact answers,
  seeded) in Paul Graham essay filler (data/paul_graham_essays, sha256-checked), each written as its
  context, then ``Question: ...`` and ``Answer: ...`` lines; not a public QA set (none ships offline).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from . import paths, routing_suite

CORPORA = ("narrative", "code", "qa")
OUT = paths.BUILD / "corpora"
#: the routing-suite settings of the qa document (config key ``qa`` overrides them)
QA_DEFAULTS = {"seed": 1234, "n_per_task": 2, "target_words": 1500}


class CorpusError(ValueError):
    """A corpus name or its shipped data is wrong."""


def verified_files(folder: Path, error: type[Exception] = CorpusError, unlisted: str = "*.txt") -> dict[str, bytes]:
    """The files listed in ``folder``/SHA256SUMS, in sorted name order, each checked against its hash. A missing
    SHA256SUMS, a missing or changed listed file, or a file matching ``unlisted`` that SHA256SUMS does not list is
    an ``error`` (the caller's exception class: f5_niah's HaystackError for the haystack)."""
    sums = folder / "SHA256SUMS"
    if not sums.exists():
        raise error(f"{paths.relative(sums)} is missing: the files cannot be verified")
    pinned = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(None, 1)
            pinned[name.lstrip("*")] = digest
    extra = sorted(p.name for p in folder.glob(unlisted) if p.name not in pinned)
    if extra:
        raise error(f"{paths.relative(folder)}: {', '.join(extra)} not listed in SHA256SUMS")
    out = {}
    for name in sorted(pinned):
        path = folder / name
        if not path.exists():
            raise error(f"{paths.relative(path)} is missing (listed in SHA256SUMS)")
        data = path.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != pinned[name]:
            raise error(f"{paths.relative(path)} has sha256 {got}, not the pinned {pinned[name]}")
        out[name] = data
    return out


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return path
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def code_text() -> str:
    files = verified_files(paths.DATA / "python-stdlib")
    return "".join(f"# file: {name}\n{data.decode('utf-8')}\n" for name, data in files.items() if name.endswith(".py"))


def qa_text(seed: int = QA_DEFAULTS["seed"], n_per_task: int = QA_DEFAULTS["n_per_task"],
            target_words: int = QA_DEFAULTS["target_words"]) -> str:
    essays = verified_files(paths.DATA / "paul_graham_essays")
    filler = "\n".join(d.decode("utf-8") for n, d in essays.items() if n.endswith(".txt"))
    items = routing_suite.generate(seed, n_per_task, target_words, filler_text=filler)
    return "".join(f"{it['context']}\n\nQuestion: {it['question']}\nAnswer: {it['answer']}\n\n" for it in items)


def wikitext_test(source: str = "shipped") -> Path:
    """WikiText-2 raw test: the shipped file (default), or the hub's copy (elastickv.hub.wikitext2_text through the
    datasets library) written to build/corpora/ (its sha256 goes into every record, like the shipped file's)."""
    if source == "shipped":
        return paths.WIKITEXT_TEST
    if source == "hub":
        from . import hub

        return _write(OUT / "wikitext-2-raw-hub-test.raw", hub.wikitext2_text("test"))
    raise CorpusError(f"WikiText-2 source {source!r}; accepted: shipped, hub")


def path(name: str, qa: dict | None = None) -> Path:
    """The text file of document type ``name`` (made on first use); ``qa``: routing-suite settings of ``qa``."""
    if name == "narrative":
        return wikitext_test()
    if name == "code":
        return _write(OUT / "python-stdlib.txt", code_text())
    if name == "qa":
        q = QA_DEFAULTS | (qa or {})
        return _write(OUT / f"routing-qa-s{q['seed']}-n{q['n_per_task']}-w{q['target_words']}.txt", qa_text(**q))
    raise CorpusError(f"unknown document type {name!r}; known: {', '.join(CORPORA)}")
