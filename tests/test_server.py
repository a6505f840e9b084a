# SPDX-License-Identifier: Apache-2.0
"""The hook in llama-server (issue 13, items 2 and 3), through the server's own HTTP endpoints on loopback, with the
default model:

* each slot has its own triggers and counters: /slots and /metrics show the hook's per-slot passes, sparsity,
  evicted/freed/resident cells and KV bytes, equal to each other and to the stats file's per-sequence records;
* slot save / restore: the next-token logits after a restore equal those of the uninterrupted conversation
  (hook off, ElasticKV with passes before the save, StreamingLLM with a freeing pass after the restore);
* context shift and --cache-reuse: the hook's whole pipeline with a scale that zeroes nothing answers exactly as the
  hook off does; every policy serves a request through both without an error;
* the physical cap: a slot serves a conversation longer than its cells."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from elastickv import paths, server

pytestmark = pytest.mark.slow

TEXT = paths.WIKITEXT_TEST.read_text()[:4000]
P1, P2, P3 = TEXT[:900], TEXT[900:1100], TEXT[1100:1250]  # about 230, 50 and 35 tokens
WARM = {"ELASTICKV_WARM": "64", "ELASTICKV_EVICT_EVERY": "32"}


def greedy(prompt: str, n: int, **kw) -> dict:
    return {"prompt": prompt, "n_predict": n, "temperature": 0, "cache_prompt": True, **kw}


def top(answer: dict) -> list[tuple[int, float]]:
    """The next token's top-10 (id, logprob) of an n_predict=1 answer."""
    return [(t["id"], t["logprob"]) for t in answer["completion_probabilities"][0]["top_logprobs"]]


