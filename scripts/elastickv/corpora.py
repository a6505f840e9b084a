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


class CorpusError(ValueError):
    """A corpus name or its shipped data is wrong."""


def _checked(folder: Path, names: list[str] | None = None) -> dict[str, bytes]:
    """The files of ``folder`` listed in its SHA256SUMS (or ``names`` of them), each checked."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        raise CorpusError(f"{paths.relative(sums)} is missing: the shipped data is incomplete")
    pinned = dict(reversed(line.split(maxsplit=1)) for line in sums.read_text().splitlines() if line.strip())
    pinned = {k.lstrip("*").strip(): v for k, v in pinned.items()}
    out = {}
    for name in sorted(pinned if names is None else names):
        path = folder / name
        if not path.is_file():
            raise CorpusError(f"{paths.relative(path)} is missing")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != pinned[name]:
            raise CorpusError(f"{paths.relative(path)} does not match its SHA256SUMS")
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
    files = _checked(paths.DATA / "python-stdlib")
    return "".join(f"# file: {name}\n{data.decode('utf-8')}\n" for name, data in files.items() if name.endswith(".py"))


def qa_text(seed: int = 1234, n_per_task: int = 2, target_words: int = 1500) -> str:
    essays = _checked(paths.DATA / "paul_graham_essays")
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
        return paths.WIKITEXT_TEST
    if name == "code":
        return _write(OUT / "python-stdlib.txt", code_text())
    if name == "qa":
        q = {"seed": 1234, "n_per_task": 2, "target_words": 1500} | (qa or {})
        return _write(OUT / f"routing-qa-s{q['seed']}-n{q['n_per_task']}-w{q['target_words']}.txt", qa_text(**q))
    raise CorpusError(f"unknown document type {name!r}; known: {', '.join(CORPORA)}")
