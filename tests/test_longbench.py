# SPDX-License-Identifier: Apache-2.0
"""scripts/eval/longbench_v2_eval.py (Tables 7-8): parsing, prompt, truncation, answer extraction and scoring
with known answers; the offline message; and one end-to-end run on the synthetic fixture through the real
llama-completion (default model), with resume after an interruption and the refusals without --force."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from elastickv import paths, results

SCRIPT = paths.ROOT / "scripts" / "eval" / "longbench_v2_eval.py"
FIXTURE = paths.ROOT / "tests" / "data" / "longbench_v2_fixture.jsonl"
CONFIG = paths.CONFIGS / "experiments" / "table7_longbench.yaml"

_spec = importlib.util.spec_from_file_location("longbench_v2_eval", SCRIPT)
lb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lb)


def item(**kw) -> dict:
    base = {"_id": "x1", "domain": "Single-Document QA", "sub_domain": "Academic", "difficulty": "easy",
            "length": "short", "question": " What is it? ", "choice_A": "one", "choice_B": "two ", "choice_C": "three",
            "choice_D": "four", "answer": "B", "context": "  The text.  "}
    base.update(kw)
    return base


def script(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=paths.ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


# ------------------------------------------------------------------------------------------ data parsing

def test_fixture_is_a_marked_synthetic_fixture():
    lines = FIXTURE.read_text().splitlines()
    assert 4 <= len(lines) <= 10
    for line in lines:
        obj = json.loads(line)
        assert obj["_id"].startswith("synthetic-fixture-")
        assert "synthetic test fixture" in obj["source"] and "NOT LongBench-v2 data" in obj["source"]
        assert len(obj["context"].split()) < 600  # short, so that the tests are fast


def test_load_data_jsonl_and_json_array_agree(tmp_path):
    text = FIXTURE.read_text()
    items, _ = lb.load_data(str(FIXTURE))
    assert [it["_id"] for it in items] == [f"synthetic-fixture-0{i}" for i in range(1, 7)]
    assert set(items[0]) == set(lb.FIELDS)  # extra keys ("source") are dropped
    assert [it["answer"] for it in items] == list("BDACBA")
    as_array = tmp_path / "fixture.json"
    as_array.write_text(json.dumps([json.loads(line) for line in text.splitlines()], indent=1))
    assert lb.load_data(str(as_array))[0] == items
    assert {it["domain"] for it in items} == {
        "Single-Document QA", "Multi-Document QA", "Long In-context Learning", "Code Repository Understanding",
        "Long-structured Data Understanding", "Long-dialogue History Understanding"}


@pytest.mark.parametrize("text, message", [
    (json.dumps({k: v for k, v in item().items() if k != "choice_C"}), "lacks choice_C"),
    (json.dumps(item(answer="E")), "is not one of A, B, C, D"),
    (json.dumps(item(answer=None)), "answer is not a string"),
    (json.dumps(item()) + "\n" + json.dumps(item()), "occurs more than once"),
    ("{not json", "bad.jsonl: not a JSON array of objects or JSON lines"),
    ("[1, 2", "bad.jsonl: not a JSON array of objects or JSON lines"),
    ("", "bad.jsonl: not a JSON array of objects or JSON lines"),
])
def test_load_data_refuses_what_is_not_longbench(tmp_path, text, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text)
    with pytest.raises(lb.DataError, match=message):
        lb.load_data(str(bad))


def test_sample_items_is_seeded_and_ordered():
    items, _ = lb.load_data(str(FIXTURE))
    ids = [it["_id"] for it in items]
    assert [it["_id"] for it in lb.sample_items(list(reversed(items)), 0, 42)] == sorted(ids)
    assert [it["_id"] for it in lb.sample_items(items, 99, 42)] == sorted(ids)
    a = [it["_id"] for it in lb.sample_items(items, 3, 42)]
    assert a == [it["_id"] for it in lb.sample_items(list(reversed(items)), 3, 42)]  # independent of file order
    assert len(a) == 3 and a == sorted(a) and set(a) <= set(ids)
    assert {tuple(it["_id"] for it in lb.sample_items(items, 3, s)) for s in (42, 123, 456)} != {tuple(a)}


# ---------------------------------------------------------------------------------------------- prompt

def test_build_prompt_is_the_official_0shot_template():
    expected = ("Please read the following text and answer the question below.\n\n<text>\nThe text.\n</text>\n\n"
                "What is the correct answer to this question: What is it?\nChoices:\n(A) one\n(B) two\n(C) three\n"
                "(D) four\n\nFormat your response as follows: \"The correct answer is (insert answer here)\".")
    assert lb.build_prompt(item()) == expected
    # placeholders inside the context are text, never substituted again
    p = lb.build_prompt(item(context="costs $Q$ and $C_A$"))
    assert "<text>\ncosts $Q$ and $C_A$\n</text>" in p
    assert lb.build_prompt(item(), context="cut").count("<text>\ncut\n</text>") == 1


def test_truncate_middle_keeps_both_ends():
    assert lb.truncate_middle("abcdefghij", 4) == "abij"
    assert lb.truncate_middle("abcdefghij", 5) == "abhij"
    assert lb.truncate_middle("abcdefghij", 10) == "abcdefghij"
    assert lb.truncate_middle("abcdefghij", 50) == "abcdefghij"
    assert lb.truncate_middle("abcdefghij", 0) == ""


def test_fit_prompt_cuts_the_context_middle_until_it_fits():
    # a stand-in tokenizer (4 characters per token) exercises the fitting loop; the real one, llama-completion's,
    # is checked in the end-to-end test (the counted tokens equal those llama-completion then evaluates)
    def count(p: str) -> int:
        return len(p) // 4

    ctx = "HEAD " + "x" * 20000 + " TAIL"
    it = item(context=ctx)
    prompt, fit = lb.fit_prompt(it, 1000, count)
    assert count(prompt) <= 1000 and count(prompt) > 950  # fills the budget, not far below it
    assert fit["truncated"] and fit["prompt_tokens"] == count(prompt) and fit["context_chars"] == len(ctx)
    assert "<text>\nHEAD " in prompt and " TAIL\n</text>" in prompt  # both ends kept
    assert prompt.endswith(lb.build_prompt(it).split("</text>")[1])  # question and choices intact
    short, fit2 = lb.fit_prompt(item(), 1000, count)
    assert short == lb.build_prompt(item()) and not fit2["truncated"]
    with pytest.raises(lb.DataError, match="without its context"):
        lb.fit_prompt(item(question="q" * 8000, context=ctx), 1000, count)


# ------------------------------------------------------------------------------------- answers, scoring

@pytest.mark.parametrize("response, official, lenient, how", [
    ("The correct answer is (B)", "B", "B", "official"),
    ("The correct answer is (C) because the text says so.", "C", "C", "official"),
    ("**The correct answer is (D)**", "D", "D", "official"),
    ("The correct answer is A.", "A", "A", "official"),
    ("I think (A) fits, but the correct answer is (B)", None, "B", "lenient"),  # official regex: case-sensitive
    ("The correct answer is (A). No, The correct answer is (B)", "A", "A", "official"),  # the first one
    ("The correct answer is (insert answer here)", None, None, None),
    ("The answer is C.", None, "C", "lenient"),
    ("Answer: (D)", None, "D", "lenient"),
    ("It must be (A) one.", None, "A", "lenient"),
    ("B. two", None, "B", "lenient"),
    ("C", None, "C", "lenient"),
    ("A lighthouse is a tower.", None, None, None),
    ("the correct answer is (b)", None, None, None),
    ("", None, None, None),
])
def test_extract_answer(response, official, lenient, how):
    assert lb.extract_answer(response) == official
    assert lb.extract_answer_lenient(response) == (lenient, how)


def test_score_is_exact_match_and_no_letter_is_wrong():
    assert lb.score("B", "B") is True
    assert lb.score("A", "B") is False
    assert lb.score(None, "B") is False


def rec(domain: str, correct: bool, pred: str | None, difficulty: str = "easy", length: str = "short") -> dict:
    return {"domain": domain, "difficulty": difficulty, "length": length, "correct": correct, "pred": pred,
            "correct_lenient": correct or pred is None}


def test_seed_scores_and_mean_over_seeds():
    s1 = lb.seed_scores([rec("D1", True, "A"), rec("D1", False, "B", "hard"), rec("D2", False, None, length="long"),
                         rec("D2", True, "C", "hard", "long")])
    assert s1["overall"] == {"n": 4, "accuracy": 50.0, "accuracy_compensated": 56.25, "accuracy_lenient": 75.0,
                             "answered_pct": 75.0}
    assert s1["domain"]["D1"]["accuracy"] == 50.0 and s1["domain"]["D2"]["n"] == 2
    assert s1["difficulty"]["hard"]["accuracy"] == 50.0 and s1["length"]["long"]["accuracy"] == 50.0
    s2 = lb.seed_scores([rec("D1", True, "A"), rec("D1", True, "B")])
    m = lb.over_seeds({"42": s1, "123": s2})
    assert m["overall"]["accuracy"]["mean"] == 75.0
    assert m["overall"]["accuracy"]["std"] == pytest.approx(statistics.stdev([50.0, 100.0]))
    assert m["domain"]["D2"]["accuracy"]["n_seeds"] == 1 and m["domain"]["D2"]["accuracy"]["std"] == 0.0
    assert m["domain"]["D1"]["n"] == [2, 2]


# --------------------------------------------------------------------------------------- log, records

def test_read_log_takes_the_generated_text_from_a_jsonl_log():
    def line(level, msg):
        return json.dumps({"type": "log", "time": 1, "level": level, "msg": msg})

    head = [json.dumps({"type": "fit_memory_breakdown", "data": {}}),
            line("warn", "elastickv: ELASTICKV=1 mode=full preset=sweet scale_k=0.45\n"), "a stray stderr line"]
    eog = head + [line("none", "The"), line("none", " correct answer is (B)"), line("none", ""),
                  line("none", " [end of text]\n"), line("none", "\n\n"),
                  line("info", "common_perf_print: prompt eval time =  12.0 ms /   300 tokens\n")]
    out = lb.read_log("\n".join(eog))
    assert out["response"] == "The correct answer is (B)" and out["eog"]
    assert "elastickv: ELASTICKV=1 mode=full" in out["plain"] and "a stray stderr line\n" in out["plain"]
    assert lb.PROMPT_EVAL.search(out["plain"]).group(1) == "300"
    cut = lb.read_log("\n".join(head + [line("none", "The correct"), line("none", "\n\n")]))
    assert cut["response"] == "The correct" and not cut["eog"]


def test_records_survive_an_interrupted_append(tmp_path):
    path = tmp_path / "records.jsonl"
    lb.append_record(path, {"model": "m", "row": "baseline", "seed": 42, "_id": "a"})
    lb.append_record(path, {"model": "m", "row": "baseline", "seed": 42, "_id": "b"})
    with open(path, "ab") as f:
        f.write(b'{"model": "m", "row": "base')  # the tail an interruption can leave
    assert [r["_id"] for r in lb.read_records(path)] == ["a", "b"]
    assert path.read_bytes().endswith(b'"seed": 42}\n')  # the half line is gone, the next append starts clean
    assert len(path.read_bytes().splitlines()) == 2
    lb.append_record(path, {"model": "m", "row": "baseline", "seed": 42, "_id": "c"})
    assert [r["_id"] for r in lb.read_records(path)] == ["a", "b", "c"]
    lb.rewrite_records(path, [{"_id": "c"}])
    assert [r["_id"] for r in lb.read_records(path)] == ["c"]
    path.write_text('{"_id": "a"}\nnot json\n{"_id": "b"}\n')
    with pytest.raises(lb.RecordConflict, match="not a JSON line"):
        lb.read_records(path)


# -------------------------------------------------------------------------------------- config, offline

def test_config_keys_are_commented_and_versioned():
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["version"] >= 1 and cfg["artifact"] == "Tables 7-8"
    assert set(cfg) - {"version"} <= set(lb.DEFAULTS)
    for line in CONFIG.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            assert "#" in line, f"uncommented key: {line}"
    assert cfg["seeds"] == [42, 123, 456]
    assert cfg["rows"][0] == {"name": "baseline"} and cfg["rows"][1]["preset"] == "sweet"


@pytest.mark.parametrize("args, says", [
    ([], "no LongBench-v2 data given"),
    (["--data", "no/such/file.json"], "no data file no/such/file.json"),
    (["--data", "hub"], "hub"),
])
def test_offline_without_data_says_how_to_get_it(args, says):
    p = script(*args, env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("longbench_v2_eval: ") and says in lines[0]
    assert "data.json" in lines[0] and "--data" in lines[0]


def test_fixture_results_are_refused_under_results():
    p = script("--data", paths.relative(FIXTURE), timeout=120)  # output_dir defaults to results/longbench
    assert p.returncode == 2 and "synthetic test fixture" in p.stderr and "Traceback" not in p.stderr
    assert not (paths.RESULTS / "longbench" / "smollm2-135m.json").exists() or "synthetic" not in \
        (paths.RESULTS / "longbench" / "smollm2-135m.json").read_text()


# ----------------------------------------------------------------------------------------- end to end

E2E = ["--data", paths.relative(FIXTURE), "--set", "items=2", "--set", "seeds=[42, 123]", "--set", "max_ctx=320",
       "--set", "n_predict=12", "--set", "threads=1"]


@pytest.fixture(scope="module")
def e2e(model_path):
    out = paths.BUILD / "cache" / "test_longbench" / uuid.uuid4().hex[:8]  # inside the repository: relative paths
    args = E2E + ["--set", f"output_dir={paths.relative(out)}"]
    p = script(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    yield out, args, p
    shutil.rmtree(out, ignore_errors=True)


def load_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "smollm2-135m" / "records.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_end_to_end_structure_and_consistency(e2e):
    out, _, p = e2e
    agg = json.loads((out / "smollm2-135m.json").read_text())
    results.validate_aggregate(agg)
    assert agg["script"] == "scripts/eval/longbench_v2_eval.py" and agg["artifact"] == "Tables 7-8"
    assert agg["config"]["seeds"] == [42, 123] and agg["config"]["data"] == paths.relative(FIXTURE)
    d = agg["data"]
    assert d["model"] == "smollm2-135m" and d["items_total"] == 6 and d["items_per_seed"] == {"42": 2, "123": 2}
    assert d["data"]["source"] == "file" and len(d["data"]["sha256"]) == 64
    assert list(d["rows"]) == ["baseline", "sweet"] and list(d["vs_baseline"]) == ["sweet"]
    assert "| baseline |" in p.stdout and "| sweet |" in p.stdout

    recs = load_records(out)
    assert len(recs) == 2 * 2 * 2
    assert len({lb.record_key(r) for r in recs}) == len(recs)
    for r in recs:
        assert (paths.ROOT / r["log"]).exists()
        assert r["pred"] == lb.extract_answer(r["response"]) and r["correct"] == (r["pred"] == r["answer"])
        # the tokens counted for the truncation are the tokens llama-completion then evaluated
        assert r["prompt_tokens"] == r["prompt_tokens_counted"] <= 320
        assert r["command"][r["command"].index("-s") + 1] == str(r["seed"])
        if r["row"] == "sweet":
            assert r["elastickv"]["preset"] == "sweet" and r["passes"] > 0 and r["last_pass"]["k_zero_pct"] > 0
        else:
            assert r["elastickv"] is None and r["passes"] == 0
    assert any(r["truncated"] for r in recs)

    for row in ("baseline", "sweet"):
        per_seed = d["rows"][row]["per_seed"]
        accs = []
        for seed in (42, 123):
            mine = [r for r in recs if r["row"] == row and r["seed"] == seed]
            s = per_seed[str(seed)]
            assert s["overall"]["n"] == 2
            assert s["overall"]["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in mine) / 2)
            assert s["overall"]["accuracy_lenient"] == pytest.approx(100 * sum(r["correct_lenient"] for r in mine) / 2)
            for dom, cell in s["domain"].items():
                sub = [r for r in mine if r["domain"] == dom]
                assert cell["n"] == len(sub) and cell["accuracy"] == pytest.approx(
                    100 * sum(r["correct"] for r in sub) / len(sub))
            accs.append(s["overall"]["accuracy"])
        mean = d["rows"][row]["mean"]["overall"]["accuracy"]
        assert mean["mean"] == pytest.approx(statistics.fmean(accs))
        assert mean["std"] == pytest.approx(statistics.stdev(accs))
    delta = d["vs_baseline"]["sweet"]["delta_accuracy_pp"]["values"]
    acc = {row: [d["rows"][row]["per_seed"][s]["overall"]["accuracy"] for s in ("42", "123")] for row in d["rows"]}
    assert delta == pytest.approx([s - b for s, b in zip(acc["sweet"], acc["baseline"])])


@pytest.mark.slow
def test_resume_redoes_only_what_is_missing(e2e):
    out, args, _ = e2e
    path = out / "smollm2-135m" / "records.jsonl"
    before = path.read_text().splitlines()
    p = script(*args)  # nothing to do: every question is reused
    assert p.returncode == 0, p.stderr[-2000:]
    assert path.read_text().splitlines() == before
    # an interruption: the last record lost, half a line left behind
    path.write_text("\n".join(before[:-1]) + "\n" + before[-1][: len(before[-1]) // 2])
    p = script(*args)
    assert p.returncode == 0, p.stderr[-2000:]
    after = path.read_text().splitlines()
    assert after[:-1] == before[:-1] and len(after) == len(before)
    redone, lost = json.loads(after[-1]), json.loads(before[-1])
    assert lb.record_key(redone) == lb.record_key(lost) and redone["response"] == lost["response"]  # greedy


@pytest.mark.slow
def test_other_settings_are_refused_without_force(e2e):
    out, args, _ = e2e
    path = out / "smollm2-135m" / "records.jsonl"
    agg = (out / "smollm2-135m.json").read_text()
    before = path.read_text()
    p = script(*args, "--set", "n_predict=13")  # changes what a question measures
    assert p.returncode == 1 and "other settings" in p.stderr and "--force" in p.stderr
    assert "Traceback" not in p.stderr
    p = script(*args, "--set", "threads=2")  # records reusable, but the result was made with another config
    assert p.returncode == 1 and "another config" in p.stderr and "--force" in p.stderr
    assert path.read_text() == before and (out / "smollm2-135m.json").read_text() == agg
