# SPDX-License-Identifier: Apache-2.0
"""Run records and aggregates: provenance, validation against the documented schemas (run.schema.json,
aggregate.schema.json and schemas/, through schema.py; results/SCHEMA.md), atomic writes."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from . import models, paths, pypi, schema, upstream

SCHEMA_PATH = Path(__file__).with_name("run.schema.json")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_info() -> dict:
    """This repository's commit and whether the work tree differs from it (None when unknown)."""
    try:
        commit = subprocess.run(["git", "-C", str(paths.ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        # dirty: a tracked file differs, or an untracked file outside results/ (a new script that made the numbers)
        status = subprocess.run(["git", "-C", str(paths.ROOT), "status", "--porcelain", "--untracked-files=all",
                                 "--", ".", ":(exclude)results"], capture_output=True, text=True, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}


def upstream_info(patched: bool) -> dict:
    up = upstream.read()
    return {"commit": up["LLAMACPP_COMMIT"], "sdist": f"{up['SDIST_PACKAGE']}=={up['SDIST_VERSION']}",
            "sdist_sha256": up["SDIST_SHA256"], "patched": patched}


@lru_cache(maxsize=1)
def device_info() -> dict:
    """CPU model and core count, the GPU if nvidia-smi sees one, and the platform."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            gpu = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "n_cpu": os.cpu_count() or 0, "gpu": gpu, "platform": platform.platform()}


def write_json_atomic(path: Path, obj: object) -> None:
    """Writes JSON so that a reader never sees a half-written file (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def validate(record: dict) -> None:
    """Raises jsonschema.ValidationError if the record does not follow run.schema.json (its metrics: the
    schema of its kind; finite numbers, checked date-times: scripts/elastickv/schema.py)."""
    schema.validate(record, schema.RECORD)


def record(kind: str, name: str, started: str, command: list[str], env: dict, elastickv: dict, settings: dict,
           variant: str, binary: str, model_name: str, data: Path | None, metrics: dict, log: Path,
           model_file: Path | None = None) -> dict:
    """A run record with its provenance filled in (see results/SCHEMA.md), validated against the schema.
    ``model_file``: a model outside configs/models.yaml (e.g. the random-weights model of the GPU check), recorded
    under ``model_name`` with its own sha256."""
    if model_file is not None:
        model_rec = {"name": model_name, "file": paths.relative(model_file), "sha256": pypi.sha256_of(model_file)}
    else:
        _, model = models.entry(model_name)
        model_rec = {"name": model_name, "file": paths.relative(paths.MODELS / model["file"]), "sha256": model["sha256"]}
    rec = {
        "schema_version": 1,
        "kind": kind,
        "name": name,
        "started": started,
        "finished": now(),
        "command": command,
        "env": env,
        "elastickv": elastickv,
        "settings": settings,
        "git": git_info(),
        "upstream": upstream_info(patched=True),
        "build": {"tree": paths.relative(paths.LLAMA_SRC), "variant": variant, "binary": binary},
        "model": model_rec,
        "data": None if data is None else {"file": paths.relative(data), "sha256": pypi.sha256_of(data)},
        "device": device_info(),
        "metrics": metrics,
        "log": paths.relative(log),
    }
    validate(rec)
    return rec


AGGREGATE_SCHEMA_PATH = Path(__file__).with_name("aggregate.schema.json")


class ResultExists(RuntimeError):
    """An aggregate result exists with another config; pass --force to replace it."""


def aggregate(artifact: str, script: str, cfg: dict, data: object, sources: list[Path | str],
              notes: str = "") -> dict:
    """A table/figure result: what it is, the script and resolved config that made it, the run records it
    was computed from (``sources``), and the numbers (``data``). Validated against aggregate.schema.json."""
    obj = {
        "schema_version": 1,
        "kind": "aggregate",
        "artifact": artifact,
        "script": script,
        "config": cfg,
        "generated": now(),
        "git": git_info(),
        "upstream": upstream_info(patched=True),
        "device": device_info(),
        "sources": sorted({paths.relative(Path(s)) if not isinstance(s, str) else s for s in sources}),
        "notes": notes,
        "data": data,
    }
    validate_aggregate(obj)
    return obj


def validate_aggregate(obj: dict) -> None:
    """Raises jsonschema.ValidationError if the aggregate does not follow aggregate.schema.json (its data: the
    schema of the script that wrote it)."""
    schema.validate(obj, schema.AGGREGATE)


def write_aggregate(path: Path, obj: dict, force: bool = False) -> None:
    """Writes an aggregate atomically; one made with another config is refused unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        old = json.loads(path.read_text())
        # compared as JSON: a YAML number key (0.5: ...) comes back from the file as the string "0.5"
        if old.get("config") != json.loads(json.dumps(obj["config"])):
            raise ResultExists(f"{paths.relative(path)} was made with another config; use --force to replace it")
    write_json_atomic(path, obj)


def load_input(rel: str) -> dict:
    """A result file another analysis reads (path relative to the repository root); a clear error when missing."""
    path = paths.ROOT / rel
    if not path.exists():
        raise FileNotFoundError(f"{rel} is missing: run the script that makes it first (results/MANIFEST.md)")
    return json.loads(path.read_text())
