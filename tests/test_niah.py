# SPDX-License-Identifier: Apache-2.0
"""Needle-in-a-haystack driver (scripts/eval/f5_niah.py, Table 3): haystack integrity, needle placement,
scoring, refusal of results made with other settings, and one real cell through llama-completion with the
default model (baseline and ElasticKV), checking that the hook's passes covered the haystack before the answer."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from elastickv import config, paths, pypi, results

sys.path.insert(0, str(paths.ROOT / "scripts" / "eval"))
import f5_niah as niah  # noqa: E402

NEEDLE = "The special magic number for Lisbon is 7319204."
DEPTHS = niah.DEFAULTS["depths"]


@pytest.fixture(scope="module")
def haystack() -> str:
    return niah.load_haystack(niah.DEFAULTS["haystack_dir"])


# ------------------------------------------------------------------------------------------ haystack

def test_shipped_haystack_is_the_pinned_corpus(haystack):
    folder = paths.ROOT / niah.DEFAULTS["haystack_dir"]
    listed = [line.split()[1] for line in (folder / "SHA256SUMS").read_text().splitlines() if line.strip()]
    assert len(listed) == 49  # data/paul_graham_essays/README.md: 49 essays, 644,051 bytes
    assert sum((folder / n).stat().st_size for n in listed) == 644_051
    assert (folder / "README.md").exists()
    assert haystack.startswith((folder / "addiction.txt").read_text().strip())  # sorted name order
    assert (folder / "worked.txt").read_text().strip()[-200:] in haystack[-300:]


def test_haystack_hash_check_refuses_changed_missing_and_unlisted_files(tmp_path):
    folder = tmp_path / "essays"
    shutil.copytree(paths.ROOT / niah.DEFAULTS["haystack_dir"], folder)
    assert niah.load_haystack(folder)  # the copy verifies

    victim = folder / "gap.txt"
    original = victim.read_bytes()
    victim.write_bytes(original.replace(b"the", b"tha", 1))
    with pytest.raises(niah.HaystackError, match=r"gap\.txt has sha256"):
        niah.load_haystack(folder)
    victim.write_bytes(original)

    (folder / "extra.txt").write_text("Not an essay.")
    with pytest.raises(niah.HaystackError, match="extra.txt not listed"):
        niah.load_haystack(folder)
    (folder / "extra.txt").unlink()

    victim.unlink()
    with pytest.raises(niah.HaystackError, match=r"gap\.txt is missing"):
        niah.load_haystack(folder)


# ------------------------------------------------------------------------------------------ placement

@pytest.mark.parametrize("n_chars", [3000, 20000])
def test_cut_never_splits_a_word(haystack, n_chars):
    cut = niah.cut_words(haystack, n_chars)
    assert haystack.startswith(cut)
    assert n_chars - 40 < len(cut) <= n_chars
    assert haystack[len(cut)].isspace()


@pytest.mark.parametrize("depth", DEPTHS)
def test_needle_at_requested_depth_on_a_sentence_boundary(haystack, depth):
    ctx = niah.cut_words(haystack, 12000)
    text, at = niah.place_needle(ctx, NEEDLE, depth)
    assert text[at:at + len(NEEDLE)] == NEEDLE
    if at == 0:
        assert text == NEEDLE + " " + ctx
        boundary = 0
    else:  # one space inserted before the needle, nothing of the haystack removed
        assert text[at - 1] == " " and text[:at - 1] + text[at + len(NEEDLE):] == ctx
        boundary = at - 1
    before, after = ctx[:boundary], ctx[boundary:]
    if 0 < boundary < len(ctx):  # inside the haystack: after a sentence (or paragraph), before whitespace
        assert re.search(r"[.!?][\"'\u201d\u2019)\]]*$", before) or re.match(r"\n\s*\n", after), \
            f"not a sentence boundary: ...{before[-40:]!r} | {after[:40]!r}"
        assert after[0].isspace()
    target = depth * len(ctx)
    assert all(abs(boundary - target) <= abs(b - target) for b in niah.sentence_boundaries(ctx))  # the nearest
    assert abs(boundary / len(ctx) - depth) < 0.02
    if depth == 0.0:
        assert boundary == 0
    if depth == 1.0:
        assert text.endswith(NEEDLE)


def test_depth_outside_unit_interval_is_refused():
    with pytest.raises(niah.NiahError, match="not in"):
        niah.place_needle("One. Two.", NEEDLE, 1.5)


def test_needles_are_fixed_by_seed_and_differ_between_cells():
    cfg = dict(niah.DEFAULTS)
    a = [niah.needle_for(cfg, L, d) for L in (512, 1024) for d in DEPTHS]
    assert a == [niah.needle_for(cfg, L, d) for L in (512, 1024) for d in DEPTHS]
    assert len({n for _, n in a}) == len(a)
    assert all(len(n) == 7 and n.isdigit() for _, n in a)
    assert niah.needle_for(dict(cfg, seed=cfg["seed"] + 1), 512, 0.5) != niah.needle_for(cfg, 512, 0.5)


# ------------------------------------------------------------------------------------------ scoring

@pytest.mark.parametrize("generated,correct", [
    ("The special magic number for Lisbon mentioned in the provided text is 7319204.", True),
    ("7319204", True),
    ("It is 7,319,204.", True),
    ("It is 7 319 204", True),
    ("It is 7\u202f319\u202f204", True),  # narrow no-break spaces
    ("It is \uff17\uff13\uff11\uff19\uff12\uff10\uff14", True),  # full-width digits (NFKC)
    ("The number is 73192041.", False),  # a longer number is not the answer
    ("The number is 731920.", False),
    ("The number is 7319205.", False),
    ("The special magic number for Lisbon is", False),
    ("", False),
])
def test_scoring_normalisation(generated, correct):
    assert niah.is_correct(generated, "7319204") is correct


def test_normalise_removes_only_separators_between_digits():
    assert niah.normalise("7,319,204. Next, 12 apples") == "7319204. Next, 12 apples"


# ------------------------------------------------------------------------------------------ refusal

def test_config_rejects_unknown_keys(tmp_path):
    cfg = yaml.safe_load(config.experiment_path("table3_niah").read_text())
    assert cfg["artifact"] == "Table 3" and "version" in cfg
    cfg["needle_colour"] = "red"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(config.ConfigError, match="needle_colour"):
        config.load(path, niah.DEFAULTS)


def test_every_config_key_is_commented():
    for line in config.experiment_path("table3_niah").read_text().splitlines():
        if re.match(r"^[a-z_]+:", line):
            assert "#" in line, f"uncommented key: {line}"


def test_cell_record_with_other_settings_is_refused_unless_forced(tmp_path):
    cfg = config.load("table3_niah", niah.DEFAULTS)
    row = cfg["rows"][1]
    s = niah.cell_settings(cfg, "smollm2-135m", 512, 0.5, row, "0" * 64)
    path = tmp_path / "c512-d50-elastickv.json"
    results.write_json_atomic(path, {"settings": s, "metrics": {"correct": True}})
    assert niah.check_existing(path, s, force=False)["metrics"] == {"correct": True}  # resume
    other = niah.cell_settings(dict(cfg, n_predict=40), "smollm2-135m", 512, 0.5, row, "0" * 64)
    with pytest.raises(niah.RecordMismatch, match=r"n_predict.*--force"):
        niah.check_existing(path, other, force=False)
    assert niah.check_existing(path, other, force=True) is None  # replaced
    assert niah.check_existing(path, s, force=True)["metrics"] == {"correct": True}  # equal settings: reused
    assert niah.check_existing(tmp_path / "absent.json", s, force=False) is None
    assert s["hook"]["ELASTICKV_PRESET"] == "sweet" and s["hook"]["ELASTICKV_EVICT_EVERY"] == "64"


def test_lengths_must_align_with_evict_every():
    cfg = config.load("table3_niah", niah.DEFAULTS, ["lengths={smollm2-135m: [500]}"])
    with pytest.raises(config.ConfigError, match="multiple of evict_every"):
        niah.run_model(cfg, "smollm2-135m")


# ------------------------------------------------------------------------------------------ end to end

class Grid:
    def __init__(self, tmp_dir) -> None:
        self.runs_dir = f"build/cache/niah-test-{uuid.uuid4().hex[:8]}"
        cfg = yaml.safe_load(config.experiment_path("table3_niah").read_text())
        cfg.update(models=["smollm2-135m"], lengths={"smollm2-135m": [512]}, depths=[1.0], runs_dir=self.runs_dir)
        self.config = tmp_dir / "niah-e2e.yaml"
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def run(self, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(paths.ROOT / niah.SCRIPT), "--config", str(self.config), *extra],
                              cwd=paths.ROOT, capture_output=True, text=True, timeout=900)

    def record(self, row: str) -> dict:
        return json.loads((paths.ROOT / self.runs_dir / "smollm2-135m" / f"c512-d100-{row}.json").read_text())

    def cleanup(self) -> None:
        shutil.rmtree(paths.ROOT / self.runs_dir, ignore_errors=True)
        shutil.rmtree(niah.CACHE / "runs" / self.runs_dir.replace("/", "_"), ignore_errors=True)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    g = Grid(tmp_path_factory.mktemp("niah"))
    g.first = g.run()
    yield g
    g.cleanup()


@pytest.mark.slow
def test_cell_runs_through_llama_completion(grid):
    assert grid.first.returncode == 0, grid.first.stderr[-2000:]
    assert "| 512 |" in grid.first.stdout


@pytest.mark.slow
@pytest.mark.parametrize("row", ["baseline", "elastickv"])
def test_cell_record_is_complete(grid, row):
    rec = grid.record(row)
    results.validate(rec)  # run.schema.json, kind "niah"
    assert rec["kind"] == "niah"
    m = rec["metrics"]
    for key in ("prompt_tokens", "depth", "depth_tokens", "needle", "answer", "generated", "correct", "passes",
                "sparsity_k_all", "sparsity_v_all", "needle_tokens", "haystack_tokens", "prompt_sha256"):
        assert key in m, key
    assert 512 <= m["prompt_tokens"] <= 512 + 16
    assert m["prompt_eval_tokens"] >= m["prompt_tokens"] - 1  # the whole prompt was evaluated
    assert m["depth"] == 1.0 and m["depth_tokens"] > 0.98
    assert m["answer"] in m["needle"] and m["needle"].startswith("The special magic number for ")
    assert m["correct"] is niah.is_correct(m["generated"], m["answer"])
    assert m["generated"].strip(), "empty answer"
    assert m["needle_tokens"][1] <= m["haystack_tokens"][1] <= 512  # haystack inside the last pass's reach
    log = (paths.ROOT / rec["log"]).read_text()
    assert rec["log"].startswith(grid.runs_dir + "/smollm2-135m/")
    assert m["generated"] in log
    assert niah.DEFAULTS["instruction"][:40] not in log and len(log) < 60_000  # the prompt is not echoed
    assert "--jinja" in rec["command"] and "-cnv" in rec["command"] and "--temp" in rec["command"]
    assert rec["command"][rec["command"].index("-ub") + 1] == "64"
    assert rec["data"]["sha256"] == pypi.sha256_of(paths.ROOT / "data/paul_graham_essays/SHA256SUMS")
    if row == "baseline":
        assert "elastickv: off" in log
        assert m["passes"] == 0 and "ELASTICKV" not in rec["env"]


@pytest.mark.slow
def test_elastickv_passes_covered_the_haystack_before_the_answer(grid):
    base, ekv = grid.record("baseline"), grid.record("elastickv")
    assert base["metrics"]["prompt_sha256"] == ekv["metrics"]["prompt_sha256"]  # the same prompt
    m = ekv["metrics"]
    log = (paths.ROOT / ekv["log"]).read_text()
    assert re.search(r"elastickv: ELASTICKV=1 mode=full preset=sweet scale_k=0.45 scale_v=0.5 sink=64 "
                     r"evict_every=64 warm=128", log)
    # passes at the end of every prompt ubatch from WARM on: positions 127, 191, ..., 511
    assert m["pass_pos_max"][:7] == [127, 191, 255, 319, 383, 447, 511]
    assert m["passes_before_answer"] == 7 and m["last_pass_pos_before_answer"] == 511
    assert m["needle_tokens"][1] - 1 <= 511 and not m["needle_in_sink"]
    assert m["needle_thresholded_before_answer"] is True
    assert m["haystack_covered_before_answer"] == 1.0
    # sparsity of the cache the answer attended to (sweet: about a third of the thresholded region, SPEC §1)
    assert 0.2 < m["at_answer"]["sparsity_k_region"] < 0.45 and 0.2 < m["at_answer"]["sparsity_v_region"] < 0.45
    assert m["at_answer"]["nominal"] > 1.2
    stats_path = paths.ROOT / m["stats"]
    assert pypi.sha256_of(stats_path) == m["stats_sha256"]
    pos = {json.loads(line)["pos_max"] for line in stats_path.read_text().splitlines() if '"head"' in line}
    assert max(p for p in pos if p < m["prompt_tokens"]) == 511


@pytest.mark.slow
def test_grid_aggregate(grid):
    agg = json.loads((paths.ROOT / grid.runs_dir / "smollm2-135m.json").read_text())
    results.validate_aggregate(agg)
    d = agg["data"]
    assert agg["artifact"] == "Table 3" and d["lengths"] == [512] and d["depths"] == [1.0]
    for row in ("baseline", "elastickv"):
        rec = grid.record(row)
        assert d["grid"][row] == [[rec["metrics"]["correct"]]]
        assert d["scores"][row]["correct"] == int(rec["metrics"]["correct"]) and d["scores"][row]["total"] == 1
    assert len(agg["sources"]) == 2


@pytest.fixture(scope="module")
def cli_grid(tmp_path_factory):
    g = Grid(tmp_path_factory.mktemp("niah-cli"))
    g.first = g.run("--runner", "cli")
    yield g
    g.cleanup()


@pytest.mark.slow
def test_llama_cli_runner_gives_the_same_cells(grid, cli_grid):
    """f5_niah.py --runner cli: llama-cli (single turn, non-interactive, the model's chat template; the hook on in
    the elastickv row) answers each cell as llama-completion does: the same prompt tokens, the hook's passes at the
    same positions with the same sparsity, the same answer."""
    assert cli_grid.first.returncode == 0, cli_grid.first.stderr[-2000:]
    for row in ("baseline", "elastickv"):
        cli, comp = cli_grid.record(row), grid.record(row)
        results.validate(cli)
        assert cli["settings"]["runner"] == "cli" and "runner" not in comp["settings"]
        assert Path(cli["command"][0]).name == "llama-cli" and "-st" in cli["command"] and "--jinja" in cli["command"]
        transcript = (paths.ROOT / cli["transcript"]).read_text()
        assert transcript.startswith("User:\n" + niah.DEFAULTS["instruction"][:40])
        m, n = cli["metrics"], comp["metrics"]
        for key in ("prompt_tokens", "prompt_sha256", "needle_tokens", "stop", "correct", "passes",
                    "passes_before_answer", "sparsity_k_all", "sparsity_v_all", "kv_mib", "flash_attn"):
            assert m[key] == n[key], (row, key, m[key], n[key])
        assert m["generated"].strip() == n["generated"].strip()
        assert m["generated"].strip() and m["generated"] in transcript
        assert m["prompt_eval_tokens"] >= m["prompt_tokens"] - 1
        if row == "elastickv":
            assert m["pass_pos_max"] == n["pass_pos_max"] and m["at_answer"] == n["at_answer"]
            assert m["haystack_covered_before_answer"] == 1.0
            assert "elastickv: ELASTICKV=1 mode=full preset=sweet" in (paths.ROOT / cli["log"]).read_text()
    agg = json.loads((paths.ROOT / cli_grid.runs_dir / "smollm2-135m.json").read_text())
    results.validate_aggregate(agg)
    assert agg["config"]["runner"] == "cli"
    assert "runner" not in json.loads((paths.ROOT / grid.runs_dir / "smollm2-135m.json").read_text())["config"]


def test_unknown_runner_is_refused(tmp_path):
    bad = subprocess.run([sys.executable, str(paths.ROOT / niah.SCRIPT), "--set", "runner=server"],
                         cwd=paths.ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "runner 'server'" in bad.stderr and "cli, completion" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_resume_refusal_and_force(grid):
    logs = sorted((paths.ROOT / grid.runs_dir / "smollm2-135m").glob("*.log"))
    before = {p: p.stat().st_mtime_ns for p in logs}
    again = grid.run()
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in logs} == before  # nothing re-run

    refused = grid.run("--set", "n_predict=40")
    assert refused.returncode == 1
    assert "n_predict" in refused.stderr and "--force" in refused.stderr
    assert len(refused.stderr.strip().splitlines()[-1]) < 400 and "Traceback" not in refused.stderr
    assert {p: p.stat().st_mtime_ns for p in logs} == before

    forced = grid.run("--set", "n_predict=40", "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert grid.record("elastickv")["settings"]["n_predict"] == 40
    agg = json.loads((paths.ROOT / grid.runs_dir / "smollm2-135m.json").read_text())
    assert agg["config"]["n_predict"] == 40


@pytest.mark.slow
def test_token_policy_row(tmp_path):
    """A baseline row (h2o at 25 % of the cells, flash attention off) runs through the same grid: its passes
    covered the haystack before the answer and kept the budget; an element baseline or -fa on is refused."""
    g = Grid(tmp_path)
    cfg = yaml.safe_load(g.config.read_text())
    cfg.update(flash_attn="off", rows=[{"name": "h2o-0.25", "policy": "h2o", "budget": 0.25, "sink": 4}])
    g.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    try:
        r = g.run()
        assert r.returncode == 0, r.stderr[-2000:]
        rec = g.record("h2o-0.25")
        m = rec["metrics"]
        assert rec["elastickv"]["policy"] == "h2o" and rec["settings"]["flash_attn"] == "off"
        assert m["haystack_covered_before_answer"] == 1.0 and m["passes_before_answer"] >= 1
        assert m["at_answer"]["kept_cells"] == pytest.approx(0.25, abs=0.01)
        for bad, msg in (({"flash_attn": "on"}, "need flash_attn"),
                         ({"rows": [{"name": "topk", "policy": "topk_entries", "budget": 0.5}]}, "element baselines")):
            cfg2 = dict(cfg) | bad
            g.config.write_text(yaml.safe_dump(cfg2, sort_keys=False))
            r2 = g.run("--force")
            assert r2.returncode == 1 and msg in r2.stderr, r2.stderr[-1000:]
    finally:
        g.cleanup()
