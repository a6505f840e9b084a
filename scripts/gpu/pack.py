#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What travels to the GPU machine for the standing GPU check (scripts/gpu/verify.sh), and the check there that
the repository copy is the one packed.

The GPU machine has no network and takes at most 64 MiB of the working tree (tracked files, untracked files git
does not ignore, and up to 8 named ignored paths). This script writes, in build/gpu-pack/ (git-ignored, carried):

  llama.cpp.tar.xz  the pinned llama.cpp of the sdist (cuda_hook/UPSTREAM), stripped to what a CUDA build of
                    test-backend-ops, llama-perplexity and llama-bench needs (no models/, docs/, examples/, server,
                    non-CUDA backends), already patched with this commit's hook (cuda_hook/patch_llamacpp.sh runs
                    here: the GPU machine needs no GNU patch)
  wheels/           Python 3.12 x86-64 wheels of what the check imports and that machine lacks: gguf (pinned in
                    requirements.txt) and jsonschema with its dependencies (the result schemas)
  PACK.json         the commit, the hook's fingerprint, and the sha256 of every file of cuda_hook/, scripts/ and
                    configs/, which verify.sh compares with the copy it runs in (--check)

then prints the size that would travel and the `run` call (carry list, timeout). The tree archive is rebuilt
only when the sdist, the hook or the strip rules change. Wheels are cached in build/downloads/wheels-cp312/
(pip download, once).

  scripts/gpu/pack.py                     # make or refresh build/gpu-pack, print the run call
  scripts/gpu/pack.py --check build/gpu-pack   # (on the GPU machine) does this copy match the pack?
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from elastickv import paths, pypi, upstream  # noqa: E402

PACK_DIR = paths.BUILD / "gpu-pack"
WHEEL_CACHE = paths.DOWNLOADS / "wheels-cp312"
TREE_ARCHIVE = "llama.cpp.tar.xz"
PACK_FORMAT = 1
#: the limits of one run on the GPU machine (shared/DEVICE.md)
TRAVEL_LIMIT = 64 * 2**20
RESULT_FILES_LIMIT = 8
RESULT_FILE_LIMIT = 16 * 2**20
RUN_TIMEOUT_S = 600
#: files whose sha256 the pack records: what the check runs on the GPU machine
CHECKED_DIRS = ("cuda_hook", "scripts", "configs")

#: what the CUDA build does not need (paths relative to the llama.cpp tree; a directory drops all below it)
STRIP_TOP = {"models", "docs", "examples", "media", "benches", "conversion", "gguf-py", "pocs", "skills", "ci",
             "scripts", "requirements", "app", ".git", ".github", ".devops", ".gemini", ".pi"}
STRIP_TOOLS = {"ui", "cli"}  # built only with LLAMA_BUILD_SERVER=ON (verify.sh turns it off); tools/server stays:
#                                 the hook patches it (the patch script refuses a tree without it)
KEEP_BACKENDS = {"ggml-cpu", "ggml-cuda"}
#: Python packages the check imports on the GPU machine besides numpy and PyYAML (which it has): gguf writes the
#: model; jsonschema (and what it imports) validates the result records
WHEELS = ("gguf", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "attrs", "typing-extensions")


