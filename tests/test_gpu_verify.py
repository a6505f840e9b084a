# SPDX-License-Identifier: Apache-2.0
"""The standing GPU check (scripts/gpu/) without a GPU: the pack fits what one run may carry, verify.sh's dry run
prepares everything that needs no GPU and returns at most 8 files, archive.py files a returned folder (in a
scratch results folder, never results/) and refuses what it must, and hook_agreement.py's comparison works on a CPU
build (both sides on the CPU) where one is built. What needs the GPU (the CUDA build, the runs) is not run here."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from elastickv import paths, schema, upstream

GPU = paths.ROOT / "scripts" / "gpu"
SCRIPTS = ("pack.py", "archive.py", "summary.py", "write_model.py", "hook_agreement.py")
STEPS = ["prepare", "build", "test-backend-ops", "hook-agreement", "sanitizer-memcheck-f16-trans-full",
         "sanitizer-memcheck-q4_0-rows-incremental", "sanitizer-racecheck-f16-rows-full", "op-bandwidth",
         "decode-overhead"]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", GPU / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scripts_parse_and_have_help():
    subprocess.run(["bash", "-n", str(GPU / "verify.sh")], check=True)
    r = subprocess.run(["bash", str(GPU / "verify.sh"), "--help"], capture_output=True, text=True, check=True)
    assert "--dry-run" in r.stdout and "decode-overhead" in r.stdout
    for s in SCRIPTS:
        r = subprocess.run([sys.executable, str(GPU / s), "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout, s
    r = subprocess.run([str(paths.ROOT / "scripts/setup/build_llamacpp.sh"), "--no-patch"], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "--no-patch is for a tree of your own" in r.stderr


def test_strip_rules_keep_what_the_cuda_build_needs():
    pack = load("pack")
    for kept in ("CMakeLists.txt", "tests/test-backend-ops.cpp", "tests/CMakeLists.txt", "ggml/src/ggml-cuda/fattn.cu",
                 "ggml/src/ggml-cpu/ggml-cpu.c", "ggml/src/ggml.c", "tools/perplexity/perplexity.cpp",
                 "tools/llama-bench/llama-bench.cpp", "vendor/nlohmann/json.hpp", "src/llama-context.cpp",
                 "tools/server/server-context.cpp"):  # the hook patches the server
        assert not pack.stripped(kept), kept
    for gone in ("models/ggml-vocab-llama-bpe.gguf", "docs/build.md", "examples/simple/simple.cpp",
                 "ggml/src/ggml-vulkan/ggml-vulkan.cpp", "tools/ui/package.json", "tools/cli/cli.cpp",
                 "convert_hf_to_gguf.py"):
        assert pack.stripped(gone), gone


def test_summary_reads_the_tools_output():
    summary = load("summary")
    tbo = summary.backend_ops("  KV_SPARSIFY(type=f16,...): OK\n  36/36 tests passed\n  Backend CUDA0: OK\n")
    assert tbo == {"passed": 36, "total": 36, "not_supported": 0, "backends": {"CUDA0": "OK"}}
    san = summary.sanitizer("elastickv: pass 0 seq 0\n========= ERROR SUMMARY: 0 errors\n")
    assert san == {"errors": 0, "hook_passes": 1}
    race = summary.sanitizer("========= RACECHECK SUMMARY: 2 hazards displayed (1 error, 1 warning)\n")
    assert race["hazards"] == 2 and race["race_errors"] == 1
    assert summary.backend_ops("nothing") is None and summary.sanitizer("nothing") is None


def sdist_present() -> bool:
    return (paths.DOWNLOADS / upstream.read()["SDIST_FILE"]).exists()


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A pack (fast xz, cached wheels only) and a dry run of verify.sh on it, both in scratch folders."""
    if not sdist_present():
        pytest.skip("the llama.cpp sdist is not in build/downloads (make build-test fetches it)")
    if shutil.which("patch") is None or shutil.which("git") is None:
        pytest.skip("packing needs GNU patch and git")
    tmp = tmp_path_factory.mktemp("gpu")
    pack = load("pack")
    info = pack.make_pack(tmp / "pack", xz_level=0, download=False, allow_dirty=True)
    env = os.environ | {"PYTHON": sys.executable}
    env.pop("OUT", None)
    cmd = ["bash", str(GPU / "verify.sh"), "--dry-run", "--quick", "--pack", str(tmp / "pack"), "--work",
           str(tmp / "work"), "--out", str(tmp / "out")]
    run = subprocess.run(cmd, cwd=paths.ROOT, env=env, capture_output=True, text=True, timeout=120)
    return {"tmp": tmp, "info": info, "run": run}


