# SPDX-License-Identifier: Apache-2.0
"""The hub paths, offline (elastickv.hub): LongBench-v2 items through the datasets library from a JSON-lines
file, a JSON array and a directory written by save_to_disk (the same validated items as the fixture's text); a
model file through hf_hub_download from a fake hub cache (HF_HUB_CACHE, HF_HUB_OFFLINE=1: the hub's own
layout), with its sha256 checked, copied into place, and refused on a wrong hash; and one clear line, never a
traceback, when the hub cannot be reached. No test touches the network."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from elastickv import hub, paths

FIXTURE = paths.ROOT / "tests" / "data" / "longbench_v2_fixture.jsonl"
_spec = importlib.util.spec_from_file_location("longbench_v2_eval", paths.ROOT / "scripts" / "eval" / "longbench_v2_eval.py")
lb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lb)

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=paths.ROOT, capture_output=True, text=True,
                          env=os.environ | env, timeout=300)


def test_longbench_from_jsonl_json_array_and_saved_dataset(tmp_path):
    import datasets

    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    want = lb.validate_items(rows, "fixture")  # the file parsed by json itself
    array = tmp_path / "data.json"
    array.write_text(json.dumps(rows, indent=1))
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    split = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(split))
    for source, kind in ((FIXTURE, "file"), (array, "file"), (saved, "saved"), (split, "saved")):
        items, prov = lb.load_data(str(source))
        assert items == want and prov["source"] == kind and prov["items"] == len(want)
    assert lb.load_data(str(FIXTURE))[1]["sha256"] == hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    with pytest.raises(hub.HubError, match="has splits train, not test"):
        hub.load_records(split, "x", split="test")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"_id": "a", ')
    with pytest.raises(lb.DataError, match="not a JSON array of objects or JSON lines"):
        lb.load_data(str(broken))


def fake_hub(root, repo: str, filename: str, data: bytes) -> None:
    """The hub cache's layout: models--<org>--<name>/refs/main -> a commit, snapshots/<commit>/<file>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    d = root / ("models--" + repo.replace("/", "--"))
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(commit)
    (d / "snapshots" / commit).mkdir(parents=True)
    (d / "snapshots" / commit / filename).write_bytes(data)


def test_model_from_a_fake_hub_cache(tmp_path):
    data = b"GGUF fake model bytes"
    fake_hub(tmp_path / "hub", "someone/fake-GGUF", "fake.gguf", data)
    env = OFFLINE | {"HF_HUB_CACHE": str(tmp_path / "hub")}
    good = hashlib.sha256(data).hexdigest()
    code = ("from pathlib import Path; from elastickv import hub; "
            f"p = hub.download_model('someone/fake-GGUF', 'fake.gguf', Path({str(tmp_path / 'models' / 'f.gguf')!r}), "
            "sha256={sha!r}); print(p.read_bytes().decode())")
    r = python(code.format(sha=good), env)
    assert r.returncode == 0 and r.stdout.strip() == data.decode(), r.stderr
    bad = python(code.format(sha="0" * 64), env)
    assert bad.returncode != 0 and "not the pinned " + "0" * 64 in bad.stderr
    missing = python(code.replace("'fake.gguf', Path", "'other.gguf', Path").format(sha=good), env)
    assert missing.returncode != 0 and "could not fetch someone/fake-GGUF/other.gguf" in missing.stderr
    assert "copy the file to" in missing.stderr


def test_models_fetch_uses_the_hub_path(tmp_path):
    """models.fetch of a huggingface entry: the pinned file from the (fake) hub cache, its hash checked."""
    data = b"another fake model"
    fake_hub(tmp_path / "hub", "someone/fake-GGUF", "m.gguf", data)
    code = ("from elastickv import models, paths; from pathlib import Path; "
            f"paths.MODELS = Path({str(tmp_path / 'models')!r}); "
            "models.load = lambda: {'default': 'x', 'models': {'x': {'file': 'm.gguf', 'sha256': %r, "
            "'source': {'kind': 'huggingface', 'repo': 'someone/fake-GGUF', 'file': 'm.gguf'}}}}; "
            "print(models.fetch('x'))") % hashlib.sha256(data).hexdigest()
    r = python(code, OFFLINE | {"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "models" / "m.gguf").read_bytes() == data


def test_offline_hub_is_one_clear_line():
    r = subprocess.run([sys.executable, "scripts/eval/longbench_v2_eval.py", "--data", "hub"], cwd=paths.ROOT,
                       capture_output=True, text=True, env=os.environ | OFFLINE, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "could not load THUDM/LongBench-v2 from the Hugging Face hub" in lines[0] and "--data" in lines[0]
    w = python("from elastickv import hub\ntry:\n hub.wikitext2_text('test')\nexcept hub.HubError as e:\n print(e)",
               OFFLINE)
    assert w.returncode == 0 and "could not load Salesforce/wikitext" in w.stdout
    assert "data/wikitext-2-raw" in w.stdout


def test_quickstart_hub_wikitext_offline_is_one_line():
    r = subprocess.run([sys.executable, "scripts/eval/quickstart.py", "--wikitext", "hub", "--chunks", "1"],
                       cwd=paths.ROOT, capture_output=True, text=True, env=os.environ | OFFLINE, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("quickstart: could not load Salesforce/wikitext")