class PackError(RuntimeError):
    """The pack cannot be made or does not match; the message says why and what to do."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stripped(rel: str) -> bool:
    """True when a path of the llama.cpp tree (relative, '/'-separated) stays behind."""
    parts = rel.split("/")
    if parts[0] in STRIP_TOP:
        return True
    if len(parts) == 1 and parts[0].endswith(".py"):
        return True
    if parts[0] == "tools" and len(parts) > 1 and parts[1] in STRIP_TOOLS:
        return True
    if parts[:2] == ["ggml", "src"] and len(parts) > 3 and parts[2].startswith("ggml-") \
            and parts[2] not in KEEP_BACKENDS:
        return True  # a backend's folder (files directly in ggml/src stay)
    return False


def file_hashes(root: Path, dirs=CHECKED_DIRS) -> dict[str, str]:
    """sha256 of every file below ``dirs`` of ``root`` (caches left out), by '/'-separated relative path."""
    out = {}
    for d in dirs:
        for p in sorted((root / d).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                out[p.relative_to(root).as_posix()] = pypi.sha256_of(p)
    return out


def hook_fingerprint(root: Path = paths.ROOT) -> str:
    """One sha256 over the hook (its upstream edits, its sources and UPSTREAM): the key of the tree archive."""
    hashes = file_hashes(root, ("cuda_hook",))
    keep = {k: v for k, v in hashes.items() if k.startswith(("cuda_hook/patches/", "cuda_hook/tree/"))
            or k == "cuda_hook/UPSTREAM"}
    return sha256_bytes(json.dumps(keep, sort_keys=True).encode())


def strip_key() -> str:
    rules = [sorted(STRIP_TOP), sorted(STRIP_TOOLS), sorted(KEEP_BACKENDS), PACK_FORMAT]
    return sha256_bytes(json.dumps(rules).encode())[:16]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=paths.ROOT, check=True, capture_output=True, text=True).stdout


def git_state() -> dict:
    """The commit and what differs from it: modified tracked files and untracked files that would travel."""
    try:
        commit = git("rev-parse", "HEAD").strip()
        modified = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
        untracked = git("ls-files", "--others", "--exclude-standard", "-z").split("\0")
    except (OSError, subprocess.CalledProcessError) as e:
        raise PackError(f"git is needed to pack (the commit is recorded with the results): {e}") from e
    return {"commit": commit, "modified": modified, "untracked": [u for u in untracked if u]}


def sdist_path() -> Path:
    up = upstream.read()
    try:
        return pypi.fetch(up["SDIST_PACKAGE"], up["SDIST_VERSION"], up["SDIST_FILE"], up["SDIST_SHA256"],
                          paths.DOWNLOADS, sdist=True)
    except pypi.FetchError as e:
        raise PackError(f"the pinned llama.cpp sdist is needed: {e}") from e


def build_tree_archive(dest: Path, xz_level: int) -> dict:
    """Extracts the kept part of the sdist's llama.cpp, patches it with the hook, writes ``dest`` (.tar.xz)."""
    up = upstream.read()
    prefix = up["SDIST_SUBDIR"].rstrip("/") + "/"
    with tempfile.TemporaryDirectory(prefix="gpu-pack-") as tmp:
        tree = Path(tmp) / "llama.cpp"
        with tarfile.open(sdist_path(), "r:gz") as tar:
            members = []
            for m in tar.getmembers():
                if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
                    continue
                rel = m.name[len(prefix):]
                if rel and not stripped(rel):
                    m.name = rel
                    members.append(m)
            tar.extractall(tree, members=members, filter="data")
        patch = subprocess.run([str(paths.CUDA_HOOK / "patch_llamacpp.sh"), str(tree)], capture_output=True, text=True)
        if patch.returncode != 0:
            raise PackError(f"patching the packed tree failed: {patch.stderr.strip()}")
        (tree / ".elastickv-gpu-pack").write_text(hook_fingerprint() + "\n")
        n_files = sum(1 for p in tree.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
        part = dest.with_name(dest.name + ".part")
        with tarfile.open(part, "w:xz", preset=xz_level) as out:
            out.add(tree, arcname="llama.cpp")
        part.replace(dest)
    return {"files": n_files, "unpacked_bytes": size}


def wheel_versions() -> dict[str, str]:
    """The versions of WHEELS: gguf's pin from requirements.txt, the others as installed in this environment (the
    ones the test suite validates the schemas with)."""
    out = {}
    for line in (paths.ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith("gguf=="):
            out["gguf"] = line.split("==", 1)[1].split()[0]
    for name in WHEELS:
        if name not in out:
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError as e:
                raise PackError(f"{name} is not installed here (make .venv/.stamp); its version picks the wheel") from e
    return out


def fetch_wheels(dest: Path, download: bool) -> tuple[list[str], list[str]]:
    """Copies the cached wheels into ``dest`` (downloading missing ones with pip when ``download``); returns
    (wheel files, names still missing)."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    have, missing = [], []
    for name, version in wheel_versions().items():
        norm = name.replace("-", "_").lower()
        found = [p for p in WHEEL_CACHE.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-")]
        if not found and download:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "none",
                   "--platform", "manylinux2014_x86_64", "--platform", "any", "-d", str(WHEEL_CACHE),
                   f"{name}=={version}"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"pack: pip download {name}=={version} failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
            found = [p for p in WHEEL_CACHE.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-")]
        if not found:
            missing.append(f"{name}=={version}")
            continue
        shutil.copy2(found[0], dest / found[0].name)
        have.append(found[0].name)
    for old in dest.glob("*.whl"):
        if old.name not in have:
            old.unlink()
    return sorted(have), missing


def travel_size(pack_dir: Path, state: dict) -> dict:
    """What one run would carry: tracked files, untracked files git does not ignore, and the pack."""
    def size(rel: str) -> int:
        p = paths.ROOT / rel
        return p.lstat().st_size if p.is_symlink() or p.is_file() else 0

    tracked = sum(size(f) for f in git("ls-files", "-z").split("\0") if f)
    untracked = sum(size(f) for f in state["untracked"])
    pack = sum(p.stat().st_size for p in pack_dir.rglob("*") if p.is_file())
    links = [u for u in state["untracked"] if (paths.ROOT / u).is_symlink()]
    return {"tracked": tracked, "untracked": untracked, "pack": pack, "total": tracked + untracked + pack,
            "limit": TRAVEL_LIMIT, "untracked_links": links}


def make_pack(pack_dir: Path, xz_level: int = 6, download: bool = True, allow_dirty: bool = False) -> dict:
    state = git_state()
    dirty = [f for f in state["modified"] if f.startswith(CHECKED_DIRS)]
    if dirty and not allow_dirty:
        raise PackError("uncommitted changes in what the check runs (" + ", ".join(dirty[:8]) + "): commit first, "
                        "so that the results name the commit they ran (or pass --allow-dirty)")
    pack_dir.mkdir(parents=True, exist_ok=True)
    up = upstream.read()
    key = {"sdist_sha256": up["SDIST_SHA256"], "hook": hook_fingerprint(), "strip": strip_key(), "xz": xz_level}
    archive = pack_dir / TREE_ARCHIVE
    old = json.loads((pack_dir / "PACK.json").read_text()) if (pack_dir / "PACK.json").exists() else {}
    if archive.exists() and old.get("tree", {}).get("key") == key \
            and old["tree"].get("sha256") == pypi.sha256_of(archive):
        tree = old["tree"]
    else:
        print(f"pack: building {paths.relative(archive)} (llama.cpp {up['LLAMACPP_COMMIT']}, stripped, patched)",
              file=sys.stderr)
        tree = build_tree_archive(archive, xz_level) | {"key": key}
        tree["sha256"] = pypi.sha256_of(archive)
    tree["bytes"] = archive.stat().st_size
    wheels, missing = fetch_wheels(pack_dir / "wheels", download)
    info = {
        "pack_format": PACK_FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": state["commit"],
        "dirty": bool(dirty),
        "modified": state["modified"],
        "upstream": {"commit": up["LLAMACPP_COMMIT"], "sdist": up["SDIST_FILE"], "sdist_sha256": up["SDIST_SHA256"]},
        "tree": tree,
        "hook": hook_fingerprint(),
        "files": file_hashes(paths.ROOT),
        "wheels": wheels,
        "wheels_missing": missing,
    }
    (pack_dir / "PACK.json").write_text(json.dumps(info, indent=1) + "\n")
    info["travel"] = travel_size(pack_dir, state)
    return info


def check(pack_dir: Path) -> dict:
    """On the GPU machine: the pack's record against the repository copy it runs in (no git there)."""
    info_path = pack_dir / "PACK.json"
    if not info_path.exists():
        raise PackError(f"no {paths.relative(info_path)}: run scripts/gpu/pack.py on the CPU machine and carry "
                        f"{paths.relative(pack_dir)}")
    info = json.loads(info_path.read_text())
    archive = pack_dir / TREE_ARCHIVE
    if not archive.exists() or pypi.sha256_of(archive) != info["tree"]["sha256"]:
        raise PackError(f"{paths.relative(archive)} is missing or not the one PACK.json names")
    here = file_hashes(paths.ROOT)
    packed = info["files"]
    changed = sorted(k for k in packed.keys() & here.keys() if packed[k] != here[k])
    added, removed = sorted(here.keys() - packed.keys()), sorted(packed.keys() - here.keys())
    return {"commit": info["commit"], "dirty": info["dirty"], "hook_matches": hook_fingerprint() == info["hook"],
            "files_changed": changed, "files_added": added, "files_removed": removed,
            "matches": not (changed or added or removed), "wheels": info["wheels"],
            "wheels_missing": info["wheels_missing"], "upstream": info["upstream"]["commit"]}


#: the module each wheel provides, to tell whether the machine has it already
WHEEL_MODULES = {"gguf": "gguf", "jsonschema": "jsonschema", "jsonschema_specifications": "jsonschema_specifications",
                 "referencing": "referencing", "rpds_py": "rpds", "attrs": "attrs", "typing_extensions": "typing_extensions"}


def install_wheels(pack_dir: Path, target: Path) -> list[str]:
    """Unzips the pack's wheels whose module this Python lacks into ``target`` (put on PYTHONPATH); a jsonschema
    older than 4.18 (no referencing registry) counts as missing. Returns the wheels installed."""
    import importlib.util
    import zipfile

    def have(module: str) -> bool:
        if importlib.util.find_spec(module) is None:
            return False
        if module == "jsonschema":
            try:
                major, minor = (int(x) for x in importlib.metadata.version("jsonschema").split(".")[:2])
            except (importlib.metadata.PackageNotFoundError, ValueError):
                return False
            return (major, minor) >= (4, 18)
        return True

    target.mkdir(parents=True, exist_ok=True)
    done = []
    for whl in sorted((pack_dir / "wheels").glob("*.whl")):
        dist = whl.name.split("-")[0].lower()
        if have(WHEEL_MODULES.get(dist, dist)):
            continue
        with zipfile.ZipFile(whl) as z:
            z.extractall(target)
        done.append(whl.name)
    return done


def run_call(info: dict) -> str:
    carry = [paths.relative(PACK_DIR)]
    return (f"run(command=\"bash scripts/gpu/verify.sh\", carry={json.dumps(carry)}, timeout_s={RUN_TIMEOUT_S})\n"
            f"then: scripts/gpu/archive.py <files_at>   (archives under results/gpu/{info['commit'][:10]}/)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=PACK_DIR, help="pack folder (default: %(default)s; the run call "
                    "assumes this one)")
    ap.add_argument("--check", type=Path, metavar="PACK_DIR", help="compare the repository copy with a pack's record "
                    "(what verify.sh does on the GPU machine) and print it as JSON; makes nothing")
    ap.add_argument("--check-out", type=Path, help="with --check: write the JSON to this file too")
    ap.add_argument("--install-wheels", type=Path, metavar="DIR",
                    help="with --check: unzip the pack's wheels this Python lacks into DIR (for PYTHONPATH)")
    ap.add_argument("--xz-level", type=int, default=6, choices=range(10), help="xz preset of the tree (default: 6)")
    ap.add_argument("--no-download", action="store_true", help="use cached wheels only (missing ones are listed)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="pack although cuda_hook/, scripts/ or configs/ have uncommitted changes")
    args = ap.parse_args()
    try:
        if args.check:
            result = check(args.check)
            if args.install_wheels:
                result["wheels_installed"] = install_wheels(args.check, args.install_wheels)
            text = json.dumps(result, indent=1)
            print(text)
            if args.check_out:
                args.check_out.write_text(text + "\n")
            return 0
        info = make_pack(args.out.resolve(), args.xz_level, not args.no_download, args.allow_dirty)
    except PackError as e:
        print(f"pack: {e}", file=sys.stderr)
        return 1
    t = info["travel"]
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    print(f"pack: {paths.relative(args.out)}: tree {mib(info['tree']['bytes'])} ({info['tree']['files']} files, "
          f"{mib(info['tree']['unpacked_bytes'])} unpacked), {len(info['wheels'])} wheels; commit {info['commit'][:10]}"
          + (" (dirty)" if info["dirty"] else ""))
    print(f"pack: would travel {mib(t['total'])} of {mib(t['limit'])}: tracked {mib(t['tracked'])}, untracked "
          f"{mib(t['untracked'])}, pack {mib(t['pack'])}")
    status = 0
    if info["wheels_missing"]:
        print(f"pack: wheels missing (no network?): {', '.join(info['wheels_missing'])}; the GPU machine may lack "
              "them", file=sys.stderr)
    if t["untracked_links"]:
        print(f"pack: untracked links travel too (add them to .git/info/exclude): {', '.join(t['untracked_links'])}",
              file=sys.stderr)
    if t["total"] > t["limit"]:
        print("pack: over the 64 MiB a run may carry: nothing would run. Remove untracked files, or shrink results/",
              file=sys.stderr)
        status = 1
    print(run_call(info))
    return status


if __name__ == "__main__":
    sys.exit(main())