def test_pack_fits_one_run(packed):
    info = packed["info"]
    pack_dir = packed["tmp"] / "pack"
    assert (pack_dir / "llama.cpp.tar.xz").exists() and (pack_dir / "PACK.json").exists()
    t = info["travel"]
    # what always travels (tracked files) plus the pack; untracked files of a work tree are the session's own
    assert t["tracked"] + t["pack"] <= 64 * 2**20, f"the pack no longer fits one run: {t}"
    names = json.loads((pack_dir / "PACK.json").read_text())
    assert names["commit"] and names["files"]["cuda_hook/patch_llamacpp.sh"]
    with tarfile.open(pack_dir / "llama.cpp.tar.xz") as tar:
        members = set(tar.getnames())
    for f in ("llama.cpp/CMakeLists.txt", "llama.cpp/tests/test-backend-ops.cpp", "llama.cpp/tests/test-kv-sparsify.inc",
              "llama.cpp/ggml/src/ggml-cuda/kv-sparsify.cu", "llama.cpp/src/llama-elastickv.cpp"):
        assert f in members, f
    assert not any(m.startswith(("llama.cpp/models/", "llama.cpp/ggml/src/ggml-vulkan/")) for m in members)


def test_dry_run_prepares_and_returns_few_files(packed):
    run, tmp = packed["run"], packed["tmp"]
    assert run.returncode == 0, run.stderr[-2000:]
    out = sorted((tmp / "out").iterdir())
    assert [p.name for p in out] == ["results.tar.gz", "summary.json"]
    assert len(out) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in out)
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    schema.validate(summary, schema.GPU_SUMMARY)
    assert [s["name"] for s in summary["steps"]] == STEPS
    assert summary["steps"][0]["status"] == "ok", (tmp / "work" / "prepare.log").read_text()[-2000:]
    assert {s["status"] for s in summary["steps"][1:]} == {"dry-run"}
    assert summary["dry_run"] and summary["commit"] == packed["info"]["commit"]
    # what the GPU steps need was prepared here: the tree, the models, the text
    work = tmp / "work"
    assert (work / "llama.cpp" / "ggml/src/ggml-cuda/kv-sparsify.cu").exists()
    assert (work / "model-tiny-f32.gguf").stat().st_size > 0 and (work / "bench-tiny-q4_1.gguf").stat().st_size > 0
    assert (work / "wiki.test.head.raw").stat().st_size == 16384
    for expected in ("--cuda --cuda-arch 90", "test-backend-ops test -o KV_SPARSIFY -b CUDA0", "-ngl 99",
                     "-ngl 0 -dev none", "compute-sanitizer --tool memcheck", "compute-sanitizer --tool racecheck",
                     "op_bandwidth.py", "decode_overhead.py --variant cuda"):
        assert expected in run.stdout, expected


def test_archive_files_a_returned_folder(packed, tmp_path):
    archive = load("archive")
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(paths.RESULTS / "MANIFEST.md", results / "MANIFEST.md")
    out = packed["tmp"] / "out"
    short = packed["info"]["commit"][:10]
    with pytest.raises(archive.ArchiveError, match="dry run"):
        archive.archive(out, results / "gpu", results / "MANIFEST.md")
    dest = archive.archive(out, results / "gpu", results / "MANIFEST.md", allow_dry_run=True, allow_mismatch=True)
    assert dest == results / "gpu" / short
    assert (dest / "summary.json").exists() and (dest / "logs" / "prepare.log").exists()
    manifest = (results / "MANIFEST.md").read_text()
    assert archive.SECTION in manifest and manifest.count(f"| {short} ") == 1
    assert f"gpu/{short}/summary.json" in manifest
    with pytest.raises(archive.ArchiveError, match="exists"):
        archive.archive(out, results / "gpu", results / "MANIFEST.md", allow_dry_run=True, allow_mismatch=True)
    archive.archive(out, results / "gpu", results / "MANIFEST.md", force=True, allow_dry_run=True,
                    allow_mismatch=True)
    assert (results / "MANIFEST.md").read_text().count(f"| {short} ") == 1  # the row is replaced, not added