@pytest.fixture(scope="module")
def cell_bytes(model_path) -> int:
    """Bytes of one f16 K+V cell over every layer, from the model's own metadata."""
    r = gguf.GGUFReader(model_path)

    def field(key):
        f = r.fields[key]
        return int(f.parts[f.data[0]][0])

    n_layer, n_embd = field("llama.block_count"), field("llama.embedding_length")
    n_head, n_head_kv = field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    return n_layer * 2 * n_head_kv * (n_embd // n_head) * 2


# ------------------------------------------------------------------------------------------ /slots, /metrics

def test_slots_and_metrics_show_each_slots_own_hook_counters(model_path, tmp_rel, cell_bytes):
    stats = tmp_rel / "stats.jsonl"
    env = {"ELASTICKV": "1", **WARM, "ELASTICKV_STATS": str(stats)}
    with server.Server(model_path, ["-c", "2048", "-np", "2", "--metrics", "--cache-ram", "0"], env,
                       tmp_rel / "server.log") as srv:
        a = srv.post("/completion", greedy(P1, 40, id_slot=1))
        b = srv.post("/completion", greedy(P3, 8, id_slot=0))  # shorter than WARM: no pass for slot 0
        slots = {s["id"]: s["elastickv"] for s in srv.slots()}
        metrics = srv.metrics()

    s1, s0 = slots[1], slots[0]
    n1 = a["tokens_evaluated"] + a["tokens_predicted"] - 1  # the last sampled token is not decoded
    assert s1["resident_cells"] == n1 and s1["kv_bytes"] == n1 * cell_bytes
    assert s1["passes"] >= 2 and s1["last_pass_pos"] >= 64 - 1
    assert 0.0 < s1["k_sparsity"] < 1.0 and 0.0 < s1["v_sparsity"] < 1.0
    assert s1["cells_freed"] == 0 and s1["cells_evicted"] == 0  # ElasticKV zeroes entries, it frees no cell
    n0 = b["tokens_evaluated"] + b["tokens_predicted"] - 1
    assert s0["passes"] == 0 and s0["k_sparsity"] is None and s0["resident_cells"] == n0

    # /metrics carries the same numbers, one series per slot
    for sid, s in slots.items():
        lab = str(sid)
        assert metrics["elastickv_passes_total"][lab] == s["passes"]
        assert metrics["elastickv_resident_cells"][lab] == s["resident_cells"]
        assert metrics["elastickv_kv_bytes"][lab] == s["kv_bytes"]
        assert metrics["elastickv_cells_freed_total"][lab] == s["cells_freed"]
        if s["k_sparsity"] is None:
            assert metrics["elastickv_k_sparsity"][lab] != metrics["elastickv_k_sparsity"][lab]  # NaN
        else:
            assert metrics["elastickv_k_sparsity"][lab] == pytest.approx(s["k_sparsity"], rel=1e-5)
    assert metrics["n_decode_total"] > 0  # the server's own metrics are still there

    # the stats file: every pass record belongs to slot 1's sequence, and their passes are the ones counted
    recs = [json.loads(line) for line in stats.read_text().splitlines()]
    heads = [r for r in recs if r["record"] == "head"]
    assert heads and {r["seq"] for r in heads} == {1}
    assert len({r["pass"] for r in heads}) == s1["passes"]
    last = max(r["pass"] for r in heads)
    k = [r for r in heads if r["pass"] == last and r["kv"] == "k"]
    assert s1["k_sparsity"] == pytest.approx(1 - sum(r["nnz_obs"] for r in k) / sum(r["n_obs"] for r in k), rel=1e-9)


def test_hook_off_adds_nothing_to_slots_or_metrics(model_path, tmp_rel):
    with server.Server(model_path, ["-c", "1024", "-np", "1", "--metrics"], {}, tmp_rel / "server.log") as srv:
        srv.post("/completion", greedy(P3, 4))
        assert "elastickv" not in srv.slots()[0]
        assert not [k for k in srv.metrics() if k.startswith("elastickv")]


# ------------------------------------------------------------------------------------------ save / restore

RESTORE_CASES = {
    # hook off: the method itself (a restore and an uninterrupted conversation share the cells' layout)
    "off": {},
    # ElasticKV: passes before the save, so the saved bytes carry the zeros; the restored sequence starts a new epoch
    "elastickv": {"ELASTICKV": "1", **WARM},
    # StreamingLLM frees cells: no pass before the save (the cells' layout stays that of a conversation without a
    # restore), a freeing pass at the end of the next request, then a request whose tokens go into the freed cells
    "streaming": {"ELASTICKV": "1", "ELASTICKV_POLICY": "streaming", "ELASTICKV_BUDGET": "0.5",
                  "ELASTICKV_SINK": "4", "ELASTICKV_WARM": "300", "ELASTICKV_EVICT_EVERY": "16"},
}
_restore_runs: dict[str, dict] = {}


def _restore_run(model_path: Path, folder: Path, name: str) -> dict:
    """One server: request 1, save the slot, requests 2 and 3 (uninterrupted), restore, requests 2 and 3 again."""
    if name in _restore_runs:
        return _restore_runs[name]
    save = folder / f"save-{name}"
    save.mkdir(parents=True, exist_ok=True)
    args = ["-c", "2048", "-np", "1", "--metrics", "--cache-ram", "0", "--slot-save-path", str(save), "-fa", "off"]
    out: dict = {}
    with server.Server(model_path, args, RESTORE_CASES[name], folder / f"server-{name}.log") as srv:
        r1 = srv.post("/completion", greedy(P1, 40))
        out["hook_saved"] = srv.slot_hook(0)
        srv.post("/slots/0?action=save", {"filename": "a.bin"})
        prompt2 = P1 + r1["content"] + P2
        for flow in ("uninterrupted", "restored"):
            if flow == "restored":
                srv.post("/slots/0?action=restore", {"filename": "a.bin"})
                out["hook_restored"] = srv.slot_hook(0)
            u2 = srv.post("/completion", greedy(prompt2, 1, n_probs=10))
            out[f"{flow}_hook2"] = srv.slot_hook(0)
            u3 = srv.post("/completion", greedy(prompt2 + u2["content"] + P3, 1, n_probs=10))
            out[f"{flow}_hook3"] = srv.slot_hook(0)
            out[flow] = (top(u2), top(u3), u2["tokens_cached"], u3["tokens_cached"])
    _restore_runs[name] = out
    return out


@pytest.mark.parametrize("name", list(RESTORE_CASES))
def test_restore_gives_the_uninterrupted_logits(model_path, name):
    folder = paths.BUILD / "test-tmp" / "test_server_restore"
    run = _restore_run(model_path, folder, name)
    u, r = run["uninterrupted"], run["restored"]
    assert u[2:] == r[2:]  # the same prompt cache reuse in both flows
    assert u[0] == r[0], "next-token logits after the restore differ from the uninterrupted conversation"
    assert u[1] == r[1], "the request after a pass differs between the restored and the uninterrupted conversation"
    if name == "off":
        assert run["hook_saved"] is None
        return
    off = _restore_run(model_path, folder, "off")["uninterrupted"]
    assert u[1] != off[1]  # the hook changes these logits: equality above is not vacuous
    assert run["hook_restored"]["epoch"] == run["hook_saved"]["epoch"] + 1  # a restore starts the sequence over
    assert run["hook_restored"]["resident_cells"] == run["hook_saved"]["resident_cells"]
    if name == "elastickv":
        assert run["hook_saved"]["passes"] >= 2  # the saved cache carried the pass's zeros
        assert run["restored_hook3"]["k_sparsity"] == pytest.approx(run["uninterrupted_hook3"]["k_sparsity"], abs=0.02)
    else:
        assert run["hook_saved"]["passes"] == 0 and run["hook_saved"]["cells_freed"] == 0
        # one freeing pass at the end of request 2 in each flow, freeing as many cells
        h_u, h_r, before = run["uninterrupted_hook2"], run["restored_hook2"], run["uninterrupted_hook3"]
        assert h_u["passes"] == 1 and h_r["passes"] - before["passes"] == 1
        assert h_r["cells_freed"] - before["cells_freed"] == h_u["cells_freed"] > 0
        assert h_u["resident_cells"] == h_r["resident_cells"]


# ------------------------------------------------------------------------------------------ shift, reuse

SHIFT_ARGS = ["-c", "256", "-np", "1", "--context-shift", "--cache-reuse", "16", "--cache-ram", "0", "-fa", "off",
              "-b", "64", "-ub", "64"]


def _shift_and_reuse(srv: server.Server, frees: bool = False) -> list[str]:
    """A request whose generation runs past the context (context shifts), then X+Y+Z and X+Z: --cache-reuse moves
    Z's cached cells back over Y's (a K shift). With a policy that frees cells, the cut at the end of X falls into
    cells the policy freed: the server decodes again from the sequence's last resident position (before the fix,
    llama_decode refused the batch: "inconsistent sequence positions")."""
    a = srv.post("/completion", greedy(TEXT[:300], 220, ignore_eos=True))
    x, y, z = TEXT[2000:2200], TEXT[2200:2400], TEXT[2400:2800]
    b = srv.post("/completion", greedy(x + y + z, 8))
    c = srv.post("/completion", greedy(x + z, 8))
    assert a["tokens_predicted"] == 220
    if not frees:
        assert c["timings"]["cache_n"] > b["timings"]["cache_n"] + 40, "no chunk of the cache was reused"
    return [a["content"], b["content"], c["content"]]


def test_context_shift_and_cache_reuse_match_the_hook_off_with_a_scale_that_zeroes_nothing(model_path, tmp_rel):
    with server.Server(model_path, SHIFT_ARGS, {}, tmp_rel / "off.log") as srv:
        off = _shift_and_reuse(srv)
    env = {"ELASTICKV": "1", "ELASTICKV_SCALE_K": "1e-20", "ELASTICKV_SCALE_V": "1e-20", **WARM}
    with server.Server(model_path, SHIFT_ARGS, env, tmp_rel / "on.log") as srv:
        on = _shift_and_reuse(srv)
        hook = srv.slot_hook(0)
    assert "slot context shift" in (tmp_rel / "on.log").read_text(errors="replace"), "no context shift happened"
    assert hook["passes"] > 0
    assert on == off


POLICY_ENVS = {
    "elastickv-full": {},
    "elastickv-incremental": {"ELASTICKV_MODE": "incremental"},
    "streaming": {"ELASTICKV_POLICY": "streaming", "ELASTICKV_BUDGET": "0.5"},
    "h2o": {"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5"},
    "h2o-shared": {"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_SCOPE": "shared"},
    "scissorhands": {"ELASTICKV_POLICY": "scissorhands", "ELASTICKV_BUDGET": "0.5"},
    "pyramidkv": {"ELASTICKV_POLICY": "pyramidkv", "ELASTICKV_BUDGET": "0.5"},
    "random_tokens": {"ELASTICKV_POLICY": "random_tokens", "ELASTICKV_BUDGET": "0.5"},
    "random_entries": {"ELASTICKV_POLICY": "random_entries", "ELASTICKV_BUDGET": "0.5"},
    "topk_entries": {"ELASTICKV_POLICY": "topk_entries", "ELASTICKV_BUDGET": "0.5"},
}


@pytest.mark.parametrize("policy", list(POLICY_ENVS))
def test_every_policy_serves_through_context_shift_and_cache_reuse(model_path, tmp_rel, policy):
    env = {"ELASTICKV": "1", "ELASTICKV_SINK": "4", **WARM, **POLICY_ENVS[policy]}
    token = "ELASTICKV_POLICY" in POLICY_ENVS[policy] and "entries" not in policy  # a token eviction may free cells
    with server.Server(model_path, SHIFT_ARGS, env, tmp_rel / "server.log") as srv:
        _shift_and_reuse(srv, frees=token)
        hook = srv.slot_hook(0)
    assert hook["passes"] > 0
    if policy in ("streaming", "h2o-shared", "random_tokens"):  # every eviction frees its cell
        assert hook["cells_freed"] > 0
    if not token:
        assert hook["cells_freed"] == 0 and hook["cells_evicted"] == 0


# ------------------------------------------------------------------------------------------ physical cap

def test_a_slot_serves_a_conversation_longer_than_its_cells(model_path, tmp_rel):
    cells = 192
    env = {"ELASTICKV": "1", "ELASTICKV_POLICY": "streaming", "ELASTICKV_BUDGET": "64", "ELASTICKV_SINK": "4",
           **WARM, "ELASTICKV_KV_CELLS": str(cells)}
    args = ["-c", "1024", "-np", "1", "-b", "64", "-ub", "64", "--cache-ram", "0", "-fa", "on"]
    with server.Server(model_path, args, env, tmp_rel / "server.log") as srv:
        a = srv.post("/completion", greedy(P1, 160, ignore_eos=True))
        b = srv.post("/completion", greedy(P1 + a["content"] + P2, 40, ignore_eos=True))
        hook = srv.slot_hook(0)
    n = b["tokens_evaluated"] + b["tokens_predicted"] - 1
    assert n > 2 * cells  # positions: the logical conversation
    assert hook["resident_cells"] <= cells and hook["cells_freed"] >= n - cells
    log = (tmp_rel / "server.log").read_text(errors="replace")
    assert f"{cells} cells" in log


# ------------------------------------------------------------------------------------------ prompt cache

def test_prompt_cache_in_host_memory_restores_a_conversation_with_fresh_hook_state(model_path, tmp_rel):
    """--cache-ram: a slot saves its sequence's state to host memory when another prompt takes it, and loads it back
    (llama_state_seq_set_data) when the first prompt returns; the hook starts that sequence over (a new epoch: its
    next ubatch is followed by a pass over the loaded cells)."""
    env = {"ELASTICKV": "1", **WARM}
    args = ["-c", "2048", "-np", "1", "--cache-ram", "64", "-fa", "off"]
    with server.Server(model_path, args, env, tmp_rel / "server.log") as srv:
        a1 = srv.post("/completion", greedy(P1, 16))
        h1 = srv.slot_hook(0)
        srv.post("/completion", greedy(TEXT[2000:2900], 16))  # another prompt takes the slot
        a2 = srv.post("/completion", greedy(P1, 16))
        h2 = srv.slot_hook(0)
    assert a2["timings"]["cache_n"] > 200, "the first prompt's state was not loaded from the host-memory cache"
    assert a1["tokens_predicted"] == a2["tokens_predicted"] == 16
    assert h2["epoch"] > h1["epoch"] and h1["passes"] > 0
    assert h2["passes"] > h1["passes"] and h2["last_pass_pos"] >= 0