def test_archive_refuses_a_folder_without_summary(tmp_path):
    archive = load("archive")
    (tmp_path / "returned").mkdir()
    (tmp_path / "returned" / "results.tar.gz").write_bytes(b"")
    with pytest.raises(archive.ArchiveError, match="no summary.json"):
        archive.archive(tmp_path / "returned", tmp_path / "gpu", tmp_path / "MANIFEST.md")
    r = subprocess.run([sys.executable, str(GPU / "archive.py"), str(tmp_path / "returned"), "--results-root",
                        str(tmp_path / "gpu"), "--manifest", str(tmp_path / "MANIFEST.md")], capture_output=True, text=True)
    assert r.returncode == 1 and "no summary.json" in r.stderr
    assert not (tmp_path / "gpu").exists()


def test_archive_refuses_members_outside_the_commit(tmp_path):
    archive = load("archive")
    bad = tmp_path / "bad.tar.gz"
    (tmp_path / "x.txt").write_text("x")
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tmp_path / "x.txt", arcname="0123456789/../escape.txt")
    with pytest.raises(archive.ArchiveError, match="not a file or folder under"):
        archive.extract(bad, "0123456789", tmp_path)


CPU_PERPLEXITY = paths.binary("llama-perplexity")


@pytest.mark.skipif(not CPU_PERPLEXITY.exists(), reason="no CPU build of llama-perplexity (make build-test)")
def test_hook_agreement_machinery_on_the_cpu(tmp_path):
    """Both sides on the CPU (1 and 2 threads): the runs, the parsing and the verdicts, on the tiny model."""
    load("write_model").write(tmp_path / "tiny.gguf", "tiny", "f16")
    text = tmp_path / "text.raw"
    text.write_bytes(paths.WIKITEXT_TEST.read_bytes()[:16384])
    out = tmp_path / "ha.json"
    r = subprocess.run([sys.executable, str(GPU / "hook_agreement.py"), "--quick", "--bin", str(CPU_PERPLEXITY),
                        "--model", str(tmp_path / "tiny.gguf"), "--text", str(text), "--out", str(out), "--log-dir",
                        str(tmp_path / "logs"), "--gpu-flags", "-ngl 0 -dev none -t 1",
                        "--cpu-flags", "-ngl 0 -dev none -t 2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(out.read_text())
    schema.validate(rec, schema.GPU_HOOK_AGREEMENT)
    assert rec["summary"]["agree"] == rec["summary"]["pairs"] == 5
    hooked = [p for p in rec["pairs"] if p["mode"] != "off"]
    assert all(p["passes"] == 6 and p["gpu"]["k_zero_pct_last"] > 0 for p in hooked)


@pytest.mark.parametrize("wtype", ["q4_0", "q8_0"])
def test_write_model_random_codes(tmp_path, monkeypatch, wtype):
    """The llama3-8b shape's way of writing (random codes of the quantized type, one scale, its own output matrix),
    on a small shape: llama.cpp's block layout, values of the asked deviation, and refused for other types."""
    import gguf
    from gguf import quants

    wm = load("write_model")
    monkeypatch.setitem(wm.SHAPES, "codes-test", wm.SHAPES["tiny"] | {"tied": False, "codes": True})
    out = tmp_path / "m.gguf"
    wm.write(out, "codes-test", wtype)
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
    qtype = gguf.GGMLQuantizationType[wtype.upper()]
    assert tensors["output.weight"].tensor_type == qtype and tensors["blk.1.ffn_down.weight"].tensor_type == qtype
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    w = quants.dequantize(tensors["blk.0.ffn_up.weight"].data, qtype)
    assert w.shape == (256, 128) and 0.018 < float(w.std()) < 0.022
    assert len(np.unique(w)) > 8  # codes, not a constant
    with pytest.raises(ValueError, match="written in q8_0 or q4_0 only"):
        wm.write(tmp_path / "x.gguf", "codes-test", "f16")
